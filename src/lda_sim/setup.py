from setuptools import find_packages, setup

PACKAGE = "lda_sim"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    description="Simulated robot (robosuite) on the real robots' topics, and a scripted mixed-quality teleoperator.",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        # Package executables: ros2 run lda_sim <exe>, and pkg/exec in launch files.
        "console_scripts": [
            "sim_node = lda_sim.sim_node:main",
            "scripted_teleop_node = lda_sim.scripted_teleop_node:main",
            "evaluation_node = lda_sim.evaluation_node:main",
        ],
    },
)

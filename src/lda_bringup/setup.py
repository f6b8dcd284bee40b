from glob import glob

from setuptools import find_packages, setup

PACKAGE = "lda_bringup"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        # Commands on the PATH once the workspace is sourced (colcon adds <prefix>/bin to PATH).
        ("bin", glob("scripts/*")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    description="Bring-up: lda-launch for the suite's YAML launch files where ros2 launch is absent; the demo.",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            # Package executables (ros2 run lda_bringup <exe>, pkg/exec in launch files).
            "lda_launch = lda_bringup.launcher:main",
            "demo = lda_bringup.demo:main",
            "selftest_talker = lda_bringup.selftest_nodes:talker_main",
            "selftest_listener = lda_bringup.selftest_nodes:listener_main",
        ],
    },
)

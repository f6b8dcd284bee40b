from glob import glob

from setuptools import find_packages, setup

PACKAGE = "lda_policy"

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
    description="LDA-1B model core (ROS-free) and the policy, safety-monitor and dynamics-replay nodes.",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        # Package executables: ros2 run lda_policy <exe>, and pkg/exec in launch files.
        "console_scripts": [
            "policy_node = lda_policy.policy_node:main",
            "safety_monitor_node = lda_policy.safety_monitor_node:main",
            "dynamics_replay_node = lda_policy.dynamics_replay_node:main",
            "calibrate_safety = lda_policy.deploy.calibrate:main",
        ],
    },
)

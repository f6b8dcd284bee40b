from glob import glob

from setuptools import find_packages, setup

PACKAGE = "lda_teleop_record"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml", "config/fastdds_large_data.xml"]),
        # Commands on the PATH once the workspace is sourced (colcon adds <prefix>/bin to PATH).
        ("bin", glob("scripts/*")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    description="Teleoperation recorder: mixed-quality LeRobot episodes from ROS 2 topics, and rosbag2 conversion.",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        # Package executables: ros2 run lda_teleop_record <exe>, and pkg/exec in launch files.
        "console_scripts": [
            "teleop_recorder = lda_teleop_record.recorder_node:main",
            "bag2lerobot = lda_teleop_record.bag2lerobot:main",
        ],
    },
)

"""Point the ROS wheels' exported CMake files at this interpreter's include directories.

The ros-python-wheels builds record the wheel builder's Python (/opt/python/cpXY-cpXY/...) in their
rosidl_generator_py CMake exports; building our own interfaces against them then fails to find
Python.h and numpy's headers. Run after every install of ros-* wheels (scripts/setup.sh does).
"""

import re
import sys
import sysconfig
from pathlib import Path

import numpy

BUILDER_NUMPY = re.compile(r"/opt/python/cp\d+-cp\d+/lib/python3\.\d+/site-packages/numpy/_core/include")
BUILDER_PYTHON = re.compile(r"/opt/python/cp\d+-cp\d+/include/python3\.\d+")


def main() -> int:
    share = Path(sys.prefix) / "share"
    fixed = 0
    for path in share.glob("*/cmake/*.cmake"):
        text = path.read_text()
        new = BUILDER_NUMPY.sub(numpy.get_include(), text)
        new = BUILDER_PYTHON.sub(sysconfig.get_paths()["include"], new)
        if new != text:
            path.write_text(new)
            fixed += 1
    print(f"fix_ros_cmake_paths: rewrote {fixed} CMake file(s) under {share}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

from setuptools import find_packages, setup

PACKAGE = "lda_testing"

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
    description="Test-only fixtures of the LDA suite: ROS test helpers, synthetic teleoperation, datasets, "
    "checkpoints and a synthetic robot.",
    license="Apache-2.0",
)

from setuptools import find_packages, setup

PACKAGE = "lda_common"

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
    description="ROS-free ground floor of the LDA suite: robot description, hand-centric action space, geometry, "
    "message decoding, stamped-sample alignment, bag reading, dataset schema, the quality vocabulary.",
    license="Apache-2.0",
    tests_require=["pytest"],
)

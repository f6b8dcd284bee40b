from glob import glob

from setuptools import find_packages, setup

PACKAGE = "lda_train"

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
    description="Role-aware fine-tuning of LDA on mixed-quality LeRobot datasets, latent cache, evaluation.",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        # Package executables: ros2 run lda_train <exe>, and pkg/exec in launch files.
        "console_scripts": [
            "train = lda_train.cli:train_main",
            "cache_latents = lda_train.cli:cache_main",
        ],
    },
)

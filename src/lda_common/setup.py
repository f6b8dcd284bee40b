from setuptools import setup

setup()  # ament_python needs a setup.py; the metadata is in setup.cfg

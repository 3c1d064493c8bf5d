"""Packaging shim: metadata lives in setup.cfg. This adds the top-level ``weights/`` registry (the checkpoint
list the user asked to keep at the repository root) to the package as ``trek_tracker._weights_data``."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["trek_tracker*"]) + ["trek_tracker._weights_data"],
    package_dir={"trek_tracker._weights_data": "weights"},
    package_data={"trek_tracker._weights_data": ["*.toml", "*.md"]},
)

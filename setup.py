"""The package list, which pyproject.toml cannot express: `sglserve*` found on disk plus
`sglserve_kernels`, whose folder is `kernels/` (package-dir in pyproject.toml). setuptools'
`packages.find` does not follow package-dir renames, and its editable finder then left
`sglserve_kernels` unimportable (setuptools 84)."""

from setuptools import find_packages, setup

setup(packages=find_packages(include=["sglserve", "sglserve.*"]) + ["sglserve_kernels"])

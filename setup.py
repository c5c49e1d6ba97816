"""Builds the cffi C core; all metadata lives in pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["csrc/_ffi_build.py:ffibuilder"])

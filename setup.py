"""Builds the cffi C core; all metadata lives in pyproject.toml."""

from setuptools import setup

setup(
    cffi_modules=["csrc/_ffi_build.py:ffibuilder"],
    # cffi compiles the core against the stable ABI (its _core.abi3.so), so
    # one wheel serves every CPython from 3.11 on: tag it cp311-abi3.
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
)

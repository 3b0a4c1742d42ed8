"""The compiled kernels, the one part of the build pyproject.toml cannot declare without an experimental table.

``fcnquant._native`` (fcnquant/_native.c): the observers' histogram + min/max pass and compare's drift sums.
Optional: where no C compiler is found the build goes on and the numpy reference code runs (the same
statistics; observation ~3x slower), and calibrate says so in its log.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("fcnquant._native", sources=["fcnquant/_native.c"], optional=True)])

"""The one part of platpass that setuptools cannot take from pyproject.toml: the C fast
path of the trapped-register round trip (``platpass.vfio_user._native``; see
``src/platpass/vfio_user/native.py``). It is built with the package; platpass runs without it
(in Python) when it is absent, e.g. from a checkout nobody built it in."""

from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "platpass.vfio_user._native", ["src/platpass/vfio_user/_native.c"],
    extra_compile_args=["-O2", "-fvisibility=hidden"],
)])

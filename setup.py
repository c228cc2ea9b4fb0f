"""The one part of platpass that setuptools cannot take from pyproject.toml: its C
accelerators (``platpass.accel``): the trapped-register round trip
(``platpass.vfio_user._native``) and the device tree's structure block walk
(``platpass.firmware._native``). They are built with the package; platpass runs without
them (in Python) when they are absent, e.g. from a checkout nobody built them in.
``scripts/build-native`` lists the same sources."""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension(name, [source], extra_compile_args=["-O2", "-fvisibility=hidden"])
    for name, source in (
        ("platpass.vfio_user._native", "src/platpass/vfio_user/_native.c"),
        ("platpass.firmware._native", "src/platpass/firmware/_native.c"),
    )
])

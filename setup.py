"""Builds the compiled hot path (server/fastpath.pyx) with Cython; everything else is in
pyproject.toml."""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [Extension("server.fastpath", ["server/fastpath.pyx"], extra_compile_args=["-O2"])],
        compiler_directives={"language_level": "3"},
    )
)

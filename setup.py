"""Builds the compiled hot path (server/fastpath.pyx) and the load driver's receiver
(bench/fastrecv.pyx) with Cython; everything else is in pyproject.toml."""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [
            Extension("server.fastpath", ["server/fastpath.pyx"], extra_compile_args=["-O2"]),
            Extension("bench.fastrecv", ["bench/fastrecv.pyx"], extra_compile_args=["-O2"]),
        ],
        compiler_directives={"language_level": "3"},
    )
)

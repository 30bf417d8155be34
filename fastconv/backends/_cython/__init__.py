"""Compiled Cython kernels (OpenMP where the build had it).

Built by ``setup.py``; imported only through ``fastconv.backends.cython_cpu``,
which reports why the backend is unavailable when these modules are missing.
"""

"""SciPy's BLAS (``scipy.linalg.cython_blas``) without the rest of
``scipy.linalg``.

The Cython convolution kernels call SciPy's single-threaded-callable BLAS
through the function pointers that ``scipy.linalg.cython_blas`` exports.
``from scipy.linalg import cython_blas`` first runs ``scipy.linalg``'s
``__init__``, which imports most of SciPy's linear algebra and its array-API
layer: 0.12-0.15 s, half of a first call's time in a fresh process. The
extension itself loads in a few milliseconds, so ``load()`` loads it alone,
under its own name (a later ``import scipy.linalg`` then finds it in
``sys.modules`` and uses it), and falls back to the ordinary import where
SciPy's layout is not the expected one.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys

NAME = "scipy.linalg.cython_blas"


def _extension_path():
    """The cython_blas extension file inside the installed SciPy, or None."""
    spec = importlib.util.find_spec("scipy")
    if spec is None or spec.origin is None:
        return None
    folder = os.path.join(os.path.dirname(spec.origin), "linalg")
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(folder, "cython_blas" + suffix)
        if os.path.isfile(path):
            return path
    return None


def load():
    """The ``scipy.linalg.cython_blas`` module (its ``__pyx_capi__`` holds
    the BLAS function pointers)."""
    module = sys.modules.get(NAME)
    if module is not None:
        return module
    path = _extension_path()
    if path is not None:
        loader = importlib.machinery.ExtensionFileLoader(NAME, path)
        spec = importlib.util.spec_from_file_location(NAME, path,
                                                      loader=loader)
        try:
            module = importlib.util.module_from_spec(spec)
            loader.exec_module(module)
        except ImportError:
            module = None
        else:
            sys.modules[NAME] = module
            return module
    from scipy.linalg import cython_blas

    return cython_blas

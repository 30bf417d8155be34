"""Build the Cython kernels of fastconv (metadata lives in pyproject.toml).

The extensions in ``fastconv/backends/_cython`` are compiled with ``-O3`` and,
where the configured C compiler can compile *and link* a small OpenMP program,
with OpenMP (``-fopenmp``, or ``/openmp`` for MSVC). Where it cannot (Apple's
clang without libomp, for instance) they are built serially and a warning is
printed: the install never fails for want of OpenMP, the kernels just run on
one thread. Flags in ``TUNING_FLAGS`` are added only where the compiler
accepts them.

Environment variables:

``FASTCONV_NO_OPENMP=1``
    Skip the OpenMP probe and build serially (used to test the fallback).
``FASTCONV_PORTABLE=1``
    Do not tune for the building machine's CPU (no ``-march=native``): for a
    wheel that will run on other machines.
    An in-place rebuild (``pip install -e .``) reuses compiled modules that
    are newer than their sources: delete ``fastconv/backends/_cython/*.so``
    first for the setting to take effect.
"""

import glob
import os
import sys
import tempfile

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

try:  # setuptools >= 59 vendors distutils' errors here
    from setuptools.errors import CCompilerError, CompileError, LinkError
except ImportError:  # pragma: no cover
    from distutils.errors import CCompilerError, CompileError, LinkError

CYTHON_DIR = os.path.join("fastconv", "backends", "_cython")
KERNELS = ("conv", "direct", "winograd", "pool", "dropout", "depthwise",
           "normalization", "activation")

#: Added where the compiler accepts them. GCC's -O3 unroll-and-jam fuses the
#: max-pool tap loop (pool.pyx, _max_run) pairwise into one scalar loop that
#: is then not vectorised, which made max_pool2d 3x slower here.
TUNING_FLAGS = ["-fno-loop-unroll-and-jam"]

#: The extension is compiled where it is installed, so by default it may use
#: every instruction of this CPU (AVX-512 where there is one), as Numba's JIT
#: does; FASTCONV_PORTABLE=1 leaves it out.
NATIVE_FLAGS = ["-march=native"]

#: Added to one extension's flags, with NATIVE_FLAGS and where accepted.
#: GCC keeps to 256-bit vectors on CPUs where 512-bit ones may lower the
#: clock; the dropout mask's 64-bit hash (vpmullq) ran 1.5x faster in
#: 512-bit lanes here (1.39 -> 0.92 ms for 2M elements on one thread, as
#: fast as Numba's LLVM build).
KERNEL_NATIVE_FLAGS = {"dropout": ["-mprefer-vector-width=512"]}

TRIVIAL_PROGRAM = "int main(void) { return 0; }\n"

OPENMP_PROBE = r"""
#include <omp.h>
int main(void) {
    int threads = 0;
    #pragma omp parallel reduction(+: threads)
    threads += 1;
    return threads > 0 && omp_get_max_threads() > 0 ? 0 : 1;
}
"""


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() not in (
        "", "0", "false", "no", "off")


class BuildExtWithOptionalOpenMP(build_ext):
    """build_ext that adds optimisation and, if it links, OpenMP."""

    def _flags(self):
        if self.compiler.compiler_type == "msvc":
            return ["/O2"], ["/openmp"], []
        return ["-O3"], ["-fopenmp"], ["-fopenmp"]

    def _builds(self, program, compile_flags, link_flags):
        """Whether this compiler compiles and links ``program`` (C source)
        with these flags, warnings about unknown flags counting as failure."""
        with tempfile.TemporaryDirectory() as tmp:
            source = os.path.join(tmp, "probe.c")
            with open(source, "w") as handle:
                handle.write(program)
            strict = [] if self.compiler.compiler_type == "msvc" else [
                "-Werror"]
            try:
                objects = self.compiler.compile(
                    [source], output_dir=tmp,
                    extra_postargs=compile_flags + strict)
                self.compiler.link_executable(
                    objects, "probe", output_dir=tmp,
                    extra_postargs=link_flags)
            except (CCompilerError, CompileError, LinkError, OSError):
                return False
        return True

    def build_extensions(self):
        optimise, omp_compile, omp_link = self._flags()
        if _env_flag("FASTCONV_NO_OPENMP"):
            use_openmp, why = False, "FASTCONV_NO_OPENMP is set"
        else:
            use_openmp = self._builds(OPENMP_PROBE, omp_compile, omp_link)
            why = "the C compiler could not compile and link an OpenMP program"
        if use_openmp:
            print("fastconv: building the Cython kernels with OpenMP")
        else:
            omp_compile, omp_link = [], []
            message = (f"fastconv: building the Cython kernels WITHOUT OpenMP "
                       f"({why}); they will run on one thread")
            print(f"WARNING: {message}", file=sys.stderr)
        native = (self.compiler.compiler_type != "msvc"
                  and not _env_flag("FASTCONV_PORTABLE"))
        if self.compiler.compiler_type != "msvc":
            wanted = TUNING_FLAGS + (NATIVE_FLAGS if native else [])
            optimise += [flag for flag in wanted
                         if self._builds(TRIVIAL_PROGRAM, [flag], [])]
        for extension in self.extensions:
            kernel = extension.name.rsplit(".", 1)[-1]
            extra = [flag for flag in KERNEL_NATIVE_FLAGS.get(kernel, [])
                     if native and self._builds(TRIVIAL_PROGRAM, [flag], [])]
            extension.extra_compile_args = (
                list(extension.extra_compile_args) + optimise + extra
                + omp_compile)
            extension.extra_link_args = (
                list(extension.extra_link_args) + omp_link)
        super().build_extensions()


extensions = [
    Extension(
        f"fastconv.backends._cython.{name}",
        [os.path.join(CYTHON_DIR, f"{name}.pyx")],
        include_dirs=[numpy.get_include(), CYTHON_DIR],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        # the C kernels they include: an edited header rebuilds them too
        depends=sorted(glob.glob(os.path.join(CYTHON_DIR, "*.h"))),
    )
    for name in KERNELS
]

setup(
    ext_modules=cythonize(extensions, language_level=3),
    cmdclass={"build_ext": BuildExtWithOptionalOpenMP},
    # the generated C (about a megabyte each) is a build product, not data
    exclude_package_data={"fastconv.backends._cython": ["*.c"]},
)

"""Build fastconv's native modules.

fastconv._C (always): the C++ CPU backend, C++17 + OpenMP, bound with pybind11, no libtorch.
  Every csrc/cpu/*_isa.cpp is compiled three times, once per instruction-set level (baseline x86-64,
  AVX2+FMA, AVX-512), into namespaces fastconv::cpu::{baseline,avx2,avx512}; csrc/cpu/dispatch.cpp
  picks the level at run time, so the module runs on any x86-64 CPU without an illegal instruction.
  On a non-x86 machine only the portable level is built (the three namespaces alias the same code).

fastconv._C_cuda (later: the CUDA backend issue): FASTCONV_CUDA=0 skips it, 1 requires nvcc,
  auto (default) builds it when nvcc is found. See cuda_extension() below.
"""
import glob
import os
import platform
import shutil
import sys

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
IS_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")

# Compiler flags for each ISA level. The avx512 level targets Skylake-SP and later (F/BW/VL/DQ).
ISA_FLAGS = {
    "baseline": [],
    "avx2": ["-mavx2", "-mfma", "-mf16c"],
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c"],
}
COMMON_FLAGS = ["-O3", "-fopenmp", "-fno-math-errno", "-Wall", "-Wno-unknown-pragmas"]
LINK_FLAGS = ["-fopenmp"]
# FASTCONV_SANITIZE=1: an AddressSanitizer + UndefinedBehaviorSanitizer build for CI (.ci/run builds
# one in a scratch copy and runs the kernel tests with libasan/libubsan preloaded into python).
if os.environ.get("FASTCONV_SANITIZE", "0") == "1":
    COMMON_FLAGS = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
                    "-fno-sanitize-recover=undefined"] + COMMON_FLAGS[1:]
    LINK_FLAGS = LINK_FLAGS + ["-fsanitize=address,undefined"]


def cpu_isa_sources():
    return sorted(glob.glob(os.path.join("csrc", "cpu", "*_isa.cpp")))


class BuildExt(build_ext):
    """Compiles the per-ISA kernel objects with their own flags, then links them into _C."""

    def build_extension(self, ext):
        if ext.name == "fastconv._C":
            ext.extra_objects = list(ext.extra_objects or [])
            for isa, flags in ISA_FLAGS.items():
                out_dir = os.path.join(self.build_temp, "isa_" + isa)
                objects = self.compiler.compile(
                    cpu_isa_sources(),
                    output_dir=out_dir,
                    macros=[("FC_ISA", isa)],
                    include_dirs=[os.path.join(ROOT, "csrc")],
                    extra_postargs=["-std=c++17", "-fPIC"] + COMMON_FLAGS + (flags if IS_X86 else []),
                    depends=glob.glob(os.path.join("csrc", "cpu", "*.h")),
                )
                ext.extra_objects.extend(objects)
        super().build_extension(ext)


def cpu_extension():
    return Pybind11Extension(
        "fastconv._C",
        sources=["csrc/module.cpp", "csrc/cpu/dispatch.cpp"],
        include_dirs=["csrc"],
        cxx_std=17,
        extra_compile_args=COMMON_FLAGS,
        extra_link_args=LINK_FLAGS,
        depends=glob.glob("csrc/cpu/*.h") + cpu_isa_sources(),
    )


def cuda_extension():
    """The CUDA module's place. Returns an extension or None, and always says what happened."""
    mode = os.environ.get("FASTCONV_CUDA", "auto").strip().lower()
    if mode not in ("0", "1", "auto"):
        sys.exit(f"fastconv setup: FASTCONV_CUDA must be 0, 1 or auto, got {mode!r}")
    if mode == "0":
        print("fastconv setup: CUDA skipped (FASTCONV_CUDA=0)")
        return None
    nvcc = shutil.which("nvcc") or (
        os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc") if os.environ.get("CUDA_HOME") else None
    )
    if nvcc is None or not os.path.exists(nvcc):
        if mode == "1":
            sys.exit("fastconv setup: FASTCONV_CUDA=1 but nvcc was not found (PATH or CUDA_HOME)")
        print("fastconv setup: CUDA skipped (nvcc not found); the CPU backend is built")
        return None
    cuda_sources = glob.glob(os.path.join("csrc", "cuda", "*.cu"))
    if not cuda_sources:
        print(f"fastconv setup: nvcc found at {nvcc}, but there are no CUDA sources yet (csrc/cuda/); CUDA skipped")
        return None
    raise NotImplementedError("fastconv setup: csrc/cuda/ exists but its build is not wired up yet")


if os.environ.get("FASTCONV_BUILD_JOBS") or os.cpu_count():
    # Compile the per-ISA objects and module sources in parallel (pybind11's helper patches distutils).
    ParallelCompile("FASTCONV_BUILD_JOBS", default=os.cpu_count() or 2).install()

extensions = [cpu_extension()]
cuda_ext = cuda_extension()
if cuda_ext is not None:
    extensions.append(cuda_ext)

setup(ext_modules=extensions, cmdclass={"build_ext": BuildExt})

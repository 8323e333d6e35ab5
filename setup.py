"""Build fastconv's native modules.

fastconv._C (always): the C++ CPU backend, C++17 + OpenMP, bound with pybind11, no libtorch.
  Every csrc/cpu/*_isa.cpp is compiled three times, once per instruction-set level (baseline x86-64,
  AVX2+FMA, AVX-512), into namespaces fastconv::cpu::{baseline,avx2,avx512}; csrc/cpu/dispatch.cpp
  picks the level at run time, so the module runs on any x86-64 CPU without an illegal instruction.
  On a non-x86 machine only the portable level is built (the three namespaces alias the same code).

fastconv._C_emu (always): the CUDA launchers (csrc/cuda/*.cu) and kernels (kernels/*.cuh) compiled by
  g++ against the SIMT emulator (csrc/emu/), so the tests run every CUDA kernel on the CPU.

fastconv._C_cuda: the same launchers compiled by nvcc for sm_80, sm_86, sm_89, sm_90 + PTX (override
  with FASTCONV_CUDA_ARCHS="80;90"). FASTCONV_CUDA=0 skips it, 1 requires nvcc, auto (default) builds
  it when nvcc is found. ptxas's per-kernel report goes to build/fastconv-ptxas.txt and any register
  spill fails the build. The module links the CUDA runtime statically (needs only the driver).

Every build copies kernels/*.cuh into the package (fastconv/kernels/ in a wheel): the NVRTC backend
(fastconv.backends.cuda_nvrtc, CuPy) compiles them at run time on a machine where the wheel was built
without nvcc. docs/packaging.md lists what each switch builds.
"""
import glob
import os
import platform
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup
from setuptools.command.build_py import build_py

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
# -Og -g1 (line tables, enough for the reports' stack traces): at -O1 -g, conv2d_isa.cpp alone took
# about 9 minutes per ISA level on the 2-core CI machine; at -Og -g1, with the levels compiled in
# parallel (BuildExt.isa_objects), the whole instrumented module builds in about 2 minutes.
SANITIZE_FLAGS = ["-Og", "-g1", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
                  "-fno-sanitize-recover=undefined"]
if os.environ.get("FASTCONV_SANITIZE", "0") == "1":
    COMMON_FLAGS = SANITIZE_FLAGS + COMMON_FLAGS[1:]
    LINK_FLAGS = LINK_FLAGS + ["-fsanitize=address,undefined"]


# The emulator build runs kernels on fibers: optimized (tests run thousands of emulated threads), no
# -ffast-math (the results are compared with torch's), unknown pragmas (#pragma unroll) ignored.
EMU_FLAGS = ["-O2", "-fopenmp", "-Wall", "-Wno-unknown-pragmas", "-Wno-unused-function"]
if os.environ.get("FASTCONV_SANITIZE", "0") == "1":
    # The emulator announces its fiber switches to ASan (simt_emulator.cpp), so kernels run under it too:
    # an out-of-bounds read of a kernel is a heap-buffer-overflow report on the tensor it overran.
    # -O1 -g, not the CPU module's -Og -g1 (same sanitizer options): built at -Og, a test_emu_conv2d grid
    # case ended in simt_emulator.cpp's "a finished fiber is never resumed" abort, without a sanitizer
    # report (not yet understood). -O1 compiles in about 2 minutes.
    EMU_FLAGS = ["-O1", "-g"] + SANITIZE_FLAGS[2:] + EMU_FLAGS[1:]


def cpu_isa_sources():
    return sorted(glob.glob(os.path.join("csrc", "cpu", "*_isa.cpp")))


class BuildExt(build_ext):
    """Compiles the per-ISA kernel objects with their own flags, then links them into _C."""

    def build_extension(self, ext):
        if ext.name == "fastconv._C":
            ext.extra_objects = list(ext.extra_objects or []) + self.isa_objects()
        elif ext.name == "fastconv._C_emu":
            # The launchers (csrc/cuda/*.cu) as C++: launch.h includes the emulator under FC_SIMT_EMULATOR.
            if ".cu" not in self.compiler.src_extensions:
                self.compiler.src_extensions.append(".cu")
            objects = self.compiler.compile(
                launcher_sources(),
                output_dir=os.path.join(self.build_temp, "emu"),
                macros=[("FC_SIMT_EMULATOR", "1")],
                include_dirs=CUDA_DIRS,
                extra_preargs=["-x", "c++"],
                # Default visibility: the launch recorder names kernels with dladdr (exported symbols only).
                extra_postargs=["-std=c++17", "-fPIC"] + EMU_FLAGS + ["-fvisibility=default"],
                depends=kernel_headers(),
            )
            ext.extra_objects = list(ext.extra_objects or []) + objects
        elif ext.name == "fastconv._C_cuda":
            ext.extra_objects = list(ext.extra_objects or []) + self.nvcc_compile(ext)
        super().build_extension(ext)

    def isa_objects(self):
        """Compiles every (source, ISA level) pair as one job of a pool of build_jobs() workers, the
        largest sources first. One compile() call per level had run the levels one after another,
        each ending with conv2d_isa.cpp (most of the work) compiling alone: on the 2-core CI machine
        the module at -O3 took 253 s that way, 190 s with this pool."""
        jobs = [(src, isa) for src in sorted(cpu_isa_sources(), key=os.path.getsize, reverse=True)
                for isa in ISA_FLAGS]

        def one(job):
            src, isa = job
            return self.compiler.compile(
                [src],
                output_dir=os.path.join(self.build_temp, "isa_" + isa),
                macros=[("FC_ISA", isa)],
                include_dirs=[os.path.join(ROOT, "csrc")],
                extra_postargs=["-std=c++17", "-fPIC"] + COMMON_FLAGS + (ISA_FLAGS[isa] if IS_X86 else []),
                depends=glob.glob(os.path.join("csrc", "cpu", "*.h")),
            )

        with ThreadPoolExecutor(max_workers=build_jobs()) as pool:
            return [obj for objects in pool.map(one, jobs) for obj in objects]

    def nvcc_compile(self, ext):
        """Compiles csrc/cuda/*.cu with nvcc (one process per file, in parallel), writes ptxas's
        register/shared-memory/spill report of every kernel to build/fastconv-ptxas.txt, and fails the
        build if any kernel spills registers (FASTCONV_ALLOW_SPILLS=1 turns that into a warning)."""
        out_dir = os.path.join(self.build_temp, "nvcc")
        os.makedirs(out_dir, exist_ok=True)
        gencode = []
        for a in ext.fc_archs:
            gencode += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
        newest = ext.fc_archs[-1]
        gencode += ["-gencode", f"arch=compute_{newest},code=compute_{newest}"]
        flags = ["-std=c++17", "-O3", "-lineinfo", "-Xcompiler", "-fPIC", "-Xptxas", "-v", "--threads", "0",
                 "-DFC_CUDA_BUILD=1"] + [f"-I{d}" for d in CUDA_DIRS] + gencode

        def one(src):
            obj = os.path.join(out_dir, os.path.basename(src) + ".o")
            deps = kernel_headers() + [src]
            if not self.force and os.path.exists(obj) and os.path.getmtime(obj) >= max(map(os.path.getmtime, deps)):
                log_path = obj + ".ptxas.txt"
                return obj, open(log_path).read() if os.path.exists(log_path) else ""
            cmd = [ext.fc_nvcc, "-c", src, "-o", obj] + flags
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"fastconv setup: nvcc failed on {src}:\n{' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
            with open(obj + ".ptxas.txt", "w") as f:
                f.write(proc.stderr)
            return obj, proc.stderr

        sources = launcher_sources()
        with ThreadPoolExecutor(max_workers=max(1, min(len(sources), os.cpu_count() or 1))) as pool:
            results = list(pool.map(one, sources))
        report, spills = ptxas_report([log for _, log in results])
        report_path = os.path.join(ROOT, "build", "fastconv-ptxas.txt")
        os.makedirs(os.path.dirname(report_path), exist_ok=True)
        with open(report_path, "w") as f:
            f.write(report)
        print(report)
        if spills:
            msg = "fastconv setup: register spills in " + ", ".join(spills) + f" (report: {report_path})"
            if os.environ.get("FASTCONV_ALLOW_SPILLS") == "1":
                print("WARNING: " + msg)
            else:
                sys.exit(msg)
        return [obj for obj, _ in results]


def demangle(names):
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
        return out.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return names


def ptxas_report(logs):
    """One line per (kernel, architecture): registers, shared memory, stack, spills; and the kernels
    that spill. Parses ptxas -v, whose lines follow "Compiling entry function '<name>' for 'sm_XX'"."""
    rows, current = [], None
    for log in logs:
        for line in log.splitlines():
            m = re.search(r"Compiling entry function '([^']+)' for '(sm_\d+)'", line)
            if m:
                current = {"name": m.group(1), "arch": m.group(2), "regs": "?", "smem": "0", "stack": "0",
                           "spill_st": 0, "spill_ld": 0}
                rows.append(current)
                continue
            if current is None:
                continue
            m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
            if m:
                current["stack"], current["spill_st"], current["spill_ld"] = m.group(1), int(m.group(2)), int(m.group(3))
            m = re.search(r"Used (\d+) registers", line)
            if m:
                current["regs"] = m.group(1)
                m2 = re.search(r"(\d+) bytes smem", line)
                current["smem"] = m2.group(1) if m2 else "0"
    names = demangle([r["name"] for r in rows])
    lines = ["fastconv ptxas report: kernel | arch | registers | static smem bytes | stack bytes | spill st/ld bytes"]
    spills = []
    for r, name in zip(rows, names):
        lines.append(f"{name} | {r['arch']} | {r['regs']} | {r['smem']} | {r['stack']} | {r['spill_st']}/{r['spill_ld']}")
        if r["spill_st"] or r["spill_ld"]:
            spills.append(f"{name} ({r['arch']})")
    return "\n".join(lines) + "\n", spills


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


CUDA_DIRS = [os.path.join(ROOT, "csrc", "cuda"), os.path.join(ROOT, "kernels"), os.path.join(ROOT, "csrc", "emu")]
# Real architectures compiled ahead of time, plus PTX of the newest so that later GPUs JIT it.
DEFAULT_CUDA_ARCHS = "80;86;89;90"


def launcher_sources():
    return sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))


def kernel_headers():
    return sorted(glob.glob(os.path.join("kernels", "*.cuh")) + glob.glob(os.path.join("csrc", "cuda", "*.h"))
                  + glob.glob(os.path.join("csrc", "emu", "*.h")))


def find_nvcc():
    nvcc = shutil.which("nvcc")
    if nvcc is None and os.environ.get("CUDA_HOME"):
        nvcc = os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")
    return nvcc if nvcc and os.path.exists(nvcc) else None


def cuda_home(nvcc):
    """The toolkit root of this nvcc (the wrapper scripts some machines put on PATH are followed)."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    out = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull], capture_output=True, text=True).stderr
    for line in out.splitlines():
        if "TOP=" in line:
            return os.path.normpath(line.split("TOP=", 1)[1].strip())
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


def cuda_archs():
    archs = [a.strip() for a in os.environ.get("FASTCONV_CUDA_ARCHS", DEFAULT_CUDA_ARCHS).replace(",", ";").split(";")]
    archs = [a for a in archs if a]
    if not archs or not all(a.isdigit() for a in archs):
        sys.exit(f"fastconv setup: FASTCONV_CUDA_ARCHS must list compute capabilities like '80;90', got {archs}")
    return archs


def emu_extension():
    """fastconv._C_emu: the CUDA launchers and kernels built by g++ against the SIMT emulator (tests)."""
    return Pybind11Extension(
        "fastconv._C_emu",
        sources=["csrc/cuda/bind.cpp"] + sorted(glob.glob(os.path.join("csrc", "emu", "*.cpp"))),
        include_dirs=CUDA_DIRS,
        define_macros=[("FC_MODULE_NAME", "_C_emu"), ("FC_SIMT_EMULATOR", "1")],
        cxx_std=17,
        extra_compile_args=EMU_FLAGS,
        extra_link_args=LINK_FLAGS,
        depends=kernel_headers() + launcher_sources(),
    )


def cuda_extension():
    """fastconv._C_cuda, or None; always says what happened. FASTCONV_CUDA=0 skips, 1 requires nvcc."""
    mode = os.environ.get("FASTCONV_CUDA", "auto").strip().lower()
    if mode not in ("0", "1", "auto"):
        sys.exit(f"fastconv setup: FASTCONV_CUDA must be 0, 1 or auto, got {mode!r}")
    if mode == "0":
        print("fastconv setup: CUDA skipped (FASTCONV_CUDA=0)")
        return None
    nvcc = find_nvcc()
    if nvcc is None:
        if mode == "1":
            sys.exit("fastconv setup: FASTCONV_CUDA=1 but nvcc was not found (PATH or CUDA_HOME)")
        print("fastconv setup: CUDA skipped (nvcc not found); the CPU backend and the SIMT emulator are built")
        return None
    home = cuda_home(nvcc)
    lib_dirs = [d for d in (os.path.join(home, "lib64"), os.path.join(home, "lib"),
                            os.path.join(home, "targets", "x86_64-linux", "lib")) if os.path.isdir(d)]
    archs = cuda_archs()
    print(f"fastconv setup: building the CUDA module with {nvcc} for sm_{', sm_'.join(archs)} (+PTX)")
    ext = Pybind11Extension(
        "fastconv._C_cuda",
        sources=["csrc/cuda/bind.cpp"],
        include_dirs=CUDA_DIRS,
        define_macros=[("FC_MODULE_NAME", "_C_cuda"), ("FC_CUDA_ARCHS", '"' + ";".join(archs) + '"')],
        cxx_std=17,
        extra_compile_args=COMMON_FLAGS,
        # The CUDA runtime linked statically: the module needs only the driver (libcuda) at run time, and
        # imports on a machine without one (it reports "no GPU" instead of failing to load).
        library_dirs=lib_dirs,
        libraries=["cudart_static", "dl", "rt", "pthread"],
        extra_link_args=LINK_FLAGS,
        depends=kernel_headers() + launcher_sources(),
    )
    ext.fc_nvcc = nvcc
    ext.fc_archs = archs
    return ext


def build_jobs():
    """Parallel compiler processes: FASTCONV_BUILD_JOBS, else one per CPU."""
    return max(1, int(os.environ.get("FASTCONV_BUILD_JOBS") or os.cpu_count() or 2))


# Compile each extension's own sources in parallel too (pybind11's helper patches distutils).
ParallelCompile("FASTCONV_BUILD_JOBS", default=build_jobs()).install()

# FASTCONV_EXTENSIONS (development): a comma-separated subset of cpu, emu, cuda to build, e.g.
# `FASTCONV_EXTENSIONS=emu python setup.py build_ext --inplace` after editing a kernel.
_wanted = {e.strip() for e in os.environ.get("FASTCONV_EXTENSIONS", "cpu,emu,cuda").split(",") if e.strip()}
if not _wanted <= {"cpu", "emu", "cuda"}:
    sys.exit(f"fastconv setup: FASTCONV_EXTENSIONS must list cpu, emu and/or cuda, got {sorted(_wanted)}")
extensions = []
if "cpu" in _wanted:
    extensions.append(cpu_extension())
if "emu" in _wanted:
    extensions.append(emu_extension())
cuda_ext = cuda_extension() if "cuda" in _wanted else None
if cuda_ext is not None:
    extensions.append(cuda_ext)



class BuildPy(build_py):
    """The package plus kernels/*.cuh as fastconv/kernels/ (where cuda_nvrtc.kernels_dir looks in an
    installed package), whatever extensions are built."""

    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "fastconv", "kernels")
        os.makedirs(target, exist_ok=True)
        for header in sorted(glob.glob(os.path.join("kernels", "*.cuh"))):
            self.copy_file(header, os.path.join(target, os.path.basename(header)))


setup(ext_modules=extensions, cmdclass={"build_ext": BuildExt, "build_py": BuildPy})

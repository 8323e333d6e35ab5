"""The CUDA backend's presence on a machine without a GPU: the module is built (nvcc is on every
development and CI machine), fastconv.info() says so and that no GPU is present, choosing 'cuda'
raises with that reason, and the emulated twin 'cuda_emu' serves CPU tensors only when asked for."""
from __future__ import annotations

import shutil

import pytest
import torch

import fastconv
from fastconv.backends import cuda as cuda_backend

needs_nvcc_build = pytest.mark.skipif(
    shutil.which("nvcc") is None, reason="nvcc not on the PATH: the package was built without the CUDA module")


@needs_nvcc_build
def test_cuda_module_was_built_by_nvcc():
    assert cuda_backend._C_cuda is not None, cuda_backend._CUDA_IMPORT_ERROR
    info = cuda_backend._C_cuda.build_info
    assert info["build"] == "nvcc"
    assert {"80", "90"} <= set(info["archs"].split(";"))


@needs_nvcc_build
def test_info_reports_the_cuda_module_and_the_gpu():
    data = fastconv.info(print_it=False)
    assert data["_C_cuda"].startswith("built by nvcc for sm_80")
    assert ("GPU present" if torch.cuda.is_available() else "no GPU present") in data["_C_cuda"]
    assert data["_C_emu"].startswith("built")
    ok, why = fastconv.backends.registered()["cuda"].availability()
    assert ok == torch.cuda.is_available()
    text = fastconv.info.__module__ and __import__("fastconv.info", fromlist=["format_info"]).format_info(data)
    assert "fastconv._C_cuda: built by nvcc" in text and "fastconv._C_emu: built" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_choosing_cuda_without_a_gpu_names_the_reason():
    with pytest.raises(RuntimeError, match="fastconv backend 'cuda' is not available: .*no GPU present"):
        fastconv.set_backend("cuda")


def test_emulated_backend_is_never_chosen_automatically():
    x = torch.randn(1, 2, 6, 6)
    assert fastconv.backends.resolve(x.device).name == "cpu"
    assert "cuda_emu" not in fastconv.backends.AUTO_ORDER["cpu"]


def test_emulated_backend_serves_only_cpu_tensors():
    b = fastconv.backends.registered()["cuda_emu"]
    assert b.availability()[0], b.availability()[1]
    assert b.serves(torch.device("cpu")) and not b.serves(torch.device("cuda"))


def test_unsupported_dtype_names_the_backend():
    b = fastconv.backends.registered()["cuda_emu"]
    with pytest.raises(TypeError, match="fastconv cuda_emu backend: unsupported dtype torch.int32"):
        b.avg_pool2d_fwd(torch.zeros(1, 1, 4, 4, dtype=torch.int32), (2, 2), (2, 2), (0, 0), False, True, None)


def test_launcher_boundary_rechecks_shapes():
    """The pybind layer refuses a tensor whose sizes disagree with the shape descriptor (memory safety
    does not rest on Python alone)."""
    emu = cuda_backend._C_emu
    x = torch.randn(1, 2, 4, 4)
    y = torch.empty(1, 2, 2, 2)
    shape = (1, 2, 4, 4, 2, 2, 2, 2, 2, 0, 0, 1, 1)   # N C H W P Q kernel stride pad (no dilation)
    with pytest.raises(ValueError, match="pool shape must have 14 fields"):
        emu.avg_pool2d_fwd(shape, 0, cuda_backend._t4(x), cuda_backend._t4(y), True, 0, 0)
    shape = (1, 2, 4, 4, 3, 3, 2, 2, 2, 2, 0, 0, 1, 1)   # claims a 3x3 output; y is 2x2
    with pytest.raises(ValueError, match=r"fastconv._C_emu: output has size \(1, 2, 2, 2\)"):
        emu.avg_pool2d_fwd(shape, 0, cuda_backend._t4(x), cuda_backend._t4(y), True, 0, 0)
    with pytest.raises(ValueError, match="dtype code must be"):
        emu.avg_pool2d_fwd((1, 2, 4, 4, 2, 2, 2, 2, 2, 2, 0, 0, 1, 1), 7, cuda_backend._t4(x),
                           cuda_backend._t4(y), True, 0, 0)

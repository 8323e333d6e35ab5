"""Launch-side helpers shared by the Triton kernel files: modes, dtype flags, index width, tiling sizes.

Everything here runs on the host, once per launch, and turns tensors and torch settings into the
constexpr flags the kernels are specialized on (design.md, house style 3: one switch at the launcher).
"""
from __future__ import annotations

import os
from typing import Dict, Optional

import torch
import triton

# Dot operand blocks must be at least 16 along the reduction for 16-bit MMA (Triton's NVIDIA
# min_dot_size: K >= 16 for fp16/bf16, >= 8 for tf32, >= 4 for fp64); every conv config keeps all
# three block dims >= 16 so one set of configs is legal for every dtype.
MIN_DOT = 16

_SUPPORTED = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

# Launch options every kernel gets. FMA contraction stays on (a fused multiply-add rounds once: the
# sums of products of a convolution only gain), stated explicitly because Triton 3.9 warns when it is
# left to its default, which 3.10 turns off. Direct (non-GEMM) kernels: 4 warps.
LAUNCH = dict(enable_fp_fusion=True)
DIRECT = dict(num_warps=4, **LAUNCH)


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1).

    triton.jit reads this knob when a kernel is *decorated*; fastconv.triton re-imports its kernel
    modules when the mode changed since they were imported (see fastconv.triton.kernels())."""
    return bool(triton.knobs.runtime.interpret)


def autotune_enabled() -> bool:
    """Autotuning runs only on a real GPU, with FASTCONV_AUTOTUNE not set to 0, and not under
    torch.use_deterministic_algorithms(True): the tuned config (hence the summation order) could
    differ between processes, so determinism pins the heuristic config."""
    if interpreting():
        return False  # the interpreter has no timings worth tuning on, and is slow
    if os.environ.get("FASTCONV_AUTOTUNE", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return not torch.are_deterministic_algorithms_enabled()


def tf32_allowed() -> bool:
    """cuDNN's rule for float32 convolutions: TF32 when torch.backends.cudnn.allow_tf32 (the legacy
    flag; torch's newer torch.backends.cudnn.conv.fp32_precision when the two APIs were mixed)."""
    try:
        return bool(torch.backends.cudnn.allow_tf32)
    except RuntimeError:  # torch refuses to answer when legacy and new TF32 flags disagree
        conv = getattr(torch.backends.cudnn, "conv", None)
        return getattr(conv, "fp32_precision", "ieee") == "tf32"


def check_dtype(t: torch.Tensor, name: str) -> None:
    if t.dtype not in _SUPPORTED:
        raise TypeError(f"fastconv triton backend: {name} has dtype {t.dtype}; the Triton kernels take float32, "
                        f"float16, bfloat16 or float64")


def dtype_flags(x: torch.Tensor) -> Dict[str, object]:
    """The constexprs every tl.dot kernel takes for the dtype of x.

    ACC_F64: accumulate in float64 (float64 input); otherwise float32, also for fp16/bf16.
    PRECISION: tl.dot input_precision: 'tf32' only for float32 with TF32 allowed, else 'ieee'.
    DOT_F32: upcast the operand tiles to float32 before tl.dot. Triton 3.9's interpreter multiplies
    bfloat16 tiles as their raw uint16 bit patterns (np.matmul on the storage type), so under the
    interpreter bfloat16 tiles are widened first: exact, and the same products a bf16 MMA with fp32
    accumulation computes on the GPU, where the flag is off.
    """
    return dict(
        ACC_F64=x.dtype == torch.float64,
        PRECISION="tf32" if (x.dtype == torch.float32 and tf32_allowed()) else "ieee",
        DOT_F32=x.dtype == torch.bfloat16 and interpreting(),
    )


def acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def needs_int64(*tensors: Optional[torch.Tensor]) -> bool:
    """True when an element offset of one of the tensors may not fit in int32: the largest offset
    sum((size - 1) * |stride|) is what the kernels form (views and strided slices can reach further
    than numel)."""
    for t in tensors:
        if t is None or t.numel() == 0:
            continue
        reach = sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride()))
        if reach >= 2 ** 31 - 1 or t.numel() >= 2 ** 31 - 1:
            return True
    return False


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(1, int(n)))


def clamp_pow2(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, next_pow2(n)))


def bucket(n: int) -> int:
    """Autotuning key for a size that varies with the batch (P*Q, N*P*Q): its power-of-two bucket, so
    a new batch size or image size re-tunes only when the bucket changes."""
    return int(max(1, n)).bit_length()


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of the device (split-K heuristics); under the interpreter a small
    fixed number, so that the split-K paths run in the CPU tests too."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


# Under the interpreter each tl op costs about half a millisecond of Python whatever the block size, so
# the [pixels x channels] kernels take one tile as large as the problem there (tests can turn this off
# to run the GPU tile shapes in the interpreter).
INTERPRETER_BIG_TILES = True


def pixel_channel_tile(x: torch.Tensor, pixels: int, C: int, elems: int = 1024):
    """(BLOCK_PIX, BLOCK_C) of the direct kernels (depthwise, pooling) for a tile of `elems` elements
    (4 warps x 32 lanes x 8 for 1024: enough bytes in flight per SM to reach bandwidth). channels_last
    puts up to 64 channels on the contiguous axis; NCHW keeps the contiguous pixel axis long and blocks
    4 channels."""
    if interpreting() and INTERPRETER_BIG_TILES:
        bc = clamp_pow2(C, 2, 64)
        return max(2, min(next_pow2(pixels), 8192 // bc)), bc
    bc = clamp_pow2(C, 2, 64) if channels_last_key(x) else clamp_pow2(C, 2, 4)
    return max(2, min(next_pow2(pixels), elems // bc)), bc


def channels_last_key(t: torch.Tensor) -> int:
    """Autotuning key: 1 when channels are the innermost dimension (the best tile shape differs)."""
    return int(t.dim() == 4 and t.stride(1) == 1 and t.shape[1] > 1)


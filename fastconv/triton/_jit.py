"""@triton.jit helpers shared by the kernel files (inlined into the kernels that call them).

The kernels call only Triton builtins (tl.load, tl.dot, tl.full, tl.reduce, ...) and the helpers here,
never triton.language's own @jit library functions (tl.cdiv, tl.zeros, tl.sum): those are decorated once,
when triton.language is imported, so in a process that imported Triton before TRITON_INTERPRET=1 was
set they stay compiled-mode functions that the interpreter cannot call. Builtins are patched by the
interpreter at each launch, and these helpers are re-decorated with the kernels (fastconv.triton.kernels()).
"""
from __future__ import annotations

import triton
import triton.language as tl


# The interpreter recognizes this combine function by identity and reduces with np.sum; compiled, it
# is the plain a + b that tl.sum uses.
_sum_combine = tl.standard._sum_combine


@triton.jit
def cdiv(a, b):
    return (a + b - 1) // b


@triton.jit
def sum_axis(x, AXIS: tl.constexpr):
    """x summed along AXIS (tl.sum without its library wrapper, see above)."""
    return tl.reduce(x, AXIS, _sum_combine)


@triton.jit
def wide(v, IDX64: tl.constexpr):
    """Index in int64 when a tensor may reach past 2^31 elements, int32 otherwise (cheaper address math)."""
    if IDX64:
        v = v.to(tl.int64)
    return v


@triton.jit
def swizzle(t, tiles_m, tiles_n, GROUP_M: tl.constexpr):
    """Tile t of a tiles_m x tiles_n grid in grouped order: GROUP_M row tiles run against the same
    column tile back to back, so that column's operand is still in L2 when the next row tile needs it."""
    width = GROUP_M * tiles_n
    first_m = (t // width) * GROUP_M
    size_m = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (t % width) % size_m
    pid_n = (t % width) // size_m
    return pid_m, pid_n


@triton.jit
def mma(a, b, acc, DOT_F32: tl.constexpr, ACC_F64: tl.constexpr, PRECISION: tl.constexpr):
    """acc += a @ b on the tensor cores (FMA/DMMA for float64), accumulating in acc's dtype."""
    if DOT_F32:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if ACC_F64:
        acc = tl.dot(a, b, acc, input_precision="ieee", out_dtype=tl.float64)
    else:
        acc = tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=tl.float32)
    return acc

"""Triton adaptive pooling kernels: adaptive_avg_pool2d and adaptive_max_pool2d (torch's indices), forward
and backward, and global average pooling (output 1 x 1) as its own reduction.

Windows are torch's: output row p of P covers input rows [floor(p*H/P), ceil((p+1)*H/P)), columns
likewise; the largest window is at most ceil(H/P) + 1 rows (KH_MAX, computed by the launcher), so the
forward tiles [pixels x channels] loop over KH_MAX x KW_MAX taps with a mask, as pool2d.py's kernels
loop over their fixed window. Max: first maximum in row-major scan order, a NaN always replaces it
(`v > best || isnan(v)`), index h*W + w. Avg: the window's sum in float32 (float64 for float64) divided
by its area.

Global average pooling (P = Q = 1) reduces [BLOCK_HW x BLOCK_C] tiles of one image over its whole plane,
one program per (image, channel block): no window arithmetic, contiguous loads along the input's fastest
axis. Its backward writes dy / (H*W) everywhere.

Backward kernels gather, as pool2d.py's: input row h is covered by outputs p in
[floor(h*P/H), ceil((h+1)*P/H)), at most SPAN_H = ceil(P/H) + 1 of them; no atomics, deterministic.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _utils
from . import _common as cm
from ._jit import cdiv as _cdiv, sum_axis as _sum_axis, wide as _wide


@triton.jit
def _adaptive_fwd_kernel(
    x_ptr, y_ptr, i_ptr,
    C, H, W, P, Q, KH_MAX, KW_MAX,
    sx_n, sx_c, sx_h, sx_w,
    sy_n, sy_c, sy_p, sy_q,
    si_n, si_c, si_p, si_q,
    IS_MAX: tl.constexpr, IDX64: tl.constexpr, ACC_F64: tl.constexpr,
    BLOCK_PQ: tl.constexpr, BLOCK_C: tl.constexpr,
):
    PQ = P * Q
    tiles = _cdiv(PQ, BLOCK_PQ)
    pid = tl.program_id(0)
    n = pid // tiles
    rpq = (pid % tiles) * BLOCK_PQ + tl.arange(0, BLOCK_PQ)
    rc = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    pq_ok = rpq < PQ
    c_ok = rc < C
    rpq = tl.where(pq_ok, rpq, 0)
    rc = tl.where(c_ok, rc, 0)
    p = rpq // Q
    q = rpq % Q
    h0 = (p * H) // P
    h1 = ((p + 1) * H + P - 1) // P
    w0 = (q * W) // Q
    w1 = ((q + 1) * W + Q - 1) // Q
    x_base = x_ptr + _wide(n, IDX64) * sx_n + _wide(rc, IDX64)[None, :] * sx_c
    if ACC_F64:
        acc = tl.full((BLOCK_PQ, BLOCK_C), 0, tl.float64)
    else:
        acc = tl.full((BLOCK_PQ, BLOCK_C), 0, tl.float32)
    if IS_MAX:
        acc = acc - float("inf")
    arg = (h0.to(tl.int64) * W + w0)[:, None] + tl.full((BLOCK_PQ, BLOCK_C), 0, tl.int64)
    for i in range(0, KH_MAX):
        h = h0 + i
        h_ok = pq_ok & (h < h1)
        for j in range(0, KW_MAX):
            w = w0 + j
            ok = h_ok & (w < w1)
            hc = tl.where(ok, h, 0)
            wc = tl.where(ok, w, 0)
            v = tl.load(x_base + (_wide(hc, IDX64) * sx_h + _wide(wc, IDX64) * sx_w)[:, None],
                        mask=ok[:, None] & c_ok[None, :], other=0.0).to(acc.dtype)
            if IS_MAX:
                take = ok[:, None] & ((v > acc) | (v != v))
                acc = tl.where(take, v, acc)
                arg = tl.where(take, (hc.to(tl.int64) * W + wc)[:, None], arg)
            else:
                acc += v
    if not IS_MAX:
        acc = acc / ((h1 - h0) * (w1 - w0)).to(acc.dtype)[:, None]
    m2 = pq_ok[:, None] & c_ok[None, :]
    pq_y = (_wide(p, IDX64) * sy_p + _wide(q, IDX64) * sy_q)[:, None]
    tl.store(y_ptr + _wide(n, IDX64) * sy_n + pq_y + _wide(rc, IDX64)[None, :] * sy_c,
             acc.to(y_ptr.dtype.element_ty), mask=m2)
    if IS_MAX:
        pq_i = (_wide(p, IDX64) * si_p + _wide(q, IDX64) * si_q)[:, None]
        tl.store(i_ptr + _wide(n, IDX64) * si_n + pq_i + _wide(rc, IDX64)[None, :] * si_c, arg, mask=m2)


@triton.jit
def _global_avg_fwd_kernel(
    x_ptr, y_ptr, C, H, W,
    sx_n, sx_c, sx_h, sx_w, sy_n, sy_c,
    IDX64: tl.constexpr, ACC_F64: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr,
):
    n = tl.program_id(0)
    rc = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = rc < C
    rc = tl.where(c_ok, rc, 0)
    HW = H * W
    x_base = x_ptr + _wide(n, IDX64) * sx_n + _wide(rc, IDX64)[None, :] * sx_c
    if ACC_F64:
        acc = tl.full((BLOCK_HW, BLOCK_C), 0, tl.float64)
    else:
        acc = tl.full((BLOCK_HW, BLOCK_C), 0, tl.float32)
    for start in range(0, HW, BLOCK_HW):
        rhw = start + tl.arange(0, BLOCK_HW)
        ok = rhw < HW
        rhw = tl.where(ok, rhw, 0)
        off = _wide(rhw // W, IDX64) * sx_h + _wide(rhw % W, IDX64) * sx_w
        acc += tl.load(x_base + off[:, None], mask=ok[:, None] & c_ok[None, :], other=0.0).to(acc.dtype)
    total = _sum_axis(acc, 0) / HW
    tl.store(y_ptr + _wide(n, IDX64) * sy_n + _wide(rc, IDX64) * sy_c, total.to(y_ptr.dtype.element_ty), mask=c_ok)


@triton.jit
def _adaptive_bwd_kernel(
    dy_ptr, i_ptr, dx_ptr,
    C, H, W, P, Q, SPAN_H, SPAN_W,
    sdy_n, sdy_c, sdy_p, sdy_q,
    si_n, si_c, si_p, si_q,
    sdx_n, sdx_c, sdx_h, sdx_w,
    IS_MAX: tl.constexpr, IDX64: tl.constexpr, ACC_F64: tl.constexpr,
    BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # dx[h, w] = sum over the outputs (p, q) whose window holds (h, w) of dy[p, q] / area(p, q) (avg), or of
    # dy[p, q] where indices[p, q] == h*W + w (max). p runs over [floor(h*P/H), ceil((h+1)*P/H)).
    HW = H * W
    tiles = _cdiv(HW, BLOCK_HW)
    pid = tl.program_id(0)
    n = pid // tiles
    rhw = (pid % tiles) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    rc = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    hw_ok = rhw < HW
    c_ok = rc < C
    rhw = tl.where(hw_ok, rhw, 0)
    rc = tl.where(c_ok, rc, 0)
    h = rhw // W
    w = rhw % W
    p0 = (h * P) // H
    p1 = ((h + 1) * P + H - 1) // H
    q0 = (w * Q) // W
    q1 = ((w + 1) * Q + W - 1) // W
    target = (h.to(tl.int64) * W + w)[:, None]
    dy_base = dy_ptr + _wide(n, IDX64) * sdy_n + _wide(rc, IDX64)[None, :] * sdy_c
    i_base = i_ptr + _wide(n, IDX64) * si_n + _wide(rc, IDX64)[None, :] * si_c
    if ACC_F64:
        acc = tl.full((BLOCK_HW, BLOCK_C), 0, tl.float64)
    else:
        acc = tl.full((BLOCK_HW, BLOCK_C), 0, tl.float32)
    for a in range(0, SPAN_H):
        p = p0 + a
        p_ok = hw_ok & (p < p1)
        for b in range(0, SPAN_W):
            q = q0 + b
            ok = p_ok & (q < q1)
            pc = tl.where(ok, p, 0)
            qc = tl.where(ok, q, 0)
            m2 = ok[:, None] & c_ok[None, :]
            g = tl.load(dy_base + (_wide(pc, IDX64) * sdy_p + _wide(qc, IDX64) * sdy_q)[:, None], mask=m2,
                        other=0.0).to(acc.dtype)
            if IS_MAX:
                idx = tl.load(i_base + (_wide(pc, IDX64) * si_p + _wide(qc, IDX64) * si_q)[:, None], mask=m2,
                              other=-1)
                acc += tl.where(idx == target, g, 0.0)
            else:
                kh = ((pc + 1) * H + P - 1) // P - (pc * H) // P
                kw = ((qc + 1) * W + Q - 1) // Q - (qc * W) // Q
                acc += g / (kh * kw).to(acc.dtype)[:, None]
    dx_off = _wide(n, IDX64) * sdx_n + (_wide(h, IDX64) * sdx_h + _wide(w, IDX64) * sdx_w)[:, None] \
        + _wide(rc, IDX64)[None, :] * sdx_c
    tl.store(dx_ptr + dx_off, acc.to(dx_ptr.dtype.element_ty), mask=hw_ok[:, None] & c_ok[None, :])


# ----------------------------------------------------------------------------------------------------
# Launchers


def _window_max(size: int, out: int) -> int:
    """The largest adaptive window along an axis: ceil(size/out), plus one where windows straddle."""
    return max(((o + 1) * size + out - 1) // out - (o * size) // out for o in range(out))


def _span_max(size: int, out: int) -> int:
    """The most outputs whose windows hold one input position (the backward's candidate count)."""
    return max(((i + 1) * out + size - 1) // size - (i * out) // size for i in range(size))


def adaptive_fwd(x, output_size, is_max: bool):
    cm.check_dtype(x, "input")
    N, C, H, W = x.shape
    P, Q = output_size
    cl = _utils.strides_like_channels_last(x)
    y = _utils.empty_like_format((N, C, P, Q), x, cl)
    idx = _utils.empty_like_format((N, C, P, Q), x, cl, dtype=torch.int64) if is_max else None
    if y.numel() == 0:
        return (y, idx) if is_max else y
    f64 = x.dtype == torch.float64
    if not is_max and P == 1 and Q == 1:
        bhw, bc = cm.pixel_channel_tile(x, H * W, C)
        _global_avg_fwd_kernel[(N, triton.cdiv(C, bc))](
            x, y, C, H, W, *x.stride(), y.stride(0), y.stride(1), IDX64=cm.needs_int64(x, y), ACC_F64=f64,
            BLOCK_HW=bhw, BLOCK_C=bc, **cm.DIRECT)
        return y
    bpq, bc = cm.pixel_channel_tile(x, P * Q, C)
    i_t = idx if idx is not None else y
    _adaptive_fwd_kernel[(N * triton.cdiv(P * Q, bpq), triton.cdiv(C, bc))](
        x, y, i_t, C, H, W, P, Q, _window_max(H, P), _window_max(W, Q), *x.stride(), *y.stride(), *i_t.stride(),
        IS_MAX=is_max, IDX64=cm.needs_int64(x, y, idx), ACC_F64=f64, BLOCK_PQ=bpq, BLOCK_C=bc, **cm.DIRECT)
    return (y, idx) if is_max else y


def adaptive_bwd(dy, x, indices):
    """The input gradient of adaptive max (indices given) or avg (indices None) pooling."""
    cm.check_dtype(dy, "grad_output")
    dx = _utils.grad_input_like(x)
    if dx.numel() == 0:
        return dx
    if dy.numel() == 0:
        return dx.zero_()
    N, C, H, W = x.shape
    P, Q = dy.shape[2:]
    if indices is None and P == 1 and Q == 1:
        return dx.copy_((dy / (H * W)).expand_as(dx))  # global average: one broadcast write
    bhw, bc = cm.pixel_channel_tile(x, H * W, C)
    i_t = indices if indices is not None else dy
    _adaptive_bwd_kernel[(N * triton.cdiv(H * W, bhw), triton.cdiv(C, bc))](
        dy, i_t, dx, C, H, W, P, Q, _span_max(H, P), _span_max(W, Q), *dy.stride(), *i_t.stride(), *dx.stride(),
        IS_MAX=indices is not None, IDX64=cm.needs_int64(dy, indices, dx), ACC_F64=dy.dtype == torch.float64,
        BLOCK_HW=bhw, BLOCK_C=bc, **cm.DIRECT)
    return dx

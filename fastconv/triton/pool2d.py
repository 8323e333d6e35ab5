"""Triton pooling kernels: max_pool2d (with torch's indices) and avg_pool2d, forward and backward.

Tiles are [pixels x channels] of one image: channels_last tensors put the channel axis on the
contiguous dimension (BLOCK_C wide), NCHW tensors the pixel axis (BLOCK_C small); both are read and
written through their strides. Window bounds follow torch's pooling_output_shape / the CPU and CUDA
kernels exactly:
  max: the window is kernel taps at h = p*u - pad + i*d (i < kh) inside the input; the maximum is the
       first one in scan order, except that a NaN always replaces it (torch: `val > max || isnan(val)`, so
       the last NaN wins); the index is h*W + w in the input plane (int64), what max_unpool2d takes.
  avg: hstart = p*u - pad, hend = min(hstart + kh, H + pad); pool_size = (hend - hstart)(wend - wstart)
       counts the padding inside the padded extent; the sum runs over the clamped window [max(hstart, 0),
       min(hend, H)); the divisor is divisor_override, or pool_size (count_include_pad), or the clamped area.

Backward kernels gather instead of scatter: each program owns a tile of grad_input and visits the
outputs whose window can contain its pixels (at most ceil(((kh - 1)*d + 1) / u) rows per pixel), so no
atomics are needed and the result is deterministic; accumulation is float32 (float64 for float64).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _utils
from . import _common as cm
from ._jit import cdiv as _cdiv, wide as _wide


@triton.jit
def _max_pool2d_fwd_kernel(
    x_ptr, y_ptr, i_ptr,
    C, H, W, P, Q, KH, KW,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    sx_n, sx_c, sx_h, sx_w,
    sy_n, sy_c, sy_p, sy_q,
    si_n, si_c, si_p, si_q,
    WITH_INDICES: tl.constexpr, IDX64: tl.constexpr, ACC_F64: tl.constexpr,
    BLOCK_PQ: tl.constexpr, BLOCK_C: tl.constexpr,
):
    PQ = P * Q
    tiles = _cdiv(PQ, BLOCK_PQ)
    pid = tl.program_id(0)
    n = pid // tiles
    rpq = (pid % tiles) * BLOCK_PQ + tl.arange(0, BLOCK_PQ)  # [BPQ] output pixels of image n
    rc = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)  # [BC] channels
    pq_ok = rpq < PQ
    c_ok = rc < C
    rpq = tl.where(pq_ok, rpq, 0)
    rc = tl.where(c_ok, rc, 0)
    p = rpq // Q
    q = rpq % Q
    x_base = x_ptr + _wide(n, IDX64) * sx_n + _wide(rc, IDX64)[None, :] * sx_c  # [1, BC]
    # Compared in float32 (float64 for float64): exact for 16-bit inputs, and the interpreter compares
    # bfloat16 as raw uint16 bits (wrong for negatives).
    if ACC_F64:
        best = tl.full((BLOCK_PQ, BLOCK_C), 0, tl.float64)
    else:
        best = tl.full((BLOCK_PQ, BLOCK_C), 0, tl.float32)
    arg = tl.full((BLOCK_PQ, BLOCK_C), -1, tl.int64)  # -1: no valid tap seen yet
    for i in range(0, KH):
        h = p * stride_h - pad_h + i * dil_h
        h_ok = pq_ok & (h >= 0) & (h < H)
        for j in range(0, KW):
            w = q * stride_w - pad_w + j * dil_w
            ok = h_ok & (w >= 0) & (w < W)
            hc = tl.where(ok, h, 0)
            wc = tl.where(ok, w, 0)
            v = tl.load(x_base + (_wide(hc, IDX64) * sx_h + _wide(wc, IDX64) * sx_w)[:, None],
                        mask=ok[:, None] & c_ok[None, :], other=0.0).to(best.dtype)
            # the first valid tap starts the scan (torch starts at -inf with that tap's index)
            take = ok[:, None] & ((arg < 0) | (v > best) | (v != v))
            best = tl.where(take, v, best)
            arg = tl.where(take, (hc.to(tl.int64) * W + wc)[:, None], arg)
    m2 = pq_ok[:, None] & c_ok[None, :]
    pq_y = (_wide(p, IDX64) * sy_p + _wide(q, IDX64) * sy_q)[:, None]
    tl.store(y_ptr + _wide(n, IDX64) * sy_n + pq_y + _wide(rc, IDX64)[None, :] * sy_c,
             best.to(y_ptr.dtype.element_ty), mask=m2)
    if WITH_INDICES:
        pq_i = (_wide(p, IDX64) * si_p + _wide(q, IDX64) * si_q)[:, None]
        tl.store(i_ptr + _wide(n, IDX64) * si_n + pq_i + _wide(rc, IDX64)[None, :] * si_c, arg, mask=m2)


@triton.jit
def _max_pool2d_bwd_kernel(
    dy_ptr, i_ptr, dx_ptr,
    C, H, W, P, Q, KH, KW,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, SPAN_H, SPAN_W,
    sdy_n, sdy_c, sdy_p, sdy_q,
    si_n, si_c, si_p, si_q,
    sdx_n, sdx_c, sdx_h, sdx_w,
    IDX64: tl.constexpr, ACC_F64: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # dx[h, w] = sum of dy[p, q] over the outputs whose recorded index is h*W + w. Candidates: the rows
    # p with p*u - pad <= h <= p*u - pad + (kh-1)*d, i.e. p in [ceil((h + pad - (kh-1)*d)/u), (h + pad)/u],
    # at most SPAN_H = (kh-1)*d // u + 1 of them (same for columns).
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
    lo_h = h + pad_h - (KH - 1) * dil_h
    lo_w = w + pad_w - (KW - 1) * dil_w
    p0 = tl.where(lo_h > 0, (lo_h + stride_h - 1) // stride_h, 0)  # ceil of a non-negative numerator
    q0 = tl.where(lo_w > 0, (lo_w + stride_w - 1) // stride_w, 0)
    p1 = tl.minimum((h + pad_h) // stride_h, P - 1)
    q1 = tl.minimum((w + pad_w) // stride_w, Q - 1)
    target = (h.to(tl.int64) * W + w)[:, None]
    dy_base = dy_ptr + _wide(n, IDX64) * sdy_n + _wide(rc, IDX64)[None, :] * sdy_c
    i_base = i_ptr + _wide(n, IDX64) * si_n + _wide(rc, IDX64)[None, :] * si_c
    if ACC_F64:
        acc = tl.full((BLOCK_HW, BLOCK_C), 0, tl.float64)
    else:
        acc = tl.full((BLOCK_HW, BLOCK_C), 0, tl.float32)
    for a in range(0, SPAN_H):
        p = p0 + a
        p_ok = hw_ok & (p <= p1)
        for b in range(0, SPAN_W):
            q = q0 + b
            ok = p_ok & (q <= q1)
            pc = _wide(tl.where(ok, p, 0), IDX64)
            qc = _wide(tl.where(ok, q, 0), IDX64)
            m2 = ok[:, None] & c_ok[None, :]
            idx = tl.load(i_base + (pc * si_p + qc * si_q)[:, None], mask=m2, other=-1)
            g = tl.load(dy_base + (pc * sdy_p + qc * sdy_q)[:, None], mask=m2, other=0.0)
            acc += tl.where(idx == target, g.to(acc.dtype), 0.0)
    dx_off = _wide(n, IDX64) * sdx_n + (_wide(h, IDX64) * sdx_h + _wide(w, IDX64) * sdx_w)[:, None] \
        + _wide(rc, IDX64)[None, :] * sdx_c
    tl.store(dx_ptr + dx_off, acc.to(dx_ptr.dtype.element_ty), mask=hw_ok[:, None] & c_ok[None, :])


@triton.jit
def _avg_divisor(p, q, H, W, KH, KW, stride_h, stride_w, pad_h, pad_w, DIVISOR, COUNT_PAD: tl.constexpr):
    """torch's divide_factor of outputs (p, q) (int vectors): divisor_override, the padded window area
    (count_include_pad) or the area of the window clamped to the input."""
    hstart = p * stride_h - pad_h
    wstart = q * stride_w - pad_w
    hend = tl.minimum(hstart + KH, H + pad_h)
    wend = tl.minimum(wstart + KW, W + pad_w)
    pool_size = (hend - hstart) * (wend - wstart)
    hs = tl.maximum(hstart, 0)
    ws = tl.maximum(wstart, 0)
    he = tl.minimum(hend, H)
    we = tl.minimum(wend, W)
    if DIVISOR != 0:
        div = DIVISOR + 0 * p
    elif COUNT_PAD:
        div = pool_size
    else:
        div = (he - hs) * (we - ws)
    return div


@triton.jit
def _avg_pool2d_fwd_kernel(
    x_ptr, y_ptr,
    C, H, W, P, Q, KH, KW,
    stride_h, stride_w, pad_h, pad_w, DIVISOR,
    sx_n, sx_c, sx_h, sx_w,
    sy_n, sy_c, sy_p, sy_q,
    COUNT_PAD: tl.constexpr, IDX64: tl.constexpr, ACC_F64: tl.constexpr,
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
    x_base = x_ptr + _wide(n, IDX64) * sx_n + _wide(rc, IDX64)[None, :] * sx_c
    if ACC_F64:
        acc = tl.full((BLOCK_PQ, BLOCK_C), 0, tl.float64)
    else:
        acc = tl.full((BLOCK_PQ, BLOCK_C), 0, tl.float32)
    for i in range(0, KH):
        h = p * stride_h - pad_h + i
        h_ok = pq_ok & (h >= 0) & (h < H)
        for j in range(0, KW):
            w = q * stride_w - pad_w + j
            ok = h_ok & (w >= 0) & (w < W)
            off = _wide(tl.where(ok, h, 0), IDX64) * sx_h + _wide(tl.where(ok, w, 0), IDX64) * sx_w
            acc += tl.load(x_base + off[:, None], mask=ok[:, None] & c_ok[None, :], other=0.0).to(acc.dtype)
    div = _avg_divisor(p, q, H, W, KH, KW, stride_h, stride_w, pad_h, pad_w, DIVISOR, COUNT_PAD)
    out = acc / tl.where(div != 0, div, 1).to(acc.dtype)[:, None]
    y_off = _wide(n, IDX64) * sy_n + (_wide(p, IDX64) * sy_p + _wide(q, IDX64) * sy_q)[:, None] \
        + _wide(rc, IDX64)[None, :] * sy_c
    tl.store(y_ptr + y_off, out.to(y_ptr.dtype.element_ty), mask=pq_ok[:, None] & c_ok[None, :])


@triton.jit
def _avg_pool2d_bwd_kernel(
    dy_ptr, dx_ptr,
    C, H, W, P, Q, KH, KW,
    stride_h, stride_w, pad_h, pad_w, DIVISOR, SPAN_H, SPAN_W,
    sdy_n, sdy_c, sdy_p, sdy_q,
    sdx_n, sdx_c, sdx_h, sdx_w,
    COUNT_PAD: tl.constexpr, IDX64: tl.constexpr, ACC_F64: tl.constexpr,
    BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # dx[h, w] = sum of dy[p, q] / divisor(p, q) over the windows containing (h, w):
    # p in [ceil((h + pad - kh + 1)/u), (h + pad)/u], at most SPAN_H = (kh - 1) // u + 1 rows.
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
    lo_h = h + pad_h - KH + 1
    lo_w = w + pad_w - KW + 1
    p0 = tl.where(lo_h > 0, (lo_h + stride_h - 1) // stride_h, 0)
    q0 = tl.where(lo_w > 0, (lo_w + stride_w - 1) // stride_w, 0)
    p1 = tl.minimum((h + pad_h) // stride_h, P - 1)
    q1 = tl.minimum((w + pad_w) // stride_w, Q - 1)
    dy_base = dy_ptr + _wide(n, IDX64) * sdy_n + _wide(rc, IDX64)[None, :] * sdy_c
    if ACC_F64:
        acc = tl.full((BLOCK_HW, BLOCK_C), 0, tl.float64)
    else:
        acc = tl.full((BLOCK_HW, BLOCK_C), 0, tl.float32)
    for a in range(0, SPAN_H):
        p = p0 + a
        p_ok = hw_ok & (p <= p1)
        for b in range(0, SPAN_W):
            q = q0 + b
            ok = p_ok & (q <= q1)
            pc = tl.where(ok, p, 0)
            qc = tl.where(ok, q, 0)
            g = tl.load(dy_base + (_wide(pc, IDX64) * sdy_p + _wide(qc, IDX64) * sdy_q)[:, None],
                        mask=ok[:, None] & c_ok[None, :], other=0.0).to(acc.dtype)
            div = _avg_divisor(pc, qc, H, W, KH, KW, stride_h, stride_w, pad_h, pad_w, DIVISOR, COUNT_PAD)
            acc += g / tl.where(div != 0, div, 1).to(acc.dtype)[:, None]
    dx_off = _wide(n, IDX64) * sdx_n + (_wide(h, IDX64) * sdx_h + _wide(w, IDX64) * sdx_w)[:, None] \
        + _wide(rc, IDX64)[None, :] * sdx_c
    tl.store(dx_ptr + dx_off, acc.to(dx_ptr.dtype.element_ty), mask=hw_ok[:, None] & c_ok[None, :])


# ----------------------------------------------------------------------------------------------------
# Launchers

def max_pool2d_fwd(x, kernel, stride, padding, dilation, ceil_mode, with_indices):
    cm.check_dtype(x, "input")
    N, C, H, W = x.shape
    P, Q = _utils.pool_out_hw(x, kernel, stride, padding, dilation, ceil_mode)
    cl = _utils.strides_like_channels_last(x)
    y = _utils.empty_like_format((N, C, P, Q), x, cl)
    idx = _utils.empty_like_format((N, C, P, Q), x, cl, dtype=torch.int64) if with_indices else None
    if y.numel() == 0:
        return y, idx
    bpq, bc = cm.pixel_channel_tile(x, P * Q, C)
    i_t = idx if idx is not None else y
    _max_pool2d_fwd_kernel[(N * triton.cdiv(P * Q, bpq), triton.cdiv(C, bc))](
        x, y, i_t, C, H, W, P, Q, kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1],
        dilation[0], dilation[1], *x.stride(), *y.stride(), *i_t.stride(),
        WITH_INDICES=idx is not None, IDX64=cm.needs_int64(x, y, idx), ACC_F64=x.dtype == torch.float64,
        BLOCK_PQ=bpq, BLOCK_C=bc, **cm.DIRECT)
    return y, idx


def max_pool2d_bwd(dy, x, indices, kernel, stride, padding, dilation, ceil_mode):
    cm.check_dtype(dy, "grad_output")
    dx = _utils.grad_input_like(x)
    if dx.numel() == 0:
        return dx
    N, C, H, W = x.shape
    P, Q = dy.shape[2:]
    if dy.numel() == 0:
        return dx.zero_()
    bhw, bc = cm.pixel_channel_tile(x, H * W, C)
    span_h = (kernel[0] - 1) * dilation[0] // stride[0] + 1
    span_w = (kernel[1] - 1) * dilation[1] // stride[1] + 1
    _max_pool2d_bwd_kernel[(N * triton.cdiv(H * W, bhw), triton.cdiv(C, bc))](
        dy, indices, dx, C, H, W, P, Q, kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1],
        dilation[0], dilation[1], span_h, span_w, *dy.stride(), *indices.stride(), *dx.stride(),
        IDX64=cm.needs_int64(dy, indices, dx), ACC_F64=dy.dtype == torch.float64, BLOCK_HW=bhw, BLOCK_C=bc,
        **cm.DIRECT)
    return dx


def avg_pool2d_fwd(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
    cm.check_dtype(x, "input")
    N, C, H, W = x.shape
    P, Q = _utils.pool_out_hw(x, kernel, stride, padding, (1, 1), ceil_mode)
    y = _utils.empty_like_format((N, C, P, Q), x, _utils.strides_like_channels_last(x))
    if y.numel() == 0:
        return y
    bpq, bc = cm.pixel_channel_tile(x, P * Q, C)
    _avg_pool2d_fwd_kernel[(N * triton.cdiv(P * Q, bpq), triton.cdiv(C, bc))](
        x, y, C, H, W, P, Q, kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1],
        int(divisor_override or 0), *x.stride(), *y.stride(),
        COUNT_PAD=bool(count_include_pad), IDX64=cm.needs_int64(x, y), ACC_F64=x.dtype == torch.float64,
        BLOCK_PQ=bpq, BLOCK_C=bc, **cm.DIRECT)
    return y


def avg_pool2d_bwd(dy, x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
    cm.check_dtype(dy, "grad_output")
    dx = _utils.grad_input_like(x)
    if dx.numel() == 0:
        return dx
    N, C, H, W = x.shape
    P, Q = dy.shape[2:]
    if dy.numel() == 0:
        return dx.zero_()
    bhw, bc = cm.pixel_channel_tile(x, H * W, C)
    span_h = (kernel[0] - 1) // stride[0] + 1
    span_w = (kernel[1] - 1) // stride[1] + 1
    _avg_pool2d_bwd_kernel[(N * triton.cdiv(H * W, bhw), triton.cdiv(C, bc))](
        dy, dx, C, H, W, P, Q, kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1],
        int(divisor_override or 0), span_h, span_w, *dy.stride(), *dx.stride(),
        COUNT_PAD=bool(count_include_pad), IDX64=cm.needs_int64(dy, dx), ACC_F64=dy.dtype == torch.float64,
        BLOCK_HW=bhw, BLOCK_C=bc, **cm.DIRECT)
    return dx

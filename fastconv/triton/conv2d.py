"""Triton convolution kernels: implicit-GEMM forward, dgrad and wgrad, and depthwise kernels.

Letters as CUTLASS: input x[N, C, H, W], filter w[K, C/groups, R, S], output y[N, K, P, Q]; Cg = C/groups,
Kg = K/groups. Every tensor is read and written through its strides (NCHW, channels_last, sliced or
expanded views alike); nothing is copied into a fixed layout. Accumulation is float32 (float64 for
float64 tensors); offsets are int32 unless a tensor can reach past 2^31 elements (IDX64).

Implicit GEMM: the convolution is a GEMM whose operands are gathered on the fly from x, w and dy,
never materialized (no im2col buffer):

  forward  y[m, k]   = sum_{c,r,s} x[n, c, p*u + r*d - pad, q*v + s*e - pad] * w[k, c, r, s]
           GEMM  M = N*P*Q (rows m = (n, p, q)), N = Kg, reduction = Cg*R*S, per group.
  dgrad    dx[n, c, h, w] = sum_{k,r,s : h = p*u - pad + r*d, w = q*v - pad + s*e} dy'[n, k, p, q] * w[k, c, r, s]
           GEMM  M = N*H*W, N = Cg, reduction = Kg*R*S: for a given (h, r), p = (h + pad - r*d) / u must be an
           integer in [0, P). With stride u > 1 only the taps r with (h + pad - r*d) = 0 (mod u) contribute,
           and which ones depends only on h mod u: the input pixels are split into u*v phases (h mod u,
           w mod v), one grid slice each, and a program skips whole taps whose phase does not match instead of
           multiplying zeros (a 1/(u*v) saving for strided layers).
  wgrad    dw[k, c, r, s] = sum_{n,p,q} dy'[n, k, p, q] * x[n, c, p*u - pad + r*d, q*v - pad + s*e]
           GEMM  M = Kg, N = Cg*R*S, reduction = N*P*Q: the reduction is long (a batch of images) and the
           output small, so it is split over SPLIT_K programs writing float32 partials, summed afterwards in
           a fixed order (deterministic, no atomics); the bias gradient db[k] = sum_{n,p,q} dy'[n, k, p, q]
           is the row sum of the same dy' tiles, accumulated alongside.
  with dy' = dy * (relu_y > 0) for the fused conv2d_relu (the mask is applied as dy is loaded).

Reduction order. With Cg >= 16 the reduction runs tap-major: for each (r, s) the spatial offsets and
padding masks are computed once per row and the channels are walked in BLOCK_K slices (cheap inner loop).
With tiny Cg (RGB input: C = 3) a BLOCK_K >= 16 slice of channels would be mostly padding (13/16 of the
tensor-core work wasted at C = 3), so the reduction index runs over the flattened (c, r, s) instead
(FLAT_CRS): a 7x7 RGB stem has Cg*R*S = 147, 5 slices of 32 with 8 % padding.

Depthwise (groups == C == K): as a GEMM each group is a 1-column matrix product that leaves the tensor
cores 15/16 idle, so it has direct kernels: a [pixels x channels] tile of FMAs per filter tap.

Masked-off lanes: every gather index is clamped to a valid coordinate before the address is formed
(the load is masked too), so no out-of-range address is ever computed.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .. import _utils
from . import _common as cm
from ._jit import cdiv as _cdiv, mma as _mma, sum_axis as _sum_axis, swizzle as _swizzle, wide as _wide


# ----------------------------------------------------------------------------------------------------
# Forward


# Sizes that vary from layer to layer and batch to batch are not specialized (no ==1 / %16 variants):
# one binary per config serves every spatial size and batch, so autotuning a network compiles each
# config a few times, not once per layer. Channel counts, filter size, stride and the tensor strides
# stay specialized: they decide vector widths and unit-stride addressing.
_NO_SPEC = ["N", "H", "W", "P", "Q", "pad_h", "pad_w", "dil_h", "dil_w", "X_CL"]


@triton.jit(do_not_specialize=_NO_SPEC + ["PQ_BUCKET"])
def _conv2d_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    N, H, W, P, Q, R, S, Cg, Kg, GROUPS,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    sx_n, sx_c, sx_h, sx_w,
    sw_k, sw_c, sw_r, sw_s,
    sy_n, sy_k, sy_p, sy_q,
    PQ_BUCKET, X_CL,  # autotuning key only
    HAS_BIAS: tl.constexpr, FUSE_RELU: tl.constexpr, FLAT_CRS: tl.constexpr, IDX64: tl.constexpr,
    ACC_F64: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EVEN_C: tl.constexpr, EVEN_K: tl.constexpr,
):
    PQ = P * Q
    M = N * PQ
    tiles_m = _cdiv(M, BLOCK_M)
    tiles_n = _cdiv(Kg, BLOCK_N)
    pid = tl.program_id(0)
    g = pid // (tiles_m * tiles_n)
    pid_m, pid_n = _swizzle(pid % (tiles_m * tiles_n), tiles_m, tiles_n, GROUP_M)

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM] output pixels m = (n, p, q)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN] output channels of group g
    m_ok = rm < M
    n_ok = rn < Kg
    rm = tl.where(m_ok, rm, 0)
    n = rm // PQ
    p = (rm % PQ) // Q
    q = rm % Q
    h0 = p * stride_h - pad_h  # [BM] top-left input coordinate of the window
    w0 = q * stride_w - pad_w
    if EVEN_K:  # no partial N tile: k stays an affine range (vector stores, contiguous bias load)
        k = g * Kg + rn
    else:
        k = g * Kg + tl.where(n_ok, rn, 0)
    x_row = x_ptr + _wide(n, IDX64) * sx_n + _wide(g * Cg, IDX64) * sx_c  # [BM]
    w_col = w_ptr + _wide(k, IDX64) * sw_k  # [BN]

    if ACC_F64:
        acc = tl.full((BLOCK_M, BLOCK_N), 0, tl.float64)
    else:
        acc = tl.full((BLOCK_M, BLOCK_N), 0, tl.float32)

    if FLAT_CRS:
        RS = R * S
        CRS = Cg * RS
        for k0 in range(0, CRS, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)  # [BK] reduction index (c, r, s)
            k_ok = rk < CRS
            rk = tl.where(k_ok, rk, 0)
            c = rk // RS
            r = (rk % RS) // S
            s = rk % S
            h = h0[:, None] + (r * dil_h)[None, :]  # [BM, BK]
            w = w0[:, None] + (s * dil_w)[None, :]
            a_ok = m_ok[:, None] & k_ok[None, :] & (h >= 0) & (h < H) & (w >= 0) & (w < W)
            h = tl.where(a_ok, h, 0)
            w = tl.where(a_ok, w, 0)
            a = tl.load(x_row[:, None] + _wide(c, IDX64)[None, :] * sx_c + _wide(h, IDX64) * sx_h
                        + _wide(w, IDX64) * sx_w, mask=a_ok, other=0.0)
            b = tl.load(w_col[None, :] + (c * sw_c + r * sw_r + s * sw_s)[:, None],
                        mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            acc = _mma(a, b, acc, DOT_F32, ACC_F64, PRECISION)
    else:
        for rs in range(0, R * S):
            r = rs // S
            s = rs % S
            h = h0 + r * dil_h  # [BM]
            w = w0 + s * dil_w
            pix_ok = m_ok & (h >= 0) & (h < H) & (w >= 0) & (w < W)
            h = tl.where(pix_ok, h, 0)
            w = tl.where(pix_ok, w, 0)
            a_row = x_row + _wide(h, IDX64) * sx_h + _wide(w, IDX64) * sx_w  # [BM]
            b_col = w_col + r * sw_r + s * sw_s  # [BN]
            for c0 in range(0, Cg, BLOCK_K):
                rc = c0 + tl.arange(0, BLOCK_K)  # [BK] input channels of group g
                if EVEN_C:
                    # Cg % BLOCK_K == 0: every lane valid, rc an affine range, so with channels_last the
                    # slices are contiguous 16-byte vectors that the pipeliner streams with cp.async
                    # (a where() clamp here would hide that contiguity from Triton's axis analysis).
                    a_ok = pix_ok[:, None]
                    b_ok = n_ok[None, :]
                else:
                    c_ok = rc < Cg
                    rc = tl.where(c_ok, rc, 0)
                    a_ok = pix_ok[:, None] & c_ok[None, :]
                    b_ok = c_ok[:, None] & n_ok[None, :]
                a = tl.load(a_row[:, None] + _wide(rc, IDX64)[None, :] * sx_c, mask=a_ok, other=0.0)
                b = tl.load(b_col[None, :] + (rc * sw_c)[:, None], mask=b_ok, other=0.0)
                acc = _mma(a, b, acc, DOT_F32, ACC_F64, PRECISION)

    # Epilogue: bias and ReLU on the accumulator, one rounding to the output dtype.
    if HAS_BIAS:
        bias = tl.load(b_ptr + k, mask=n_ok, other=0.0)
        acc = acc + bias.to(acc.dtype)[None, :]
    if FUSE_RELU:
        acc = tl.maximum(acc, 0.0)
    y_off = (_wide(n, IDX64) * sy_n + _wide(p, IDX64) * sy_p + _wide(q, IDX64) * sy_q)[:, None] \
        + _wide(k, IDX64)[None, :] * sy_k
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


# ----------------------------------------------------------------------------------------------------
# dgrad


@triton.jit(do_not_specialize=_NO_SPEC + ["HW_BUCKET"])
def _conv2d_dgrad_kernel(
    dy_ptr, ry_ptr, w_ptr, dx_ptr,
    N, H, W, P, Q, R, S, Cg, Kg, GROUPS,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    sdy_n, sdy_k, sdy_p, sdy_q,
    sry_n, sry_k, sry_p, sry_q,
    sw_k, sw_c, sw_r, sw_s,
    sdx_n, sdx_c, sdx_h, sdx_w,
    HW_BUCKET, X_CL,  # autotuning key only
    RELU_MASK: tl.constexpr, IDX64: tl.constexpr,
    ACC_F64: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr, EVEN_C: tl.constexpr,
):
    # Grid: (phase, group, m tile, n tile) flattened on axis 0 (axis 1 would cap u*v at 65535). Phase
    # (ph, pw) = (h mod u, w mod v) of this program's input pixels; rows enumerate (n, ih, iw) with
    # h = ph + ih*u, w = pw + iw*v.
    Hp = _cdiv(H, stride_h)
    Wp = _cdiv(W, stride_w)
    M = N * Hp * Wp
    tiles_m = _cdiv(M, BLOCK_M)
    tiles_n = _cdiv(Cg, BLOCK_N)
    pid = tl.program_id(0)
    phase = pid // (tiles_m * tiles_n * GROUPS)
    ph = phase // stride_w
    pw = phase % stride_w
    g = (pid // (tiles_m * tiles_n)) % GROUPS
    pid_m, pid_n = _swizzle(pid % (tiles_m * tiles_n), tiles_m, tiles_n, GROUP_M)

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM] input pixels of this phase
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN] input channels of group g
    m_ok = rm < M
    rm = tl.where(m_ok, rm, 0)
    n = rm // (Hp * Wp)
    ih = (rm % (Hp * Wp)) // Wp
    iw = rm % Wp
    h = ph + ih * stride_h
    w = pw + iw * stride_w
    m_ok = m_ok & (h < H) & (w < W)  # the last phases have fewer rows
    n_ok = rn < Cg
    if not EVEN_C:  # a partial channel tile: clamp (EVEN_C keeps rn affine, see the forward kernel)
        rn = tl.where(n_ok, rn, 0)
    c = g * Cg + rn
    dy_row = dy_ptr + _wide(n, IDX64) * sdy_n
    ry_row = ry_ptr + _wide(n, IDX64) * sry_n
    w_col = w_ptr + rn * sw_c  # [BN]; the group offset is on k

    if ACC_F64:
        acc = tl.full((BLOCK_M, BLOCK_N), 0, tl.float64)
    else:
        acc = tl.full((BLOCK_M, BLOCK_N), 0, tl.float32)

    for r in range(0, R):
        dh = ph + pad_h - r * dil_h  # h + pad - r*d = ih*u + dh: divisible by u iff dh is
        if dh % stride_h == 0:
            p = ih + dh // stride_h  # [BM]; exact division (dh may be negative)
            p_ok = (p >= 0) & (p < P)
            for s in range(0, S):
                dw_ = pw + pad_w - s * dil_w
                if dw_ % stride_w == 0:
                    q = iw + dw_ // stride_w
                    pix_ok = m_ok & p_ok & (q >= 0) & (q < Q)
                    pc = tl.where(pix_ok, p, 0)
                    qc = tl.where(pix_ok, q, 0)
                    dy_pix = dy_row + _wide(pc, IDX64) * sdy_p + _wide(qc, IDX64) * sdy_q  # [BM]
                    ry_pix = ry_row + _wide(pc, IDX64) * sry_p + _wide(qc, IDX64) * sry_q
                    w_tap = w_col + r * sw_r + s * sw_s
                    for k0 in range(0, Kg, BLOCK_K):
                        rk = k0 + tl.arange(0, BLOCK_K)  # [BK] output channels of group g
                        if EVEN_K:
                            a_ok = pix_ok[:, None]
                            b_ok = n_ok[None, :]
                        else:
                            k_ok = rk < Kg
                            rk = tl.where(k_ok, rk, 0)
                            a_ok = pix_ok[:, None] & k_ok[None, :]
                            b_ok = k_ok[:, None] & n_ok[None, :]
                        kk = g * Kg + rk
                        a = tl.load(dy_pix[:, None] + _wide(kk, IDX64)[None, :] * sdy_k, mask=a_ok, other=0.0)
                        if RELU_MASK:
                            yv = tl.load(ry_pix[:, None] + _wide(kk, IDX64)[None, :] * sry_k, mask=a_ok, other=0.0)
                            a = tl.where(yv.to(acc.dtype) > 0, a, 0.0)  # as float: the interpreter compares bf16 bits
                        b = tl.load(w_tap[None, :] + _wide(kk, IDX64)[:, None] * sw_k, mask=b_ok, other=0.0)
                        acc = _mma(a, b, acc, DOT_F32, ACC_F64, PRECISION)

    hc = tl.where(m_ok, h, 0)
    wc = tl.where(m_ok, w, 0)
    dx_off = (_wide(n, IDX64) * sdx_n + _wide(hc, IDX64) * sdx_h + _wide(wc, IDX64) * sdx_w)[:, None] \
        + _wide(c, IDX64)[None, :] * sdx_c
    tl.store(dx_ptr + dx_off, acc.to(dx_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


# ----------------------------------------------------------------------------------------------------
# wgrad (+ bias gradient)


@triton.jit(do_not_specialize=_NO_SPEC + ["NPQ_BUCKET", "CHUNK"])
def _conv2d_wgrad_kernel(
    dy_ptr, ry_ptr, x_ptr, dw_ptr, db_ptr,
    N, H, W, P, Q, R, S, Cg, Kg, GROUPS, CHUNK,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    sdy_n, sdy_k, sdy_p, sdy_q,
    sry_n, sry_k, sry_p, sry_q,
    sx_n, sx_c, sx_h, sx_w,
    sdw_split, sdw_k, sdw_c, sdw_r, sdw_s,
    sdb_split,
    NPQ_BUCKET, X_CL,  # autotuning key only
    COMPUTE_DW: tl.constexpr, COMPUTE_DB: tl.constexpr, RELU_MASK: tl.constexpr, FLAT_CRS: tl.constexpr,
    IDX64: tl.constexpr, ACC_F64: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr, EVEN_C: tl.constexpr,
):
    # Grid: axis 0 = (group, tap, m tile, n tile), axis 1 = split of the N*P*Q reduction.
    # FLAT_CRS: GEMM-N runs over the flattened (c, r, s), one tap slot; otherwise GEMM-N = Cg and each
    # program handles one tap (r, s). Without COMPUTE_DW (bias gradient alone) there is one n tile, one tap.
    PQ = P * Q
    NPQ = N * PQ
    RS = R * S
    if COMPUTE_DW:
        if FLAT_CRS:
            n_extent = Cg * RS
            taps = 1
        else:
            n_extent = Cg
            taps = RS
    else:
        n_extent = 1
        taps = 1
    tiles_m = _cdiv(Kg, BLOCK_M)
    tiles_n = _cdiv(n_extent, BLOCK_N)
    pid = tl.program_id(0)
    g = pid // (taps * tiles_m * tiles_n)
    tap = (pid // (tiles_m * tiles_n)) % taps
    pid_m, pid_n = _swizzle(pid % (tiles_m * tiles_n), tiles_m, tiles_n, GROUP_M)
    split = tl.program_id(1)

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM] output channels of group g
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN] (c, r, s) or c
    m_ok = rm < Kg
    n_ok = rn < n_extent
    if not EVEN_K:  # partial tiles: clamp; full ones keep the affine ranges (see the forward kernel)
        rm = tl.where(m_ok, rm, 0)
    if not EVEN_C:
        rn = tl.where(n_ok, rn, 0)
    k = g * Kg + rm
    if FLAT_CRS:
        c = rn // RS
        r = (rn % RS) // S
        s = rn % S
    else:
        c = rn
        r = tap // S + 0 * rn
        s = tap % S + 0 * rn
    x_col = x_ptr + _wide(g * Cg + c, IDX64) * sx_c  # [BN]

    if ACC_F64:
        acc = tl.full((BLOCK_M, BLOCK_N), 0, tl.float64)
        db_acc = tl.full((BLOCK_M,), 0, tl.float64)
    else:
        acc = tl.full((BLOCK_M, BLOCK_N), 0, tl.float32)
        db_acc = tl.full((BLOCK_M,), 0, tl.float32)

    lo = split * CHUNK
    hi = tl.minimum(lo + CHUNK, NPQ)
    for j0 in range(lo, hi, BLOCK_K):
        rj = j0 + tl.arange(0, BLOCK_K)  # [BK] reduction index (n, p, q)
        j_ok = rj < hi
        rj = tl.where(j_ok, rj, 0)
        n = rj // PQ
        p = (rj % PQ) // Q
        q = rj % Q
        a_ok = m_ok[:, None] & j_ok[None, :]
        dy_off = _wide(k, IDX64)[:, None] * sdy_k \
            + (_wide(n, IDX64) * sdy_n + _wide(p, IDX64) * sdy_p + _wide(q, IDX64) * sdy_q)[None, :]
        a = tl.load(dy_ptr + dy_off, mask=a_ok, other=0.0)  # [BM, BK] = dy^T tile
        if RELU_MASK:
            ry_off = _wide(k, IDX64)[:, None] * sry_k \
                + (_wide(n, IDX64) * sry_n + _wide(p, IDX64) * sry_p + _wide(q, IDX64) * sry_q)[None, :]
            yv = tl.load(ry_ptr + ry_off, mask=a_ok, other=0.0)
            a = tl.where(yv.to(acc.dtype) > 0, a, 0.0)  # as float: the interpreter compares bf16 bits
        if COMPUTE_DB:
            db_acc += _sum_axis(a.to(db_acc.dtype), 1)
        if COMPUTE_DW:
            h = (p * stride_h - pad_h)[:, None] + (r * dil_h)[None, :]  # [BK, BN]
            w = (q * stride_w - pad_w)[:, None] + (s * dil_w)[None, :]
            b_ok = j_ok[:, None] & n_ok[None, :] & (h >= 0) & (h < H) & (w >= 0) & (w < W)
            h = tl.where(b_ok, h, 0)
            w = tl.where(b_ok, w, 0)
            b = tl.load(x_col[None, :] + _wide(n, IDX64)[:, None] * sx_n + _wide(h, IDX64) * sx_h
                        + _wide(w, IDX64) * sx_w, mask=b_ok, other=0.0)
            acc = _mma(a, b, acc, DOT_F32, ACC_F64, PRECISION)

    if COMPUTE_DW:
        dw_off = split * sdw_split + (k * sdw_k)[:, None] + (c * sdw_c + r * sdw_r + s * sdw_s)[None, :]
        tl.store(dw_ptr + dw_off, acc.to(dw_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])
    if COMPUTE_DB:
        # one program per (group, m tile) writes the row sums: the first n tile of the first tap
        first = (rm * 0 + pid_n + tap) == 0  # as a vector: the interpreter rejects scalar & vector masks
        tl.store(db_ptr + split * sdb_split + k, db_acc.to(db_ptr.dtype.element_ty), mask=m_ok & first)


# ----------------------------------------------------------------------------------------------------
# Depthwise (groups == C == K): direct kernels on [pixels x channels] tiles


@triton.jit
def _dwconv2d_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    N, C, H, W, P, Q, R, S,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    sx_n, sx_c, sx_h, sx_w,
    sw_k, sw_r, sw_s,
    sy_n, sy_k, sy_p, sy_q,
    HAS_BIAS: tl.constexpr, FUSE_RELU: tl.constexpr, IDX64: tl.constexpr, ACC_F64: tl.constexpr,
    BLOCK_PQ: tl.constexpr, BLOCK_C: tl.constexpr,
):
    PQ = P * Q
    tiles_pq = _cdiv(PQ, BLOCK_PQ)
    pid = tl.program_id(0)
    n = pid // tiles_pq
    rpq = (pid % tiles_pq) * BLOCK_PQ + tl.arange(0, BLOCK_PQ)  # [BPQ] output pixels of image n
    rc = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)  # [BC] channels
    pq_ok = rpq < PQ
    c_ok = rc < C
    rpq = tl.where(pq_ok, rpq, 0)
    rc = tl.where(c_ok, rc, 0)
    p = rpq // Q
    q = rpq % Q
    x_base = x_ptr + _wide(n, IDX64) * sx_n + _wide(rc, IDX64)[None, :] * sx_c  # [1, BC]
    if ACC_F64:
        acc = tl.full((BLOCK_PQ, BLOCK_C), 0, tl.float64)
    else:
        acc = tl.full((BLOCK_PQ, BLOCK_C), 0, tl.float32)
    for r in range(0, R):
        h = p * stride_h - pad_h + r * dil_h
        h_ok = pq_ok & (h >= 0) & (h < H)
        for s in range(0, S):
            w = q * stride_w - pad_w + s * dil_w
            ok = h_ok & (w >= 0) & (w < W)
            off = _wide(tl.where(ok, h, 0), IDX64) * sx_h + _wide(tl.where(ok, w, 0), IDX64) * sx_w
            xv = tl.load(x_base + off[:, None], mask=ok[:, None] & c_ok[None, :], other=0.0)
            wv = tl.load(w_ptr + rc * sw_k + r * sw_r + s * sw_s, mask=c_ok, other=0.0)
            acc += xv.to(acc.dtype) * wv.to(acc.dtype)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + rc, mask=c_ok, other=0.0).to(acc.dtype)[None, :]
    if FUSE_RELU:
        acc = tl.maximum(acc, 0.0)
    y_off = _wide(n, IDX64) * sy_n + (_wide(p, IDX64) * sy_p + _wide(q, IDX64) * sy_q)[:, None] \
        + _wide(rc, IDX64)[None, :] * sy_k
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=pq_ok[:, None] & c_ok[None, :])


@triton.jit
def _dwconv2d_dgrad_kernel(
    dy_ptr, ry_ptr, w_ptr, dx_ptr,
    N, C, H, W, P, Q, R, S,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    sdy_n, sdy_k, sdy_p, sdy_q,
    sry_n, sry_k, sry_p, sry_q,
    sw_k, sw_r, sw_s,
    sdx_n, sdx_c, sdx_h, sdx_w,
    RELU_MASK: tl.constexpr, IDX64: tl.constexpr, ACC_F64: tl.constexpr,
    BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # dx[n, c, h, w] = sum_{r,s} dy'[n, c, p, q] w[c, r, s] over the taps where p = (h + pad - r*d)/u and
    # q are integers inside the output.
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
    dy_base = dy_ptr + _wide(n, IDX64) * sdy_n + _wide(rc, IDX64)[None, :] * sdy_k
    ry_base = ry_ptr + _wide(n, IDX64) * sry_n + _wide(rc, IDX64)[None, :] * sry_k
    if ACC_F64:
        acc = tl.full((BLOCK_HW, BLOCK_C), 0, tl.float64)
    else:
        acc = tl.full((BLOCK_HW, BLOCK_C), 0, tl.float32)
    for r in range(0, R):
        ph = h + pad_h - r * dil_h  # [BHW]
        phc = tl.where(ph >= 0, ph, 0)  # non-negative before / and %: C and Python disagree below 0
        p = phc // stride_h
        p_ok = hw_ok & (ph >= 0) & (phc % stride_h == 0) & (p < P)
        for s in range(0, S):
            pw = w + pad_w - s * dil_w
            pwc = tl.where(pw >= 0, pw, 0)
            q = pwc // stride_w
            ok = p_ok & (pw >= 0) & (pwc % stride_w == 0) & (q < Q)
            off = _wide(tl.where(ok, p, 0), IDX64) * sdy_p + _wide(tl.where(ok, q, 0), IDX64) * sdy_q
            m2 = ok[:, None] & c_ok[None, :]
            g = tl.load(dy_base + off[:, None], mask=m2, other=0.0)
            if RELU_MASK:
                roff = _wide(tl.where(ok, p, 0), IDX64) * sry_p + _wide(tl.where(ok, q, 0), IDX64) * sry_q
                yv = tl.load(ry_base + roff[:, None], mask=m2, other=0.0)
                g = tl.where(yv.to(acc.dtype) > 0, g, 0.0)
            wv = tl.load(w_ptr + rc * sw_k + r * sw_r + s * sw_s, mask=c_ok, other=0.0)
            acc += g.to(acc.dtype) * wv.to(acc.dtype)[None, :]
    dx_off = _wide(n, IDX64) * sdx_n + (_wide(h, IDX64) * sdx_h + _wide(w, IDX64) * sdx_w)[:, None] \
        + _wide(rc, IDX64)[None, :] * sdx_c
    tl.store(dx_ptr + dx_off, acc.to(dx_ptr.dtype.element_ty), mask=hw_ok[:, None] & c_ok[None, :])


@triton.jit
def _dwconv2d_wgrad_kernel(
    dy_ptr, ry_ptr, x_ptr, dw_ptr, db_ptr,
    N, C, H, W, P, Q, R, S, CHUNK,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    sdy_n, sdy_k, sdy_p, sdy_q,
    sry_n, sry_k, sry_p, sry_q,
    sx_n, sx_c, sx_h, sx_w,
    sdw_split, sdb_split,
    COMPUTE_DW: tl.constexpr, COMPUTE_DB: tl.constexpr, RELU_MASK: tl.constexpr, IDX64: tl.constexpr,
    ACC_F64: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # dw[c, r, s] = sum_{n,p,q} dy'[n, c, p, q] x[n, c, p*u - pad + r*d, q*v - pad + s*e]: one program per
    # (channel block, tap, split of N*P*Q); partials go to dw_ptr[split, c, r*S + s] (float32 workspace).
    rc = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    tap = tl.program_id(1)
    split = tl.program_id(2)
    r = tap // S
    s = tap % S
    c_ok = rc < C
    rc = tl.where(c_ok, rc, 0)
    PQ = P * Q
    NPQ = N * PQ
    if ACC_F64:
        acc = tl.full((BLOCK_J, BLOCK_C), 0, tl.float64)
        dacc = tl.full((BLOCK_J, BLOCK_C), 0, tl.float64)
    else:
        acc = tl.full((BLOCK_J, BLOCK_C), 0, tl.float32)
        dacc = tl.full((BLOCK_J, BLOCK_C), 0, tl.float32)
    lo = split * CHUNK
    hi = tl.minimum(lo + CHUNK, NPQ)
    for j0 in range(lo, hi, BLOCK_J):
        rj = j0 + tl.arange(0, BLOCK_J)
        j_ok = rj < hi
        rj = tl.where(j_ok, rj, 0)
        n = rj // PQ
        p = (rj % PQ) // Q
        q = rj % Q
        m2 = j_ok[:, None] & c_ok[None, :]
        dy_off = (_wide(n, IDX64) * sdy_n + _wide(p, IDX64) * sdy_p + _wide(q, IDX64) * sdy_q)[:, None] \
            + _wide(rc, IDX64)[None, :] * sdy_k
        g = tl.load(dy_ptr + dy_off, mask=m2, other=0.0).to(acc.dtype)
        if RELU_MASK:
            ry_off = (_wide(n, IDX64) * sry_n + _wide(p, IDX64) * sry_p + _wide(q, IDX64) * sry_q)[:, None] \
                + _wide(rc, IDX64)[None, :] * sry_k
            yv = tl.load(ry_ptr + ry_off, mask=m2, other=0.0)
            g = tl.where(yv.to(acc.dtype) > 0, g, 0.0)
        if COMPUTE_DB:
            dacc += g
        if COMPUTE_DW:
            h = p * stride_h - pad_h + r * dil_h
            w = q * stride_w - pad_w + s * dil_w
            ok = j_ok & (h >= 0) & (h < H) & (w >= 0) & (w < W)
            x_off = (_wide(n, IDX64) * sx_n + _wide(tl.where(ok, h, 0), IDX64) * sx_h
                     + _wide(tl.where(ok, w, 0), IDX64) * sx_w)[:, None] + _wide(rc, IDX64)[None, :] * sx_c
            xv = tl.load(x_ptr + x_off, mask=ok[:, None] & c_ok[None, :], other=0.0)
            acc += g * xv.to(acc.dtype)
    if COMPUTE_DW:
        tl.store(dw_ptr + split * sdw_split + rc * (R * S) + tap, _sum_axis(acc, 0), mask=c_ok)
    if COMPUTE_DB:
        tl.store(db_ptr + split * sdb_split + rc, _sum_axis(dacc, 0), mask=c_ok & ((rc * 0 + tap) == 0))


# ----------------------------------------------------------------------------------------------------
# Tuning: configs, pruning, heuristic config

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages). Six tensor-core tiles, from 64x64 to 128x128 with
# 32/64-deep K slices: the big tiles for ResNet-50's wide layers (K >= 128, N*P*Q >= 25k), the narrow
# ones for K = 64 layers and small late-stage P*Q, where 128x128 tiles would not fill the SMs. Few on
# purpose: a new layer geometry compiles and times each surviving config once (~2 s of compile each).
_GEMM_TILES = [
    (128, 128, 32, 8, 3),
    (128, 128, 64, 8, 3),
    (128, 64, 32, 4, 4),
    (64, 128, 32, 4, 4),
    (64, 64, 32, 4, 4),
    (128, 32, 32, 4, 4),
]
_SMEM_BUDGET = 160 * 1024  # shared memory one CTA may use: A100's 164 KiB minus a margin (H100: 227 KiB)


# FASTCONV_TRITON_TUNE=small (bench/gpu_check.sh, a GPU run under a time budget): three of the six tiles,
# one wide, one narrow along N, one small, so a layer geometry costs half the compile and timing.
_SMALL_TILES = [(128, 128, 32, 8, 3), (128, 64, 32, 4, 4), (64, 64, 32, 4, 4)]


def _configs():
    small = os.environ.get("FASTCONV_TRITON_TUNE", "").strip().lower() == "small"
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=nw, num_stages=ns)
            for bm, bn, bk, nw, ns in (_SMALL_TILES if small else _GEMM_TILES)]


def _prune(m_extent: str, n_extent: str, k_extent: str):
    """Drops configs that cannot help this geometry: tiles wider than the GEMM's extent along M or N
    (rounded up to a power of two), K slices deeper than the reduction, pipelines that overflow shared
    memory. m/n/k_extent name functions of the kernel's arguments giving the GEMM sizes (batch excluded
    where noted)."""

    def prune(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        mx, nx, kx = _EXTENTS[m_extent](args), _EXTENTS[n_extent](args), _EXTENTS[k_extent](args)
        elt = args["x_ptr" if "x_ptr" in args else "dy_ptr"].element_size()
        keep = []
        for c in configs:
            bm, bn, bk = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]
            if bm > max(64, cm.next_pow2(mx)) or bn > max(32, cm.next_pow2(nx)) \
                    or bk > max(32, cm.next_pow2(kx)):
                continue
            if (bm + bn) * bk * elt * max(1, c.num_stages) > _SMEM_BUDGET:
                continue
            keep.append(c)
        return keep or [min(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])]

    return prune


def _fwd_k(a):
    return a["Cg"] * a["R"] * a["S"] if a["FLAT_CRS"] else a["Cg"]


_EXTENTS = {
    "fwd_m": lambda a: 1 << a["PQ_BUCKET"],  # P*Q: one image's rows (the batch only adds more tiles)
    "fwd_n": lambda a: a["Kg"],
    "fwd_k": _fwd_k,
    "dgrad_m": lambda a: 1 << a["HW_BUCKET"],
    "dgrad_n": lambda a: a["Cg"],
    "dgrad_k": lambda a: a["Kg"],
    "wgrad_m": lambda a: a["Kg"],
    "wgrad_n": lambda a: a["Cg"] * a["R"] * a["S"] if a["FLAT_CRS"] else a["Cg"],
    "wgrad_k": lambda a: 1 << a["NPQ_BUCKET"],
}

_FWD_KEY = ["Cg", "Kg", "R", "S", "GROUPS", "stride_h", "stride_w", "dil_h", "dil_w", "PQ_BUCKET", "X_CL"]
_DGRAD_KEY = ["Cg", "Kg", "R", "S", "GROUPS", "stride_h", "stride_w", "dil_h", "dil_w", "HW_BUCKET", "X_CL"]
_WGRAD_KEY = ["Cg", "Kg", "R", "S", "GROUPS", "stride_h", "stride_w", "dil_h", "dil_w", "NPQ_BUCKET", "X_CL"]

# EVEN_*: the tile divides that GEMM dimension, so its index range needs no clamp (decided per config,
# after the autotuner or the heuristic picked the block sizes).
_conv2d_fwd = triton.heuristics({
    "EVEN_C": lambda a: not a["FLAT_CRS"] and a["Cg"] % a["BLOCK_K"] == 0,
    "EVEN_K": lambda a: a["Kg"] % a["BLOCK_N"] == 0,
})(_conv2d_fwd_kernel)
_conv2d_dgrad = triton.heuristics({
    "EVEN_K": lambda a: a["Kg"] % a["BLOCK_K"] == 0,
    "EVEN_C": lambda a: a["Cg"] % a["BLOCK_N"] == 0,
})(_conv2d_dgrad_kernel)
_conv2d_wgrad = triton.heuristics({
    "EVEN_K": lambda a: a["Kg"] % a["BLOCK_M"] == 0,
    "EVEN_C": lambda a: a["COMPUTE_DW"] and not a["FLAT_CRS"] and a["Cg"] % a["BLOCK_N"] == 0,
})(_conv2d_wgrad_kernel)

_conv2d_fwd_tuned = triton.autotune(_configs(), key=_FWD_KEY,
                                    prune_configs_by={"early_config_prune": _prune("fwd_m", "fwd_n", "fwd_k")}
                                    )(_conv2d_fwd)
_conv2d_dgrad_tuned = triton.autotune(_configs(), key=_DGRAD_KEY,
                                      prune_configs_by={"early_config_prune": _prune("dgrad_m", "dgrad_n",
                                                                                     "dgrad_k")}
                                      )(_conv2d_dgrad)
_conv2d_wgrad_tuned = triton.autotune(_configs(), key=_WGRAD_KEY,
                                      prune_configs_by={"early_config_prune": _prune("wgrad_m", "wgrad_n",
                                                                                     "wgrad_k")}
                                      )(_conv2d_wgrad)


def _heuristic(m: int, n: int, k: int, dtype: torch.dtype) -> dict:
    """The config used without autotuning (FASTCONV_AUTOTUNE=0, the interpreter, deterministic mode):
    the widest tile the GEMM fills, 32-deep K slices (16 for float64, whose tiles are twice as big)."""
    bm = 128 if m >= 128 else 64
    bn = cm.clamp_pow2(n, 32, 128)
    bk = cm.MIN_DOT if (dtype == torch.float64 or k <= cm.MIN_DOT) else 32
    warps = 8 if bm * bn >= 128 * 128 else 4
    return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, num_warps=warps,
                num_stages=2 if dtype == torch.float64 else 3)


def _launch(tuned, plain, grid, args, flags, heuristic):
    """Runs the autotuned kernel, or the plain one with the heuristic config."""
    if cm.autotune_enabled():
        tuned[grid](*args, **flags, **cm.LAUNCH)
    else:
        plain[grid(heuristic)](*args, **flags, **heuristic, **cm.LAUNCH)


# ----------------------------------------------------------------------------------------------------
# Launchers (no autograd): tensors are 4-d and validated by fastconv.functional


def _is_depthwise(x: torch.Tensor, w: torch.Tensor, groups: int) -> bool:
    return groups > 1 and groups == x.shape[1] == w.shape[0]


def _flat_crs(Cg: int) -> bool:
    return Cg < cm.MIN_DOT


def _relu_args(relu_y: Optional[torch.Tensor], dy: torch.Tensor):
    """(pointer tensor, strides) of the ReLU output; dy stands in when there is no mask (never read)."""
    t = relu_y if relu_y is not None else dy
    return t, t.stride()


def conv2d_fwd(x, w, bias, stride, padding, dilation, groups, relu):
    cm.check_dtype(x, "input")
    N, C, H, W = x.shape
    K, Cg, R, S = w.shape
    P, Q = _utils.conv_out_hw(x, w, stride, padding, dilation)
    y = _utils.empty_like_format((N, K, P, Q), x, _utils.conv_output_channels_last(x, w))
    if y.numel() == 0:
        return y
    if x.numel() == 0 or w.numel() == 0:  # empty reduction: the output is the bias alone
        y.zero_()
        if bias is not None:
            y += bias.view(1, -1, 1, 1)
        return y.clamp_(min=0) if relu else y
    idx64 = cm.needs_int64(x, w, y)
    b = bias if bias is not None else y
    geometry = (stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1])
    if _is_depthwise(x, w, groups):
        bpq, bc = cm.pixel_channel_tile(x, P * Q, C)
        grid = (N * triton.cdiv(P * Q, bpq), triton.cdiv(C, bc))
        _dwconv2d_fwd_kernel[grid](
            x, w, b, y, N, C, H, W, P, Q, R, S, *geometry,
            *x.stride(), w.stride(0), w.stride(2), w.stride(3), *y.stride(),
            HAS_BIAS=bias is not None, FUSE_RELU=bool(relu), IDX64=idx64, ACC_F64=x.dtype == torch.float64,
            BLOCK_PQ=bpq, BLOCK_C=bc, **cm.DIRECT)
        return y
    Kg = K // groups
    flat = _flat_crs(Cg)
    M = N * P * Q
    args = (x, w, b, y, N, H, W, P, Q, R, S, Cg, Kg, groups, *geometry, *x.stride(), *w.stride(), *y.stride(),
            cm.bucket(P * Q), cm.channels_last_key(x))
    flags = dict(HAS_BIAS=bias is not None, FUSE_RELU=bool(relu), FLAT_CRS=flat, IDX64=idx64, **cm.dtype_flags(x))

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(Kg, meta["BLOCK_N"]) * groups,)

    _launch(_conv2d_fwd_tuned, _conv2d_fwd, grid, args, flags,
            _heuristic(M, Kg, Cg * R * S if flat else Cg, x.dtype))
    return y


def conv2d_dgrad(dy, x, w, relu_y, stride, padding, dilation, groups):
    cm.check_dtype(dy, "grad_output")
    dx = _utils.grad_input_like(x)
    if dx.numel() == 0:
        return dx
    if dy.numel() == 0 or w.numel() == 0:
        return dx.zero_()
    N, C, H, W = x.shape
    K, Cg, R, S = w.shape
    P, Q = dy.shape[2:]
    ry, ry_stride = _relu_args(relu_y, dy)
    idx64 = cm.needs_int64(dy, ry, w, dx)
    geometry = (stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1])
    if _is_depthwise(x, w, groups):
        bhw, bc = cm.pixel_channel_tile(x, H * W, C)
        grid = (N * triton.cdiv(H * W, bhw), triton.cdiv(C, bc))
        _dwconv2d_dgrad_kernel[grid](
            dy, ry, w, dx, N, C, H, W, P, Q, R, S, *geometry, *dy.stride(), *ry_stride,
            w.stride(0), w.stride(2), w.stride(3), *dx.stride(),
            RELU_MASK=relu_y is not None, IDX64=idx64, ACC_F64=dy.dtype == torch.float64,
            BLOCK_HW=bhw, BLOCK_C=bc, **cm.DIRECT)
        return dx
    Kg = K // groups
    u, v = stride
    M = N * triton.cdiv(H, u) * triton.cdiv(W, v)  # rows of one phase
    args = (dy, ry, w, dx, N, H, W, P, Q, R, S, Cg, Kg, groups, *geometry, *dy.stride(), *ry_stride,
            *w.stride(), *dx.stride(), cm.bucket(H * W), cm.channels_last_key(x))
    flags = dict(RELU_MASK=relu_y is not None, IDX64=idx64, **cm.dtype_flags(dy))

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(Cg, meta["BLOCK_N"]) * groups * u * v,)

    _launch(_conv2d_dgrad_tuned, _conv2d_dgrad, grid, args, flags, _heuristic(M, Cg, Kg, dy.dtype))
    return dx


def _split_k(tiles: int, npq: int, device: torch.device) -> int:
    """Splits of the N*P*Q reduction for wgrad: enough programs for ~2 waves over the SMs, but each
    split keeps at least 8 K slices of 64 so the partial sums stay a small share of the traffic."""
    want = triton.cdiv(2 * cm.num_sms(device), max(1, tiles))
    return max(1, min(want, npq // 512, 64))


def conv2d_wgrad(dy, x, w, relu_y, stride, padding, dilation, groups, need_weight, need_bias
                 ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    cm.check_dtype(dy, "grad_output")
    dw = torch.empty_like(w, memory_format=_utils.memory_format_of(w)) if need_weight else None
    db = torch.empty(w.shape[0], dtype=dy.dtype, device=dy.device) if need_bias else None
    if dw is None and db is None:
        return None, None
    if x.numel() == 0 or dy.numel() == 0 or w.numel() == 0:
        return (dw.zero_() if dw is not None else None), (db.zero_() if db is not None else None)
    N, C, H, W = x.shape
    K, Cg, R, S = w.shape
    P, Q = dy.shape[2:]
    NPQ = N * P * Q
    ry, ry_stride = _relu_args(relu_y, dy)
    idx64 = cm.needs_int64(dy, ry, x)
    geometry = (stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1])
    acc_t = cm.acc_dtype(dy)
    if _is_depthwise(x, w, groups):
        bj, bc = cm.pixel_channel_tile(x, NPQ, C, 2048)  # 2x deeper: a long reduction, two accumulators
        taps = R * S if need_weight else 1
        split = _split_k(triton.cdiv(C, bc) * taps, NPQ, dy.device)
        chunk = triton.cdiv(NPQ, split)
        ws_w = torch.empty((split, C, R * S), dtype=acc_t, device=dy.device) if need_weight else None
        ws_b = torch.empty((split, C), dtype=acc_t, device=dy.device) if need_bias else None
        _dwconv2d_wgrad_kernel[(triton.cdiv(C, bc), taps, split)](
            dy, ry, x, ws_w if ws_w is not None else dy, ws_b if ws_b is not None else dy,
            N, C, H, W, P, Q, R, S, chunk, *geometry, *dy.stride(), *ry_stride, *x.stride(),
            C * R * S, C,
            COMPUTE_DW=need_weight, COMPUTE_DB=need_bias, RELU_MASK=relu_y is not None, IDX64=idx64,
            ACC_F64=dy.dtype == torch.float64, BLOCK_J=bj, BLOCK_C=bc, **cm.DIRECT)
        if dw is not None:
            dw.copy_(ws_w.sum(0).view(C, 1, R, S))
        if db is not None:
            db.copy_(ws_b.sum(0))
        return dw, db

    Kg = K // groups
    flat = _flat_crs(Cg)
    heur = _heuristic(Kg, Cg * R * S if flat else Cg, NPQ, dy.dtype)
    taps = 1 if (flat or not need_weight) else R * S
    n_extent = (Cg * R * S if flat else Cg) if need_weight else 1
    tiles = triton.cdiv(Kg, heur["BLOCK_M"]) * triton.cdiv(n_extent, heur["BLOCK_N"]) * taps * groups
    split = _split_k(tiles, NPQ, dy.device)
    chunk = triton.cdiv(NPQ, split)
    # One split writes straight into dw/db (in their dtype and layout); several write float32 partials
    # [split, K, Cg, R, S] / [split, K] that are summed in a fixed order below.
    if split == 1:
        ws_w, ws_b = dw, db
        w_strides = (0, *dw.stride()) if dw is not None else (0, 0, 0, 0, 0)
    else:
        ws_w = torch.empty((split, K, Cg, R, S), dtype=acc_t, device=dy.device) if need_weight else None
        ws_b = torch.empty((split, K), dtype=acc_t, device=dy.device) if need_bias else None
        w_strides = ws_w.stride() if ws_w is not None else (0, 0, 0, 0, 0)
    b_split = ws_b.stride(0) if (ws_b is not None and split > 1) else 0
    args = (dy, ry, x, ws_w if ws_w is not None else dy, ws_b if ws_b is not None else dy,
            N, H, W, P, Q, R, S, Cg, Kg, groups, chunk, *geometry, *dy.stride(), *ry_stride, *x.stride(),
            *w_strides, b_split, cm.bucket(NPQ), cm.channels_last_key(x))
    flags = dict(COMPUTE_DW=need_weight, COMPUTE_DB=need_bias, RELU_MASK=relu_y is not None, FLAT_CRS=flat,
                 IDX64=idx64, **cm.dtype_flags(dy))

    def grid(meta):
        return (triton.cdiv(Kg, meta["BLOCK_M"]) * triton.cdiv(n_extent, meta["BLOCK_N"]) * taps * groups, split)

    if need_weight:
        _launch(_conv2d_wgrad_tuned, _conv2d_wgrad, grid, args, flags, heur)
    else:  # bias gradient alone: a plain reduction, nothing to tune
        _conv2d_wgrad[grid(heur)](*args, **flags, **heur, **cm.LAUNCH)
    if split > 1:
        if dw is not None:
            dw.copy_(ws_w.sum(0))
        if db is not None:
            db.copy_(ws_b.sum(0))
    return dw, db

// max_pool2d forward (values and optional int64 indices) and backward (a gather), any dtype, NCHW or
// NHWC thread mapping (pool2d_common.cuh), strided tensors.
//
// Forward, one thread per output (n, c, p, q): the window's taps h = p*sH - pH + i*dH (i < kH), likewise
// w, clipped to the input, scanned row-major from -inf; a tap is taken when `v > best || v != v`, so
// ties keep the first maximum and NaN propagates (the last NaN wins), exactly as torch's CPU and CUDA
// kernels. The index is h * W + w within the (n, c) plane; before any tap it is that of the first
// in-bounds tap, so an all -inf window reports its first tap, as torch does. Comparisons run in the
// accumulator type: fp16/bf16 -> fp32 is exact, so the result (and the index) equals torch's bit for bit.
//
// Backward, one thread per input element (n, c, h, w): dx = sum of dy[p, q] over the windows whose
// index equals h * W + w. The candidate windows are those whose span [p*sH - pH, p*sH - pH + (kH-1)*dH]
// contains h: p in [p0, p1) with p0 = ceil((h + pH - (kH-1)*dH) / sH), p1 = min((h + pH) / sH + 1, P)
// (torch's CUDA p_start / p_end). Summing in (p, q) order in fp32 (fp64) makes the result
// deterministic, with no atomics and no zero-fill pass, and equal to torch's (its CPU scatter adds in
// the same order). One known difference from torch's CPU backward: a window lying entirely in the
// padding (dilation + ceil_mode on tiny inputs) gets torch's index of a position outside its span, which
// torch's CPU scatter writes to (even out of the plane) and this gather, like torch's CUDA one, ignores.
//
// Why this shape: pooling is memory-bound (a 3x3 window does 9 compares per output against >= 4 bytes
// read per input and 4 + 8 bytes written per output), so the kernels only need coalesced access and
// cheap index math. Overlapping windows re-read inputs from L1/L2, not DRAM; per output the DRAM
// traffic is ~ sizeof(T) * sH * sW read + sizeof(T) (+ 8 with indices) written. The gather reads the
// indices of at most ceil(kH/sH) * ceil(kW/sW) windows per input element (8 bytes each; on average
// (kH/sH) * (kW/sW): 1 for the usual 2x2/2, 2.25 for 3x3/2) and dy only where the index matches.
#pragma once

#include "pool2d_common.cuh"

namespace fc {

template <class T, bool kChannelsLast, bool kIndices>
__global__ void
max_pool2d_fwd_kernel(const T* __restrict__ x, Tensor4 xt, T* __restrict__ y, Tensor4 yt,
                      long long* __restrict__ indices, Tensor4 it, PoolGeom g) {
  using A = typename Acc<T>::type;
  PoolCoord o;  // (n, c, p, q)
  if (!pool_thread_coord<kChannelsLast>(g.N, g.C, g.P, g.Q, o)) return;
  const int hs = o.h * g.sh - g.ph, ws = o.w * g.sw - g.pw;       // window origin, may be in the padding
  const int he = min(hs + (g.kh - 1) * g.dh + 1, g.H);           // exclusive ends, clipped
  const int we = min(ws + (g.kw - 1) * g.dw + 1, g.W);
  const int h0 = pool_first_inside(hs, g.dh), w0 = pool_first_inside(ws, g.dw);
  const T* plane = x + o.n * xt.sn + o.c * xt.sc;
  A best = NegInf<A>::get();
  index_t best_at = static_cast<index_t>(h0) * g.W + w0;
  for (int h = h0; h < he; h += g.dh) {
    const T* row = plane + h * xt.sh;
    for (int w = w0; w < we; w += g.dw) {
      const A v = to_acc(row[w * xt.sw]);
      if (v > best || v != v) {  // v != v: NaN (no fast-math here), the max whatever follows
        best = v;
        best_at = static_cast<index_t>(h) * g.W + w;
      }
    }
  }
  y[offset(yt, o.n, o.c, o.h, o.w)] = from_acc<T>(best);
  if (kIndices) indices[offset(it, o.n, o.c, o.h, o.w)] = best_at;
}

template <class T, bool kChannelsLast>
__global__ void
max_pool2d_bwd_kernel(const T* __restrict__ dy, Tensor4 dyt, const long long* __restrict__ indices, Tensor4 it,
                      T* __restrict__ dx, Tensor4 dxt, PoolGeom g) {
  using A = typename Acc<T>::type;
  PoolCoord e;  // (n, c, h, w)
  if (!pool_thread_coord<kChannelsLast>(g.N, g.C, g.H, g.W, e)) return;
  const int hp = e.h + g.ph, wp = e.w + g.pw;                    // in padded coordinates
  const int span_h = (g.kh - 1) * g.dh + 1, span_w = (g.kw - 1) * g.dw + 1;
  const int p0 = hp < span_h ? 0 : (hp - span_h) / g.sh + 1, p1 = min(hp / g.sh + 1, g.P);
  const int q0 = wp < span_w ? 0 : (wp - span_w) / g.sw + 1, q1 = min(wp / g.sw + 1, g.Q);
  const index_t me = static_cast<index_t>(e.h) * g.W + e.w;
  const index_t nc_i = e.n * it.sn + e.c * it.sc;
  const index_t nc_g = e.n * dyt.sn + e.c * dyt.sc;
  A grad = A(0);
  for (int p = p0; p < p1; ++p) {
    for (int q = q0; q < q1; ++q) {
      if (indices[nc_i + p * it.sh + q * it.sw] == me) grad += to_acc(dy[nc_g + p * dyt.sh + q * dyt.sw]);
    }
  }
  dx[offset(dxt, e.n, e.c, e.h, e.w)] = from_acc<T>(grad);
}

}  // namespace fc

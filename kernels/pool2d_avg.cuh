// avg_pool2d forward and backward (a gather), any dtype, NCHW or NHWC thread mapping
// (pool2d_common.cuh), strided tensors; count_include_pad, divisor_override and ceil_mode as torch.
//
// The window of output (p, q) and its divisor, as torch's CPU and CUDA kernels:
//   hs = p*sH - pH, he = min(hs + kH, H + pH)   (ceil_mode's last windows stop at the padding's end)
//   pool_size = (he - hs) * (we - ws)           (counts padding, not what lies beyond it)
//   clip [hs, he) x [ws, we) to the input
//   divisor = divisor_override if > 0, else pool_size if count_include_pad, else the clipped area.
// Forward, one thread per output (n, c, p, q): sum of the clipped window row-major from 0 in fp32
// (fp64 for fp64), divided (not multiplied by a reciprocal) by the divisor, rounded once; an empty
// clipped window (a ceil_mode window starting in the right padding) gives 0, as torch.
// Backward, one thread per input element (n, c, h, w): dx = sum of dy[p, q] / divisor(p, q) over the
// windows containing (h, w): p in [p0, p1) with p0 = ceil((h + pH - kH + 1) / sH),
// p1 = min((h + pH) / sH + 1, P) (torch's CUDA bounds), summed in (p, q) order in fp32 (fp64):
// deterministic, no atomics, no zero-fill pass.
//
// Why this shape: memory-bound like max pooling (kH*kW adds per output against >= 4 bytes per input
// read and 4 per output written); overlapping windows re-read from L1/L2, so DRAM traffic per output
// is ~ sizeof(T) * (sH * sW + 1) forward, and the gather reads at most ceil(kH/sH) * ceil(kW/sW) dy
// values per input element (on average (kH/sH) * (kW/sW)). The divisor is recomputed per window (a few
// integer ops) rather than loaded.
#pragma once

#include "pool2d_common.cuh"

namespace fc {

// One axis of the window of output o: [lo, hi) clipped to the input, and the axis' factor of the
// divisor (pool_size and the clipped area are both products of one factor per axis).
struct AvgSpan {
  int lo, hi, factor;
};

__device__ __forceinline__ AvgSpan avg_span(int o, int k, int stride, int pad, int size, bool count_include_pad) {
  const int start = o * stride - pad, end = min(start + k, size + pad);
  AvgSpan r;
  r.lo = max(start, 0);
  r.hi = min(end, size);
  r.factor = count_include_pad ? end - start : r.hi - r.lo;
  return r;
}

template <class T, bool kChannelsLast>
__global__ void
avg_pool2d_fwd_kernel(const T* __restrict__ x, Tensor4 xt, T* __restrict__ y, Tensor4 yt, PoolGeom g,
                      bool count_include_pad, int divisor_override) {
  using A = typename Acc<T>::type;
  PoolCoord o;  // (n, c, p, q)
  if (!pool_thread_coord<kChannelsLast>(g.N, g.C, g.P, g.Q, o)) return;
  const AvgSpan sh = avg_span(o.h, g.kh, g.sh, g.ph, g.H, count_include_pad);
  const AvgSpan sw = avg_span(o.w, g.kw, g.sw, g.pw, g.W, count_include_pad);
  A out = A(0);
  if (sh.lo < sh.hi && sw.lo < sw.hi) {
    const T* plane = x + o.n * xt.sn + o.c * xt.sc;
    A sum = A(0);
    for (int h = sh.lo; h < sh.hi; ++h) {
      const T* row = plane + h * xt.sh;
      for (int w = sw.lo; w < sw.hi; ++w) sum += to_acc(row[w * xt.sw]);
    }
    out = sum / static_cast<A>(divisor_override > 0 ? divisor_override : sh.factor * sw.factor);
  }
  y[offset(yt, o.n, o.c, o.h, o.w)] = from_acc<T>(out);
}

template <class T, bool kChannelsLast>
__global__ void
avg_pool2d_bwd_kernel(const T* __restrict__ dy, Tensor4 dyt, T* __restrict__ dx, Tensor4 dxt, PoolGeom g,
                      bool count_include_pad, int divisor_override) {
  using A = typename Acc<T>::type;
  PoolCoord e;  // (n, c, h, w)
  if (!pool_thread_coord<kChannelsLast>(g.N, g.C, g.H, g.W, e)) return;
  const int hp = e.h + g.ph, wp = e.w + g.pw;                      // in padded coordinates
  const int p0 = hp < g.kh ? 0 : (hp - g.kh) / g.sh + 1, p1 = min(hp / g.sh + 1, g.P);
  const int q0 = wp < g.kw ? 0 : (wp - g.kw) / g.sw + 1, q1 = min(wp / g.sw + 1, g.Q);
  const T* plane = dy + e.n * dyt.sn + e.c * dyt.sc;
  A grad = A(0);
  for (int p = p0; p < p1; ++p) {
    const T* row = plane + p * dyt.sh;
    // Every window here contains (h, w): its clipped extent is never empty, its divisor never 0.
    const int fh = avg_span(p, g.kh, g.sh, g.ph, g.H, count_include_pad).factor;
    // ceil(kW / sW) windows at most (1-3 usually): rolled, this kernel takes 39-52 registers, against
    // 56-66 for nothing unrolled 4x (the compiler's choice).
#pragma unroll 1
    for (int q = q0; q < q1; ++q) {
      const int fw = avg_span(q, g.kw, g.sw, g.pw, g.W, count_include_pad).factor;
      const int divisor = divisor_override > 0 ? divisor_override : fh * fw;
      grad += to_acc(row[q * dyt.sw]) / static_cast<A>(divisor);
    }
  }
  dx[offset(dxt, e.n, e.c, e.h, e.w)] = from_acc<T>(grad);
}

}  // namespace fc

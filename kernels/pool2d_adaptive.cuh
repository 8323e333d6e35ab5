// adaptive_avg_pool2d and adaptive_max_pool2d forward and backward (gathers), any dtype, NCHW or NHWC
// thread mapping (pool2d_common.cuh), strided tensors; global average pooling (output 1 x 1 of NCHW
// planes) as a warp-per-plane reduction.
//
// Windows as torch's: output p of P covers input rows [floor(p*H/P), ceil((p+1)*H/P)) (adaptive_start /
// adaptive_end), columns likewise; never empty, overlapping by a row where P does not divide H.
// Forward, one thread per output (n, c, p, q), like pool2d_avg.cuh / pool2d_max.cuh:
//   avg: the window's sum row-major from 0 in fp32 (fp64 for fp64), divided by its area, rounded once;
//   max: scanned row-major from -inf with the first tap's index; a tap is taken when `v > best || v != v`
//        (ties keep the first maximum, NaN propagates), index h * W + w in the plane: torch's.
// Backward, one thread per input element (n, c, h, w): input row h lies in the windows of outputs
// p in [floor(h*P/H), ceil((h+1)*P/H)) (the same formula with H and P swapped, as torch's CUDA
// backward), likewise q; dx = sum of dy/area (avg) or of dy where the index is h * W + w (max), in
// (p, q) order: deterministic, no atomics, no zero-fill pass.
// Global average (P = Q = 1, NCHW-mapped input): one warp per (n, c) plane, lanes stride the plane's
// elements (coalesced along w), a shuffle tree sums the lanes; the elementwise forward would give one
// thread a whole plane, read uncoalesced. A channels_last input keeps the elementwise forward: there
// consecutive threads are consecutive channels, so each row of the window loop is one coalesced load.
//
// Index math is 32-bit: the launcher checks that p*H, h*P (and w likewise) stay below 2^31.
#pragma once

#include "pool2d_common.cuh"

namespace fc {

__device__ __forceinline__ int adaptive_start(int o, int out, int in) { return (o * in) / out; }
__device__ __forceinline__ int adaptive_end(int o, int out, int in) { return ((o + 1) * in + out - 1) / out; }

template <class T, bool kChannelsLast, bool kMax>
__global__ void
adaptive_pool2d_fwd_kernel(const T* __restrict__ x, Tensor4 xt, T* __restrict__ y, Tensor4 yt,
                           long long* __restrict__ indices, Tensor4 it, PoolGeom g) {
  using A = typename Acc<T>::type;
  PoolCoord o;  // (n, c, p, q)
  if (!pool_thread_coord<kChannelsLast>(g.N, g.C, g.P, g.Q, o)) return;
  const int h0 = adaptive_start(o.h, g.P, g.H), h1 = adaptive_end(o.h, g.P, g.H);
  const int w0 = adaptive_start(o.w, g.Q, g.W), w1 = adaptive_end(o.w, g.Q, g.W);
  const T* plane = x + o.n * xt.sn + o.c * xt.sc;
  A acc = kMax ? NegInf<A>::get() : A(0);
  index_t best_at = static_cast<index_t>(h0) * g.W + w0;
  for (int h = h0; h < h1; ++h) {
    const T* row = plane + h * xt.sh;
    for (int w = w0; w < w1; ++w) {
      const A v = to_acc(row[w * xt.sw]);
      if (kMax) {
        if (v > acc || v != v) {  // v != v: NaN, the max whatever follows
          acc = v;
          best_at = static_cast<index_t>(h) * g.W + w;
        }
      } else {
        acc += v;
      }
    }
  }
  if (!kMax) acc /= static_cast<A>((h1 - h0) * (w1 - w0));
  y[offset(yt, o.n, o.c, o.h, o.w)] = from_acc<T>(acc);
  if (kMax) indices[offset(it, o.n, o.c, o.h, o.w)] = best_at;
}

// One warp per (n, c) plane, kPoolThreads / 32 planes per block along x; grid y and z as
// pool_thread_coord's (the samples).
template <class T>
__global__ void global_avg_pool2d_fwd_kernel(const T* __restrict__ x, Tensor4 xt, T* __restrict__ y, Tensor4 yt,
                                             PoolGeom g) {
  using A = typename Acc<T>::type;
  const index_t n = static_cast<index_t>(blockIdx.z) * gridDim.y + blockIdx.y;
  const int c = static_cast<int>(blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32);
  const int lane = static_cast<int>(threadIdx.x % 32);
  if (n >= g.N || c >= g.C) return;  // whole warps leave together: the shuffles below see full warps
  const T* plane = x + n * xt.sn + c * xt.sc;
  const int HW = g.H * g.W;
  A sum = A(0);
  for (int i = lane; i < HW; i += 32) {
    const int h = i / g.W, w = i - h * g.W;
    sum += to_acc(plane[h * xt.sh + w * xt.sw]);
  }
  for (int d = 16; d > 0; d /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, d);
  if (lane == 0) y[offset(yt, n, c, 0, 0)] = from_acc<T>(sum / static_cast<A>(HW));
}

template <class T, bool kChannelsLast, bool kMax>
__global__ void
adaptive_pool2d_bwd_kernel(const T* __restrict__ dy, Tensor4 dyt, const long long* __restrict__ indices, Tensor4 it,
                           T* __restrict__ dx, Tensor4 dxt, PoolGeom g) {
  using A = typename Acc<T>::type;
  PoolCoord e;  // (n, c, h, w)
  if (!pool_thread_coord<kChannelsLast>(g.N, g.C, g.H, g.W, e)) return;
  const int p0 = adaptive_start(e.h, g.H, g.P), p1 = adaptive_end(e.h, g.H, g.P);
  const int q0 = adaptive_start(e.w, g.W, g.Q), q1 = adaptive_end(e.w, g.W, g.Q);
  const index_t me = static_cast<index_t>(e.h) * g.W + e.w;
  const index_t nc_g = e.n * dyt.sn + e.c * dyt.sc;
  const index_t nc_i = kMax ? e.n * it.sn + e.c * it.sc : 0;
  A grad = A(0);
  for (int p = p0; p < p1; ++p) {
    const int kh = adaptive_end(p, g.P, g.H) - adaptive_start(p, g.P, g.H);
#pragma unroll 1
    for (int q = q0; q < q1; ++q) {
      if (kMax) {
        if (indices[nc_i + p * it.sh + q * it.sw] == me) grad += to_acc(dy[nc_g + p * dyt.sh + q * dyt.sw]);
      } else {
        const int kw = adaptive_end(q, g.Q, g.W) - adaptive_start(q, g.Q, g.W);
        grad += to_acc(dy[nc_g + p * dyt.sh + q * dyt.sw]) / static_cast<A>(kh * kw);
      }
    }
  }
  dx[offset(dxt, e.n, e.c, e.h, e.w)] = from_acc<T>(grad);
}

}  // namespace fc

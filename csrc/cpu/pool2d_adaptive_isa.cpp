// adaptive_avg_pool2d and adaptive_max_pool2d forward, adaptive_avg_pool2d backward, float32 and
// float64, any input strides. (adaptive_max_pool2d's backward is max_pool2d_bwd: a scatter of dy at the
// indices, which needs nothing of the window.) Global average pooling is the (1, 1) case, with its own
// streaming reduction.
//
// Windows as torch's (ATen AdaptiveAvgPoolKernel.cpp / AdaptiveMaxPoolKernel.cpp): output row p of P
// covers input rows [floor(p*H/P), ceil((p+1)*H/P)), likewise columns; windows never are empty and may
// overlap by a row when P does not divide H.
//  - avg: the window's sum divided by its area (kh*kw). The sum's order is not torch's (columns first on
//    the NCHW rows path, a vector of partial sums on the plane path), so results match torch within
//    float rounding, not bitwise.
//  - max: the window scanned row-major from -inf and the index of its first tap; a tap is taken when
//    `v > best || isnan(v)` (ties keep the first maximum, the last NaN wins). Index h*W + w in the plane,
//    bitwise torch's value and index.
//  - avg backward: dx = sum over the windows containing (h, w) of dy / area.
//
// Paths (adaptive_path below names them; fastconv.backends.cpu.adaptive_pool2d_path asks):
//  - "global_planes": avg, P = Q = 1, each (n, c) plane contiguous (NCHW): one streaming sum per plane,
//    kAcc independent vector accumulators, planes split over the threads.
//  - "nhwc": channels_last input (stride[1] == 1): an (n, p, q, channel block) per task, the window's
//    C-vectors summed (max: compared) into a per-task buffer of channel lanes. Global pooling of a
//    channels_last tensor is this path with one pixel range per (n, block).
//  - "nchw_rows": any other input with unit w stride: an (n, c, p) per task; the window's rows added into
//    a row buffer (vectorized along w), then each q sums its columns of it. Max: the scalar window.
//  - "generic": any strides, the scalar window per output.
// Backward: "global_fill" (P = Q = 1: dx = dy / (H*W), written once), else a scatter into a zeroed
// slice of dx that one task owns ((n, c) plane, or (n, channel block) for channels_last dx).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/pool2d_common.h"

namespace fastconv {
namespace cpu {
namespace FC_ISA {
namespace {

enum class AdaptivePath { kGlobalPlanes, kNhwc, kNchwRows, kGeneric };

inline int64_t win_start(int64_t o, int64_t O, int64_t I) { return o * I / O; }
inline int64_t win_end(int64_t o, int64_t O, int64_t I) { return ((o + 1) * I + O - 1) / O; }

inline bool planes_contiguous(const Tensor4& x) {
  return x.stride[3] == 1 && (x.stride[2] == x.size[3] || x.size[2] == 1);
}

AdaptivePath fwd_path(const PoolDesc& d, const Tensor4& x, bool max) {
  if (!max && d.P == 1 && d.Q == 1 && planes_contiguous(x) && !(x.stride[1] == 1 && d.C > 1))
    return AdaptivePath::kGlobalPlanes;
  if (x.stride[1] == 1 && d.C > 1) return AdaptivePath::kNhwc;
  if (x.stride[3] == 1) return AdaptivePath::kNchwRows;
  return AdaptivePath::kGeneric;
}

// Channel lanes per channels_last task: 256 (1 KiB of fp32 sums, a few KiB with max's indices: L1),
// fewer when the (n, p, q) tasks alone cannot keep the threads busy (global pooling at batch 1), never
// under one cache line of channels.
inline int64_t channel_block(const PoolDesc& d, int nthreads) {
  int64_t cb = std::min<int64_t>(d.C, 256);
  const int64_t pixels = d.N * d.P * d.Q, want = 8 * int64_t(std::max(nthreads, 1));
  while (cb > 16 && pixels * ((d.C + cb - 1) / cb) < want) cb /= 2;
  return cb;
}

// The lanes of v summed with shuffles in registers (AVX-512 / AVX2), not lane by lane through memory
// (1x2048x7x7, one thread, Zen 4 VM: 42.6 -> 33.6 us with the stepped plane counter below; torch's mean
// takes 15.6 us there, so small planes still cost ~16 ns each here: the next thing to fix).
template <typename T>
inline T lane_sum(typename Vec<T>::v v) {
#if defined(__AVX512F__)
  if constexpr (sizeof(T) == 4)
    return _mm512_reduce_add_ps((__m512)v);
  else
    return _mm512_reduce_add_pd((__m512d)v);
#elif defined(__AVX2__)
  if constexpr (sizeof(T) == 4) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128((__m256)v), _mm256_extractf128_ps((__m256)v, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
  } else {
    __m128d h = _mm_add_pd(_mm256_castpd256_pd128((__m256d)v), _mm256_extractf128_pd((__m256d)v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
  }
#else
  T s = T(0);
  for (int l = 0; l < Vec<T>::L; ++l) s += v[l];
  return s;
#endif
}

// Sum of n contiguous values: kAcc independent vector chains (a vector add has a 4-cycle latency and
// two issue ports, so 8 chains keep both busy), the chains added as a tree, the lanes by lane_sum, then
// the tail.
template <typename T>
T stream_sum(const T* p, int64_t n) {
  using V = typename Vec<T>::v;
  constexpr int L = Vec<T>::L, kAcc = 8;
  V acc[kAcc] = {};
  int64_t i = 0;
  for (; i + kAcc * L <= n; i += kAcc * L)
    for (int a = 0; a < kAcc; ++a) acc[a] += loadu<V>(p + i + a * L);
  for (; i + L <= n; i += L) acc[0] += loadu<V>(p + i);
  for (int w = kAcc / 2; w >= 1; w /= 2)
    for (int a = 0; a < w; ++a) acc[a] += acc[a + w];
  T tail = T(0);
  for (; i < n; ++i) tail += p[i];
  return lane_sum<T>(acc[0]) + tail;
}

template <typename T>
void avg_global_planes(const PoolDesc& d, const Tensor4& x, const Tensor4& y, int nthreads) {
  const int64_t area = d.H * d.W;
  const T* X = static_cast<const T*>(x.data);
  T* Y = static_cast<T*>(y.data);
  const T inv = T(1) / T(area);  // one rounding more than a division; the average is not bitwise torch's anyway
  parallel_ranges(d.N * d.C, d.N * d.C * area, nthreads, [&](int64_t r0, int64_t r1) {
    int64_t n = r0 / d.C, c = r0 % d.C;  // stepped below: no division per plane
    for (int64_t r = r0; r < r1; ++r) {
      Y[n * y.stride[0] + c * y.stride[1]] = stream_sum(X + n * x.stride[0] + c * x.stride[1], area) * inv;
      if (++c == d.C) c = 0, ++n;
    }
  });
}

// channels_last, one (n, p, q, channel block) per task: acc[c] over the window's pixels.
template <typename T, bool kMax>
void fwd_nhwc(const PoolDesc& d, const Tensor4& x, const Tensor4& y, const Tensor4* ind, int nthreads) {
  const int64_t cb = channel_block(d, nthreads), nblk = (d.C + cb - 1) / cb;
  const T* X = static_cast<const T*>(x.data);
  T* Y = static_cast<T*>(y.data);
  int64_t* I = ind ? static_cast<int64_t*>(ind->data) : nullptr;
  const int64_t tasks = d.N * d.P * d.Q * nblk;
  parallel_ranges(tasks, d.N * d.C * d.H * d.W, nthreads, [&](int64_t t0, int64_t t1) {
    std::vector<T> acc(cb);
    std::vector<int64_t> arg(kMax ? cb : 0);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t % nblk, pix = t / nblk, q = pix % d.Q, p = pix / d.Q % d.P, n = pix / d.Q / d.P;
      const int64_t c0 = b * cb, nc = std::min(cb, d.C - c0);
      const int64_t h0 = win_start(p, d.P, d.H), h1 = win_end(p, d.P, d.H);
      const int64_t w0 = win_start(q, d.Q, d.W), w1 = win_end(q, d.Q, d.W);
      T* a = acc.data();
      int64_t* g = arg.data();
      for (int64_t c = 0; c < nc; ++c) {
        a[c] = kMax ? -std::numeric_limits<T>::infinity() : T(0);
        if constexpr (kMax) g[c] = h0 * d.W + w0;
      }
      const T* base = X + n * x.stride[0] + c0;
      for (int64_t h = h0; h < h1; ++h)
        for (int64_t w = w0; w < w1; ++w) {
          const T* px = base + h * x.stride[2] + w * x.stride[3];
          if constexpr (kMax) {
            const int64_t at = h * d.W + w;
            for (int64_t c = 0; c < nc; ++c) {
              const T v = px[c];
              const bool take = (v > a[c]) | (v != v);
              a[c] = take ? v : a[c];
              g[c] = take ? at : g[c];
            }
          } else {
            for (int64_t c = 0; c < nc; ++c) a[c] += px[c];
          }
        }
      T* out = Y + n * y.stride[0] + c0 * y.stride[1] + p * y.stride[2] + q * y.stride[3];
      const T area = T((h1 - h0) * (w1 - w0));
      for (int64_t c = 0; c < nc; ++c) out[c * y.stride[1]] = kMax ? a[c] : a[c] / area;
      if constexpr (kMax) {
        int64_t* oi = I + n * ind->stride[0] + c0 * ind->stride[1] + p * ind->stride[2] + q * ind->stride[3];
        for (int64_t c = 0; c < nc; ++c) oi[c * ind->stride[1]] = g[c];
      }
    }
  });
}

// The scalar max window of output (p, q) in a plane with strides (sh, sw): torch's scan.
template <typename T>
inline void max_window(const T* plane, int64_t sh, int64_t sw, int64_t h0, int64_t h1, int64_t w0, int64_t w1,
                       int64_t W, T& best, int64_t& at) {
  best = -std::numeric_limits<T>::infinity();
  at = h0 * W + w0;
  for (int64_t h = h0; h < h1; ++h)
    for (int64_t w = w0; w < w1; ++w) {
      const T v = plane[h * sh + w * sw];
      if (v > best || std::isnan(v)) {
        best = v;
        at = h * W + w;
      }
    }
}

// NCHW rows (and any strides when !kRows): one (n, c, p) per task.
template <typename T, bool kMax, bool kRows>
void fwd_rows(const PoolDesc& d, const Tensor4& x, const Tensor4& y, const Tensor4* ind, int nthreads) {
  const T* X = static_cast<const T*>(x.data);
  T* Y = static_cast<T*>(y.data);
  int64_t* I = ind ? static_cast<int64_t*>(ind->data) : nullptr;
  parallel_ranges(d.N * d.C * d.P, d.N * d.C * d.H * d.W, nthreads, [&](int64_t t0, int64_t t1) {
    std::vector<T> rowsum(kRows && !kMax ? d.W : 0);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t p = t % d.P, c = t / d.P % d.C, n = t / d.P / d.C;
      const int64_t h0 = win_start(p, d.P, d.H), h1 = win_end(p, d.P, d.H);
      const T* plane = X + n * x.stride[0] + c * x.stride[1];
      T* yrow = Y + n * y.stride[0] + c * y.stride[1] + p * y.stride[2];
      if (kRows && !kMax) {
        T* s = rowsum.data();
        const T* r0 = plane + h0 * x.stride[2];
        for (int64_t w = 0; w < d.W; ++w) s[w] = r0[w];
        for (int64_t h = h0 + 1; h < h1; ++h) {
          const T* r = plane + h * x.stride[2];
          for (int64_t w = 0; w < d.W; ++w) s[w] += r[w];
        }
        for (int64_t q = 0; q < d.Q; ++q) {
          const int64_t w0 = win_start(q, d.Q, d.W), w1 = win_end(q, d.Q, d.W);
          T sum = T(0);
          for (int64_t w = w0; w < w1; ++w) sum += s[w];
          yrow[q * y.stride[3]] = sum / T((h1 - h0) * (w1 - w0));
        }
        continue;
      }
      for (int64_t q = 0; q < d.Q; ++q) {
        const int64_t w0 = win_start(q, d.Q, d.W), w1 = win_end(q, d.Q, d.W);
        if constexpr (kMax) {
          T best;
          int64_t at;
          max_window(plane, x.stride[2], x.stride[3], h0, h1, w0, w1, d.W, best, at);
          yrow[q * y.stride[3]] = best;
          I[n * ind->stride[0] + c * ind->stride[1] + p * ind->stride[2] + q * ind->stride[3]] = at;
        } else {
          T sum = T(0);
          for (int64_t h = h0; h < h1; ++h)
            for (int64_t w = w0; w < w1; ++w) sum += plane[h * x.stride[2] + w * x.stride[3]];
          yrow[q * y.stride[3]] = sum / T((h1 - h0) * (w1 - w0));
        }
      }
    }
  });
}

template <typename T, bool kMax>
void adaptive_fwd(const PoolDesc& d, const Tensor4& x, const Tensor4& y, const Tensor4* ind, int nthreads) {
  switch (fwd_path(d, x, kMax)) {
    case AdaptivePath::kGlobalPlanes:
      return avg_global_planes<T>(d, x, y, nthreads);
    case AdaptivePath::kNhwc:
      return fwd_nhwc<T, kMax>(d, x, y, ind, nthreads);
    case AdaptivePath::kNchwRows:
      return fwd_rows<T, kMax, true>(d, x, y, ind, nthreads);
    case AdaptivePath::kGeneric:
      return fwd_rows<T, kMax, false>(d, x, y, ind, nthreads);
  }
}

// dx = dy / (H*W) everywhere, written once (no zeroing pass). A channels_last dx is written pixel by
// pixel along its contiguous channels: plane by plane, each store lands C elements from the last one,
// and 32x2048x7x7 took 8.4 ms against torch's 0.85 (2 threads).
template <typename T>
void avg_bwd_global(const PoolDesc& d, const Tensor4& dy, const Tensor4& dx, int nthreads) {
  const T* DY = static_cast<const T*>(dy.data);
  T* DX = static_cast<T*>(dx.data);
  const T area = T(d.H * d.W);
  if (dx.stride[1] == 1 && d.C > 1) {
    const int64_t hw = d.H * d.W;
    parallel_ranges(d.N * hw, d.N * d.C * hw, nthreads, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t n = r / hw, h = r % hw / d.W, w = r % d.W;
        const T* g = DY + n * dy.stride[0];
        T* px = DX + n * dx.stride[0] + h * dx.stride[2] + w * dx.stride[3];
        for (int64_t c = 0; c < d.C; ++c) px[c] = g[c * dy.stride[1]] / area;
      }
    });
    return;
  }
  parallel_ranges(d.N * d.C, d.N * d.C * d.H * d.W, nthreads, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / d.C, c = r % d.C;
      const T g = DY[n * dy.stride[0] + c * dy.stride[1]] / area;
      T* plane = DX + n * dx.stride[0] + c * dx.stride[1];
      for (int64_t h = 0; h < d.H; ++h) {
        T* row = plane + h * dx.stride[2];
        if (dx.stride[3] == 1)
          for (int64_t w = 0; w < d.W; ++w) row[w] = g;
        else
          for (int64_t w = 0; w < d.W; ++w) row[w * dx.stride[3]] = g;
      }
    }
  });
}

// Scatter into dx[n, c0:c1): zeroed, then every output adds dy / area over its window, in (p, q) order.
template <typename T>
void avg_bwd_slice(const PoolDesc& d, const Tensor4& dy, const Tensor4& dx, int64_t n, int64_t c0, int64_t c1) {
  const T* DY = static_cast<const T*>(dy.data) + n * dy.stride[0];
  T* DX = static_cast<T*>(dx.data) + n * dx.stride[0];
  const int64_t sc = dx.stride[1], sh = dx.stride[2], sw = dx.stride[3];
  for (int64_t h = 0; h < d.H; ++h)
    for (int64_t w = 0; w < d.W; ++w)
      for (int64_t c = c0; c < c1; ++c) DX[c * sc + h * sh + w * sw] = T(0);
  for (int64_t p = 0; p < d.P; ++p) {
    const int64_t h0 = win_start(p, d.P, d.H), h1 = win_end(p, d.P, d.H);
    for (int64_t q = 0; q < d.Q; ++q) {
      const int64_t w0 = win_start(q, d.Q, d.W), w1 = win_end(q, d.Q, d.W);
      const T area = T((h1 - h0) * (w1 - w0));
      const T* g = DY + p * dy.stride[2] + q * dy.stride[3];
      for (int64_t h = h0; h < h1; ++h)
        for (int64_t w = w0; w < w1; ++w) {
          T* px = DX + h * sh + w * sw;
          if (sc == 1 && dy.stride[1] == 1)
            for (int64_t c = c0; c < c1; ++c) px[c] += g[c] / area;
          else
            for (int64_t c = c0; c < c1; ++c) px[c * sc] += g[c * dy.stride[1]] / area;
        }
    }
  }
}

template <typename T>
void adaptive_avg_bwd(const PoolDesc& d, const Tensor4& dy, const Tensor4& dx, int nthreads) {
  if (d.P == 1 && d.Q == 1) return avg_bwd_global<T>(d, dy, dx, nthreads);
  const bool cl = dx.stride[1] == 1 && d.C > 1;
  const int64_t cb = cl ? channel_block(d, nthreads) : 1, nblk = (d.C + cb - 1) / cb;
  parallel_ranges(d.N * nblk, d.N * d.C * (d.H * d.W + d.P * d.Q), nthreads, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / nblk, c0 = t % nblk * cb;
      avg_bwd_slice<T>(d, dy, dx, n, c0, std::min(c0 + cb, d.C));
    }
  });
}

const char* path_name(AdaptivePath p) {
  switch (p) {
    case AdaptivePath::kGlobalPlanes:
      return "global_planes";
    case AdaptivePath::kNhwc:
      return "nhwc";
    case AdaptivePath::kNchwRows:
      return "nchw_rows";
    case AdaptivePath::kGeneric:
      return "generic";
  }
  return "?";
}

}  // namespace

void adaptive_avg_pool2d_fwd(const PoolDesc& d, DType dt, const Tensor4& x, const Tensor4& y, int nthreads) {
  if (d.N == 0) return;
  if (dt == kFloat32)
    adaptive_fwd<float, false>(d, x, y, nullptr, nthreads);
  else
    adaptive_fwd<double, false>(d, x, y, nullptr, nthreads);
}

void adaptive_max_pool2d_fwd(const PoolDesc& d, DType dt, const Tensor4& x, const Tensor4& y,
                             const Tensor4& indices, int nthreads) {
  if (d.N == 0) return;
  if (dt == kFloat32)
    adaptive_fwd<float, true>(d, x, y, &indices, nthreads);
  else
    adaptive_fwd<double, true>(d, x, y, &indices, nthreads);
}

void adaptive_avg_pool2d_bwd(const PoolDesc& d, DType dt, const Tensor4& dy, const Tensor4& dx, int nthreads) {
  if (d.N == 0) return;
  if (dt == kFloat32)
    adaptive_avg_bwd<float>(d, dy, dx, nthreads);
  else
    adaptive_avg_bwd<double>(d, dy, dx, nthreads);
}

std::string adaptive_pool2d_path(int pass, const PoolDesc& d, const Tensor4& x) {
  if (pass == 2)  // avg backward; x is dx
    return d.P == 1 && d.Q == 1 ? "global_fill" : (x.stride[1] == 1 && d.C > 1) ? "scatter_nhwc" : "scatter_planes";
  return path_name(fwd_path(d, x, pass == 1));
}

}  // namespace FC_ISA
}  // namespace cpu
}  // namespace fastconv

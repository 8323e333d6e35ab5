// max_pool2d / avg_pool2d forward of channels_last inputs (stride[1] == 1), and the scalar window for
// any other strides; float32 and float64. Which kernel serves a call is pool2d_isa.cpp's choice; the
// semantics (torch's, bit for bit) are stated there.
//
//  - max_fwd_nhwc / avg_fwd_nhwc: an output pixel reduces its window of C-vectors; the channel loop is
//    the vector loop, blocks of 4 vectors kept in registers (C = 64 fp32 is one block on AVX-512), so
//    every load is contiguous; channels past the last whole vector are one more vector that ends at
//    channel C and so recomputes a few channels the same thread just wrote (for_channel_vectors;
//    C = 24 fp32 on AVX-512: channels 8-23; every channel's value is its own window's, so writing it
//    twice writes the same bits); only C < one vector takes the scalar window. The
//    flattened (n, p, q) pixels split over the threads, and each kernel prefetches into L2 the input
//    that the window kPrefetchPixels pixels ahead adds. max without indices uses x86's max instruction
//    and redoes a pixel range that read a NaN with the exact scan.
//  - max_fwd_generic / avg_fwd_generic: the scalar window per output, rows (n, c, p) split over the
//    threads.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "cpu/kernels.h"
#include "cpu/pool2d_common.h"

namespace fastconv {
namespace cpu {
namespace FC_ISA {
namespace {

// ---------------------------------------------------------------------------------------------------
// Software prefetch into L2 for the channels_last forward kernels (for_pixels). Without it those pools
// take about the sum of their in-cache compute time and the time to stream their input, not the larger
// of the two: the hardware prefetchers do not run far enough ahead of a window loop that walks three
// rows at once. The kernels prefetch (prefetcht1, which gains more than prefetcht0) the columns that
// the window 8 pixels ahead adds: on the bench's AMD Zen 4 VM (2 threads, N=32, C=64, 56x56, fp32,
// medians interleaved in one process) 3x3 stride-2 max 1.01 ms, against 1.20 without. NCHW is one
// sequential stream that the hardware follows, and prefetching the next plane's rows or the stream
// 1-16 KiB ahead makes those kernels slower (2x2 max 1.36 ms against 1.09), so they have none. An asm
// statement, not __builtin_prefetch: GCC 12 deletes a loop whose only statements are builtin
// prefetches.
inline void prefetch_l2(const void* p) {
#if defined(__x86_64__) || defined(__i386__)
  asm volatile("prefetcht1 %0" ::"m"(*static_cast<const char*>(p)));
#else
  __builtin_prefetch(p, 0, 2);
#endif
}

// Every cache line of [p, p + bytes).
inline void prefetch_l2_span(const void* p, int64_t bytes) {
  const uintptr_t end = reinterpret_cast<uintptr_t>(p) + (uintptr_t)bytes;
  for (uintptr_t a = reinterpret_cast<uintptr_t>(p) & ~uintptr_t(63); a < end; a += 64)
    prefetch_l2(reinterpret_cast<const void*>(a));
}

// Output pixels ahead of the one computed whose input a channels_last kernel prefetches: 4-8 are best
// on the bench's pools (16 gains nothing over no prefetch).
constexpr int64_t kPrefetchPixels = 8;

// channels_last: the columns that output pixel (p, q)'s window adds to its left neighbour's (its last
// stride_w columns, every row), C contiguous channels each.
template <typename T>
inline void prefetch_window_columns(const PoolDesc& d, const T* xn, int64_t sh, int64_t sw, int64_t p, int64_t q) {
  const MaxRange mr = max_range(d, p, q);
  for (int64_t h = mr.h0; h < mr.h1; h += d.dil_h)
    for (int64_t w = std::max(mr.w1 - d.stride_w, mr.w0); w < mr.w1; ++w)
      prefetch_l2_span(xn + h * sh + w * sw, d.C * (int64_t)sizeof(T));
}

// ---------------------------------------------------------------------------------------------------
// Scalar windows (reference semantics; the channels_last kernels' channel tails and any strides).
// xp: the (n, c) plane; sh, sw: its strides.

template <typename T>
inline void max_window(const PoolDesc& d, const T* xp, int64_t sh, int64_t sw, int64_t p, int64_t q, T* y,
                       int64_t* ind) {
  MaxRange r = max_range(d, p, q);
  T best = -std::numeric_limits<T>::infinity();
  int64_t bi = r.h0 * d.W + r.w0;
  for (int64_t h = r.h0; h < r.h1; h += d.dil_h)
    for (int64_t w = r.w0; w < r.w1; w += d.dil_w) {
      T v = xp[h * sh + w * sw];
      if (v > best || std::isnan(v)) {
        best = v;
        bi = h * d.W + w;
      }
    }
  *y = best;
  if (ind) *ind = bi;
}

template <typename T>
inline T avg_window(const PoolDesc& d, const T* xp, int64_t sh, int64_t sw, int64_t p, int64_t q) {
  AvgRange r = avg_range(d, p, q);
  if (r.h0 >= r.h1 || r.w0 >= r.w1) return T(0);
  T sum = 0;
  for (int64_t h = r.h0; h < r.h1; ++h)
    for (int64_t w = r.w0; w < r.w1; ++w) sum += xp[h * sh + w * sw];
  return sum / T(r.divisor);
}

// ---------------------------------------------------------------------------------------------------
// channels_last: one output pixel, channels [c, c + NV*L) as NV vectors.

// Calls f(n, p, q, xn, yp) for the flattened output pixels r0 .. r1 of (n, p, q): xn the input image n,
// yp output pixel (p, q) of image n; first prefetches the input that the window kPrefetchPixels
// pixels ahead adds (prefetch_window_columns; past the range's end too: the next range is usually
// this thread's or about to start on the other). Always inlined, so that the caller's NanTest stays in
// a register (see NanTest).
template <typename T, class F>
__attribute__((always_inline)) inline void for_pixels(const PoolDesc& d, const Tensor4& x, const Tensor4& y,
                                                      int64_t r0, int64_t r1, const F& f) {
  const T* X = static_cast<const T*>(x.data);
  T* Y = static_cast<T*>(y.data);
  const int64_t pixels = d.N * d.P * d.Q;
  Counter3 it(r0, d.P, d.Q), ahead(r0 + kPrefetchPixels, d.P, d.Q);
  for (int64_t r = r0; r < r1; ++r, it.next(), ahead.next()) {
    if (r + kPrefetchPixels < pixels)
      prefetch_window_columns(d, X + ahead.a * x.stride[0], x.stride[2], x.stride[3], ahead.b, ahead.c);
    const int64_t n = it.a, p = it.b, q = it.c;
    f(n, p, q, X + n * x.stride[0], Y + n * y.stride[0] + p * y.stride[2] + q * y.stride[3]);
  }
}

// The fast max of one pixel block (no indices): max_keep, with every tap fed to nan.
template <typename T, int NV>
inline void max_pixel_block_fast(const PoolDesc& d, const T* xn, int64_t sh, int64_t sw, const MaxRange& mr, T* yp,
                                 int64_t syc, NanTest<T>& nan) {
  using V = typename Vec<T>::v;
  constexpr int L = Vec<T>::L;
  V best[NV];
  for (int k = 0; k < NV; ++k) best[k] = V{} - std::numeric_limits<T>::infinity();
  for (int64_t h = mr.h0; h < mr.h1; h += d.dil_h)
    for (int64_t w = mr.w0; w < mr.w1; w += d.dil_w) {
      const T* px = xn + h * sh + w * sw;
      V v[NV];
      for (int k = 0; k < NV; ++k) {
        v[k] = loadu<V>(px + k * L);
        best[k] = max_keep<T>(v[k], best[k]);
      }
      for (int k = 0; k < NV; k += 2) nan.add(v[k], v[k + 1 < NV ? k + 1 : k]);
    }
  for (int k = 0; k < NV; ++k) store_vec<T>(yp + k * L * syc, syc, best[k]);
}

template <typename T, bool kIdx, int NV>
inline void max_pixel_block(const PoolDesc& d, const T* xn, int64_t sh, int64_t sw, const MaxRange& mr, T* yp,
                            int64_t syc, int64_t* ip, int64_t sic) {
  using V = typename Vec<T>::v;
  using IV = typename Vec<T>::iv;
  using I = typename Vec<T>::I;
  constexpr int L = Vec<T>::L;
  V best[NV];
  IV bi[NV];
  for (int k = 0; k < NV; ++k) {
    best[k] = V{} - std::numeric_limits<T>::infinity();
    bi[k] = IV{} + (I)(mr.h0 * d.W + mr.w0);
  }
  for (int64_t h = mr.h0; h < mr.h1; h += d.dil_h)
    for (int64_t w = mr.w0; w < mr.w1; w += d.dil_w) {
      const T* px = xn + h * sh + w * sw;
      const IV tap = IV{} + (I)(h * d.W + w);
      for (int k = 0; k < NV; ++k) {
        V v = loadu<V>(px + k * L);
        auto m = (v > best[k]) | (v != v);
        best[k] = m ? v : best[k];
        if constexpr (kIdx) bi[k] = m ? tap : bi[k];
      }
    }
  for (int k = 0; k < NV; ++k) {
    store_vec<T>(yp + k * L * syc, syc, best[k]);
    if constexpr (kIdx) store_index<T>(ip + k * L * sic, sic, bi[k]);
  }
}

template <typename T, int NV>
inline void avg_pixel_block(const T* xn, int64_t sh, int64_t sw, const AvgRange& ar, T* yp, int64_t syc) {
  using V = typename Vec<T>::v;
  constexpr int L = Vec<T>::L;
  V sum[NV];
  for (int k = 0; k < NV; ++k) sum[k] = V{};
  for (int64_t h = ar.h0; h < ar.h1; ++h)
    for (int64_t w = ar.w0; w < ar.w1; ++w) {
      const T* px = xn + h * sh + w * sw;
      for (int k = 0; k < NV; ++k) sum[k] += loadu<V>(px + k * L);
    }
  const bool empty = ar.h0 >= ar.h1 || ar.w0 >= ar.w1;
  for (int k = 0; k < NV; ++k) store_vec<T>(yp + k * L * syc, syc, empty ? V{} : divide(sum[k], T(ar.divisor)));
}

}  // namespace

template <typename T, bool kIdx>
void max_fwd_nhwc(const PoolDesc& d, const Tensor4& x, const Tensor4& y, const Tensor4* ind, int nthreads) {
  constexpr int L = Vec<T>::L;
  int64_t* IND = kIdx ? static_cast<int64_t*>(ind->data) : nullptr;
  const int64_t pixels = d.N * d.P * d.Q;
  const int64_t syc = y.stride[1], sic = kIdx ? ind->stride[1] : 0;
  parallel_ranges(pixels, (d.H * d.W + d.P * d.Q) * d.N * d.C, nthreads, [&](int64_t r0, int64_t r1) {
    if constexpr (!kIdx) {
      // Without indices: the fast max over the range, redone by the exact scan below if a tap was
      // NaN (C=64, 56x56, fp32, one thread, data in L2: 3x3 stride 2 530 ns per plane, against 850
      // with the exact scan).
      NanTest<T> nan;
      for_pixels<T>(d, x, y, r0, r1, [&](int64_t, int64_t p, int64_t q, const T* xn, T* yp) {
        const MaxRange mr = max_range(d, p, q);
        for_channel_vectors<L>(
            d.C,
            [&](int64_t c, auto nv) {
              max_pixel_block_fast<T, decltype(nv)::value>(d, xn + c, x.stride[2], x.stride[3], mr, yp + c * syc,
                                                           syc, nan);
            },
            [&](int64_t c) { max_window(d, xn + c, x.stride[2], x.stride[3], p, q, yp + c * syc, nullptr); });
      });
      if (!nan.any()) return;
    }
    for_pixels<T>(d, x, y, r0, r1, [&](int64_t n, int64_t p, int64_t q, const T* xn, T* yp) {
      int64_t* ip = kIdx ? IND + n * ind->stride[0] + p * ind->stride[2] + q * ind->stride[3] : nullptr;
      const MaxRange mr = max_range(d, p, q);
      for_channel_vectors<L>(
          d.C,
          [&](int64_t c, auto nv) {
            max_pixel_block<T, kIdx, decltype(nv)::value>(d, xn + c, x.stride[2], x.stride[3], mr, yp + c * syc,
                                                          syc, kIdx ? ip + c * sic : nullptr, sic);
          },
          [&](int64_t c) {
            max_window(d, xn + c, x.stride[2], x.stride[3], p, q, yp + c * syc, kIdx ? ip + c * sic : nullptr);
          });
    });
  });
}

template <typename T>
void avg_fwd_nhwc(const PoolDesc& d, const Tensor4& x, const Tensor4& y, int nthreads) {
  constexpr int L = Vec<T>::L;
  const int64_t pixels = d.N * d.P * d.Q, syc = y.stride[1];
  parallel_ranges(pixels, (d.H * d.W + d.P * d.Q) * d.N * d.C, nthreads, [&](int64_t r0, int64_t r1) {
    for_pixels<T>(d, x, y, r0, r1, [&](int64_t, int64_t p, int64_t q, const T* xn, T* yp) {
      const AvgRange ar = avg_range(d, p, q);
      for_channel_vectors<L>(
          d.C,
          [&](int64_t c, auto nv) {
            avg_pixel_block<T, decltype(nv)::value>(xn + c, x.stride[2], x.stride[3], ar, yp + c * syc, syc);
          },
          [&](int64_t c) { yp[c * syc] = avg_window(d, xn + c, x.stride[2], x.stride[3], p, q); });
    });
  });
}

// ---------------------------------------------------------------------------------------------------
// Any strides: the scalar window per output, rows (n, c, p) split over threads.

template <typename T, bool kIdx>
void max_fwd_generic(const PoolDesc& d, const Tensor4& x, const Tensor4& y, const Tensor4* ind, int nthreads) {
  const T* X = static_cast<const T*>(x.data);
  T* Y = static_cast<T*>(y.data);
  int64_t* IND = kIdx ? static_cast<int64_t*>(ind->data) : nullptr;
  parallel_ranges(d.N * d.C * d.P, (d.H * d.W + d.P * d.Q) * d.N * d.C, nthreads, [&](int64_t r0, int64_t r1) {
    Counter3 it(r0, d.C, d.P);
    for (int64_t r = r0; r < r1; ++r, it.next()) {
      const int64_t n = it.a, c = it.b, p = it.c;
      const T* xp = X + n * x.stride[0] + c * x.stride[1];
      for (int64_t q = 0; q < d.Q; ++q)
        max_window(d, xp, x.stride[2], x.stride[3], p, q,
                   Y + n * y.stride[0] + c * y.stride[1] + p * y.stride[2] + q * y.stride[3],
                   kIdx ? IND + n * ind->stride[0] + c * ind->stride[1] + p * ind->stride[2] + q * ind->stride[3]
                        : nullptr);
    }
  });
}

template <typename T>
void avg_fwd_generic(const PoolDesc& d, const Tensor4& x, const Tensor4& y, int nthreads) {
  const T* X = static_cast<const T*>(x.data);
  T* Y = static_cast<T*>(y.data);
  parallel_ranges(d.N * d.C * d.P, (d.H * d.W + d.P * d.Q) * d.N * d.C, nthreads, [&](int64_t r0, int64_t r1) {
    Counter3 it(r0, d.C, d.P);
    for (int64_t r = r0; r < r1; ++r, it.next()) {
      const int64_t n = it.a, c = it.b, p = it.c;
      const T* xp = X + n * x.stride[0] + c * x.stride[1];
      for (int64_t q = 0; q < d.Q; ++q)
        Y[n * y.stride[0] + c * y.stride[1] + p * y.stride[2] + q * y.stride[3]] =
            avg_window(d, xp, x.stride[2], x.stride[3], p, q);
    }
  });
}

// The instances pool2d_isa.cpp's path choice calls.
#define FC_POOL_FWD_NHWC_INSTANCES(T)                                                                            \
  template void max_fwd_nhwc<T, false>(const PoolDesc&, const Tensor4&, const Tensor4&, const Tensor4*, int);    \
  template void max_fwd_nhwc<T, true>(const PoolDesc&, const Tensor4&, const Tensor4&, const Tensor4*, int);     \
  template void avg_fwd_nhwc<T>(const PoolDesc&, const Tensor4&, const Tensor4&, int);                           \
  template void max_fwd_generic<T, false>(const PoolDesc&, const Tensor4&, const Tensor4&, const Tensor4*, int); \
  template void max_fwd_generic<T, true>(const PoolDesc&, const Tensor4&, const Tensor4&, const Tensor4*, int);  \
  template void avg_fwd_generic<T>(const PoolDesc&, const Tensor4&, const Tensor4&, int);
FC_POOL_FWD_NHWC_INSTANCES(float)
FC_POOL_FWD_NHWC_INSTANCES(double)
#undef FC_POOL_FWD_NHWC_INSTANCES

}  // namespace FC_ISA
}  // namespace cpu
}  // namespace fastconv

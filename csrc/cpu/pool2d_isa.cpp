// max_pool2d / avg_pool2d, forward and backward, float32 and float64, any input strides.
//
// Semantics are ATen's CPU kernels (MaxPoolKernel.cpp, AvgPoolKernel.cpp), bit for bit:
//  - max: the window is scanned row-major (i, then j), starting from -inf and the index of the first
//    in-bounds tap; a tap is taken when `v > best || isnan(v)`, so ties keep the first maximum and the
//    last NaN wins. The index is h * W + w within the (n, c) plane. An all-padding window (possible only
//    with dilation in ceil mode) gives -inf and torch's index of its first dilated position.
//  - avg: hstart = p*sH - pH, hend = min(hstart + kH, H + pH), pool_size = (hend-hstart)*(wend-wstart),
//    then the window is clipped to the input; divisor = divisor_override, else pool_size when
//    count_include_pad, else the clipped area. The sum runs over the clipped window row-major from 0 in
//    the input dtype and is divided (not multiplied by a reciprocal) by the divisor, as torch does.
//  - backward: dx is zeroed, then every output adds its gradient (max: dy at its index; avg: dy/divisor
//    over its clipped window) in (p, q) order, so each dx element sums its terms in torch's order.
//
// Paths, chosen from the strides of the input (forward) or of dx (backward):
//  - channels_last (stride[1] == 1): an output pixel reduces its window of C-vectors; the channel loop
//    is the vector loop, blocks of 4 vectors kept in registers (C = 64 fp32 is one block on AVX-512),
//    so every load is contiguous. Forward work: the flattened (n, p, q) pixels split evenly; backward:
//    (n, channel block) tasks, each owning its slice of dx.
//  - NCHW (stride[3] == 1): one output row (n, c, p) at a time, vectorized along q. A tap is one
//    unaligned load for stride 1, two loads and an even-lane shuffle for stride 2, a lane gather
//    otherwise. Columns whose window is clipped, and the tail, use the scalar window; a row's last
//    vector chunk overlaps the previous one instead of falling back to scalars. Backward: per plane.
//  - anything else: the scalar window per output.
// The vector code is GCC vector extensions, so each ISA build (SSE2 / AVX2 / AVX-512) gets its own
// width; fp32 indices are blended as int32 lanes (planes < 2^30 elements) and widened when stored.
// Outputs are independent of the work split, so results are bitwise identical for any thread count.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu/kernels.h"

namespace fastconv {
namespace cpu {
namespace FC_ISA {
namespace {

#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#elif defined(__AVX__)
constexpr int kVecBytes = 32;
#else
constexpr int kVecBytes = 16;
#endif

template <typename T>
struct Vec {
  static constexpr int L = kVecBytes / int(sizeof(T));
  using I = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;  // index lanes, same width as T
  typedef T v __attribute__((vector_size(kVecBytes)));
  typedef I iv __attribute__((vector_size(kVecBytes)));
  typedef int64_t i64h __attribute__((vector_size(kVecBytes * 8 / sizeof(T) / 2)));  // L/2 int64
};

template <class VT, class T>
inline VT loadu(const T* p) {
  VT r;
  std::memcpy(&r, p, sizeof r);
  return r;
}
template <class VT, class T>
inline void storeu(T* p, const VT& v) {
  std::memcpy(p, &v, sizeof v);
}

template <class VT, size_t... Is>
inline VT even_lanes(VT a, VT b, std::index_sequence<Is...>) {
  return __builtin_shufflevector(a, b, (2 * Is)...);
}
template <class VT, size_t... Is>
inline VT iota_impl(std::index_sequence<Is...>) {
  return VT{static_cast<std::remove_reference_t<decltype(VT{}[0])>>(Is)...};
}
template <typename T>
inline typename Vec<T>::iv iota() {
  return iota_impl<typename Vec<T>::iv>(std::make_index_sequence<Vec<T>::L>{});
}

// Stores L index lanes as int64 (contiguous when stride == 1).
template <typename T>
inline void store_index(int64_t* p, int64_t stride, typename Vec<T>::iv idx) {
  constexpr int L = Vec<T>::L;
  if (stride == 1) {
    if constexpr (sizeof(T) == 8) {
      storeu(p, idx);
    } else {
      using H = typename Vec<T>::i64h;
      constexpr int L2 = L / 2;
      int32_t lanes[L];
      storeu(lanes, idx);
      typedef int32_t h32 __attribute__((vector_size(L2 * 4)));
      h32 lo = loadu<h32>(lanes), hi = loadu<h32>(lanes + L2);
      storeu(p, __builtin_convertvector(lo, H));
      storeu(p + L2, __builtin_convertvector(hi, H));
    }
  } else {
    for (int l = 0; l < L; ++l) p[l * stride] = idx[l];
  }
}
template <typename T>
inline void store_vec(T* p, int64_t stride, typename Vec<T>::v x) {
  if (stride == 1) {
    storeu(p, x);
  } else {
    for (int l = 0; l < Vec<T>::L; ++l) p[l * stride] = x[l];
  }
}

// Work split: [0, n) in equal contiguous ranges over at most nthreads threads; a few threads at most
// for small problems (`cost` ~ elements touched), where the fork would cost more than the work.
template <class F>
void parallel_ranges(int64_t n, int64_t cost, int nthreads, const F& f) {
  if (n <= 0) return;
  int64_t nt = std::min<int64_t>({(int64_t)std::max(nthreads, 1), n, 1 + cost / 16384});
  if (nt <= 1) {
    f(int64_t(0), n);
    return;
  }
#ifdef _OPENMP
#pragma omp parallel num_threads((int)nt)
  {
    int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
    f(n * t / T, n * (t + 1) / T);
  }
#else
  f(int64_t(0), n);
#endif
}

// First in-bounds position of a dilated window starting at `start` (torch: while (s < 0) s += dil).
inline int64_t first_inside(int64_t start, int64_t dil) {
  return start >= 0 ? start : start + ((-start + dil - 1) / dil) * dil;
}

struct MaxRange {
  int64_t h0, h1, w0, w1;  // dilated taps h0, h0 + dil_h, ... < h1 (likewise w)
};
inline MaxRange max_range(const PoolDesc& d, int64_t p, int64_t q) {
  int64_t hs = p * d.stride_h - d.pad_h, ws = q * d.stride_w - d.pad_w;
  return {first_inside(hs, d.dil_h), std::min(hs + (d.kernel_h - 1) * d.dil_h + 1, d.H),
          first_inside(ws, d.dil_w), std::min(ws + (d.kernel_w - 1) * d.dil_w + 1, d.W)};
}

struct AvgRange {
  int64_t h0, h1, w0, w1, divisor;  // clipped window [h0, h1) x [w0, w1); empty -> output 0
};
inline AvgRange avg_range(const PoolDesc& d, int64_t p, int64_t q) {
  int64_t h0 = p * d.stride_h - d.pad_h, w0 = q * d.stride_w - d.pad_w;
  int64_t h1 = std::min(h0 + d.kernel_h, d.H + d.pad_h), w1 = std::min(w0 + d.kernel_w, d.W + d.pad_w);
  int64_t pool_size = (h1 - h0) * (w1 - w0);
  h0 = std::max<int64_t>(h0, 0);
  w0 = std::max<int64_t>(w0, 0);
  h1 = std::min(h1, d.H);
  w1 = std::min(w1, d.W);
  int64_t div = d.divisor_override ? d.divisor_override
                                   : (d.count_include_pad ? pool_size : (h1 - h0) * (w1 - w0));
  return {h0, h1, w0, w1, div};
}

// ---------------------------------------------------------------------------------------------------
// Scalar windows (reference semantics; used for borders, tails and arbitrary strides).
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
// NCHW rows, vectorized along q. A tap (row h, column offset j) for lanes q..q+L-1 reads
// row[(q + l) * sw + off], off = j * dil_w - pad_w.

template <typename T, int SW>  // SW: 1, 2, or 0 (any stride)
inline typename Vec<T>::v load_taps(const T* row, int64_t q, int64_t sw, int64_t off) {
  using V = typename Vec<T>::v;
  constexpr int L = Vec<T>::L;
  if constexpr (SW == 1) {
    return loadu<V>(row + q + off);
  } else if constexpr (SW == 2) {
    const T* s = row + 2 * q + off;  // reads 2L values: the caller keeps s[2L-1] inside the row
    return even_lanes(loadu<V>(s), loadu<V>(s + L), std::make_index_sequence<L>{});
  } else {
    V r;
    const T* s = row + q * sw + off;
    for (int l = 0; l < L; ++l) r[l] = s[l * sw];
    return r;
  }
}

// Output columns q whose window lies inside [0, W) (2L-wide loads for SW == 2 need one more column).
inline void interior_q(const PoolDesc& d, int64_t span, int64_t slack, int64_t& qlo, int64_t& qhi) {
  const int64_t sw = d.stride_w;
  qlo = std::min((d.pad_w + sw - 1) / sw, d.Q);
  int64_t num = d.W - 1 - span - slack + d.pad_w;  // need q*sw <= num
  qhi = num < 0 ? 0 : std::min(num / sw + 1, d.Q);
  if (qhi < qlo) qhi = qlo;
}

template <typename T, bool kIdx, int SW>
void max_fwd_nchw(const PoolDesc& d, const Tensor4& x, const Tensor4& y, const Tensor4* ind, int nthreads) {
  using V = typename Vec<T>::v;
  using IV = typename Vec<T>::iv;
  using I = typename Vec<T>::I;
  constexpr int L = Vec<T>::L;
  const T* X = static_cast<const T*>(x.data);
  T* Y = static_cast<T*>(y.data);
  int64_t* IND = kIdx ? static_cast<int64_t*>(ind->data) : nullptr;
  const int64_t sw = d.stride_w, dw = d.dil_w;
  int64_t qlo, qhi;
  interior_q(d, (d.kernel_w - 1) * dw, SW == 2 ? 1 : 0, qlo, qhi);
  const bool vec = qhi - qlo >= L;
  const IV lane_w = iota<T>() * (I)sw;  // lane l's column offset
  const V ninf = V{} - std::numeric_limits<T>::infinity();
  const int64_t rows = d.N * d.C * d.P;
  parallel_ranges(rows, (d.H * d.W + d.P * d.Q) * d.N * d.C, nthreads, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t p = r % d.P, nc = r / d.P, c = nc % d.C, n = nc / d.C;
      const T* xp = X + n * x.stride[0] + c * x.stride[1];
      T* yr = Y + n * y.stride[0] + c * y.stride[1] + p * y.stride[2];
      int64_t* ir = kIdx ? IND + n * ind->stride[0] + c * ind->stride[1] + p * ind->stride[2] : nullptr;
      const int64_t syq = y.stride[3], siq = kIdx ? ind->stride[3] : 0;
      auto scalar = [&](int64_t qa, int64_t qb) {
        for (int64_t q = qa; q < qb; ++q)
          max_window(d, xp, x.stride[2], int64_t(1), p, q, yr + q * syq, kIdx ? ir + q * siq : nullptr);
      };
      if (!vec) {
        scalar(0, d.Q);
        continue;
      }
      scalar(0, qlo);
      const MaxRange mr = max_range(d, p, qlo);  // rows are the same for every q
      for (int64_t qc = qlo;; qc += L) {
        const int64_t q = std::min(qc, qhi - L);
        V best = ninf;
        IV bi = (I)(mr.h0 * d.W + q * sw - d.pad_w) + lane_w;
        for (int64_t h = mr.h0; h < mr.h1; h += d.dil_h) {
          const T* row = xp + h * x.stride[2];
          for (int64_t j = 0; j < d.kernel_w; ++j) {
            const int64_t off = j * dw - d.pad_w;
            V v = load_taps<T, SW>(row, q, sw, off);
            auto m = (v > best) | (v != v);
            best = m ? v : best;
            if constexpr (kIdx) bi = m ? (I)(h * d.W + q * sw + off) + lane_w : bi;
          }
        }
        store_vec<T>(yr + q * syq, syq, best);
        if constexpr (kIdx) store_index<T>(ir + q * siq, siq, bi);
        if (q + L >= qhi) break;
      }
      scalar(qhi, d.Q);
    }
  });
}

template <typename T, int SW>
void avg_fwd_nchw(const PoolDesc& d, const Tensor4& x, const Tensor4& y, int nthreads) {
  using V = typename Vec<T>::v;
  constexpr int L = Vec<T>::L;
  const T* X = static_cast<const T*>(x.data);
  T* Y = static_cast<T*>(y.data);
  const int64_t sw = d.stride_w;
  int64_t qlo, qhi;
  interior_q(d, d.kernel_w - 1, SW == 2 ? 1 : 0, qlo, qhi);
  const bool vec = qhi - qlo >= L;
  const int64_t rows = d.N * d.C * d.P;
  parallel_ranges(rows, (d.H * d.W + d.P * d.Q) * d.N * d.C, nthreads, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t p = r % d.P, nc = r / d.P, c = nc % d.C, n = nc / d.C;
      const T* xp = X + n * x.stride[0] + c * x.stride[1];
      T* yr = Y + n * y.stride[0] + c * y.stride[1] + p * y.stride[2];
      const int64_t syq = y.stride[3];
      auto scalar = [&](int64_t qa, int64_t qb) {
        for (int64_t q = qa; q < qb; ++q) yr[q * syq] = avg_window(d, xp, x.stride[2], int64_t(1), p, q);
      };
      if (!vec) {
        scalar(0, d.Q);
        continue;
      }
      scalar(0, qlo);
      const AvgRange ar = avg_range(d, p, qlo);  // interior columns: same rows and divisor for all q
      const V div = V{} + T(ar.divisor);
      for (int64_t qc = qlo;; qc += L) {
        const int64_t q = std::min(qc, qhi - L);
        V sum = V{};
        for (int64_t h = ar.h0; h < ar.h1; ++h) {
          const T* row = xp + h * x.stride[2];
          for (int64_t j = 0; j < d.kernel_w; ++j) sum += load_taps<T, SW>(row, q, sw, j - d.pad_w);
        }
        store_vec<T>(yr + q * syq, syq, ar.h0 < ar.h1 ? sum / div : V{});
        if (q + L >= qhi) break;
      }
      scalar(qhi, d.Q);
    }
  });
}

// ---------------------------------------------------------------------------------------------------
// channels_last: one output pixel, channels [c, c + NV*L) as NV vectors.

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

template <typename T, bool kIdx>
void max_fwd_nhwc(const PoolDesc& d, const Tensor4& x, const Tensor4& y, const Tensor4* ind, int nthreads) {
  constexpr int L = Vec<T>::L;
  const T* X = static_cast<const T*>(x.data);
  T* Y = static_cast<T*>(y.data);
  int64_t* IND = kIdx ? static_cast<int64_t*>(ind->data) : nullptr;
  const int64_t pixels = d.N * d.P * d.Q;
  const int64_t syc = y.stride[1], sic = kIdx ? ind->stride[1] : 0;
  parallel_ranges(pixels, (d.H * d.W + d.P * d.Q) * d.N * d.C, nthreads, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t q = r % d.Q, np = r / d.Q, p = np % d.P, n = np / d.P;
      const T* xn = X + n * x.stride[0];
      T* yp = Y + n * y.stride[0] + p * y.stride[2] + q * y.stride[3];
      int64_t* ip = kIdx ? IND + n * ind->stride[0] + p * ind->stride[2] + q * ind->stride[3] : nullptr;
      const MaxRange mr = max_range(d, p, q);
      int64_t c = 0;
      for (; c + 4 * L <= d.C; c += 4 * L)
        max_pixel_block<T, kIdx, 4>(d, xn + c, x.stride[2], x.stride[3], mr, yp + c * syc, syc,
                                    kIdx ? ip + c * sic : nullptr, sic);
      for (; c + L <= d.C; c += L)
        max_pixel_block<T, kIdx, 1>(d, xn + c, x.stride[2], x.stride[3], mr, yp + c * syc, syc,
                                    kIdx ? ip + c * sic : nullptr, sic);
      for (; c < d.C; ++c)
        max_window(d, xn + c, x.stride[2], x.stride[3], p, q, yp + c * syc, kIdx ? ip + c * sic : nullptr);
    }
  });
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
  const V div = V{} + T(ar.divisor);
  for (int k = 0; k < NV; ++k) store_vec<T>(yp + k * L * syc, syc, empty ? V{} : sum[k] / div);
}

template <typename T>
void avg_fwd_nhwc(const PoolDesc& d, const Tensor4& x, const Tensor4& y, int nthreads) {
  constexpr int L = Vec<T>::L;
  const T* X = static_cast<const T*>(x.data);
  T* Y = static_cast<T*>(y.data);
  const int64_t pixels = d.N * d.P * d.Q, syc = y.stride[1];
  parallel_ranges(pixels, (d.H * d.W + d.P * d.Q) * d.N * d.C, nthreads, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t q = r % d.Q, np = r / d.Q, p = np % d.P, n = np / d.P;
      const T* xn = X + n * x.stride[0];
      T* yp = Y + n * y.stride[0] + p * y.stride[2] + q * y.stride[3];
      const AvgRange ar = avg_range(d, p, q);
      int64_t c = 0;
      for (; c + 4 * L <= d.C; c += 4 * L)
        avg_pixel_block<T, 4>(xn + c, x.stride[2], x.stride[3], ar, yp + c * syc, syc);
      for (; c + L <= d.C; c += L) avg_pixel_block<T, 1>(xn + c, x.stride[2], x.stride[3], ar, yp + c * syc, syc);
      for (; c < d.C; ++c) yp[c * syc] = avg_window(d, xn + c, x.stride[2], x.stride[3], p, q);
    }
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
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t p = r % d.P, nc = r / d.P, c = nc % d.C, n = nc / d.C;
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
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t p = r % d.P, nc = r / d.P, c = nc % d.C, n = nc / d.C;
      const T* xp = X + n * x.stride[0] + c * x.stride[1];
      for (int64_t q = 0; q < d.Q; ++q)
        Y[n * y.stride[0] + c * y.stride[1] + p * y.stride[2] + q * y.stride[3]] =
            avg_window(d, xp, x.stride[2], x.stride[3], p, q);
    }
  });
}

// True when the vector paths may blend fp32 indices as int32 (every index value < 2^31).
inline bool int32_indices_ok(const PoolDesc& d) {
  return (d.H + d.kernel_h * d.dil_h) * (d.W + d.kernel_w * d.dil_w) < (int64_t(1) << 31);
}

template <typename T, bool kIdx>
void max_fwd(const PoolDesc& d, const Tensor4& x, const Tensor4& y, const Tensor4* ind, int nthreads) {
  const bool idx_ok = sizeof(T) == 8 || !kIdx || int32_indices_ok(d);
  if (idx_ok && x.stride[1] == 1 && d.C > 1)
    max_fwd_nhwc<T, kIdx>(d, x, y, ind, nthreads);
  else if (idx_ok && x.stride[3] == 1 && d.stride_w == 1)
    max_fwd_nchw<T, kIdx, 1>(d, x, y, ind, nthreads);
  else if (idx_ok && x.stride[3] == 1 && d.stride_w == 2)
    max_fwd_nchw<T, kIdx, 2>(d, x, y, ind, nthreads);
  else if (idx_ok && x.stride[3] == 1)
    max_fwd_nchw<T, kIdx, 0>(d, x, y, ind, nthreads);
  else
    max_fwd_generic<T, kIdx>(d, x, y, ind, nthreads);
}

template <typename T>
void avg_fwd(const PoolDesc& d, const Tensor4& x, const Tensor4& y, int nthreads) {
  if (x.stride[1] == 1 && d.C > 1)
    avg_fwd_nhwc<T>(d, x, y, nthreads);
  else if (x.stride[3] == 1 && d.stride_w == 1)
    avg_fwd_nchw<T, 1>(d, x, y, nthreads);
  else if (x.stride[3] == 1 && d.stride_w == 2)
    avg_fwd_nchw<T, 2>(d, x, y, nthreads);
  else if (x.stride[3] == 1)
    avg_fwd_nchw<T, 0>(d, x, y, nthreads);
  else
    avg_fwd_generic<T>(d, x, y, nthreads);
}

// ---------------------------------------------------------------------------------------------------
// Backward. dx[n, c] = sum over outputs (p, q) in row-major order of their contribution; each task
// owns a disjoint slice of dx and zeroes it first.

// Zero dx[n, c0:c1, :, :].
template <typename T>
inline void zero_slice(const Tensor4& dx, int64_t n, int64_t c0, int64_t c1) {
  T* D = static_cast<T*>(dx.data) + n * dx.stride[0];
  const int64_t sc = dx.stride[1], sh = dx.stride[2], sw = dx.stride[3];
  for (int64_t h = 0; h < dx.size[2]; ++h)
    for (int64_t w = 0; w < dx.size[3]; ++w) {
      T* p = D + h * sh + w * sw;
      if (sc == 1)
        std::memset(static_cast<void*>(p + c0), 0, sizeof(T) * (c1 - c0));
      else
        for (int64_t c = c0; c < c1; ++c) p[c * sc] = T(0);
    }
}
template <typename T>
inline void zero_plane(const Tensor4& dx, int64_t n, int64_t c) {
  T* D = static_cast<T*>(dx.data) + n * dx.stride[0] + c * dx.stride[1];
  const int64_t sh = dx.stride[2], sw = dx.stride[3];
  if (sw == 1 && sh == dx.size[3]) {
    std::memset(static_cast<void*>(D), 0, sizeof(T) * dx.size[2] * dx.size[3]);
    return;
  }
  for (int64_t h = 0; h < dx.size[2]; ++h) {
    T* row = D + h * sh;
    if (sw == 1)
      std::memset(static_cast<void*>(row), 0, sizeof(T) * dx.size[3]);
    else
      for (int64_t w = 0; w < dx.size[3]; ++w) row[w * sw] = T(0);
  }
}

// Channel blocks for channels_last backward: enough (n, block) tasks to balance the threads.
inline int64_t channel_block(const PoolDesc& d, int nthreads, int L) {
  int64_t want = 4 * std::max(nthreads, 1);
  if (d.N >= want || d.C <= L) return d.C;
  int64_t per_n = (want + d.N - 1) / d.N;
  int64_t cb = (d.C + per_n - 1) / per_n;
  cb = (cb + L - 1) / L * L;
  return std::max<int64_t>(cb, L);
}

template <typename T>
void max_bwd(const PoolDesc& d, const Tensor4& dy, const Tensor4& ind, const Tensor4& dx, int nthreads) {
  const T* DY = static_cast<const T*>(dy.data);
  const int64_t* IND = static_cast<const int64_t*>(ind.data);
  T* DX = static_cast<T*>(dx.data);
  const int64_t plane = d.H * d.W;
  const int64_t cost = (d.H * d.W + 2 * d.P * d.Q) * d.N * d.C;
  // dx offset of flat index i = h * W + w; one multiply when the plane's rows are evenly spaced.
  const bool flat = dx.stride[2] == d.W * dx.stride[3] || d.H == 1;
  auto dx_off = [&](int64_t i) {
    return flat ? i * dx.stride[3] : (i / d.W) * dx.stride[2] + (i % d.W) * dx.stride[3];
  };
  if (dx.stride[1] == 1 && d.C > 1) {
    const int64_t cb = channel_block(d, nthreads, Vec<T>::L), nblk = (d.C + cb - 1) / cb;
    parallel_ranges(d.N * nblk, cost, nthreads, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t n = t / nblk, c0 = (t % nblk) * cb, c1 = std::min(c0 + cb, d.C);
        zero_slice<T>(dx, n, c0, c1);
        T* dxn = DX + n * dx.stride[0];
        for (int64_t p = 0; p < d.P; ++p)
          for (int64_t q = 0; q < d.Q; ++q) {
            const T* g = DY + n * dy.stride[0] + p * dy.stride[2] + q * dy.stride[3];
            const int64_t* ix = IND + n * ind.stride[0] + p * ind.stride[2] + q * ind.stride[3];
            for (int64_t c = c0; c < c1; ++c) {
              const int64_t i = ix[c * ind.stride[1]];
              if ((uint64_t)i < (uint64_t)plane) dxn[dx_off(i) + c * dx.stride[1]] += g[c * dy.stride[1]];
            }
          }
      }
    });
    return;
  }
  parallel_ranges(d.N * d.C, cost, nthreads, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / d.C, c = t % d.C;
      zero_plane<T>(dx, n, c);
      T* dxp = DX + n * dx.stride[0] + c * dx.stride[1];
      const T* g = DY + n * dy.stride[0] + c * dy.stride[1];
      const int64_t* ix = IND + n * ind.stride[0] + c * ind.stride[1];
      for (int64_t p = 0; p < d.P; ++p)
        for (int64_t q = 0; q < d.Q; ++q) {
          const int64_t i = ix[p * ind.stride[2] + q * ind.stride[3]];
          if ((uint64_t)i < (uint64_t)plane) dxp[dx_off(i)] += g[p * dy.stride[2] + q * dy.stride[3]];
        }
    }
  });
}

template <typename T>
void avg_bwd(const PoolDesc& d, const Tensor4& dy, const Tensor4& dx, int nthreads) {
  using V = typename Vec<T>::v;
  constexpr int L = Vec<T>::L;
  const T* DY = static_cast<const T*>(dy.data);
  T* DX = static_cast<T*>(dx.data);
  const int64_t cost = (d.H * d.W + d.P * d.Q) * d.N * d.C;
  if (dx.stride[1] == 1 && d.C > 1) {
    const int64_t cb = channel_block(d, nthreads, L), nblk = (d.C + cb - 1) / cb;
    const int64_t sdc = dy.stride[1];
    parallel_ranges(d.N * nblk, cost, nthreads, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t n = t / nblk, c0 = (t % nblk) * cb, c1 = std::min(c0 + cb, d.C);
        zero_slice<T>(dx, n, c0, c1);
        T* dxn = DX + n * dx.stride[0];
        for (int64_t p = 0; p < d.P; ++p)
          for (int64_t q = 0; q < d.Q; ++q) {
            const AvgRange ar = avg_range(d, p, q);
            if (ar.h0 >= ar.h1 || ar.w0 >= ar.w1) continue;
            const T* g = DY + n * dy.stride[0] + p * dy.stride[2] + q * dy.stride[3];
            const V div = V{} + T(ar.divisor);
            int64_t c = c0;
            for (; c + L <= c1; c += L) {
              V gv;
              if (sdc == 1)
                gv = loadu<V>(g + c);
              else
                for (int l = 0; l < L; ++l) gv[l] = g[(c + l) * sdc];
              gv = gv / div;
              for (int64_t h = ar.h0; h < ar.h1; ++h)
                for (int64_t w = ar.w0; w < ar.w1; ++w) {
                  T* px = dxn + h * dx.stride[2] + w * dx.stride[3] + c;
                  storeu(px, loadu<V>(px) + gv);
                }
            }
            for (; c < c1; ++c) {
              const T gs = g[c * sdc] / T(ar.divisor);
              for (int64_t h = ar.h0; h < ar.h1; ++h)
                for (int64_t w = ar.w0; w < ar.w1; ++w) dxn[h * dx.stride[2] + w * dx.stride[3] + c] += gs;
            }
          }
      }
    });
    return;
  }
  parallel_ranges(d.N * d.C, cost, nthreads, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / d.C, c = t % d.C;
      zero_plane<T>(dx, n, c);
      T* dxp = DX + n * dx.stride[0] + c * dx.stride[1];
      const T* g = DY + n * dy.stride[0] + c * dy.stride[1];
      const int64_t sh = dx.stride[2], sw = dx.stride[3];
      for (int64_t p = 0; p < d.P; ++p)
        for (int64_t q = 0; q < d.Q; ++q) {
          const AvgRange ar = avg_range(d, p, q);
          if (ar.h0 >= ar.h1 || ar.w0 >= ar.w1) continue;
          const T gs = g[p * dy.stride[2] + q * dy.stride[3]] / T(ar.divisor);
          for (int64_t h = ar.h0; h < ar.h1; ++h)
            for (int64_t w = ar.w0; w < ar.w1; ++w) dxp[h * sh + w * sw] += gs;
        }
    }
  });
}

}  // namespace

void max_pool2d_fwd(const PoolDesc& d, DType dt, const Tensor4& x, const Tensor4& y, const Tensor4* indices,
                    int nthreads) {
  if (d.N == 0) return;
  if (dt == kFloat32)
    indices ? max_fwd<float, true>(d, x, y, indices, nthreads) : max_fwd<float, false>(d, x, y, nullptr, nthreads);
  else
    indices ? max_fwd<double, true>(d, x, y, indices, nthreads) : max_fwd<double, false>(d, x, y, nullptr, nthreads);
}

void max_pool2d_bwd(const PoolDesc& d, DType dt, const Tensor4& dy, const Tensor4& indices, const Tensor4& dx,
                    int nthreads) {
  if (d.N == 0) return;
  if (dt == kFloat32)
    max_bwd<float>(d, dy, indices, dx, nthreads);
  else
    max_bwd<double>(d, dy, indices, dx, nthreads);
}

void avg_pool2d_fwd(const PoolDesc& d, DType dt, const Tensor4& x, const Tensor4& y, int nthreads) {
  if (d.N == 0) return;
  if (dt == kFloat32)
    avg_fwd<float>(d, x, y, nthreads);
  else
    avg_fwd<double>(d, x, y, nthreads);
}

void avg_pool2d_bwd(const PoolDesc& d, DType dt, const Tensor4& dy, const Tensor4& dx, int nthreads) {
  if (d.N == 0) return;
  if (dt == kFloat32)
    avg_bwd<float>(d, dy, dx, nthreads);
  else
    avg_bwd<double>(d, dy, dx, nthreads);
}

}  // namespace FC_ISA
}  // namespace cpu
}  // namespace fastconv

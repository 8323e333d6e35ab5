// Shared pieces of the pooling kernels (pool2d_isa.cpp, pool2d_fwd_nchw_isa.cpp, pool2d_fwd_nhwc_isa.cpp,
// pool2d_bwd_isa.cpp): the vector type and its loads, stores and broadcast, the fast max step and its
// NaN test, the work split, torch's max and avg window ranges; and the declarations of the kernels that
// pool2d_isa.cpp's path choice calls.
//
// The vector code is GCC vector extensions (plus masked loads, max and compares from intrinsics), so
// each ISA build (SSE2 / AVX2 / AVX-512) gets its own width; fp32 indices are blended as int32 lanes
// (planes under 2^31 positions, else the scalar path) and widened when stored.
//
// Included by the *_isa.cpp files, which are compiled once per ISA level: the helpers are in an anonymous
// namespace inside fastconv::cpu::FC_ISA (each translation unit has its own copy); the kernels are
// templates in fastconv::cpu::FC_ISA, explicitly instantiated (float and double, the flags the path
// choice uses) in the file that defines them.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu/kernels.h"

// Wider-than-native vectors (L int64 index lanes) are passed between inlined helpers only.
#pragma GCC diagnostic ignored "-Wpsabi"

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace fastconv {
namespace cpu {
namespace FC_ISA {
namespace {

#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#elif defined(__AVX2__)
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
  typedef int64_t i64 __attribute__((vector_size(kVecBytes * 8 / sizeof(T))));        // L int64
  // (vector typedefs live here: GCC drops vector_size with a value-dependent size in a function template)
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

// Every lane x. (Not V{} + x: +0 + -0 is +0, and a broadcast data value must keep its sign.) Lane 0
// shuffled to every lane, which is one broadcast instruction; GCC 12 compiles a loop of lane stores
// into one masked broadcast per lane (16 for fp32 on AVX-512).
template <class VT, size_t... Is>
inline VT splat_lane0(VT v, std::index_sequence<Is...>) {
  return __builtin_shufflevector(v, v, (Is * 0)...);
}
template <class VT, class T>
inline VT splat(T x) {
  VT v{};
  v[0] = x;
  return splat_lane0(v, std::make_index_sequence<sizeof(VT) / sizeof(T)>{});
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
      typedef int32_t h32 __attribute__((vector_size(kVecBytes / 2)));
      static_assert(sizeof(h32) == L2 * 4 && sizeof(H) == L2 * 8, "vector typedefs");
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

// The max step without indices. torch takes a tap when `v > best || isnan(v)` (so ties keep the first
// maximum and the last NaN wins); without NaNs that is v > best ? v : best, which is exactly x86's max
// instruction, one cheap operation instead of two compares, a mask merge and a blend. The fast paths
// use it and track whether any tap was NaN with a NanTest; where one was, the region is recomputed by
// the exact scan, so results stay torch's bit for bit. (Infinities need nothing: x86's max is exact
// for them, with windows and padding starting from -inf as torch's scan does.)
template <typename T>
inline typename Vec<T>::v max_keep(typename Vec<T>::v v, typename Vec<T>::v best) {
  using V [[maybe_unused]] = typename Vec<T>::v;  // (unused at the baseline level)
#if defined(__AVX512F__)
  if constexpr (sizeof(T) == 4)
    return (V)_mm512_max_ps((__m512)v, (__m512)best);
  else
    return (V)_mm512_max_pd((__m512d)v, (__m512d)best);
#elif defined(__AVX2__)
  if constexpr (sizeof(T) == 4)
    return (V)_mm256_max_ps((__m256)v, (__m256)best);
  else
    return (V)_mm256_max_pd((__m256d)v, (__m256d)best);
#else
  return v > best ? v : best;
#endif
}

// Whether any lane of the vectors given was NaN: ORed unordered-compare masks, one compare per pair
// of vectors and a one-cycle OR chain. Hot loops keep their own and add it to the caller's at the end:
// one the compiler must assume a vector store may alias (storeu is a memcpy) lives in memory, and its
// ORs become a chain of store-to-load forwards. (Not acc = v * 0 + acc: that also catches infinities,
// which max_keep handles exactly, and chains a 4-cycle FMA through every tap of a whole plane or pixel
// range: on the NCHW 3x3 stride-2 layer that chain alone costs 2000 cycles per plane.)
template <typename T>
struct NanTest {
  using V = typename Vec<T>::v;
#if defined(__AVX512F__)
  uint32_t seen = 0;
  void add(V a, V b) {
    if constexpr (sizeof(T) == 4)
      seen |= _mm512_cmp_ps_mask((__m512)a, (__m512)b, _CMP_UNORD_Q);
    else
      seen |= _mm512_cmp_pd_mask((__m512d)a, (__m512d)b, _CMP_UNORD_Q);
  }
  bool any() const { return seen != 0; }
#elif defined(__AVX2__)
  typename Vec<T>::iv seen{};
  void add(V a, V b) {
    if constexpr (sizeof(T) == 4)
      seen |= (typename Vec<T>::iv)_mm256_cmp_ps((__m256)a, (__m256)b, _CMP_UNORD_Q);
    else
      seen |= (typename Vec<T>::iv)_mm256_cmp_pd((__m256d)a, (__m256d)b, _CMP_UNORD_Q);
  }
  bool any() const {
    if constexpr (sizeof(T) == 4)
      return _mm256_movemask_ps((__m256)seen) != 0;
    else
      return _mm256_movemask_pd((__m256d)seen) != 0;
  }
#else
  typename Vec<T>::iv seen{};
  void add(V a, V b) { seen |= (a != a) | (b != b); }
  bool any() const {
    for (int l = 0; l < Vec<T>::L; ++l)
      if (seen[l]) return true;
    return false;
  }
#endif
  void add(T s) { add(splat<V>(s), splat<V>(s)); }
  void add(const NanTest& o) { seen |= o.seen; }
};

// Work split: [0, n) in 8 contiguous ranges per thread, taken dynamically, over at most nthreads
// threads; a few threads at most for small problems (`cost` ~ elements touched), where the fork would
// cost more than the work. Dynamic, because on a shared machine one core is often slower for a while:
// with one fixed range per thread the other waits at the barrier (pools of the bench table, 2
// threads: 5-10% of the samples in libgomp's wait). The split never changes a result: every output
// element is computed by one range, from its own inputs.
template <class F>
void parallel_ranges(int64_t n, int64_t cost, int nthreads, const F& f) {
  if (n <= 0) return;
  int64_t nt = std::min<int64_t>({(int64_t)std::max(nthreads, 1), n, 1 + cost / 16384});
  if (nt <= 1) {
    f(int64_t(0), n);
    return;
  }
#ifdef _OPENMP
  const int64_t nblk = std::min<int64_t>(n, 8 * nt);
#pragma omp parallel for num_threads((int)nt) schedule(dynamic, 1)
  for (int64_t b = 0; b < nblk; ++b) f(n * b / nblk, n * (b + 1) / nblk);
#else
  f(int64_t(0), n);
#endif
}

// The flattened index r = (a * B + b) * Cn + c, stepped without divisions.
struct Counter3 {
  int64_t a, b, c, B, Cn;
  Counter3(int64_t r, int64_t B_, int64_t Cn_) : a(r / Cn_ / B_), b(r / Cn_ % B_), c(r % Cn_), B(B_), Cn(Cn_) {}
  void next() {
    if (++c == Cn) {
      c = 0;
      if (++b == B) {
        b = 0;
        ++a;
      }
    }
  }
};

// First in-bounds position of a dilated window starting at `start` (torch: while (s < 0) s += dil).
inline int64_t first_inside(int64_t start, int64_t dil) {
  return start >= 0 ? start : start + ((-start + dil - 1) / dil) * dil;
}

struct MaxRange {
  int64_t h0, h1, w0, w1;  // dilated taps h0, h0 + dil_h, ... < h1 (likewise w)
};
// always_inline (also avg_range): otherwise GCC keeps both as out-of-line calls (a .constprop clone),
// made once per output row, and avg_fwd_nchw's once per chunk for the divisor (NCHW 2x2 avg in L2, one
// thread, C=48, 56x56: 0.71-0.72 us per plane inlined, against 0.94-0.95).
__attribute__((always_inline)) inline MaxRange max_range(const PoolDesc& d, int64_t p, int64_t q) {
  int64_t hs = p * d.stride_h - d.pad_h, ws = q * d.stride_w - d.pad_w;
  return {first_inside(hs, d.dil_h), std::min(hs + (d.kernel_h - 1) * d.dil_h + 1, d.H),
          first_inside(ws, d.dil_w), std::min(ws + (d.kernel_w - 1) * d.dil_w + 1, d.W)};
}

struct AvgRange {
  int64_t h0, h1, w0, w1;  // clipped window [h0, h1) x [w0, w1); empty -> output 0
  // divisor = div_h * div_w: the window's height and width (padded with count_include_pad, else
  // clipped), or divisor_override and 1; div_h depends on p alone, div_w on q alone
  int64_t div_h, div_w, divisor;
};
__attribute__((always_inline)) inline AvgRange avg_range(const PoolDesc& d, int64_t p, int64_t q) {
  int64_t h0 = p * d.stride_h - d.pad_h, w0 = q * d.stride_w - d.pad_w;
  int64_t h1 = std::min(h0 + d.kernel_h, d.H + d.pad_h), w1 = std::min(w0 + d.kernel_w, d.W + d.pad_w);
  const int64_t padded_h = h1 - h0, padded_w = w1 - w0;
  h0 = std::max<int64_t>(h0, 0);
  w0 = std::max<int64_t>(w0, 0);
  h1 = std::min(h1, d.H);
  w1 = std::min(w1, d.W);
  int64_t div_h = d.count_include_pad ? padded_h : h1 - h0, div_w = d.count_include_pad ? padded_w : w1 - w0;
  if (d.divisor_override) div_h = d.divisor_override, div_w = 1;
  return {h0, h1, w0, w1, div_h, div_w, div_h * div_w};
}

// The channel loop of the channels_last kernels: block(c, nv) computes channels [c, c + nv*L) as nv
// vectors (nv a std::integral_constant: 4, then 1); channels past the last whole vector are one more
// vector ending at channel C, which recomputes a few channels with the same bits (so its c, C - L, is
// the one that is not a multiple of L); only a C under one vector takes scalar(c) per channel.
template <int L, class Block, class Scalar>
__attribute__((always_inline)) inline void for_channel_vectors(int64_t C, const Block& block, const Scalar& scalar) {
  int64_t c = 0;
  for (; c + 4 * L <= C; c += 4 * L) block(c, std::integral_constant<int, 4>{});
  for (; c + L <= C; c += L) block(c, std::integral_constant<int, 1>{});
  if (c == C) return;
  if (C >= L) return block(C - L, std::integral_constant<int, 1>{});
  for (; c < C; ++c) scalar(c);
}

// Floats per input row of the separable pass's row maxima: the chunks store whole vectors.
inline int64_t separable_row_floats(const PoolDesc& d, int64_t L) { return (std::max(d.Q, L) + L - 1) / L * L; }

// Whether div is a power of two (1, 2, 4, ...), so that multiplying by 1/div is bitwise the same as
// dividing by it (both are the correctly rounded value of the same real number).
template <typename T>
inline bool exact_reciprocal(T div) {
  const int64_t i = (int64_t)div;
  return (T)i == div && i > 0 && (i & (i - 1)) == 0;
}

// Exact division by a divisor d.
template <typename VT, typename T>
inline VT divide(VT s, T div) {
  return exact_reciprocal(div) ? s * (T(1) / div) : s / div;
}

}  // namespace

// The kernels behind the path choice (pool2d_isa.cpp). Each reads x (dy) and writes y, indices (dx)
// through their strides; SW: stride_w when it is 1 or 2, else 0 (any stride); kIdx: with indices.

// NCHW forward, pool2d_fwd_nchw_isa.cpp: the row kernels (one output row per task, vectorized along q),
// the separable max and the stride-2 2x2 / 3x3 column strips (a plane per task, no indices).
template <typename T, bool kIdx, int SW>
void max_fwd_nchw(const PoolDesc& d, const Tensor4& x, const Tensor4& y, const Tensor4* ind, int nthreads);
template <typename T, int SW>
void avg_fwd_nchw(const PoolDesc& d, const Tensor4& x, const Tensor4& y, int nthreads);
template <typename T, int SW>
void max_fwd_nchw_separable(const PoolDesc& d, const Tensor4& x, const Tensor4& y, int nthreads);
template <typename T, bool kMax, int K>
void pool_s2_nchw(const PoolDesc& d, const Tensor4& x, const Tensor4& y, int nthreads);

// channels_last forward (vectorized along c) and the scalar window for any strides,
// pool2d_fwd_nhwc_isa.cpp.
template <typename T, bool kIdx>
void max_fwd_nhwc(const PoolDesc& d, const Tensor4& x, const Tensor4& y, const Tensor4* ind, int nthreads);
template <typename T>
void avg_fwd_nhwc(const PoolDesc& d, const Tensor4& x, const Tensor4& y, int nthreads);
template <typename T, bool kIdx>
void max_fwd_generic(const PoolDesc& d, const Tensor4& x, const Tensor4& y, const Tensor4* ind, int nthreads);
template <typename T>
void avg_fwd_generic(const PoolDesc& d, const Tensor4& x, const Tensor4& y, int nthreads);

// Backward, pool2d_bwd_isa.cpp: max_bwd picks the channels_last gather or the scatter.
template <typename T>
void max_bwd(const PoolDesc& d, const Tensor4& dy, const Tensor4& ind, const Tensor4& dx, int nthreads);
template <typename T>
void max_bwd_scatter(const PoolDesc& d, const Tensor4& dy, const Tensor4& ind, const Tensor4& dx, int nthreads);
template <typename T>
void avg_bwd_nhwc(const PoolDesc& d, const Tensor4& dy, const Tensor4& dx, int nthreads);
template <typename T>
void avg_bwd_nchw(const PoolDesc& d, const Tensor4& dy, const Tensor4& dx, int nthreads);

}  // namespace FC_ISA
}  // namespace cpu
}  // namespace fastconv

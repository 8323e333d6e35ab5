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
//    so every load is contiguous. Forward work: the flattened (n, p, q) pixels split evenly.
//  - NCHW (stride[3] == 1): one output row (n, c, p) at a time, vectorized along q in chunks of L
//    outputs (the last chunk of a row overlaps the previous one). A tap is one unaligned load for
//    stride 1, two loads and an even/odd-lane shuffle for stride 2, a lane gather otherwise. Chunks
//    whose windows reach into the padding (or rows narrower than L) use masked loads that fill with
//    the padding value (-inf for max: never taken; 0 for avg: +0 added to a sum that started at +0
//    leaves it bitwise unchanged), with per-lane initial indices / divisors from small tables built
//    once per call, so borders cost no scalar windows. Without indices, stride-2 2x2 and 3x3 windows
//    (VGG's, ResNet's) run pool_s2_nchw instead: a plane per task in column strips that carry the
//    window row shared by two output rows in registers; other max windows taller than their stride
//    run max_fwd_nchw_separable. The max paths without indices use x86's max instruction and redo a
//    plane (or channels_last pixel range) that read a NaN with the exact scan.
//  - anything else: the scalar window per output.
//  Backward: max is a scatter into a zeroed slice of dx owned by one task ((n, c) plane, or (n, channel
//  block) for channels_last dx); on these shapes it beat a gather form, whose work grows with the
//  window overlap. avg NCHW is a gather along w: dy/divisor rows are spread with zeros to the input
//  columns they cover, and each dx element sums its terms in the scatter's (p, q) order (bitwise
//  torch's) with contiguous vector loads; avg channels_last scatters C-vectors.
// The vector code is GCC vector extensions (plus masked loads from intrinsics), so each ISA build
// (SSE2 / AVX2 / AVX-512) gets its own width; fp32 indices are blended as int32 lanes (planes under
// 2^31 positions, else the scalar path) and widened when stored. Results do not depend on the work
// split: bitwise identical for any thread count, and equal to torch's on every path.
// Measured (N=32, C=64, 56x56, fp32, 2 threads, Xeon AVX-512): see the table in the pooling issue's
// report; NCHW forward is ~10x torch, channels_last forward at the memory bound (~57 GB/s).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

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

template <class VT, size_t... Is>
inline VT even_lanes(VT a, VT b, std::index_sequence<Is...>) {
  return __builtin_shufflevector(a, b, (2 * Is)...);
}
template <class VT, size_t... Is>
inline VT odd_lanes(VT a, VT b, std::index_sequence<Is...>) {
  return __builtin_shufflevector(a, b, (2 * Is + 1)...);
}
// Every lane x. (Not V{} + x: +0 + -0 is +0, and a broadcast data value must keep its sign.) Lane 0
// shuffled to every lane, which is one broadcast instruction; GCC 12 compiled a loop of lane stores
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
// (v[1], ..., v[L-1], w[0]): v moved down one lane, w's first lane appended.
template <class VT, size_t... Is>
inline VT shift_in(VT v, VT w, std::index_sequence<Is...>) {
  return __builtin_shufflevector(v, w, (Is + 1)...);
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
// ORs become a chain of store-to-load forwards. (The test before, acc = v * 0 + acc, also caught infinities,
// which max_keep handles exactly, and chained a 4-cycle FMA through every tap of a whole plane or
// pixel range: on the NCHW 3x3 stride-2 layer that chain alone was 2000 of its cycles per plane.)
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
// with one fixed range per thread the other waited at the barrier (pools of the bench table, 2
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
// always_inline (also avg_range): GCC had kept both as out-of-line calls (a .constprop clone), made once
// per output row, and avg_fwd_nchw's once per chunk for the divisor; inlined, NCHW 2x2 avg in L2 (one
// thread, C=48, 56x56) went from 0.94-0.95 to 0.71-0.72 us per plane.
__attribute__((always_inline)) inline MaxRange max_range(const PoolDesc& d, int64_t p, int64_t q) {
  int64_t hs = p * d.stride_h - d.pad_h, ws = q * d.stride_w - d.pad_w;
  return {first_inside(hs, d.dil_h), std::min(hs + (d.kernel_h - 1) * d.dil_h + 1, d.H),
          first_inside(ws, d.dil_w), std::min(ws + (d.kernel_w - 1) * d.dil_w + 1, d.W)};
}

// ---------------------------------------------------------------------------------------------------
// Software prefetch into L2 for the channels_last forward kernels (for_pixels). On the AMD Zen 4 VM of
// the bench (2 threads, N=32, C=64, 56x56, fp32) those pools took about the sum of their in-cache
// compute time and the time to stream their input, not the larger of the two: the hardware prefetchers
// do not run far enough ahead of a window loop that walks three rows at once. Prefetching (prefetcht1;
// prefetcht0 gained less) the columns that the window 8 pixels ahead adds, medians interleaved in one
// process: 3x3 stride-2 max 1.20 -> 1.01 ms, 2x2 max 1.01 -> 0.93, 3x3 stride-2 avg 1.43 -> 1.06,
// 2x2 avg 1.05 -> 0.89. NCHW is one sequential stream that the hardware follows: prefetching the next
// plane's rows, or the stream 1-16 KiB ahead, made those kernels slower (2x2 max 1.09 -> 1.36 ms), so
// they have none. An asm statement, not __builtin_prefetch: GCC 12 deletes a loop whose only
// statements are builtin prefetches.
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

// Output pixels ahead of the one computed whose input a channels_last kernel prefetches: 4-8 were
// best on the bench's pools (16 about even with none; 32 worse).
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
// NCHW rows, vectorized along q: a chunk is L consecutive outputs q..q+L-1 of one row (n, c, p).
// Tap (row h, column j) of lane l reads row[(q + l) * sw + off], off = j * dil_w - pad_w.
// An interior chunk (every position it reads lies in [0, W)) uses plain loads; an edge chunk (window
// clipped by padding, or fewer than L outputs in the row) uses masked loads that fill the lanes outside
// the row with the padding value (-inf for max: never taken; 0 for avg: adding +0 leaves a sum that
// started at +0 bitwise unchanged), so the padding costs no scalar code. Rows of Q >= L end with a
// chunk that overlaps the previous one.

// v[l] = p[l] for 0 <= pos + l < W, else fill (pos: the column of p[0]; lanes outside are not read).
template <typename T>
inline typename Vec<T>::v load_part(const T* p, int64_t pos, int64_t W, T fill) {
  using V = typename Vec<T>::v;
  constexpr int L = Vec<T>::L;
  if (pos >= 0 && pos + L <= W) return loadu<V>(p);
  const int64_t lo = std::min<int64_t>(std::max<int64_t>(-pos, 0), L);
  const int64_t hi = std::max<int64_t>(std::min<int64_t>(W - pos, L), lo);
  if (lo == hi) return V{} + fill;
#if defined(__AVX512F__)
  const uint32_t m = ((uint32_t(1) << hi) - 1) & ~((uint32_t(1) << lo) - 1);
  if constexpr (sizeof(T) == 4)
    return (V)_mm512_mask_loadu_ps(_mm512_set1_ps(fill), (__mmask16)m, p);
  else
    return (V)_mm512_mask_loadu_pd(_mm512_set1_pd(fill), (__mmask8)m, p);
#elif defined(__AVX2__)
  using IV = typename Vec<T>::iv;
  using I = typename Vec<T>::I;
  const IV lane = iota<T>();
  const IV in = (lane >= (I)lo) & (lane < (I)hi);
  V r;
  if constexpr (sizeof(T) == 4)
    r = (V)_mm256_maskload_ps(p, (__m256i)in);
  else
    r = (V)_mm256_maskload_pd(p, (__m256i)in);
  return in ? r : V{} + fill;
#else
  V r = V{} + fill;
  for (int64_t l = lo; l < hi; ++l) r[l] = p[l];
  return r;
#endif
}

template <typename T, int SW, bool kEdge>  // SW: 1, 2, or 0 (any stride)
inline typename Vec<T>::v load_taps(const T* row, int64_t pos, int64_t sw, int64_t W, T fill) {
  using V = typename Vec<T>::v;
  constexpr int L = Vec<T>::L;
  const T* s = row + pos;  // lane 0's column
  if constexpr (SW == 1) {
    return kEdge ? load_part(s, pos, W, fill) : loadu<V>(s);
  } else if constexpr (SW == 2) {  // 2L consecutive values, even lanes kept
    if (kEdge)
      return even_lanes(load_part(s, pos, W, fill), load_part(s + L, pos + L, W, fill),
                        std::make_index_sequence<L>{});
    if (pos + 2 * L <= W) return even_lanes(loadu<V>(s), loadu<V>(s + L), std::make_index_sequence<L>{});
    // at the row's end, the 2L values from pos - 1, odd lanes kept: never reads past column W - 1
    return odd_lanes(loadu<V>(s - 1), loadu<V>(s - 1 + L), std::make_index_sequence<L>{});
  } else {
    V r;
    for (int l = 0; l < L; ++l) {
      const int64_t w = pos + l * sw;
      r[l] = (!kEdge || (w >= 0 && w < W)) ? s[l * sw] : fill;
    }
    return r;
  }
}

// Columns a chunk at q reads: [q*sw - pad_w, q*sw - pad_w + seg) (for SW == 2, a 2L-wide load that
// would pass the row's end reads from one column earlier instead, still inside the span).
inline int64_t chunk_span(const PoolDesc& d, int L, int64_t dil_w) {
  return (L - 1) * d.stride_w + (d.kernel_w - 1) * dil_w + 1;
}

template <typename T>
inline void store_lanes(T* p, int64_t stride, typename Vec<T>::v x, int64_t n) {
  if (n == Vec<T>::L) return store_vec<T>(p, stride, x);
  for (int64_t l = 0; l < n; ++l) p[l * stride] = x[l];
}
template <typename T>
inline void store_index_lanes(int64_t* p, int64_t stride, typename Vec<T>::iv x, int64_t n) {
  if (n == Vec<T>::L) return store_index<T>(p, stride, x);
  for (int64_t l = 0; l < n; ++l) p[l * stride] = x[l];
}

// Iterates the chunks of a row: f(q, lanes, edge).
template <int L, int SW, class F>
inline void for_chunks(const PoolDesc& d, int64_t seg, const F& f) {
  if (d.Q < L) return f(int64_t(0), d.Q, true);
  for (int64_t qc = 0;; qc += L) {
    const int64_t q = std::min(qc, d.Q - L), ws = q * d.stride_w - d.pad_w;
    // (SW == 2: a load at column 0 of a row narrower than 2L has no in-row alternative)
    f(q, int64_t(L), ws < 0 || ws + seg > d.W || (SW == 2 && ws == 0 && d.W < 2 * L));
    if (q + L >= d.Q) break;
  }
}

// The chunks of a row, the same for every row: edge >= 0 numbers the edge chunks (for their tables).
struct Chunk {
  int64_t q, lanes, edge;
};
template <int L, int SW>
std::vector<Chunk> row_chunks(const PoolDesc& d, int64_t seg) {
  std::vector<Chunk> v;
  int64_t ne = 0;
  for_chunks<L, SW>(d, seg, [&](int64_t q, int64_t lanes, bool edge) { v.push_back({q, lanes, edge ? ne++ : -1}); });
  return v;
}

// wfirst (edge chunks): each lane's first in-bounds dilated column, torch's initial index.
template <typename T, bool kIdx, int SW, bool kEdge>
inline void max_chunk(const PoolDesc& d, const T* xp, int64_t sxh, const MaxRange& mr, int64_t q,
                      const typename Vec<T>::I* wfirst, typename Vec<T>::v& best, typename Vec<T>::iv& bi) {
  using V = typename Vec<T>::v;
  using IV = typename Vec<T>::iv;
  using I = typename Vec<T>::I;
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  const int64_t sw = d.stride_w, ws = q * sw - d.pad_w;
  const IV lane_w = iota<T>() * (I)sw;
  best = V{} + kNegInf;
  if constexpr (kIdx) {
    if (!kEdge)
      bi = (I)(mr.h0 * d.W + ws) + lane_w;
    else
      bi = (I)(mr.h0 * d.W) + loadu<IV>(wfirst);
  }
  for (int64_t h = mr.h0; h < mr.h1; h += d.dil_h) {
    const T* row = xp + h * sxh;
    for (int64_t j = 0; j < d.kernel_w; ++j) {
      const int64_t pos = q * sw + j * d.dil_w - d.pad_w;
      V v = load_taps<T, SW, kEdge>(row, pos, sw, d.W, kNegInf);
      auto m = (v > best) | (v != v);
      best = m ? v : best;
      if constexpr (kIdx) bi = m ? (I)(h * d.W + pos) + lane_w : bi;
    }
  }
}

// Output row p of plane xp (row stride sxh) into yr (column stride syq), indices into ir when kIdx.
template <typename T, bool kIdx, int SW>
inline void max_row(const PoolDesc& d, const T* xp, int64_t sxh, T* yr, int64_t syq, int64_t* ir, int64_t siq,
                    int64_t p, const std::vector<Chunk>& chunks, const typename Vec<T>::I* wfirst) {
  constexpr int L = Vec<T>::L;
  const MaxRange mr = max_range(d, p, 0);  // the rows are the same for every q
  for (const Chunk& ch : chunks) {
    typename Vec<T>::v best;
    typename Vec<T>::iv bi;
    if (ch.edge >= 0)
      max_chunk<T, kIdx, SW, true>(d, xp, sxh, mr, ch.q, kIdx ? wfirst + ch.edge * L : nullptr, best, bi);
    else
      max_chunk<T, kIdx, SW, false>(d, xp, sxh, mr, ch.q, nullptr, best, bi);
    store_lanes<T>(yr + ch.q * syq, syq, best, ch.lanes);
    if constexpr (kIdx) store_index_lanes<T>(ir + ch.q * siq, siq, bi, ch.lanes);
  }
}

// The max of every tap of input row h for each chunk's L outputs, into hrow[q .. q + L) (the chunks
// overlap at the row's end and write equal values); nan sees every tap. Padding taps read -inf.
template <typename T, int SW>
inline void max_hrow(const PoolDesc& d, const T* row, const std::vector<Chunk>& chunks, T* hrow, NanTest<T>& nan) {
  using V = typename Vec<T>::v;
  constexpr T kPad = -std::numeric_limits<T>::infinity();
  const int64_t sw = d.stride_w;
  for (const Chunk& ch : chunks) {
    V best = splat<V>(kPad);
    for (int64_t j = 0; j < d.kernel_w; ++j) {
      const int64_t pos = ch.q * sw + j * d.dil_w - d.pad_w;
      const V v = ch.edge >= 0 ? load_taps<T, SW, true>(row, pos, sw, d.W, kPad)
                               : load_taps<T, SW, false>(row, pos, sw, d.W, kPad);
      best = max_keep<T>(v, best);
      nan.add(v, v);
    }
    storeu(hrow + ch.q, best);
  }
}

// Floats per input row of the separable pass's row maxima: the chunks store whole vectors.
inline int64_t separable_row_floats(const PoolDesc& d, int64_t L) { return (std::max(d.Q, L) + L - 1) / L * L; }

// Max pooling without indices, separable, a plane per task: the row maxima of every input row of the
// plane (max_hrow) into a buffer, then output row p is the max over its rows' maxima. Both passes keep
// the earlier value on a tie, so every output is the first maximum in row-major order, as torch's scan
// (this matters only for the sign of a zero); a plane with a NaN is redone by the exact scan
// (max_row). Against the one-pass row scan each input row's taps are computed once instead of once per
// output row that reads it (1.5 times for 3x3 stride 2), and a 3x3 window costs 2 + 2 max instructions
// per output vector instead of 9 compare-and-blend steps: C=64, 56x56, 3x3 stride 2, fp32, one thread,
// data in L2, 1.45-1.55 -> 0.82-0.87 us per plane. (Stride-2 2x2 and 3x3 windows have since moved to
// pool_s2_nchw; this serves the other windows taller than their stride, e.g. 3x3 stride 1.)
template <typename T, int SW>
void max_fwd_nchw_separable(const PoolDesc& d, const Tensor4& x, const Tensor4& y, int nthreads) {
  using V = typename Vec<T>::v;
  constexpr int L = Vec<T>::L;
  const T* X = static_cast<const T*>(x.data);
  T* Y = static_cast<T*>(y.data);
  const std::vector<Chunk> chunks = row_chunks<L, SW>(d, chunk_span(d, L, d.dil_w));
  const int64_t ldh = separable_row_floats(d, L);
  std::vector<MaxRange> rows(d.P);  // input rows of each output row
  for (int64_t p = 0; p < d.P; ++p) rows[p] = max_range(d, p, 0);
  parallel_ranges(d.N * d.C, (d.H * d.W + d.P * d.Q) * d.N * d.C, nthreads, [&](int64_t r0, int64_t r1) {
    std::vector<T> hbuf(d.H * ldh);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / d.C, c = r % d.C;
      const T* xp = X + n * x.stride[0] + c * x.stride[1];
      T* yp = Y + n * y.stride[0] + c * y.stride[1];
      // Output row p is emitted as soon as its last input row has its maxima, so that the plane's
      // input loads stay spread over its work: emitting every row after the whole plane's row pass
      // left the memory idle during the column pass, and the layer (3x3 stride 2, N=32, C=64, 56x56,
      // 2 threads) took as long as the row scan's 2.3 ms; interleaved, 1.3-1.6 ms.
      NanTest<T> nan;
      int64_t next_p = 0;  // output rows before it are done
      const auto emit = [&](int64_t p) {
        T* yr = yp + p * y.stride[2];
        const MaxRange& mr = rows[p];
        if (mr.h0 >= mr.h1)  // no input row (dilation in ceil mode): the exact scan's -inf
          return max_row<T, false, SW>(d, xp, x.stride[2], yr, y.stride[3], nullptr, 0, p, chunks, nullptr);
        const T* h0 = hbuf.data() + mr.h0 * ldh;
        const int64_t hstep = d.dil_h * ldh, nh = (mr.h1 - 1 - mr.h0) / d.dil_h + 1;
        for (const Chunk& ch : chunks) {
          V best = loadu<V>(h0 + ch.q);
          for (int64_t i = 1; i < nh; ++i) best = max_keep<T>(loadu<V>(h0 + i * hstep + ch.q), best);
          store_lanes<T>(yr + ch.q * y.stride[3], y.stride[3], best, ch.lanes);
        }
      };
      for (int64_t h = 0; h < d.H; ++h) {
        max_hrow<T, SW>(d, xp + h * x.stride[2], chunks, hbuf.data() + h * ldh, nan);
        for (; next_p < d.P && rows[next_p].h1 <= h + 1; ++next_p) emit(next_p);
      }
      for (; next_p < d.P; ++next_p) emit(next_p);
      if (nan.any())  // a NaN in the plane: torch's exact scan, row by row
        for (int64_t pr = 0; pr < d.P; ++pr)
          max_row<T, false, SW>(d, xp, x.stride[2], yp + pr * y.stride[2], y.stride[3], nullptr, 0, pr, chunks,
                                nullptr);
    }
  });
}

template <typename T, bool kIdx, int SW>
void max_fwd_nchw(const PoolDesc& d, const Tensor4& x, const Tensor4& y, const Tensor4* ind, int nthreads) {
  constexpr int L = Vec<T>::L;
  const T* X = static_cast<const T*>(x.data);
  T* Y = static_cast<T*>(y.data);
  int64_t* IND = kIdx ? static_cast<int64_t*>(ind->data) : nullptr;
  const int64_t seg = chunk_span(d, L, d.dil_w);
  const int64_t syq = y.stride[3], siq = kIdx ? ind->stride[3] : 0;
  const std::vector<Chunk> chunks = row_chunks<L, SW>(d, seg);
  std::vector<typename Vec<T>::I> wfirst;
  for (const Chunk& ch : chunks)
    if (ch.edge >= 0)
      for (int l = 0; l < L; ++l)
        wfirst.push_back((typename Vec<T>::I)first_inside((ch.q + l) * d.stride_w - d.pad_w, d.dil_w));
  parallel_ranges(d.N * d.C * d.P, (d.H * d.W + d.P * d.Q) * d.N * d.C, nthreads, [&](int64_t r0, int64_t r1) {
    Counter3 it(r0, d.C, d.P);
    for (int64_t r = r0; r < r1; ++r, it.next()) {
      const int64_t n = it.a, c = it.b, p = it.c;
      const T* xp = X + n * x.stride[0] + c * x.stride[1];
      T* yr = Y + n * y.stride[0] + c * y.stride[1] + p * y.stride[2];
      int64_t* ir = kIdx ? IND + n * ind->stride[0] + c * ind->stride[1] + p * ind->stride[2] : nullptr;
      max_row<T, kIdx, SW>(d, xp, x.stride[2], yr, syq, ir, siq, p, chunks, wfirst.data());
    }
  });
}

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

template <typename T, int SW, bool kEdge>
inline typename Vec<T>::v avg_chunk(const PoolDesc& d, const T* xp, int64_t sxh, const AvgRange& rows, int64_t q) {
  typename Vec<T>::v sum{};
  for (int64_t h = rows.h0; h < rows.h1; ++h) {
    const T* row = xp + h * sxh;
    for (int64_t j = 0; j < d.kernel_w; ++j)
      sum += load_taps<T, SW, kEdge>(row, q * d.stride_w + j - d.pad_w, d.stride_w, d.W, T(0));
  }
  return sum;
}

template <typename T, int SW>
void avg_fwd_nchw(const PoolDesc& d, const Tensor4& x, const Tensor4& y, int nthreads) {
  using V = typename Vec<T>::v;
  constexpr int L = Vec<T>::L;
  const T* X = static_cast<const T*>(x.data);
  T* Y = static_cast<T*>(y.data);
  const int64_t seg = chunk_span(d, L, 1), syq = y.stride[3];
  const std::vector<Chunk> chunks = row_chunks<L, SW>(d, seg);
  std::vector<T> edge_div;  // edge chunks: [edge][p][lane] divisor, 0 for an empty window (output 0)
  for (const Chunk& ch : chunks)
    if (ch.edge >= 0)
      for (int64_t p = 0; p < d.P; ++p)
        for (int l = 0; l < L; ++l) {
          const AvgRange ar = avg_range(d, p, ch.q + l);
          edge_div.push_back(ar.h0 >= ar.h1 || ar.w0 >= ar.w1 ? T(0) : T(ar.divisor));
        }
  parallel_ranges(d.N * d.C * d.P, (d.H * d.W + d.P * d.Q) * d.N * d.C, nthreads, [&](int64_t r0, int64_t r1) {
    Counter3 it(r0, d.C, d.P);
    for (int64_t r = r0; r < r1; ++r, it.next()) {
      const int64_t n = it.a, c = it.b, p = it.c;
      const T* xp = X + n * x.stride[0] + c * x.stride[1];
      T* yr = Y + n * y.stride[0] + c * y.stride[1] + p * y.stride[2];
      const AvgRange rows = avg_range(d, p, 0);  // rows (h0, h1) are the same for every q
      for (const Chunk& ch : chunks) {
        V out;
        if (ch.edge < 0) {  // whole window inside the row: one divisor for the chunk
          const V sum = avg_chunk<T, SW, false>(d, xp, x.stride[2], rows, ch.q);
          out = rows.h0 < rows.h1 ? divide(sum, T(avg_range(d, p, ch.q).divisor)) : V{};
        } else {
          const V sum = avg_chunk<T, SW, true>(d, xp, x.stride[2], rows, ch.q);
          const V dv = loadu<V>(edge_div.data() + (ch.edge * d.P + p) * L);
          out = dv != 0 ? sum / dv : V{};
        }
        store_lanes<T>(yr + ch.q * syq, syq, out, ch.lanes);
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------------
// NCHW, stride 2, K x K windows with K = 2 or 3, no dilation, no indices: the pooling layers of VGG,
// ResNet (3x3 stride 2 pad 1) and most CNNs, a plane per task, in column strips: a chunk of L outputs
// at q walks down every output row p, so that the window row that two output rows share (K = 3) is
// read and shuffled once, its taps carried in registers to the next row. Lane l of the chunk reads
// columns b + 2l + j (b = 2q - pad_w, tap j < K) of each window row: two loads of the 2L columns from
// b give tap 0 (their even lanes) and tap 1 (odd lanes); tap 2 is tap 0 moved down one lane with
// column b + 2L appended. The taps are combined in torch's row-major order: max takes each row's max,
// then the rows' (a tie keeps the earlier value, so the result is the first maximum in row-major
// order); avg keeps one running sum from +0 over the taps in order.
// Against the kernels these replace (max_fwd_nchw_separable for 3x3 max, the row scan max_fwd_nchw for
// 2x2, avg_fwd_nchw, whose runtime tap loops were mostly control), one thread, N=1, C=24, 56x56 fp32
// planes in L2, min of 3 processes, ns per plane: 3x3 max 1426 -> 404, 3x3 avg 1402 -> 465, 2x2 max
// 745 -> 279, 2x2 avg 712 -> 294. The same tap code in row-major order (each output row's chunks in
// turn, the shared row read twice) took 730-760 for 3x3 max; the strips' order also lets the
// out-of-order core overlap the independent output rows of a strip. At full size (N=32, C=64, 2
// threads) all four now take 420-500 ns per plane, about 35 GB/s: the memory's rate on this VM.
// Columns outside the row (padding, or a chunk that ends past the row) come from masked loads filled
// with the padding value, and rows outside the plane are that value: -inf for max, torch's start
// value, so it changes no result, and +0 for avg, which leaves a sum that started at +0 bitwise
// unchanged. Max planes with a NaN are redone by the exact scan (see max_keep).
template <typename T, bool kMax, int K>
struct S2Row {  // one window row of a chunk: its max (max) or its K taps (avg)
  typename Vec<T>::v v[kMax ? 1 : K];
};

template <typename T, bool kMax, int K, bool kInside>
inline S2Row<T, kMax, K> s2_row(const T* xp, int64_t sxh, int64_t h, int64_t H, int64_t b, int64_t W,
                                NanTest<T>& nan) {
  using V = typename Vec<T>::v;
  constexpr int L = Vec<T>::L;
  constexpr T kFill = kMax ? -std::numeric_limits<T>::infinity() : T(0);
  S2Row<T, kMax, K> r;
  if (h < 0 || h >= H) {
    for (V& v : r.v) v = splat<V>(kFill);
    return r;
  }
  const T* row = xp + h * sxh + b;
  const V a = kInside ? loadu<V>(row) : load_part(row, b, W, kFill);
  const V c = kInside ? loadu<V>(row + L) : load_part(row + L, b + L, W, kFill);
  const V t0 = even_lanes(a, c, std::make_index_sequence<L>{});
  const V t1 = odd_lanes(a, c, std::make_index_sequence<L>{});
  V t2{};
  if constexpr (K == 3) {
    const int64_t w = b + 2 * L;
    const T last = kInside || (w >= 0 && w < W) ? row[2 * L] : kFill;
    t2 = shift_in(t0, splat<V>(last), std::make_index_sequence<L>{});
    if constexpr (kMax) nan.add(last);
  }
  if constexpr (kMax) {
    nan.add(a, c);
    r.v[0] = max_keep<T>(t1, t0);
    if constexpr (K == 3) r.v[0] = max_keep<T>(t2, r.v[0]);
  } else {
    r.v[0] = t0;
    r.v[1] = t1;
    if constexpr (K == 3) r.v[2] = t2;
  }
  return r;
}

// The window rows' combination, in order.
template <typename T, bool kMax, int K>
inline typename Vec<T>::v s2_combine(const S2Row<T, kMax, K>* rows) {
  using V = typename Vec<T>::v;
  if constexpr (kMax) {
    V m = rows[0].v[0];
    for (int i = 1; i < K; ++i) m = max_keep<T>(rows[i].v[0], m);
    return m;
  } else {
    V s{};
    for (int i = 0; i < K; ++i)
      for (int j = 0; j < K; ++j) s = s + rows[i].v[j];
    return s;
  }
}

// One column strip: the chunk of `lanes` outputs at column q (b = 2q - pad_w) of every output row.
// avg: output (p, q + l) is divided by rowf[p] * colf[l] (multiplied, when the tables hold reciprocals).
template <typename T, bool kMax, int K, bool kInside>
void s2_strip(const PoolDesc& d, const T* xp, int64_t sxh, T* yq, int64_t syp, int64_t b, int64_t lanes,
              const T* rowf, typename Vec<T>::v colf, bool reciprocal, NanTest<T>& strip_nan) {
  using V = typename Vec<T>::v;
  constexpr int L = Vec<T>::L;
  NanTest<T> nan;
  S2Row<T, kMax, K> rows[K];
  if constexpr (K == 3) rows[2] = s2_row<T, kMax, K, kInside>(xp, sxh, -d.pad_h, d.H, b, d.W, nan);
  for (int64_t p = 0; p < d.P; ++p) {
    const int64_t hs = 2 * p - d.pad_h;
    if constexpr (K == 3) rows[0] = rows[2];  // the row shared with the previous output row
    for (int i = K - 2; i < K; ++i) rows[i] = s2_row<T, kMax, K, kInside>(xp, sxh, hs + i, d.H, b, d.W, nan);
    V out = s2_combine<T, kMax, K>(rows);
    if constexpr (!kMax) {
      const V f = splat<V>(rowf[p]) * colf;
      out = reciprocal ? out * f : out / f;
    }
    if (lanes == L)
      storeu(yq + p * syp, out);
    else
      store_lanes<T>(yq + p * syp, 1, out, lanes);
  }
  strip_nan.add(nan);
}

// When pool_s2_nchw serves d (see there) with x and y: also enough planes for the threads (a plane is a
// task). K is then d.kernel_h.
inline bool pool_s2_ok(const PoolDesc& d, const Tensor4& x, const Tensor4& y, int nthreads) {
  const int64_t K = d.kernel_h;
  return d.N * d.C >= 2 * nthreads && x.stride[3] == 1 && y.stride[3] == 1 && d.stride_h == 2 &&
         d.stride_w == 2 && d.dil_h == 1 && d.dil_w == 1 && (K == 2 || K == 3) && d.kernel_w == K &&
         d.pad_h <= K / 2 && d.pad_w <= K / 2 && (d.P - 1) * 2 - d.pad_h < d.H && (d.Q - 1) * 2 - d.pad_w < d.W;
}

template <typename T, bool kMax, int K>
void pool_s2_nchw(const PoolDesc& d, const Tensor4& x, const Tensor4& y, int nthreads) {
  using V = typename Vec<T>::v;
  constexpr int L = Vec<T>::L;
  const T* X = static_cast<const T*>(x.data);
  T* Y = static_cast<T*>(y.data);
  const int64_t W = d.W, Q = d.Q, sxh = x.stride[2], syp = y.stride[2];
  // avg: divisor factors of each output row and column (avg_range): divisor = rowf[p] * colf[q]
  std::vector<T> rowf(d.P, T(1)), colf(Q + L, T(1));
  bool reciprocal = true;
  if constexpr (!kMax) {
    for (int64_t p = 0; p < d.P; ++p) rowf[p] = T(avg_range(d, p, 0).div_h);
    for (int64_t q = 0; q < Q; ++q) colf[q] = T(avg_range(d, 0, q).div_w);
    for (T f : rowf) reciprocal &= exact_reciprocal(f);
    for (int64_t q = 0; q < Q; ++q) reciprocal &= exact_reciprocal(colf[q]);
    if (reciprocal) {
      for (T& f : rowf) f = T(1) / f;
      for (T& f : colf) f = T(1) / f;
    }
  }
  std::vector<Chunk> exact_chunks;  // the exact scan's, for max planes with a NaN
  if (kMax) exact_chunks = row_chunks<L, 2>(d, chunk_span(d, L, 1));
  parallel_ranges(d.N * d.C, (d.H * d.W + d.P * Q) * d.N * d.C, nthreads, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / d.C, c = r % d.C;
      const T* xp = X + n * x.stride[0] + c * x.stride[1];
      T* yp = Y + n * y.stride[0] + c * y.stride[1];
      NanTest<T> nan;
      for (int64_t qc = 0; qc < Q; qc += L) {
        const int64_t q = Q >= L ? std::min(qc, Q - L) : 0, b = 2 * q - d.pad_w;
        const V f = loadu<V>(colf.data() + q);
        const int64_t lanes = std::min<int64_t>(Q, L);
        if (b >= 0 && b + 2 * L + (K - 2) <= W)  // every column the strip reads is inside the row
          s2_strip<T, kMax, K, true>(d, xp, sxh, yp + q, syp, b, lanes, rowf.data(), f, reciprocal, nan);
        else
          s2_strip<T, kMax, K, false>(d, xp, sxh, yp + q, syp, b, lanes, rowf.data(), f, reciprocal, nan);
      }
      if (kMax && nan.any())  // a NaN in the plane: torch's exact scan, row by row
        for (int64_t p = 0; p < d.P; ++p)
          max_row<T, false, 2>(d, xp, sxh, yp + p * syp, 1, nullptr, 0, p, exact_chunks, nullptr);
    }
  });
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

template <typename T, bool kIdx>
void max_fwd_nhwc(const PoolDesc& d, const Tensor4& x, const Tensor4& y, const Tensor4* ind, int nthreads) {
  constexpr int L = Vec<T>::L;
  int64_t* IND = kIdx ? static_cast<int64_t*>(ind->data) : nullptr;
  const int64_t pixels = d.N * d.P * d.Q;
  const int64_t syc = y.stride[1], sic = kIdx ? ind->stride[1] : 0;
  parallel_ranges(pixels, (d.H * d.W + d.P * d.Q) * d.N * d.C, nthreads, [&](int64_t r0, int64_t r1) {
    if constexpr (!kIdx) {
      // Without indices: the fast max over the range, redone by the exact scan below if a tap was
      // NaN (C=64, 56x56, fp32, one thread, data in L2: 3x3 stride 2 850 -> 530 ns per plane,
      // 2x2 480 -> 360).
      NanTest<T> nan;
      for_pixels<T>(d, x, y, r0, r1, [&](int64_t, int64_t p, int64_t q, const T* xn, T* yp) {
        const MaxRange mr = max_range(d, p, q);
        int64_t c = 0;
        for (; c + 4 * L <= d.C; c += 4 * L)
          max_pixel_block_fast<T, 4>(d, xn + c, x.stride[2], x.stride[3], mr, yp + c * syc, syc, nan);
        for (; c + L <= d.C; c += L)
          max_pixel_block_fast<T, 1>(d, xn + c, x.stride[2], x.stride[3], mr, yp + c * syc, syc, nan);
        for (; c < d.C; ++c) max_window(d, xn + c, x.stride[2], x.stride[3], p, q, yp + c * syc, nullptr);
      });
      if (!nan.any()) return;
    }
    for_pixels<T>(d, x, y, r0, r1, [&](int64_t n, int64_t p, int64_t q, const T* xn, T* yp) {
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
    });
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
  for (int k = 0; k < NV; ++k) store_vec<T>(yp + k * L * syc, syc, empty ? V{} : divide(sum[k], T(ar.divisor)));
}

template <typename T>
void avg_fwd_nhwc(const PoolDesc& d, const Tensor4& x, const Tensor4& y, int nthreads) {
  constexpr int L = Vec<T>::L;
  const int64_t pixels = d.N * d.P * d.Q, syc = y.stride[1];
  parallel_ranges(pixels, (d.H * d.W + d.P * d.Q) * d.N * d.C, nthreads, [&](int64_t r0, int64_t r1) {
    for_pixels<T>(d, x, y, r0, r1, [&](int64_t, int64_t p, int64_t q, const T* xn, T* yp) {
      const AvgRange ar = avg_range(d, p, q);
      int64_t c = 0;
      for (; c + 4 * L <= d.C; c += 4 * L)
        avg_pixel_block<T, 4>(xn + c, x.stride[2], x.stride[3], ar, yp + c * syc, syc);
      for (; c + L <= d.C; c += L)
        avg_pixel_block<T, 1>(xn + c, x.stride[2], x.stride[3], ar, yp + c * syc, syc);
      for (; c < d.C; ++c) yp[c * syc] = avg_window(d, xn + c, x.stride[2], x.stride[3], p, q);
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

// True when the vector paths may blend fp32 indices as int32 (every index value < 2^31).
inline bool int32_indices_ok(const PoolDesc& d) {
  return (d.H + d.kernel_h * d.dil_h) * (d.W + d.kernel_w * d.dil_w) < (int64_t(1) << 31);
}

// The separable max serves planes with rows shared by output rows (kernel_h > stride_h; otherwise the
// row scan does the same loads with less bookkeeping), enough planes for the threads and a row-maxima
// buffer within 256 KiB.
template <typename T>
bool separable_ok(const PoolDesc& d, int nthreads) {
  const int64_t L = Vec<T>::L;
  return d.kernel_h > d.stride_h && d.N * d.C >= 2 * nthreads &&
         d.H * separable_row_floats(d, L) * (int64_t)sizeof(T) <= 256 * 1024;
}

template <typename T, bool kIdx>
void max_fwd(const PoolDesc& d, const Tensor4& x, const Tensor4& y, const Tensor4* ind, int nthreads) {
  const bool idx_ok = sizeof(T) == 8 || !kIdx || int32_indices_ok(d);
  if (idx_ok && x.stride[1] == 1 && d.C > 1)
    max_fwd_nhwc<T, kIdx>(d, x, y, ind, nthreads);
  else if (!kIdx && pool_s2_ok(d, x, y, nthreads))
    d.kernel_h == 2 ? pool_s2_nchw<T, true, 2>(d, x, y, nthreads) : pool_s2_nchw<T, true, 3>(d, x, y, nthreads);
  else if (!kIdx && x.stride[3] == 1 && d.stride_w == 1 && separable_ok<T>(d, nthreads))
    max_fwd_nchw_separable<T, 1>(d, x, y, nthreads);
  else if (!kIdx && x.stride[3] == 1 && d.stride_w == 2 && separable_ok<T>(d, nthreads))
    max_fwd_nchw_separable<T, 2>(d, x, y, nthreads);
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
  else if (pool_s2_ok(d, x, y, nthreads))
    d.kernel_h == 2 ? pool_s2_nchw<T, false, 2>(d, x, y, nthreads) : pool_s2_nchw<T, false, 3>(d, x, y, nthreads);
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

// Zero dx[n, c0:c1, :, :].
template <typename T>
inline void zero_slice(const Tensor4& dx, int64_t n, int64_t c0, int64_t c1) {
  if (c1 == c0 + 1 && dx.stride[1] != 1) return zero_plane<T>(dx, n, c0);
  T* D = static_cast<T*>(dx.data) + n * dx.stride[0];
  const int64_t sc = dx.stride[1], sh = dx.stride[2], sw = dx.stride[3];
  if (sc == 1 && c0 == 0 && c1 == dx.size[1] && sw == c1 && sh == dx.size[3] * sw) {  // one dense image
    std::memset(static_cast<void*>(D), 0, sizeof(T) * dx.size[2] * sh);
    return;
  }
  for (int64_t h = 0; h < dx.size[2]; ++h)
    for (int64_t w = 0; w < dx.size[3]; ++w) {
      T* p = D + h * sh + w * sw;
      if (sc == 1)
        std::memset(static_cast<void*>(p + c0), 0, sizeof(T) * (c1 - c0));
      else
        for (int64_t c = c0; c < c1; ++c) p[c * sc] = T(0);
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

// Outputs whose window covers input row (or column) h: p in [lo, hi] with (h + pad - p*stride) a
// multiple of dil (always true for dil == 1); empty when lo > hi.
struct Cover {
  int64_t lo, hi;
};
inline Cover cover(int64_t h, int64_t pad, int64_t stride, int64_t k, int64_t dil, int64_t P) {
  const int64_t a = h + pad, first = a - (k - 1) * dil;  // a = p*stride + i*dil, 0 <= i < k
  return {first <= 0 ? 0 : (first + stride - 1) / stride, std::min(a / stride, P - 1)};
}
// max backward, scatter form: any indices (those outside the plane are skipped).
template <typename T>
void max_bwd_scatter_slice(const PoolDesc& d, const Tensor4& dy, const Tensor4& ind, const Tensor4& dx, int64_t n,
                           int64_t c0, int64_t c1) {
  const int64_t plane = d.H * d.W;
  const bool flat = dx.stride[2] == d.W * dx.stride[3] || d.H == 1;  // offset of h*W+w is one multiply
  zero_slice<T>(dx, n, c0, c1);
  T* dxn = static_cast<T*>(dx.data) + n * dx.stride[0];
  const T* DY = static_cast<const T*>(dy.data) + n * dy.stride[0];
  const int64_t* IND = static_cast<const int64_t*>(ind.data) + n * ind.stride[0];
  if (c1 == c0 + 1 && flat && dx.stride[3] == 1 && dy.stride[3] == 1 && ind.stride[3] == 1) {  // NCHW rows
    T* dxp = dxn + c0 * dx.stride[1];
    for (int64_t p = 0; p < d.P; ++p) {
      const T* g = DY + c0 * dy.stride[1] + p * dy.stride[2];
      const int64_t* ix = IND + c0 * ind.stride[1] + p * ind.stride[2];
      for (int64_t q = 0; q < d.Q; ++q) {
        const int64_t i = ix[q];
        if ((uint64_t)i < (uint64_t)plane) dxp[i] += g[q];
      }
    }
    return;
  }
  if (flat && dx.stride[1] == 1 && dy.stride[1] == 1 && ind.stride[1] == 1) {  // channels_last
    const int64_t sdw = dx.stride[3];
    for (int64_t p = 0; p < d.P; ++p)
      for (int64_t q = 0; q < d.Q; ++q) {
        const T* g = DY + p * dy.stride[2] + q * dy.stride[3];
        const int64_t* ix = IND + p * ind.stride[2] + q * ind.stride[3];
        for (int64_t c = c0; c < c1; ++c) {
          const int64_t i = ix[c];
          if ((uint64_t)i < (uint64_t)plane) dxn[i * sdw + c] += g[c];
        }
      }
    return;
  }
  for (int64_t p = 0; p < d.P; ++p)
    for (int64_t q = 0; q < d.Q; ++q) {
      const T* g = DY + p * dy.stride[2] + q * dy.stride[3];
      const int64_t* ix = IND + p * ind.stride[2] + q * ind.stride[3];
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t i = ix[c * ind.stride[1]];
        if ((uint64_t)i >= (uint64_t)plane) continue;
        const int64_t off = flat ? i * dx.stride[3] : (i / d.W) * dx.stride[2] + (i % d.W) * dx.stride[3];
        dxn[off + c * dx.stride[1]] += g[c * dy.stride[1]];
      }
    }
}

template <typename T>
void max_bwd(const PoolDesc& d, const Tensor4& dy, const Tensor4& ind, const Tensor4& dx, int nthreads) {
  const int64_t cost = (d.H * d.W + 2 * d.P * d.Q) * d.N * d.C;
  const int64_t cb = dx.stride[1] == 1 && d.C > 1 ? channel_block(d, nthreads, Vec<T>::L) : 1;
  const int64_t nblk = (d.C + cb - 1) / cb;
  parallel_ranges(d.N * nblk, cost, nthreads, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / nblk, c0 = (t % nblk) * cb;
      max_bwd_scatter_slice<T>(d, dy, ind, dx, n, c0, std::min(c0 + cb, d.C));
    }
  });
}

// avg backward, channels_last dx: scatter of dy/divisor over each window, vectorized along c.
template <typename T>
void avg_bwd_nhwc(const PoolDesc& d, const Tensor4& dy, const Tensor4& dx, int nthreads) {
  using V = typename Vec<T>::v;
  constexpr int L = Vec<T>::L;
  const T* DY = static_cast<const T*>(dy.data);
  T* DX = static_cast<T*>(dx.data);
  const int64_t cb = channel_block(d, nthreads, L), nblk = (d.C + cb - 1) / cb;
  const int64_t sdc = dy.stride[1];
  parallel_ranges(d.N * nblk, (d.H * d.W + d.P * d.Q) * d.N * d.C, nthreads, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / nblk, c0 = (t % nblk) * cb, c1 = std::min(c0 + cb, d.C);
      zero_slice<T>(dx, n, c0, c1);
      T* dxn = DX + n * dx.stride[0];
      for (int64_t p = 0; p < d.P; ++p)
        for (int64_t q = 0; q < d.Q; ++q) {
          const AvgRange ar = avg_range(d, p, q);
          if (ar.h0 >= ar.h1 || ar.w0 >= ar.w1) continue;
          const T* g = DY + n * dy.stride[0] + p * dy.stride[2] + q * dy.stride[3];
          int64_t c = c0;
          for (; c + L <= c1; c += L) {
            V gv;
            if (sdc == 1)
              gv = loadu<V>(g + c);
            else
              for (int l = 0; l < L; ++l) gv[l] = g[(c + l) * sdc];
            gv = divide(gv, T(ar.divisor));
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
}

// avg backward, one (n, c) plane at a time, gather form vectorized along w. With G[p, q] = dy / divisor
// (0 for an empty window) and U_p the row G[p, :] spread to columns t = q*stride_w (zeros between and
// around), dx[h, w] = sum over p covering h, ascending, of sum_{t = w+pad-k+1 .. w+pad} U_p[t]: the terms
// come in torch's (p, q) scatter order and the zeros add +0 to a sum that started at +0, so the result is
// bitwise the scatter's, every dx element is written once and all loads are contiguous.
template <typename T>
void avg_bwd_nchw(const PoolDesc& d, const Tensor4& dy, const Tensor4& dx, int nthreads) {
  using V = typename Vec<T>::v;
  constexpr int L = Vec<T>::L;
  const T* DY = static_cast<const T*>(dy.data);
  T* DX = static_cast<T*>(dx.data);
  const int64_t kw = d.kernel_w, ulen = d.W + d.pad_w + kw - 1;  // U_p[t] at u[p*ulen + t + kw - 1]
  const int64_t sdh = dx.stride[2], sdw = dx.stride[3], sw = d.stride_w;
  std::vector<T> divs(d.P * d.Q);  // divisor of each window, 0 for an empty one (no contribution)
  for (int64_t p = 0; p < d.P; ++p)
    for (int64_t q = 0; q < d.Q; ++q) {
      const AvgRange ar = avg_range(d, p, q);
      divs[p * d.Q + q] = (ar.h0 >= ar.h1 || ar.w0 >= ar.w1) ? T(0) : T(ar.divisor);
    }
  parallel_ranges(d.N * d.C, (d.H * d.W + d.P * d.Q) * d.N * d.C, nthreads, [&](int64_t t0, int64_t t1) {
    std::vector<T> u(d.P * ulen);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / d.C, c = t % d.C;
      const T* g = DY + n * dy.stride[0] + c * dy.stride[1];
      T* dxp = DX + n * dx.stride[0] + c * dx.stride[1];
      std::fill(u.begin(), u.end(), T(0));
      for (int64_t p = 0; p < d.P; ++p) {
        const T* gr = g + p * dy.stride[2];
        const T* dr = divs.data() + p * d.Q;
        T* ur = u.data() + p * ulen + kw - 1;
        int64_t q = 0;
        if (dy.stride[3] == 1)
          for (; q + L <= d.Q; q += L) {
            const V dv = loadu<V>(dr + q);
            const V gv = dv != 0 ? loadu<V>(gr + q) / dv : V{};
            if (sw == 1)
              storeu(ur + q, gv);
            else
              for (int l = 0; l < L; ++l) ur[(q + l) * sw] = gv[l];
          }
        for (; q < d.Q; ++q)
          if (dr[q] != 0) ur[q * sw] = gr[q * dy.stride[3]] / dr[q];
      }
      for (int64_t h = 0; h < d.H; ++h) {
        const Cover cp = cover(h, d.pad_h, d.stride_h, d.kernel_h, 1, d.P);
        T* row = dxp + h * sdh;
        int64_t w = 0;
        if (sdw == 1 && d.W >= L) {
          for (int64_t wc = 0;; wc += L) {  // last chunk overlaps: each element is computed, not added
            w = std::min(wc, d.W - L);
            V acc = V{};
            for (int64_t p = cp.lo; p <= cp.hi; ++p) {
              const T* up = u.data() + p * ulen + w + d.pad_w;
              for (int64_t j = 0; j < kw; ++j) acc += loadu<V>(up + j);
            }
            storeu(row + w, acc);
            if (w + L >= d.W) break;
          }
          w = d.W;
        }
        for (; w < d.W; ++w) {
          T acc = 0;
          for (int64_t p = cp.lo; p <= cp.hi; ++p) {
            const T* up = u.data() + p * ulen + w + d.pad_w;
            for (int64_t j = 0; j < kw; ++j) acc += up[j];
          }
          row[w * sdw] = acc;
        }
      }
    }
  });
}

template <typename T>
void avg_bwd(const PoolDesc& d, const Tensor4& dy, const Tensor4& dx, int nthreads) {
  if (dx.stride[1] == 1 && d.C > 1)
    avg_bwd_nhwc<T>(d, dy, dx, nthreads);
  else
    avg_bwd_nchw<T>(d, dy, dx, nthreads);
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

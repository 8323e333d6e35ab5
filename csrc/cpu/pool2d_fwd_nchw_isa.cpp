// max_pool2d / avg_pool2d forward of NCHW inputs (stride[3] == 1), float32 and float64. Which kernel
// serves a call is pool2d_isa.cpp's choice; the semantics (torch's, bit for bit) are stated there.
//
//  - max_fwd_nchw / avg_fwd_nchw: one output row (n, c, p) at a time, vectorized along q in chunks of L
//    outputs (the last chunk of a row overlaps the previous one). A tap is one unaligned load for
//    stride 1, two loads and an even/odd-lane shuffle for stride 2, a lane gather otherwise. Chunks
//    whose windows reach into the padding (or rows narrower than L) use masked loads that fill with
//    the padding value (-inf for max: never taken; 0 for avg: +0 added to a sum that started at +0
//    leaves it bitwise unchanged), with per-lane initial indices / divisors from small tables built
//    once per call, so borders cost no scalar windows. The rows (n, c, p) split over the threads.
//  - pool_s2_nchw: stride-2 2x2 and 3x3 windows without indices (VGG's, ResNet's), a plane per task in
//    column strips that carry the window row shared by two output rows in registers.
//  - max_fwd_nchw_separable: the other max windows taller than their stride, without indices, a plane
//    per task: the maxima of every input row, then of the output rows' input rows.
// pool_s2_nchw's max and max_fwd_nchw_separable use x86's max instruction (max_keep) and redo a plane
// that read a NaN with the exact scan (max_row).
#include <algorithm>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/pool2d_common.h"

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace fastconv {
namespace cpu {
namespace FC_ISA {
namespace {

template <class VT, size_t... Is>
inline VT even_lanes(VT a, VT b, std::index_sequence<Is...>) {
  return __builtin_shufflevector(a, b, (2 * Is)...);
}
template <class VT, size_t... Is>
inline VT odd_lanes(VT a, VT b, std::index_sequence<Is...>) {
  return __builtin_shufflevector(a, b, (2 * Is + 1)...);
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

}  // namespace

// Max pooling without indices, separable, a plane per task: the row maxima of every input row of the
// plane (max_hrow) into a buffer, then output row p is the max over its rows' maxima. Both passes keep
// the earlier value on a tie, so every output is the first maximum in row-major order, as torch's scan
// (this matters only for the sign of a zero); a plane with a NaN is redone by the exact scan
// (max_row). Against the one-pass row scan each input row's taps are computed once instead of once per
// output row that reads it (1.5 times for 3x3 stride 2), and a 3x3 window costs 2 + 2 max instructions
// per output vector instead of 9 compare-and-blend steps (C=64, 56x56, 3x3 stride 2, fp32, one thread,
// data in L2: 0.82-0.87 us per plane against 1.45-1.55). It serves the windows taller than their stride
// that pool_s2_nchw does not take (stride-2 2x2 and 3x3 go there), e.g. 3x3 stride 1.
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
      // leaves the memory idle during the column pass (3x3 stride 2, N=32, C=64, 56x56, 2 threads:
      // 1.3-1.6 ms interleaved, against 2.3 ms emitted after the row pass, no faster than the row scan).
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

namespace {

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
// Against the general kernels (max_fwd_nchw_separable for 3x3 max, the row scan max_fwd_nchw for 2x2,
// avg_fwd_nchw, whose runtime tap loops are mostly control), one thread, N=1, C=24, 56x56 fp32 planes
// in L2, min of 3 processes: 3x3 max 404 ns per plane against 1426. The same tap code in row-major
// order (each output row's chunks in turn, the shared row read twice) runs 3x3 max at 730-760; the
// strips' order also lets the out-of-order core overlap the independent output rows of a strip. At
// full size (N=32, C=64, 2 threads) all four take 420-500 ns per plane, about 35 GB/s: the memory's
// rate on the machine measured.
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

}  // namespace

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

// The instances pool2d_isa.cpp's path choice calls.
#define FC_POOL_FWD_NCHW_INSTANCES(T)                                                                            \
  template void max_fwd_nchw<T, false, 0>(const PoolDesc&, const Tensor4&, const Tensor4&, const Tensor4*, int); \
  template void max_fwd_nchw<T, false, 1>(const PoolDesc&, const Tensor4&, const Tensor4&, const Tensor4*, int); \
  template void max_fwd_nchw<T, false, 2>(const PoolDesc&, const Tensor4&, const Tensor4&, const Tensor4*, int); \
  template void max_fwd_nchw<T, true, 0>(const PoolDesc&, const Tensor4&, const Tensor4&, const Tensor4*, int);  \
  template void max_fwd_nchw<T, true, 1>(const PoolDesc&, const Tensor4&, const Tensor4&, const Tensor4*, int);  \
  template void max_fwd_nchw<T, true, 2>(const PoolDesc&, const Tensor4&, const Tensor4&, const Tensor4*, int);  \
  template void avg_fwd_nchw<T, 0>(const PoolDesc&, const Tensor4&, const Tensor4&, int);                        \
  template void avg_fwd_nchw<T, 1>(const PoolDesc&, const Tensor4&, const Tensor4&, int);                        \
  template void avg_fwd_nchw<T, 2>(const PoolDesc&, const Tensor4&, const Tensor4&, int);                        \
  template void max_fwd_nchw_separable<T, 1>(const PoolDesc&, const Tensor4&, const Tensor4&, int);              \
  template void max_fwd_nchw_separable<T, 2>(const PoolDesc&, const Tensor4&, const Tensor4&, int);              \
  template void pool_s2_nchw<T, true, 2>(const PoolDesc&, const Tensor4&, const Tensor4&, int);                  \
  template void pool_s2_nchw<T, true, 3>(const PoolDesc&, const Tensor4&, const Tensor4&, int);                  \
  template void pool_s2_nchw<T, false, 2>(const PoolDesc&, const Tensor4&, const Tensor4&, int);                 \
  template void pool_s2_nchw<T, false, 3>(const PoolDesc&, const Tensor4&, const Tensor4&, int);
FC_POOL_FWD_NCHW_INSTANCES(float)
FC_POOL_FWD_NCHW_INSTANCES(double)
#undef FC_POOL_FWD_NCHW_INSTANCES

}  // namespace FC_ISA
}  // namespace cpu
}  // namespace fastconv

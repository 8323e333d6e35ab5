// max_pool2d / avg_pool2d backward, float32 and float64, any strides. dx[n, c] = sum over outputs (p, q)
// in row-major order of their contribution (max: dy at its index; avg: dy/divisor over its clipped
// window), so each dx element sums its terms in torch's order; each task owns a disjoint slice of dx
// and zeroes it first. Which kernel serves a call is pool2d_isa.cpp's choice (from dx's strides).
//
//  - max_bwd_gather_nhwc_rows (channels_last, dilation 1, fewer images than the scatter needs to keep
//    the threads busy): each dx pixel gathers dy from the outputs whose window covers it where their
//    index is that pixel; whole input rows per task.
//  - max_bwd_scatter (any other strides, and any indices): a scatter into a zeroed slice of dx owned by
//    one task ((n, c) plane, or (n, channel block) for channels_last dx); for NCHW planes it beats a
//    gather form, whose work grows with the window overlap.
//  - avg_bwd_nchw: a gather along w: dy/divisor rows are spread with zeros to the input columns they
//    cover, and each dx element sums its terms in the scatter's (p, q) order (bitwise torch's) with
//    contiguous vector loads; a plane per task.
//  - avg_bwd_nhwc (channels_last dx): scatters C-vectors, an (n, channel block) per task.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/pool2d_common.h"

namespace fastconv {
namespace cpu {
namespace FC_ISA {
namespace {

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

// acc += g on the lanes whose index (int64) is pos, and hits (per lane) counts them. AVX-512 compares
// the int64 lanes into mask registers and adds under the mask; GCC 12 turns the vector-extension form
// (which the other ISA levels use) into one scalar compare per lane there, and the gather took longer
// than the scatter it replaces.
template <typename T>
inline void add_where_index(typename Vec<T>::v& acc, typename Vec<T>::iv& hits, const int64_t* ip, const T* g,
                            int64_t pos) {
  using V = typename Vec<T>::v;
  using IV = typename Vec<T>::iv;
#if defined(__AVX512F__)
  const __m512i pv = _mm512_set1_epi64(pos);
  if constexpr (sizeof(T) == 4) {
    const __mmask8 lo = _mm512_cmpeq_epi64_mask(_mm512_loadu_si512(ip), pv);
    const __mmask8 hi = _mm512_cmpeq_epi64_mask(_mm512_loadu_si512(ip + 8), pv);
    const __mmask16 m = _mm512_kunpackb(hi, lo);  // lanes 0-7 from lo, 8-15 from hi
    acc = (V)_mm512_mask_add_ps((__m512)acc, m, (__m512)acc, _mm512_loadu_ps(g));
    hits = (IV)_mm512_mask_sub_epi32((__m512i)hits, m, (__m512i)hits, _mm512_set1_epi32(-1));
  } else {
    const __mmask8 m = _mm512_cmpeq_epi64_mask(_mm512_loadu_si512(ip), pv);
    acc = (V)_mm512_mask_add_pd((__m512d)acc, m, (__m512d)acc, _mm512_loadu_pd(g));
    hits = (IV)_mm512_mask_sub_epi64((__m512i)hits, m, (__m512i)hits, _mm512_set1_epi64(-1));
  }
#else
  using I64 = typename Vec<T>::i64;
  const IV m = __builtin_convertvector(loadu<I64>(ip) == I64{} + pos, IV);
  acc = m ? acc + loadu<V>(g) : acc;
  hits -= m;  // m is -1 where it matched
#endif
}

// One dx pixel's channels [c, c + NV*L): the sums over the pixel's covering outputs (np of them, in
// row-major order: index rows ip[i], gradient rows gp[i]); lanes: which lanes count their matches.
template <typename T, int NV>
inline void gather_pixel_block(const int64_t* const* ip, const T* const* gp, int np, int64_t c, int64_t pos,
                               T* px, typename Vec<T>::iv& counted, const typename Vec<T>::iv& lanes) {
  using V = typename Vec<T>::v;
  using IV = typename Vec<T>::iv;
  constexpr int L = Vec<T>::L;
  V acc[NV];
  IV hits[NV];
  for (int v = 0; v < NV; ++v) acc[v] = V{}, hits[v] = IV{};
  for (int i = 0; i < np; ++i)
    for (int v = 0; v < NV; ++v) add_where_index<T>(acc[v], hits[v], ip[i] + c + v * L, gp[i] + c + v * L, pos);
  for (int v = 0; v < NV; ++v) {
    storeu(px + c + v * L, acc[v]);
    counted += hits[v] & lanes;
  }
}

// max backward, gather form, channels_last dx / dy / indices, dilation 1: each dx pixel's channel
// vector sums, over the outputs (p, q) whose window covers it in row-major order, dy where the index is
// this pixel: the scatter's terms in the scatter's order, so bitwise its result (and torch's), with dx
// written once (no zeroing pass), vector loads only, and tasks of whole input rows (any batch keeps the
// threads busy). Channels past the last whole vector are one vector ending at channel C (recomputed
// lanes get the same value), and C < one vector is scalar. Returns the number of index entries it
// matched: an entry matches once if it lies in its own window, never otherwise (outside the plane,
// or elsewhere in it), so a count below N*P*Q*C says the indices were not a max pool's and the caller
// redoes the call with the scatter, which takes any index.
template <typename T>
int64_t max_bwd_gather_nhwc_rows(const PoolDesc& d, const Tensor4& dy, const Tensor4& ind, const Tensor4& dx,
                                 const std::vector<Cover>& qcover, int64_t r0, int64_t r1) {
  using IV = typename Vec<T>::iv;
  using I = typename Vec<T>::I;
  constexpr int L = Vec<T>::L;
  const T* DY = static_cast<const T*>(dy.data);
  const int64_t* IND = static_cast<const int64_t*>(ind.data);
  T* DX = static_cast<T*>(dx.data);
  const int64_t C = d.C, sy2 = dy.stride[2], sy3 = dy.stride[3], si2 = ind.stride[2], si3 = ind.stride[3];
  IV counted{};  // matches per lane (the tail vector counts only its lanes past the last whole vector)
  int64_t counted_scalar = 0;
  IV tail_lanes;  // -1 on the lanes the tail vector counts, 0 on those a whole vector counted
  for (int l = 0; l < L; ++l) tail_lanes[l] = (I)(C - L + l >= C / L * L ? -1 : 0);
  const IV all_lanes = IV{} - (I)1;
  // Outputs covering one pixel: at most ceil(k / stride) + 1 per dimension.
  const int64_t max_pairs =
      ((d.kernel_h + d.stride_h - 1) / d.stride_h + 1) * ((d.kernel_w + d.stride_w - 1) / d.stride_w + 1);
  std::vector<const int64_t*> ip(max_pairs);
  std::vector<const T*> gp(max_pairs);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / d.H, h = r % d.H;
    const Cover cp = cover(h, d.pad_h, d.stride_h, d.kernel_h, 1, d.P);
    const T* dyn = DY + n * dy.stride[0];
    const int64_t* indn = IND + n * ind.stride[0];
    T* dxr = DX + n * dx.stride[0] + h * dx.stride[2];
    for (int64_t w = 0; w < d.W; ++w) {
      const Cover& cq = qcover[w];
      int np = 0;
      for (int64_t p = cp.lo; p <= cp.hi; ++p)
        for (int64_t q = cq.lo; q <= cq.hi; ++q, ++np) {
          ip[np] = indn + p * si2 + q * si3;
          gp[np] = dyn + p * sy2 + q * sy3;
        }
      const int64_t pos = h * d.W + w;
      T* px = dxr + w * dx.stride[3];
      for_channel_vectors<L>(
          C,
          [&](int64_t c, auto nv) {  // c is not a multiple of L only for the tail vector
            gather_pixel_block<T, decltype(nv)::value>(ip.data(), gp.data(), np, c, pos, px, counted,
                                                       c % L ? tail_lanes : all_lanes);
          },
          [&](int64_t c) {
            T acc = 0;
            for (int i = 0; i < np; ++i)
              if (ip[i][c] == pos) {
                acc += gp[i][c];
                ++counted_scalar;
              }
            px[c] = acc;
          });
    }
  }
  int64_t total = counted_scalar;
  for (int l = 0; l < L; ++l) total += counted[l];
  return total;
}

}  // namespace

// The gather form where it applies (channels_last dx, dy and indices, dilation 1) and the scatter's
// tasks, one per image, are too few for the threads; else the scatter, which also redoes a gather whose
// indices were not all inside their windows. 3x3 stride-2 pools, fp32, 2 threads (AMD Zen 4 VM,
// interleaved medians): batch 1, C = 64, 112x112: gather 0.18 ms, scatter 0.30 (torch 0.19); batch 8
// the scatter wins (C = 24, 112x112: 0.6-0.7 ms against 0.9-1.0; C = 58, 56x56: 0.25 against 0.43):
// its writes go to a zeroed image slice in L2, the gather's dx rows straight out.
template <typename T>
void max_bwd(const PoolDesc& d, const Tensor4& dy, const Tensor4& ind, const Tensor4& dx, int nthreads) {
  // Windows that tile the output as a max pool's (adaptive max's backward passes 1x1 windows that do
  // not: the gather would match few entries and hand over to the scatter anyway).
  auto tiles = [](int64_t in, int64_t out, int64_t k, int64_t s, int64_t pad) {
    const int64_t span = in + 2 * pad - k;
    return span >= 0 && span / s + 1 <= out && out <= (span + s - 1) / s + 1;
  };
  const bool channels_last = dx.stride[1] == 1 && dy.stride[1] == 1 && ind.stride[1] == 1 && d.C > 1;
  const bool gather = channels_last && d.N < 4 * std::max(nthreads, 1) && d.dil_h == 1 && d.dil_w == 1 &&
                      tiles(d.H, d.P, d.kernel_h, d.stride_h, d.pad_h) &&
                      tiles(d.W, d.Q, d.kernel_w, d.stride_w, d.pad_w);
  if (gather) {
    std::vector<Cover> qcover(d.W);
    for (int64_t w = 0; w < d.W; ++w) qcover[w] = cover(w, d.pad_w, d.stride_w, d.kernel_w, 1, d.Q);
    const int64_t rows = d.N * d.H;
    const int64_t cost = (d.H * d.W + 2 * d.P * d.Q) * d.N * d.C;
    std::vector<int64_t> matched(rows, 0);  // per row, summed after: no shared counter
    parallel_ranges(rows, cost, nthreads, [&](int64_t r0, int64_t r1) {
      matched[r0] = max_bwd_gather_nhwc_rows<T>(d, dy, ind, dx, qcover, r0, r1);
    });
    int64_t total = 0;
    for (int64_t m : matched) total += m;
    if (total == d.N * d.P * d.Q * d.C) return;
  }
  max_bwd_scatter<T>(d, dy, ind, dx, nthreads);
}

template <typename T>
void max_bwd_scatter(const PoolDesc& d, const Tensor4& dy, const Tensor4& ind, const Tensor4& dx, int nthreads) {
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

// The instances pool2d_isa.cpp's path choice calls.
#define FC_POOL_BWD_INSTANCES(T)                                                                          \
  template void max_bwd<T>(const PoolDesc&, const Tensor4&, const Tensor4&, const Tensor4&, int);         \
  template void avg_bwd_nhwc<T>(const PoolDesc&, const Tensor4&, const Tensor4&, int);                    \
  template void avg_bwd_nchw<T>(const PoolDesc&, const Tensor4&, const Tensor4&, int);
FC_POOL_BWD_INSTANCES(float)
FC_POOL_BWD_INSTANCES(double)
#undef FC_POOL_BWD_INSTANCES

}  // namespace FC_ISA
}  // namespace cpu
}  // namespace fastconv

// conv2d forward and weight gradient of channels_last grouped layers with narrow groups (RegNet's and
// ResNeXt's 3x3 convolutions: 4-16 channels per group), vectors along the output channels of several
// groups at once. Also runs dgrad's correlations of such layers (conv2d_isa.cpp: conv_run).
//
// One vector holds the Kg output channels of V = L / Kg consecutive groups (a "group block"); those
// groups read V*Cg <= L consecutive input channels, which one vector load brings in. Input channel c of
// every group in the block is then put in front of its group's lanes by one lane permute (AVX-512
// vpermps; lane l takes input lane (l / Kg)*Cg + c), and one FMA with the block's weights for c adds it
// to all V*Kg outputs: every multiply is useful, where the GEMM engine (conv_cl) runs one group at a
// time on a K panel of 16-48 lanes of which Kg are used (RegNet-Y-400MF, 8 channels per group, batch 8,
// 2 threads: c208 14x14 3x3 g26 1.26 ms in conv_cl, torch 0.31).
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu/conv2d_paths.h"

namespace fastconv {
namespace cpu {
namespace FC_ISA {
namespace {

// A lane permute out[l] = v[src[l]], its index vector kept as kPermWords 32-bit words per vector.
template <typename T>
struct LanePerm {
  using Sd = Simd<T>;
  using V = typename Sd::V;
  static constexpr int L = Sd::L;
#if defined(__AVX512F__)
  static constexpr int kWords = 16;
  static void words(const int* src, int32_t* w) {
    for (int l = 0; l < L; ++l) {
      if constexpr (sizeof(T) == 4) {
        w[l] = src[l];
      } else {  // 64-bit lane indices
        w[2 * l] = src[l];
        w[2 * l + 1] = 0;
      }
    }
  }
  static FC_INLINE V apply(V v, const int32_t* w) {
    const __m512i idx = _mm512_loadu_si512(w);
    if constexpr (sizeof(T) == 4)
      return _mm512_permutexvar_ps(idx, v);
    else
      return _mm512_permutexvar_pd(idx, v);
  }
#elif defined(__AVX2__) && defined(__FMA__)
  static constexpr int kWords = 8;
  static void words(const int* src, int32_t* w) {
    for (int l = 0; l < L; ++l) {
      if constexpr (sizeof(T) == 4) {
        w[l] = src[l];
      } else {  // a double lane is two float lanes
        w[2 * l] = 2 * src[l];
        w[2 * l + 1] = 2 * src[l] + 1;
      }
    }
  }
  static FC_INLINE V apply(V v, const int32_t* w) {
    const __m256i idx = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
    if constexpr (sizeof(T) == 4)
      return _mm256_permutevar8x32_ps(v, idx);
    else
      return _mm256_castps_pd(_mm256_permutevar8x32_ps(_mm256_castpd_ps(v), idx));
  }
#else
  static constexpr int kWords = L;
  static void words(const int* src, int32_t* w) {
    for (int l = 0; l < L; ++l) w[l] = src[l];
  }
  static FC_INLINE V apply(V v, const int32_t* w) {
    V o;
    for (int l = 0; l < L; ++l) o[l] = v[w[l]];
    return o;
  }
#endif
};

// The group-block layout shared by the forward and the weight gradient.
struct GroupBlocks {
  int64_t V;    // groups per vector
  int64_t nGB;  // group blocks: cdiv(G, V)
  int64_t lanes(int64_t gb, int64_t G, int64_t Kg) const { return std::min(V, G - gb * V) * Kg; }
};

template <typename T>
GroupBlocks group_blocks(const Geo& g) {
  const int64_t V = Simd<T>::L / g.Kg;
  return {V, cdiv(g.G, V)};
}

// perm[c * kWords ...]: the permute that puts input channel c of each group in front of its Kg lanes.
template <typename T>
std::vector<int32_t> group_perms(const Geo& g) {
  using P = LanePerm<T>;
  std::vector<int32_t> perm(g.Cg * P::kWords);
  int src[Simd<T>::L];
  for (int64_t c = 0; c < g.Cg; ++c) {
    for (int l = 0; l < Simd<T>::L; ++l) src[l] = (int)((l / g.Kg) * g.Cg + c);
    P::words(src, perm.data() + c * P::kWords);
  }
  return perm;
}

// acc[i] += w[c] * (input channel c of each lane's group in x[i]) for the Cg channels c of a tap; w at
// the tap's packed weights (vector c at w + c*L). CG == 0: any Cg, one lane permute per product (perm).
// CG > 0 (AVX-512 float32, CG and KG in {4, 8, 16}): a 128-bit chunk holds 4 lanes of one group, so
// channel c reaches its lanes by a chunk shuffle (vshuff32x4, once per 4 channels; none where the chunks
// already sit in place) and an in-chunk broadcast (vpermilps with an immediate), which runs beside the
// FMAs: on this Zen 4, 12 independent FMAs each fed by a vpermilps-immediate took 0.276 ns per pair, by
// a variable vpermps or vpermilps 0.372, the FMA alone 0.275.
template <typename T, int QB, int CG, int KG, bool INLANE = (CG > 0)>
struct GroupFma {
  using Sd = Simd<T>;
  using V = typename Sd::V;
  static FC_INLINE void run(V (&acc)[QB], const V (&xv)[QB], const T* w, int64_t Cg, const int32_t* perm) {
    using P = LanePerm<T>;
    for (int64_t c = 0; c < Cg; ++c) {
      const V wv = Sd::load(w + c * Sd::L);
      const int32_t* pc = perm + c * P::kWords;
      FC_UNROLL for (int i = 0; i < QB; ++i) acc[i] = Sd::fma(wv, P::apply(xv[i], pc), acc[i]);
    }
  }
};

// The source chunk of each of the 4 output chunks for channels [4*CB, 4*CB + 4) of every group.
template <int CG, int KG, int CB>
constexpr int chunk_select() {
  int imm = 0;
  for (int j = 0; j < 4; ++j) imm |= ((4 * j / KG) * CG / 4 + CB) << (2 * j);
  return imm;
}

#if defined(__AVX512F__)
template <int QB, int CG, int KG>
struct GroupFma<float, QB, CG, KG, true> {
  using V = __m512;
  template <int CB>
  static FC_INLINE void chunk(V (&acc)[QB], const V (&xv)[QB], const float* w) {
    constexpr int imm = chunk_select<CG, KG, CB>();
    V t[QB];
    FC_UNROLL for (int i = 0; i < QB; ++i) t[i] = imm == 0xE4 ? xv[i] : _mm512_shuffle_f32x4(xv[i], xv[i], imm);
    const float* wc = w + CB * 4 * 16;
    const V w0 = _mm512_loadu_ps(wc), w1 = _mm512_loadu_ps(wc + 16), w2 = _mm512_loadu_ps(wc + 32),
            w3 = _mm512_loadu_ps(wc + 48);
    FC_UNROLL for (int i = 0; i < QB; ++i) acc[i] = _mm512_fmadd_ps(w0, _mm512_permute_ps(t[i], 0x00), acc[i]);
    FC_UNROLL for (int i = 0; i < QB; ++i) acc[i] = _mm512_fmadd_ps(w1, _mm512_permute_ps(t[i], 0x55), acc[i]);
    FC_UNROLL for (int i = 0; i < QB; ++i) acc[i] = _mm512_fmadd_ps(w2, _mm512_permute_ps(t[i], 0xAA), acc[i]);
    FC_UNROLL for (int i = 0; i < QB; ++i) acc[i] = _mm512_fmadd_ps(w3, _mm512_permute_ps(t[i], 0xFF), acc[i]);
  }
  template <int... CB>
  static FC_INLINE void chunks(V (&acc)[QB], const V (&xv)[QB], const float* w, std::integer_sequence<int, CB...>) {
    (chunk<CB>(acc, xv, w), ...);
  }
  static FC_INLINE void run(V (&acc)[QB], const V (&xv)[QB], const float* w, int64_t, const int32_t*) {
    chunks(acc, xv, w, std::make_integer_sequence<int, CG / 4>{});
  }
};
#endif

template <int N>
using Int = std::integral_constant<int, N>;

// Calls f(Int<CG>, Int<KG>) with the in-chunk specialization of (Cg, Kg), or f(Int<0>, Int<0>).
template <typename T, typename F>
void with_group_shape(int64_t Cg, int64_t Kg, F&& f) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    if (Kg == 4 && Cg == 4) return f(Int<4>{}, Int<4>{});
    if (Kg == 8 && Cg == 4) return f(Int<4>{}, Int<8>{});
    if (Kg == 8 && Cg == 8) return f(Int<8>{}, Int<8>{});
    if (Kg == 16 && Cg == 4) return f(Int<4>{}, Int<16>{});
    if (Kg == 16 && Cg == 8) return f(Int<8>{}, Int<16>{});
    if (Kg == 16 && Cg == 16) return f(Int<16>{}, Int<16>{});
  }
#endif
  (void)Cg;
  (void)Kg;
  f(Int<0>{}, Int<0>{});
}

// The packed weight: vector [gb][r][s][c] holds w(gb*V + l / Kg, l % Kg, c, r, s) in lane l (zeros past
// the last group): one L-wide panel per group block (pack_columns). RegNetY-400MF's 440-channel layer
// (55 groups of 8) packed element by element in panel order took 0.10-0.15 ms per pass, the kernel 0.25.
template <typename T>
void pack_group_weights(const Geo& g, const WV<T>& w, T* wp, int nth) {
  constexpr int L = Simd<T>::L;
  const GroupBlocks b = group_blocks<T>(g);
  const PanelRows<T> rows(w, g.Cg, g.R, g.S, /*taps_outer=*/true);
  const int64_t panel = g.R * g.S * g.Cg * L;
#pragma omp parallel for num_threads(nth) schedule(static)
  for (int64_t gb = 0; gb < b.nGB; ++gb) {
    const T* col[L];
    for (int l = 0; l < L; ++l) {
      const int64_t grp = gb * b.V + l / g.Kg;
      col[l] = grp < g.G ? w.p + grp * w.sg + (l % g.Kg) * w.sk : nullptr;
    }
    pack_columns<T>(col, L, rows, wp + gb * panel);
  }
}

// QB output pixels of one row x one group block. xr[k] / mr[k]: the k-th valid tap row (tap row
// rid[k]) at input column 0 and the block's first input channel; pixel i, tap s reads column
// iw0 + i*sw + s*dw (x stride xs3, mask stride ms3). EDGE: some of those columns are outside [0, W) and
// read as zeros (adding a signed zero; the interior blocks skip the checks). wgb: the block's packed
// weights. Every pixel's sum runs over tap rows, taps and channels in order, whichever block it is in.
template <typename T, int QB, int CG, int KG, bool MASK, bool EDGE>
FC_INLINE void grp_block(const T* const* xr, const T* const* mr, const int64_t* rid, int64_t nrv, int64_t iw0,
                         int64_t W, int64_t sw, int64_t dw, int64_t S, int64_t xs3, int64_t ms3, const T* wgb,
                         int64_t Cg, const int32_t* perm, int nxl, const T* bias, int nl, const Epi& ep, T* yo,
                         int64_t ysi) {
  using Sd = Simd<T>;
  using V = typename Sd::V;
  constexpr int L = Sd::L;
  V acc[QB];
  FC_UNROLL for (int i = 0; i < QB; ++i) acc[i] = Sd::zero();
  for (int64_t k = 0; k < nrv; ++k) {
    for (int64_t s = 0; s < S; ++s) {
      const int64_t iws = iw0 + s * dw;
      V xv[QB];
      FC_UNROLL for (int i = 0; i < QB; ++i) {
        const int64_t iw = iws + i * sw;
        if (EDGE && (iw < 0 || iw >= W)) {
          xv[i] = Sd::zero();
          continue;
        }
        const T* xp = xr[k] + iw * xs3;
        xv[i] = nxl == L ? Sd::load(xp) : Sd::load_n(xp, nxl);
        if (MASK) {
          const T* mp = mr[k] + iw * ms3;
          xv[i] = Sd::mask_le0(xv[i], nxl == L ? Sd::load(mp) : Sd::load_n(mp, nxl));
        }
      }
      GroupFma<T, QB, CG, KG>::run(acc, xv, wgb + (rid[k] * S + s) * Cg * L, Cg, perm);
    }
  }
  if (bias != nullptr) {
    const V bv = Sd::load(bias);
    FC_UNROLL for (int i = 0; i < QB; ++i) acc[i] = Sd::add(acc[i], bv);
  }
  FC_UNROLL for (int i = 0; i < QB; ++i) {
    if (nl == L)
      Sd::store(yo + i * ysi, epi_store_value<T>(ep, acc[i]));
    else
      Sd::store_n(yo + i * ysi, epi_store_value<T>(ep, acc[i]), nl);
  }
  if (!epi_plain(ep)) epi_fixup<T>(ep, yo, 1, nl, QB, ysi);
}

// Tasks are (n, output row, chunk of group blocks); within a task and block, the row's pixels go in
// blocks of QB (then 4, 2, 1 for the rest); blocks whose taps all read valid columns skip the checks.
// Single pixels at QB = 1 would be one dependent chain of FMAs: at 14x14, 6 of the 14 columns of a row
// ran that way and the layer (c208 g26, batch 8, 1 thread) took 1.0 ms, 46 GFLOP/s.
template <typename T, int CG, int KG, bool MASK>
void conv_grouped_cl_impl(const Geo& g, In4<T> x, In4<T> m, const T* wp, const T* bias, Out4<T> y, const Epi& ep,
                          int nth) {
  constexpr int L = Simd<T>::L;
#if defined(__AVX512F__)
  constexpr int QB = 8;  // 8 accumulators + 8 input vectors + weight + index of 32 registers
#else
  constexpr int QB = 4;
#endif
  const GroupBlocks b = group_blocks<T>(g);
  const std::vector<int32_t> perm = group_perms<T>(g);
  std::vector<T> bp(bias ? b.nGB * L : 0, T(0));
  for (int64_t k = 0; bias && k < g.Kout; ++k) bp[k] = bias[k];  // block gb's lanes are channels gb*L...
  int64_t qlo = 0, qhi = g.Q;  // interior columns: every tap reads a valid input column
  for (int64_t s = 0; s < g.S; ++s) {
    const QRange qr = valid_cols(s * g.dw - g.pw, g.sw, g.W, g.Q);
    qlo = std::max(qlo, qr.lo);
    qhi = std::min(qhi, qr.hi);
  }
  if (qhi < qlo) qhi = qlo;
  int64_t nGBC = 1;  // chunks of group blocks, for enough tasks when N*P is small
  if (g.N * g.P < 8 * nth) nGBC = std::min(b.nGB, cdiv(8 * nth, g.N * g.P));
  const int64_t GBC = cdiv(b.nGB, nGBC);
  nGBC = cdiv(b.nGB, GBC);
  const int64_t ntask = g.N * g.P * nGBC;
  const int64_t RP = g.R + 8;
  std::vector<const T*> ptr_all(nth * 4 * RP);
  std::vector<int64_t> rid_all(nth * RP);
  const int64_t blk_w = g.R * g.S * g.Cg * L;
#pragma omp parallel num_threads(nth)
  {
    const int tid = thread_id();
    const T** xr = ptr_all.data() + tid * 4 * RP;
    const T** mr = xr + RP;
    const T** xq = mr + RP;
    const T** mq = xq + RP;
    int64_t* rid = rid_all.data() + tid * RP;
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < ntask; ++task) {
      const int64_t gc = task % nGBC, np = task / nGBC;
      const int64_t n = np / g.P, p = np % g.P;
      int64_t nrv = 0;
      for (int64_t r = 0; r < g.R; ++r) {
        const int64_t ih = p * g.sh - g.ph + r * g.dh;
        if (ih < 0 || ih >= g.H) continue;
        rid[nrv] = r;
        xr[nrv] = x.p + n * x.s0 + ih * x.s2;
        mr[nrv] = MASK ? m.p + n * m.s0 + ih * m.s2 : nullptr;
        ++nrv;
      }
      T* yrow = y.p + n * y.s0 + p * y.s2;
      for (int64_t gb = gc * GBC; gb < std::min(b.nGB, (gc + 1) * GBC); ++gb) {
        const int64_t c0 = gb * b.V * g.Cg;  // the block's first input channel
        for (int64_t k = 0; k < nrv; ++k) {
          xq[k] = xr[k] + c0;
          if (MASK) mq[k] = mr[k] + c0;
        }
        const int nxl = (int)(std::min(b.V, g.G - gb * b.V) * g.Cg);
        const int nl = (int)b.lanes(gb, g.G, g.Kg);
        const T* wgb = wp + gb * blk_w;
        const T* bgb = bias ? bp.data() + gb * L : nullptr;
        T* ygb = yrow + gb * L;
        auto run = [&](auto qb_tag, int64_t q) {
          constexpr int B = decltype(qb_tag)::value;
          const int64_t iw0 = q * g.sw - g.pw;
          auto go = [&](auto edge_tag) {
            grp_block<T, B, CG, KG, MASK, decltype(edge_tag)::value>(xq, mq, rid, nrv, iw0, g.W, g.sw, g.dw, g.S, x.s3, m.s3,
                                                             wgb, g.Cg, perm.data(), nxl, bgb, nl, ep,
                                                             ygb + q * y.s3, y.s3);
          };
          if (q >= qlo && q + B <= qhi)
            go(std::false_type{});
          else
            go(std::true_type{});
        };
        int64_t q = 0;
        for (; q + QB <= g.Q; q += QB) run(std::integral_constant<int, QB>{}, q);
        if (QB > 4 && q + 4 <= g.Q) run(std::integral_constant<int, 4>{}, q), q += 4;
        if (q + 2 <= g.Q) run(std::integral_constant<int, 2>{}, q), q += 2;
        if (q < g.Q) run(std::integral_constant<int, 1>{}, q);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Weight gradient: dw[g, k, c, r, s] = sum over n, p, q of dy[n, p, q, g*Kg + k] * x[n, ih, iw, g*Cg + c].

// acc[c] += dy * (input channel c of each lane's group in xv), c < CG: GroupFma's permutes, with one
// accumulator per channel instead of per pixel.
template <typename T, int CG, int KG, bool INLANE = (KG > 0)>
struct WgradFma {
  using Sd = Simd<T>;
  using V = typename Sd::V;
  static FC_INLINE void run(V (&acc)[CG], V dv, V xv, const int32_t* perm) {
    using P = LanePerm<T>;
    FC_UNROLL for (int c = 0; c < CG; ++c) acc[c] = Sd::fma(dv, P::apply(xv, perm + c * P::kWords), acc[c]);
  }
};

#if defined(__AVX512F__)
template <int CG, int KG>
struct WgradFma<float, CG, KG, true> {
  using V = __m512;
  template <int CB>
  static FC_INLINE void chunk(V (&acc)[CG], V dv, V xv) {
    constexpr int imm = chunk_select<CG, KG, CB>();
    const V t = imm == 0xE4 ? xv : _mm512_shuffle_f32x4(xv, xv, imm);
    acc[4 * CB] = _mm512_fmadd_ps(dv, _mm512_permute_ps(t, 0x00), acc[4 * CB]);
    acc[4 * CB + 1] = _mm512_fmadd_ps(dv, _mm512_permute_ps(t, 0x55), acc[4 * CB + 1]);
    acc[4 * CB + 2] = _mm512_fmadd_ps(dv, _mm512_permute_ps(t, 0xAA), acc[4 * CB + 2]);
    acc[4 * CB + 3] = _mm512_fmadd_ps(dv, _mm512_permute_ps(t, 0xFF), acc[4 * CB + 3]);
  }
  template <int... CB>
  static FC_INLINE void chunks(V (&acc)[CG], V dv, V xv, std::integer_sequence<int, CB...>) {
    (chunk<CB>(acc, dv, xv), ...);
  }
  static FC_INLINE void run(V (&acc)[CG], V dv, V xv, const int32_t*) {
    chunks(acc, dv, xv, std::make_integer_sequence<int, CG / 4>{});
  }
};
#endif

// One output row (n, p) of a group block into the running sums of taps (r, [sa, sa + nsb)), which sit in
// sums[j][c] (SB x CG vectors) between rows: the row's x and dy slices stay in L1 across the taps, and
// every sum still runs over the pixels in order (n, p, q), whatever the task split.
template <typename T, int CG, int KG, int SB, bool MASK>
FC_INLINE void wgrad_grouped_row(const Geo& g, const T* xrow, const T* dyrow, const T* mrow, int64_t xs3,
                                 int64_t dys3, int64_t ms3, int64_t sa, int64_t nsb, int64_t qlo, int64_t qhi, int nxl,
                                 int nl, const int32_t* perm, T* sums) {
  using Sd = Simd<T>;
  using V = typename Sd::V;
  constexpr int L = Sd::L;
  V acc[SB][CG];  // rows j >= nsb are neither read nor written: sums holds only the block's nsb taps
  FC_UNROLL for (int j = 0; j < SB; ++j) FC_UNROLL for (int c = 0; c < CG; ++c)
      acc[j][c] = j < nsb ? Sd::load(sums + (j * CG + c) * L) : Sd::zero();
  auto pixel = [&](int64_t q, bool edge) {
    V dv = nl == L ? Sd::load(dyrow + q * dys3) : Sd::load_n(dyrow + q * dys3, nl);
    if (MASK) dv = Sd::mask_le0(dv, nl == L ? Sd::load(mrow + q * ms3) : Sd::load_n(mrow + q * ms3, nl));
    FC_UNROLL for (int j = 0; j < SB; ++j) {
      if (j >= nsb) break;
      const int64_t iw = q * g.sw - g.pw + (sa + j) * g.dw;
      if (edge && (iw < 0 || iw >= g.W)) continue;
      const V xv = nxl == L ? Sd::load(xrow + iw * xs3) : Sd::load_n(xrow + iw * xs3, nxl);
      WgradFma<T, CG, KG>::run(acc[j], dv, xv, perm);
    }
  };
  int64_t q = 0;
  for (; q < qlo; ++q) pixel(q, true);
  for (; q < qhi; ++q) pixel(q, false);
  for (; q < g.Q; ++q) pixel(q, true);
  FC_UNROLL for (int j = 0; j < SB; ++j) {
    if (j >= nsb) break;
    FC_UNROLL for (int c = 0; c < CG; ++c) Sd::store(sums + (j * CG + c) * L, acc[j][c]);
  }
}

// Tasks are (group block, tap row), or whole group blocks when there are enough of them (every tap row
// then reuses the block's x and dy rows from L1 instead of reading them R times: RegNet-Y-400MF's
// c104 28x28 3x3 g13, batch 8, 2 threads: 2.2 ms with a task per tap row against 1.4 per block).
template <typename T, int CG, int KG, bool MASK>
void wgrad_grouped_impl(const ConvDesc& d, In4<T> x, In4<T> dy, In4<T> m, Out4<T> dw, int nth) {
  constexpr int L = Simd<T>::L;
  constexpr int SB = std::max(1, 24 / CG);  // SB*CG accumulators of 32 zmm
  const Geo g = geo_of(d);
  const GroupBlocks b = group_blocks<T>(g);
  const std::vector<int32_t> perm = group_perms<T>(g);
  const int64_t nSB = cdiv(g.S, SB);
  const int64_t RS = g.R * g.S;
  const int64_t rsplit = b.nGB >= 4 * nth ? 1 : g.R;  // tap-row chunks per group block
  const int64_t RC = cdiv(g.R, rsplit);
  const int64_t ntask = b.nGB * rsplit;
  Buf<T> sums(ntask * RS * CG * L);
  // The columns q whose taps [sa, sa + SB) all read valid input columns, per tap block.
  std::vector<int64_t> qlo(nSB), qhi(nSB);
  for (int64_t sb = 0; sb < nSB; ++sb) {
    qlo[sb] = 0;
    qhi[sb] = g.Q;
    for (int64_t s = sb * SB; s < std::min<int64_t>(g.S, sb * SB + SB); ++s) {
      const QRange qr = valid_cols(s * g.dw - g.pw, g.sw, g.W, g.Q);
      qlo[sb] = std::max(qlo[sb], qr.lo);
      qhi[sb] = std::min(qhi[sb], qr.hi);
    }
    if (qhi[sb] < qlo[sb]) qhi[sb] = qlo[sb];
  }
#pragma omp parallel for num_threads(nth) schedule(dynamic, 1)
  for (int64_t t = 0; t < ntask; ++t) {
    const int64_t gb = t / rsplit, r0 = (t % rsplit) * RC, r1 = std::min(g.R, r0 + RC);
    T* ts = sums.p + t * RS * CG * L;  // [r][s][c][L]: tap s at ts + (r*S + s)*CG*L
    zero_n(ts, RS * CG * L);
    const int64_t c0 = gb * b.V * CG, k0 = gb * L;
    const int nxl = (int)(std::min(b.V, g.G - gb * b.V) * CG);
    const int nl = (int)b.lanes(gb, g.G, g.Kg);
    for (int64_t n = 0; n < g.N; ++n)
      for (int64_t p = 0; p < g.P; ++p) {
        const T* dyrow = dy.p + n * dy.s0 + p * dy.s2 + k0;
        const T* mrow = MASK ? m.p + n * m.s0 + p * m.s2 + k0 : nullptr;
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t ih = p * g.sh - g.ph + r * g.dh;
          if (ih < 0 || ih >= g.H) continue;
          const T* xrow = x.p + n * x.s0 + ih * x.s2 + c0;
          for (int64_t sb = 0; sb < nSB; ++sb) {
            const int64_t sa = sb * SB, nsb = std::min<int64_t>(SB, g.S - sa);
            wgrad_grouped_row<T, CG, KG, SB, MASK>(g, xrow, dyrow, mrow, x.s3, dy.s3, m.s3, sa, nsb, qlo[sb], qhi[sb],
                                                   nxl, nl, perm.data(), ts + (r * g.S + sa) * CG * L);
          }
        }
      }
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t s = 0; s < g.S; ++s)
        for (int64_t c = 0; c < CG; ++c)
          for (int64_t l = 0; l < nl; ++l)
            dw.p[(k0 + l) * dw.s0 + c * dw.s1 + r * dw.s2 + s * dw.s3] = ts[((r * g.S + s) * CG + c) * L + l];
  }
}

}  // namespace

template <typename T>
int64_t grouped_nhwc_pack_size(const Geo& g) {
  return group_blocks<T>(g).nGB * g.R * g.S * g.Cg * Simd<T>::L;
}

// The packed weight: the caller's cached pack, or packed into own.
template <typename T>
const T* grouped_weights(const Geo& g, const WV<T>& w, WeightPack* pack, std::vector<T>& own, int nth) {
  const int64_t count = grouped_nhwc_pack_size<T>(g);
  const T* wp = cached_pack<T>(pack, count, [&](T* p) { pack_group_weights<T>(g, w, p, nth); });
  if (wp != nullptr) return wp;
  own.resize(count);
  pack_group_weights<T>(g, w, own.data(), nth);
  return own.data();
}

template <typename T>
void grouped_cl_run(const Geo& g, In4<T> x, In4<T> m, const T* wp, const T* bias, Out4<T> y, const Epi& ep,
                    int nth) {
  with_group_shape<T>(g.Cg, g.Kg, [&](auto cg, auto kg) {
    constexpr int CG = decltype(cg)::value, KG = decltype(kg)::value;
    if (m.p != nullptr)
      conv_grouped_cl_impl<T, CG, KG, true>(g, x, m, wp, bias, y, ep, nth);
    else
      conv_grouped_cl_impl<T, CG, KG, false>(g, x, m, wp, bias, y, ep, nth);
  });
}

template <typename T>
void grouped_nhwc_fwd(const Geo& g, In4<T> x, In4<T> m, WV<T> w, const T* bias, Out4<T> y, const Epi& ep, int nth,
                      WeightPack* pack) {
  std::vector<T> own;
  grouped_cl_run<T>(g, x, m, grouped_weights<T>(g, w, pack, own, nth), bias, y, ep, nth);
}

// NCHW x and y through the channels_last kernel on staged copies, a few images at a time (half an L2 of
// input per thread, and at least 8 output rows per thread, so a batch keeps the threads busy).
void grouped_nhwc_staged_nchw_fwd(const Geo& g, const Tensor4& x, WV<float> w, const float* bias, const Tensor4& y,
                                  const Epi& ep, int nth, WeightPack* pack) {
  std::vector<float> own;
  const float* wp = grouped_weights<float>(g, w, pack, own, nth);
  const int64_t image_bytes = g.Cin * g.H * g.W * (int64_t)sizeof(float);
  const int64_t by_cache = nth * (l2_cache_bytes() / 2) / image_bytes;
  const int64_t by_tasks = cdiv(8 * nth, g.P);
  const int64_t NB = std::max<int64_t>({int64_t(1), by_cache, by_tasks});
  for_staged_image_batches(g, x, y, NB, nth, [&](const Geo& gc, const In4<float>& xcl, const Out4<float>& ycl) {
    grouped_cl_run<float>(gc, xcl, In4<float>{}, wp, bias, ycl, ep, nth);
  });
}

template <typename T>
void wgrad_grouped_nhwc(const ConvDesc& d, In4<T> x, In4<T> dy, In4<T> m, Out4<T> dw, int nth) {
  const int64_t Cg = d.C / d.groups, Kg = d.K / d.groups;
  auto run = [&](auto cg, auto kg) {
    constexpr int CG = decltype(cg)::value, KG = decltype(kg)::value;
    if (m.p != nullptr)
      wgrad_grouped_impl<T, CG, KG, true>(d, x, dy, m, dw, nth);
    else
      wgrad_grouped_impl<T, CG, KG, false>(d, x, dy, m, dw, nth);
  };
  with_group_shape<T>(Cg, Kg, [&](auto cg, auto kg) {
    if constexpr (decltype(cg)::value > 0) {
      run(cg, kg);
    } else {  // the generic permutes, Cg in {2, 4, 8, 16} (wgrad_grouped_nhwc_usable)
      if (Cg == 2) return run(Int<2>{}, Int<0>{});
      if (Cg == 4) return run(Int<4>{}, Int<0>{});
      if (Cg == 8) return run(Int<8>{}, Int<0>{});
      run(Int<16>{}, Int<0>{});
    }
  });
}

#define FC_INSTANTIATE(T)                                                                                       \
  template int64_t grouped_nhwc_pack_size<T>(const Geo&);                                                      \
  template void grouped_nhwc_fwd<T>(const Geo&, In4<T>, In4<T>, WV<T>, const T*, Out4<T>, const Epi&, int,     \
                                    WeightPack*);                                                              \
  template void wgrad_grouped_nhwc<T>(const ConvDesc&, In4<T>, In4<T>, In4<T>, Out4<T>, int);
FC_FOR_FLOAT_TYPES(FC_INSTANTIATE)
#undef FC_INSTANTIATE

}  // namespace FC_ISA
}  // namespace cpu
}  // namespace fastconv

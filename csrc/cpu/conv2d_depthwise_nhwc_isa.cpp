// conv2d forward of channels_last depthwise layers (C input channels, C groups, one output channel
// each): vectors along the channels. conv_dwcl_rows runs 3- and 5-tap rows with column stride 1 or 2
// (also dgrad's mirrored taps) on register blocks of output pixels x channel vectors; other
// geometries take the generic conv_direct_cl_impl. Also runs dgrad's stride-1 correlations of such
// layers (conv2d_isa.cpp: conv_run).
#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/conv2d_paths.h"

namespace fastconv {
namespace cpu {
namespace FC_ISA {
namespace {

// QB output pixels x one channel vector (nl valid lanes when TAIL) for conv_direct_cl. xr[k]/mr[k]:
// the k-th valid tap row (tap row rid[k]) at the first pixel's first tap (s0) and the vector's
// channels; pixel i, tap s (relative to s0) at + i*si + s*ss. wT at tap row 0, tap s0, same channels.
template <typename T, int QB, bool TAIL, bool MASK>
FC_INLINE void dw_cl_block(const T* const* xr, const T* const* mr, const int64_t* rid, int64_t nrv, int64_t ns,
                           int64_t si, int64_t ss, int64_t msi, int64_t mss, const T* wT, int64_t wrs, int64_t Cp,
                           const T* bp, const Epi& ep, T* yo, int64_t ysi, int nl) {
  using Sd = Simd<T>;
  using V = typename Sd::V;
  V acc[QB];
  FC_UNROLL for (int i = 0; i < QB; ++i) acc[i] = Sd::zero();
  for (int64_t k = 0; k < nrv; ++k) {
    const T* xb = xr[k];
    const T* mb = MASK ? mr[k] : nullptr;
    const T* wr = wT + rid[k] * wrs;
    for (int64_t s = 0; s < ns; ++s) {
      const V wv = Sd::load(wr + s * Cp);
      const T* xs = xb + s * ss;
      FC_UNROLL for (int i = 0; i < QB; ++i) {
        V xv = TAIL ? Sd::load_n(xs + i * si, nl) : Sd::load(xs + i * si);
        if (MASK) {
          const T* ms = mb + s * mss + i * msi;
          xv = Sd::mask_le0(xv, TAIL ? Sd::load_n(ms, nl) : Sd::load(ms));
        }
        acc[i] = Sd::fma(wv, xv, acc[i]);
      }
    }
  }
  if (bp != nullptr) {
    const V b = Sd::load(bp);
    FC_UNROLL for (int i = 0; i < QB; ++i) acc[i] = Sd::add(acc[i], b);
  }
  FC_UNROLL for (int i = 0; i < QB; ++i) {
    if (TAIL)
      Sd::store_n(yo + i * ysi, epi_store_value<T>(ep, acc[i]), nl);
    else
      Sd::store(yo + i * ysi, epi_store_value<T>(ep, acc[i]));
  }
  if (!epi_plain(ep))
    epi_fixup<T>(ep, yo, 1, TAIL ? nl : Sd::L, QB, ysi);
}

// channels_last input and output, Kg == 1: vectors along C, taps as FMAs over channel vectors read
// in place (no padded copy). Tasks are (n, output row, column chunk); within a task, pixels whose
// taps are all inside the input run in blocks of QB = 4 (one weight load per tap and block), border
// pixels clamp their tap column range.
template <typename T, bool MASK>
void conv_direct_cl_impl(const Geo& g, In4<T> x, In4<T> m, WV<T> w, const T* bias, Out4<T> y, const Epi& ep,
                         int nth) {
  using Sd = Simd<T>;
  constexpr int L = Sd::L;
  constexpr int QB = 4;
  const int64_t RS = g.R * g.S, C = g.G;
  const int64_t nCV = cdiv(C, L), Cp = nCV * L;
  const int tail = (int)(C - (nCV - 1) * L);  // lanes of the last channel vector
  std::vector<T> wT(RS * Cp, T(0)), bp(bias ? Cp : 0, T(0));
  for (int64_t c = 0; c < C; ++c)
    for (int64_t r = 0; r < g.R; ++r)
      for (int64_t s = 0; s < g.S; ++s) wT[(r * g.S + s) * Cp + c] = w.at(c, 0, 0, r, s);
  for (int64_t c = 0; bias && c < C; ++c) bp[c] = bias[c];
  // Interior columns: every tap s reads a valid input column.
  int64_t qlo = 0, qhi = g.Q;
  for (int64_t s = 0; s < g.S; ++s) {
    const QRange qr = valid_cols(s * g.dw - g.pw, g.sw, g.W, g.Q);
    qlo = std::max(qlo, qr.lo);
    qhi = std::min(qhi, qr.hi);
  }
  if (qhi < qlo) qhi = qlo;
  int64_t nQC = 1;
  if (g.N * g.P < 8 * nth) nQC = std::min(cdiv(8 * nth, g.N * g.P), cdiv(g.Q, 4 * QB));
  const int64_t QC = cdiv(g.Q, nQC);
  nQC = cdiv(g.Q, QC);
  const int64_t ntask = g.N * g.P * nQC;
  const int64_t RP = cdiv(g.R, 8) * 8 + 8;  // per-thread slots, padded apart (no false sharing)
  std::vector<const T*> ptr_all(nth * 4 * RP);
  std::vector<int64_t> rid_all(nth * RP);
  const int64_t si = g.sw * x.s3, ss = g.dw * x.s3, msi = g.sw * m.s3, mss = g.dw * m.s3;
  const int64_t ysi = y.s3;
  const T* bpp = bias ? bp.data() : nullptr;
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
      const int64_t qc = task % nQC, np = task / nQC;
      const int64_t n = np / g.P, p = np % g.P;
      const int64_t qa = qc * QC, qb = std::min(g.Q, qa + QC);
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
      // Pixels [q, q + QB') with taps [s0, s0 + ns): channel vectors in turn.
      auto run = [&](auto qb_tag, int64_t q, int64_t s0, int64_t ns) {
        constexpr int B = decltype(qb_tag)::value;
        const int64_t iw = q * g.sw - g.pw + s0 * g.dw;
        for (int64_t k = 0; k < nrv; ++k) {
          xq[k] = xr[k] + iw * x.s3;
          if (MASK) mq[k] = mr[k] + iw * m.s3;
        }
        T* yo = yrow + q * ysi;
        const T* wq = wT.data() + s0 * Cp;
        for (int64_t cv = 0; cv + 1 < nCV; ++cv) {
          const int64_t c0 = cv * L;
          dw_cl_block<T, B, false, MASK>(xq, mq, rid, nrv, ns, si, ss, msi, mss, wq + c0, g.S * Cp, Cp,
                                         bpp ? bpp + c0 : nullptr, ep, yo + c0, ysi, L);
          for (int64_t k = 0; k < nrv; ++k) {
            xq[k] += L;
            if (MASK) mq[k] += L;
          }
        }
        const int64_t c0 = (nCV - 1) * L;
        if (tail == L)
          dw_cl_block<T, B, false, MASK>(xq, mq, rid, nrv, ns, si, ss, msi, mss, wq + c0, g.S * Cp, Cp,
                                         bpp ? bpp + c0 : nullptr, ep, yo + c0, ysi, L);
        else
          dw_cl_block<T, B, true, MASK>(xq, mq, rid, nrv, ns, si, ss, msi, mss, wq + c0, g.S * Cp, Cp,
                                        bpp ? bpp + c0 : nullptr, ep, yo + c0, ysi, tail);
      };
      using One = std::integral_constant<int, 1>;
      using Blk = std::integral_constant<int, QB>;
      auto border = [&](int64_t q) {
        int64_t s0 = g.S, s1 = -1;
        for (int64_t s = 0; s < g.S; ++s) {
          const int64_t iw = q * g.sw - g.pw + s * g.dw;
          if (iw >= 0 && iw < g.W) {
            s0 = std::min(s0, s);
            s1 = std::max(s1, s);
          }
        }
        if (s1 < s0) s0 = 0, s1 = -1;  // no valid tap: bias/ReLU only
        run(One{}, q, s0, s1 - s0 + 1);
      };
      const int64_t ilo = std::max(qa, qlo), ihi = std::min(qb, qhi);
      int64_t q = qa;
      for (; q < std::min(qb, ilo); ++q) border(q);
      for (; q + QB <= ihi; q += QB) run(Blk{}, q, 0, g.S);
      for (; q < ihi; ++q) run(One{}, q, 0, g.S);
      for (; q < qb; ++q) border(q);
    }
  }
}

// conv_direct_cl fast path: S in {3, 5} taps per row, column stride sw in {1, 2}, |dw| == 1 (dgrad's
// mirrored taps, dw = -1, are flipped to dw = +1 by the caller). Output pixels [q0, q0 + QB) of one
// row and CVB consecutive channel vectors: for each valid tap row, the (QB-1)*SW + S input columns are
// loaded once each (zero outside [0, W)) and every loaded vector feeds all the taps that read it, so a
// pixel costs ~1 + (S-1)/QB vector loads per tap row instead of S; the row's S x CVB weights sit in
// registers. Every pixel's sum runs over tap rows, then taps s in order (a zero column adds a signed
// zero), whatever block the pixel falls in: results do not depend on the task split.
// xr[k]: valid tap row k at column 0 and the block's first channel; wr[k]: its S weight rows (stride Cp).
template <typename T, int S, int SW, int QB, int CVB, bool TAIL, bool MASK, bool EDGE>
FC_INLINE void dwcl_block(const T* const* xr, const T* const* mr, const T* const* wr, int64_t nrv, int64_t iw0,
                          int64_t sx, int64_t smx, int64_t Cp, int jlo, int jhi, const T* bp, const Epi& ep, T* yo,
                          int64_t ysi, int nq, int nl) {
  using Sd = Simd<T>;
  using V = typename Sd::V;
  constexpr int L = Sd::L;
  constexpr int NC = (QB - 1) * SW + S;  // input columns of the block
  static_assert(!TAIL || CVB == 1, "a channel tail is computed one vector at a time");
  V acc[QB][CVB];
  FC_UNROLL for (int i = 0; i < QB; ++i) FC_UNROLL for (int v = 0; v < CVB; ++v) acc[i][v] = Sd::zero();
  for (int64_t k = 0; k < nrv; ++k) {
    const T* xb = xr[k] + iw0 * sx;
    const T* mb = MASK ? mr[k] + iw0 * smx : nullptr;
    V wv[S][CVB];
    FC_UNROLL for (int s = 0; s < S; ++s) FC_UNROLL for (int v = 0; v < CVB; ++v)
        wv[s][v] = TAIL ? Sd::load_n(wr[k] + s * Cp, nl) : Sd::load(wr[k] + s * Cp + v * L);
    FC_UNROLL for (int j = 0; j < NC; ++j) {
      V col[CVB];
      FC_UNROLL for (int v = 0; v < CVB; ++v) col[v] = Sd::zero();
      if (!EDGE || (j >= jlo && j < jhi)) {
        FC_UNROLL for (int v = 0; v < CVB; ++v) {
          col[v] = TAIL ? Sd::load_n(xb + j * sx, nl) : Sd::load(xb + j * sx + v * L);
          if (MASK)
            col[v] = Sd::mask_le0(col[v], TAIL ? Sd::load_n(mb + j * smx, nl) : Sd::load(mb + j * smx + v * L));
        }
      }
      FC_UNROLL for (int s = 0; s < S; ++s) {
        const int d = j - s;
        if (d >= 0 && d % SW == 0 && d / SW < QB)
          FC_UNROLL for (int v = 0; v < CVB; ++v) acc[d / SW][v] = Sd::fma(wv[s][v], col[v], acc[d / SW][v]);
      }
    }
  }
  if (bp != nullptr) {
    FC_UNROLL for (int v = 0; v < CVB; ++v) {
      const V b = TAIL ? Sd::load_n(bp, nl) : Sd::load(bp + v * L);
      FC_UNROLL for (int i = 0; i < QB; ++i) acc[i][v] = Sd::add(acc[i][v], b);
    }
  }
  FC_UNROLL for (int i = 0; i < QB; ++i) {
    if (i >= nq) break;  // a row's last block may be partial (dwcl_pixel_blocks)
    FC_UNROLL for (int v = 0; v < CVB; ++v) {
      if (TAIL)
        Sd::store_n(yo + i * ysi, epi_store_value<T>(ep, acc[i][v]), nl);
      else
        Sd::store(yo + i * ysi + v * L, epi_store_value<T>(ep, acc[i][v]));
    }
  }
  if (!epi_plain(ep))
    epi_fixup<T>(ep, yo, 1, TAIL ? nl : CVB * L, nq, ysi);
}

// Two output rows (p, p+1) of a 3x3, stride-1 (sh = sw = dh = dw = 1) problem at once: the four input
// rows p-ph .. p-ph+3 are each read once for both rows, so every loaded column vector feeds up to 6
// taps and the L1 traffic per output row drops from 3 input rows to 2. Each output pixel's sum has
// the same order as in dwcl_block (tap rows, then taps), so pairing never changes a result bit.
// xu[u]: input row u at column 0 and the block's channels, null for a padding row; w: the 9 weight
// vectors ([r][s], stride Cp) at the block's channels.
template <typename T, int QB, bool TAIL, bool MASK, bool EDGE>
FC_INLINE void dwcl_block_r2(const T* const* xu, const T* const* mu, const T* w, int64_t iw0, int64_t sx,
                             int64_t smx, int64_t Cp, int jlo, int jhi, const T* bp, const Epi& ep, T* yo, int64_t yrs,
                             int64_t ysi, int nq, int nl) {
  using Sd = Simd<T>;
  using V = typename Sd::V;
  constexpr int NC = QB + 2;
  V acc[2][QB];
  FC_UNROLL for (int o = 0; o < 2; ++o) FC_UNROLL for (int i = 0; i < QB; ++i) acc[o][i] = Sd::zero();
  V wv[3][3];
  FC_UNROLL for (int r = 0; r < 3; ++r) FC_UNROLL for (int s = 0; s < 3; ++s)
      wv[r][s] = TAIL ? Sd::load_n(w + (r * 3 + s) * Cp, nl) : Sd::load(w + (r * 3 + s) * Cp);
  FC_UNROLL for (int u = 0; u < 4; ++u) {
    if (xu[u] == nullptr) continue;
    const T* xb = xu[u] + iw0 * sx;
    const T* mb = MASK ? mu[u] + iw0 * smx : nullptr;
    FC_UNROLL for (int j = 0; j < NC; ++j) {
      V col = Sd::zero();
      if (!EDGE || (j >= jlo && j < jhi)) {
        col = TAIL ? Sd::load_n(xb + j * sx, nl) : Sd::load(xb + j * sx);
        if (MASK) col = Sd::mask_le0(col, TAIL ? Sd::load_n(mb + j * smx, nl) : Sd::load(mb + j * smx));
      }
      FC_UNROLL for (int o = 0; o < 2; ++o) {
        const int r = u - o;
        if (r < 0 || r > 2) continue;
        FC_UNROLL for (int s = 0; s < 3; ++s) {
          const int d = j - s;
          if (d >= 0 && d < QB) acc[o][d] = Sd::fma(wv[r][s], col, acc[o][d]);
        }
      }
    }
  }
  FC_UNROLL for (int o = 0; o < 2; ++o) {
    if (bp != nullptr) {
      const V b = TAIL ? Sd::load_n(bp, nl) : Sd::load(bp);
      FC_UNROLL for (int i = 0; i < QB; ++i) acc[o][i] = Sd::add(acc[o][i], b);
    }
    FC_UNROLL for (int i = 0; i < QB; ++i) {
      if (i >= nq) break;
      if (TAIL)
        Sd::store_n(yo + o * yrs + i * ysi, epi_store_value<T>(ep, acc[o][i]), nl);
      else
        Sd::store(yo + o * yrs + i * ysi, epi_store_value<T>(ep, acc[o][i]));
    }
  }
  if (!epi_plain(ep))
    for (int o = 0; o < 2; ++o) epi_fixup<T>(ep, yo + o * yrs, 1, TAIL ? nl : Sd::L, nq, ysi);
}

// Register blocks and prefetches per level. At AVX2 (16 ymm), row pairs run 4-pixel blocks (8
// accumulators + 9 weights + 1 column: two weights stay memory operands), and each block prefetches
// the input lines the next block reads first (dwcl_prefetch_next_input): the hardware prefetchers do
// not follow the 20-30 column streams that each step 32 bytes per channel vector, and a line from
// memory takes longer than a channel vector's FMAs. AMD EPYC Zen 3, 2 threads, channels_last, ms
// (torch in the same run): 8x144x56x56 3x3 single rows 2.56, pairs + input prefetch 1.48-1.59 (2.04);
// 32x128x32x32 2.98 -> 1.77-1.84 (2.40); 8x96x112x112 3x3 s2 (single rows) 4.06 -> 2.93 (2.34);
// 8x144x56x56 s2 1.25 -> 0.84 (0.89). The AVX-512 level keeps its measured blocks and prefetches no
// input (not measured there); the baseline level runs single rows.
#if defined(__AVX512F__)
constexpr int kDwClQB = 8, kDwClCVB = 2;  // 16 accumulators + 6 weights + 2 columns of the 32 zmm
constexpr bool kDwClPairs = true;         // dwcl_block_r2 at QB = 8: 16 accumulators + 9 weights + 1
constexpr int kDwClPairQB = 8;
constexpr bool kDwClPrefetchInput = false;
#else
constexpr int kDwClQB = 8, kDwClCVB = 1;  // 16 ymm / xmm registers
constexpr bool kDwClPairs = kIsaLevel == 1;
constexpr int kDwClPairQB = 4;
constexpr bool kDwClPrefetchInput = kIsaLevel == 1;
#endif

// Input lines for dwcl_prefetch_next_input: nrows rows (at column 0, channel 0), ncols columns from iw0
// (some may be padding).
template <typename T>
struct DwClInput {
  const T* rows[4] = {};
  int nrows = 0;
  int64_t iw0 = 0;
  int64_t ncols = 0;
};

// Prefetches the lines of in at channel offset c that start a cache line: called once per channel vector
// of a block, so the prefetches spread over the block's work.
template <typename T>
FC_INLINE void dwcl_prefetch_next_input(const DwClInput<T>& in, int64_t sx, int64_t W, int64_t c) {
  if (!kDwClPrefetchInput || (c * (int64_t)sizeof(T)) % 64 != 0) return;
  const int64_t j0 = std::max<int64_t>(0, -in.iw0), j1 = std::min<int64_t>(in.ncols, W - in.iw0);
  for (int u = 0; u < in.nrows; ++u)
    for (int64_t j = j0; j < j1; ++j) __builtin_prefetch(in.rows[u] + (in.iw0 + j) * sx + c, 0, 3);
}

// Output stores and 4K aliasing. A store to a line that is not in the cache waits in the store buffer
// for the line (read-for-ownership from L3 or memory) for many cycles, and until then every later load
// whose address equals a waiting store's in the low 12 bits is held back as a possible overlap (4K
// aliasing). In channels_last a pixel is C*4 bytes, so (y - x) mod 4096 decides which of the next
// input columns alias pending outputs: a block storing straight into cold output lines takes 0.69-1.03
// ms over the 4 KiB offsets (128 channels, N=32, 32x32, 2 threads). Two ways out, both at every offset:
// - plain stores: while a block computes, prefetch (for writing) the output lines of the block after
//   it, so by the time that block stores, its lines are in L1 and the stores leave the buffer at once
//   (dwcl_prefetch_next); 0.75-0.80 ms;
// - streamed stores: the blocks compute into an L1 scratch block first, which sits at the output
//   block's own 4 KiB offset, so the copy's loads (a scratch vector equals its output's low 12 bits)
//   never alias a waiting store of an earlier vector; the copy streams to y (0.85-0.87 ms at the same
//   offsets: bound by the two cores' memory write bandwidth, where plain stores stay in the L3).
// Returns the position in buf (at least 4 KiB + the block) with the same address mod 4 KiB as yo.
template <typename T>
FC_INLINE T* dwcl_scratch_at(T* buf, const T* yo) {
  const uintptr_t shift = ((uintptr_t)yo - (uintptr_t)buf) & 4095;  // a multiple of sizeof(T): both T-aligned
  return reinterpret_cast<T*>(reinterpret_cast<char*>(buf) + shift);
}

// Copies nrow rows x nq pixels of channel vectors [cv0, cv1) from a scratch block (row stride srs,
// pixel stride Cp) to the output (row stride yrs, pixel stride ysi) with non-temporal stores for the
// whole vectors (store_maybe_stream); vector nfull is the tail.
template <typename T>
FC_INLINE void dwcl_stream_out(const T* sc, int64_t srs, int64_t Cp, T* yo, int64_t yrs, int64_t ysi, int nrow, int nq,
                               int64_t cv0, int64_t cv1, int64_t nfull, int tail) {
  using Sd = Simd<T>;
  constexpr int L = Sd::L;
  for (int o = 0; o < nrow; ++o)
    for (int i = 0; i < nq; ++i) {
      const T* sp = sc + o * srs + i * Cp;
      T* yp = yo + o * yrs + i * ysi;
      for (int64_t cv = cv0; cv < cv1; ++cv) {
        if (cv < nfull)
          store_maybe_stream<T>(yp + cv * L, Sd::load(sp + cv * L), true);
        else
          Sd::store_n(yp + cv * L, Sd::load_n(sp + cv * L, tail), tail);
      }
    }
}

// The output lines the task's next pixel block will store, for dwcl_prefetch_next: nrow rows (stride
// yrs) x npix pixels (stride ysi) from p, or none (p null) after the task's last block.
template <typename T>
struct DwClNext {
  T* p = nullptr;
  int64_t nrow = 0, npix = 0;
};

// The block after pixels [q0, q0 + nq) of output rows [row, row + nrow) in a task whose rows end at
// pend: the next pixels of the same rows, else the first block (<= kDwClQB pixels) of the next rows.
template <typename T>
FC_INLINE DwClNext<T> dwcl_next_block(T* yrow, int64_t yrs, int64_t ysi, int64_t row, int64_t nrow, int64_t pend,
                                      int64_t q0, int64_t nq, int64_t Q, int64_t QB) {
  if (q0 + nq < Q) return {yrow + (q0 + nq) * ysi, nrow, std::min(nq, Q - q0 - nq)};
  if (row + nrow < pend) return {yrow + nrow * yrs, std::min(nrow, pend - row - nrow), std::min(QB, Q)};
  return {};
}

// Prefetches for writing the next block's vectors at channel offset c (one line each when y is
// 64-byte aligned and C*sizeof(T) a multiple of 64): called once per channel vector of a block, so
// the prefetches spread over the block's work instead of queueing behind each other.
template <typename T>
FC_INLINE void dwcl_prefetch_next(const DwClNext<T>& nb, int64_t yrs, int64_t ysi, int64_t c) {
  for (int64_t o = 0; o < nb.nrow; ++o)
    for (int64_t i = 0; i < nb.npix; ++i) __builtin_prefetch(nb.p + o * yrs + i * ysi + c, 1, 3);
}

// Pixel blocks of one output row (or row pair): whole blocks of QBMAX, then whole blocks of 4, then
// one partial block; f(qb_tag, edge_tag, q0, nq, iw0, jlo, jhi) with input columns [jlo, jhi) of the
// block's (QB-1)*SW + S valid (EDGE when some are padding).
template <int S, int SW, int QBMAX = kDwClQB, typename F>
FC_INLINE void dwcl_pixel_blocks(int64_t Q, int64_t W, int64_t pw, F&& f) {
  auto one = [&](auto qb_tag, int64_t q0, int nq) {
    constexpr int QB = decltype(qb_tag)::value;
    constexpr int NC = (QB - 1) * SW + S;
    const int64_t iw0 = q0 * SW - pw;
    const int jlo = (int)std::min<int64_t>(NC, std::max<int64_t>(0, -iw0));
    const int jhi = (int)std::max<int64_t>(jlo, std::min<int64_t>(NC, W - iw0));
    if (jlo == 0 && jhi == NC)
      f(qb_tag, std::false_type{}, q0, nq, iw0, jlo, jhi);
    else
      f(qb_tag, std::true_type{}, q0, nq, iw0, jlo, jhi);
  };
  int64_t q0 = 0;
  for (; q0 + QBMAX <= Q; q0 += QBMAX) one(std::integral_constant<int, QBMAX>{}, q0, QBMAX);
  int rem = (int)(Q - q0);
  for (; rem >= 4 && QBMAX > 4; rem -= 4, q0 += 4) one(std::integral_constant<int, 4>{}, q0, 4);
  if (rem > 0) one(std::integral_constant<int, QBMAX>{}, q0, rem);
}

// Tasks are (n, block of output rows, block of channel vectors), rows in order inside a task so the
// input rows shared by consecutive output rows are still in L1/L2 (3x3 stride 1: rows in pairs, see
// dwcl_block_r2). Per row: pixel blocks, channel vectors innermost (kDwClCVB at a time), so a block
// streams through contiguous runs of the input rows and of the output row. A pixel block stores into
// y while prefetching the next block's output lines, or, when the output streams, into a per-thread
// scratch block that is then copied to y (see dwcl_scratch_at).
// ph/dh: the row padding and dilation with mirrored rows already flipped (dh > 0).
template <typename T, int S, int SW, bool MASK>
void conv_dwcl_rows(const Geo& g, In4<T> x, In4<T> m, const T* wT, int64_t Cp, int64_t ph, int64_t dh, int64_t pw,
                    const T* bpp, Out4<T> y, const Epi& ep, int nth) {
  constexpr int L = Simd<T>::L;
  const int64_t C = g.G, nCV = cdiv(C, L);
  const int tail = (int)(C - (nCV - 1) * L);
  const int64_t nfull = tail == L ? nCV : nCV - 1;  // whole channel vectors
  const bool pairs = kDwClPairs && S == 3 && SW == 1 && g.R == 3 && g.sh == 1 && dh == 1;
  // The input lines of the block after pixels [q0, q0 + nq) of output rows [p, p + step) (a pair: step
  // 2) in a task whose rows end at pend (dwcl_next_block's order), in the rows that output row p' - 1
  // did not read (p' the next block's first row): those are the lines not already in the cache.
  auto next_input = [&](int64_t n, int64_t p, int64_t step, int64_t pend, int64_t q0, int64_t nq, int64_t qbmax) {
    DwClInput<T> in;
    const bool same_rows = q0 + nq < g.Q;
    if (!kDwClPrefetchInput || (!same_rows && p + step >= pend)) return in;
    const int64_t pn = same_rows ? p : p + step, q = same_rows ? q0 + nq : 0;
    const int64_t last_before = (pn - 1) * g.sh - ph + (g.R - 1) * dh;
    for (int64_t r = 0; r < g.R + step - 1 && in.nrows < 4; ++r) {
      const int64_t ih = pn * g.sh - ph + r * dh;
      if (ih > last_before && ih >= 0 && ih < g.H) in.rows[in.nrows++] = x.p + n * x.s0 + ih * x.s2;
    }
    in.iw0 = q * SW - pw;
    in.ncols = (std::min(qbmax, g.Q - q) - 1) * SW + S;
    return in;
  };
  // Work units: runs of output rows as long as 8 units per thread allow, up to a whole image (each unit
  // reads 2 - 3 input rows beyond its own: 128 channels, 2 threads, 32-row units 0.745 ms against 0.77
  // with 8-row units); channel blocks only when rows alone leave cores idle.
  const int64_t RB = std::max<int64_t>(1, std::min<int64_t>(g.P, cdiv(g.N * g.P, 8 * nth)));
  const int64_t nRB = cdiv(g.P, RB);
  int64_t nCB = 1;
  if (g.N * nRB < 8 * nth) nCB = std::min(nCV, cdiv(8 * nth, g.N * nRB));
  const int64_t CB = cdiv(nCV, nCB);
  nCB = cdiv(nCV, CB);
  const int64_t ntask = g.N * nRB * nCB;
  const int64_t RP = cdiv(std::max<int64_t>(g.R, 4), 8) * 8 + 8;  // per-thread pointer slots, padded apart
  std::vector<const T*> ptr_all(nth * 6 * RP);
  // Scratch per thread: a block of up to 2 rows x kDwClQB pixels x Cp, shifted by up to 4 KiB, and one
  // more cache line, so the blocks of two threads are always more than a line apart (no false sharing).
  const int64_t scr_stride = cdiv(2 * kDwClQB * Cp * (int64_t)sizeof(T) + 4096 + 64, 64) * 64 / (int64_t)sizeof(T);
  std::vector<T> scr_all(nth * scr_stride + 64 / sizeof(T));
  // Non-temporal output stores only for an output that would not stay in the L3 anyway: the prefetched
  // plain stores beat streaming for the few-multiply-add layers that stream_output streams otherwise
  // (see dwcl_scratch_at; 128 channels, N=32, 32x32, 2 threads, Xeon: 0.75-0.80 ms against 0.85-0.87).
  // (the general epilogue rereads y and the residual at y's offsets: not with the scratch block)
  const bool stream_out = epi_plain(ep) && stream_output<T>(g, /*few_macs_stream=*/false);
#pragma omp parallel num_threads(nth)
  {
    T* const scr0 = scr_all.data() + thread_id() * scr_stride;
    const T** xr0 = ptr_all.data() + thread_id() * 6 * RP;
    const T** mr0 = xr0 + RP;
    const T** wr0 = mr0 + RP;
    const T** xr = wr0 + RP;
    const T** mr = xr + RP;
    const T** wr = mr + RP;
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < ntask; ++task) {
      const int64_t cb = task % nCB, t2 = task / nCB, rb = t2 % nRB, n = t2 / nRB;
      const int64_t cv0 = cb * CB, cv1 = std::min(nCV, cv0 + CB);
      const int64_t pend = std::min(g.P, (rb + 1) * RB);
      for (int64_t p = rb * RB; p < pend;) {
        T* yrow = y.p + n * y.s0 + p * y.s2;
        if (pairs && p + 1 < pend) {
          // input rows p - ph + u, u < 4 (null: padding)
          for (int u = 0; u < 4; ++u) {
            const int64_t ih = p - ph + u;
            const bool ok = ih >= 0 && ih < g.H;
            xr0[u] = ok ? x.p + n * x.s0 + ih * x.s2 : nullptr;
            mr0[u] = ok && MASK ? m.p + n * m.s0 + ih * m.s2 : nullptr;
          }
          dwcl_pixel_blocks<S, SW, kDwClPairQB>(g.Q, g.W, pw, [&](auto qb_tag, auto edge_tag, int64_t q0, int nq,
                                                                 int64_t iw0, int jlo, int jhi) {
            constexpr int QB = decltype(qb_tag)::value;
            constexpr bool EDGE = decltype(edge_tag)::value;
            T* yo = yrow + q0 * y.s3;
            // Destination: y itself, or a scratch block whose rows are QB * Cp apart.
            T* const dst = stream_out ? dwcl_scratch_at(scr0, yo) : yo;
            const int64_t drs = stream_out ? QB * Cp : y.s2, dps = stream_out ? Cp : y.s3;
            const DwClNext<T> nb =
                stream_out ? DwClNext<T>{} : dwcl_next_block(yrow, y.s2, y.s3, p, 2, pend, q0, nq, g.Q, kDwClPairQB);
            const DwClInput<T> nin = next_input(n, p, 2, pend, q0, nq, kDwClPairQB);
            for (int64_t cv = cv0; cv < cv1; ++cv) {
              dwcl_prefetch_next(nb, y.s2, y.s3, cv * L);
              dwcl_prefetch_next_input(nin, x.s3, g.W, cv * L);
              for (int u = 0; u < 4; ++u) {
                xr[u] = xr0[u] ? xr0[u] + cv * L : nullptr;
                if (MASK) mr[u] = mr0[u] ? mr0[u] + cv * L : nullptr;
              }
              const T* bc = bpp ? bpp + cv * L : nullptr;
              if (cv < nfull)
                dwcl_block_r2<T, QB, false, MASK, EDGE>(xr, mr, wT + cv * L, iw0, x.s3, m.s3, Cp, jlo, jhi, bc, ep,
                                                        dst + cv * L, drs, dps, nq, L);
              else
                dwcl_block_r2<T, QB, true, MASK, EDGE>(xr, mr, wT + cv * L, iw0, x.s3, m.s3, Cp, jlo, jhi, bc, ep,
                                                       dst + cv * L, drs, dps, nq, tail);
            }
            if (stream_out) dwcl_stream_out(dst, drs, Cp, yo, y.s2, y.s3, 2, nq, cv0, cv1, nfull, tail);
          });
          p += 2;
          continue;
        }
        int64_t nrv = 0;
        for (int64_t r = 0; r < g.R; ++r) {
          const int64_t ih = p * g.sh - ph + r * dh;
          if (ih < 0 || ih >= g.H) continue;
          xr0[nrv] = x.p + n * x.s0 + ih * x.s2;
          mr0[nrv] = MASK ? m.p + n * m.s0 + ih * m.s2 : nullptr;
          wr0[nrv] = wT + r * S * Cp;
          ++nrv;
        }
        dwcl_pixel_blocks<S, SW>(g.Q, g.W, pw, [&](auto qb_tag, auto edge_tag, int64_t q0, int nq, int64_t iw0,
                                                  int jlo, int jhi) {
          constexpr int QB = decltype(qb_tag)::value;
          constexpr bool EDGE = decltype(edge_tag)::value;
          T* yo = yrow + q0 * y.s3;
          T* const dst = stream_out ? dwcl_scratch_at(scr0, yo) : yo;  // y, or a scratch block (one row)
          const int64_t dps = stream_out ? Cp : y.s3;
          const DwClNext<T> nb =
              stream_out ? DwClNext<T>{} : dwcl_next_block(yrow, y.s2, y.s3, p, 1, pend, q0, nq, g.Q, kDwClQB);
          const DwClInput<T> nin = next_input(n, p, 1, pend, q0, nq, kDwClQB);
          auto at = [&](int64_t cv, int ncv) {  // pointers at channel vector cv; prefetches ncv vectors
            for (int v = 0; v < ncv; ++v) dwcl_prefetch_next(nb, y.s2, y.s3, (cv + v) * L);
            for (int v = 0; v < ncv; ++v) dwcl_prefetch_next_input(nin, x.s3, g.W, (cv + v) * L);
            for (int64_t k = 0; k < nrv; ++k) {
              xr[k] = xr0[k] + cv * L;
              if (MASK) mr[k] = mr0[k] + cv * L;
              wr[k] = wr0[k] + cv * L;
            }
          };
          int64_t cv = cv0;
          for (; cv + kDwClCVB <= std::min(cv1, nfull); cv += kDwClCVB) {
            at(cv, kDwClCVB);
            dwcl_block<T, S, SW, QB, kDwClCVB, false, MASK, EDGE>(xr, mr, wr, nrv, iw0, x.s3, m.s3, Cp, jlo, jhi,
                                                                  bpp ? bpp + cv * L : nullptr, ep, dst + cv * L,
                                                                  dps, nq, L);
          }
          for (; cv < cv1; ++cv) {
            at(cv, 1);
            if (cv < nfull)
              dwcl_block<T, S, SW, QB, 1, false, MASK, EDGE>(xr, mr, wr, nrv, iw0, x.s3, m.s3, Cp, jlo, jhi,
                                                             bpp ? bpp + cv * L : nullptr, ep, dst + cv * L, dps,
                                                             nq, L);
            else
              dwcl_block<T, S, SW, QB, 1, true, MASK, EDGE>(xr, mr, wr, nrv, iw0, x.s3, m.s3, Cp, jlo, jhi,
                                                            bpp ? bpp + cv * L : nullptr, ep, dst + cv * L, dps,
                                                            nq, tail);
          }
          if (stream_out) dwcl_stream_out(dst, 0, Cp, yo, 0, y.s3, 1, nq, cv0, cv1, nfull, tail);
        });
        ++p;
      }
#if defined(__AVX512F__)
      if (stream_out) _mm_sfence();  // order this task's streamed stores before the loop's barrier
#endif
    }
  }
}

}  // namespace

template <typename T>
void conv_direct_cl(const Geo& g, In4<T> x, In4<T> m, WV<T> w, const T* bias, Out4<T> y, const Epi& ep, int nth) {
  if ((g.S == 3 || g.S == 5) && (g.sw == 1 || g.sw == 2) && (g.dw == 1 || g.dw == -1) && (m.p == nullptr || g.sw == 1)) {
    // Weights [R][S][Cp] with the taps of a mirrored row (dw = -1, dgrad) reversed, so that tap s reads
    // column q*sw - pw + s: iw = q*sw - pw + s*dw = q*sw - (pw - (S-1)*dw) + (S-1-s)*(-dw).
    constexpr int L = Simd<T>::L;
    const int64_t C = g.G, Cp = cdiv(C, L) * L;
    const bool flip = g.dw < 0, flipr = g.dh < 0;
    const int64_t pw = flip ? g.pw - (g.S - 1) * g.dw : g.pw;
    const int64_t ph = flipr ? g.ph - (g.R - 1) * g.dh : g.ph, dh = flipr ? -g.dh : g.dh;
    std::vector<T> wT(g.R * g.S * Cp, T(0)), bp(bias ? Cp : 0, T(0));
    for (int64_t c = 0; c < C; ++c)
      for (int64_t r = 0; r < g.R; ++r)
        for (int64_t s = 0; s < g.S; ++s)
          wT[(r * g.S + s) * Cp + c] = w.at(c, 0, 0, flipr ? g.R - 1 - r : r, flip ? g.S - 1 - s : s);
    for (int64_t c = 0; bias && c < C; ++c) bp[c] = bias[c];
    const T* bpp = bias ? bp.data() : nullptr;
    if (m.p) {
      if (g.S == 3)
        conv_dwcl_rows<T, 3, 1, true>(g, x, m, wT.data(), Cp, ph, dh, pw, bpp, y, ep, nth);
      else
        conv_dwcl_rows<T, 5, 1, true>(g, x, m, wT.data(), Cp, ph, dh, pw, bpp, y, ep, nth);
    } else if (g.S == 3) {
      if (g.sw == 1)
        conv_dwcl_rows<T, 3, 1, false>(g, x, m, wT.data(), Cp, ph, dh, pw, bpp, y, ep, nth);
      else
        conv_dwcl_rows<T, 3, 2, false>(g, x, m, wT.data(), Cp, ph, dh, pw, bpp, y, ep, nth);
    } else {
      if (g.sw == 1)
        conv_dwcl_rows<T, 5, 1, false>(g, x, m, wT.data(), Cp, ph, dh, pw, bpp, y, ep, nth);
      else
        conv_dwcl_rows<T, 5, 2, false>(g, x, m, wT.data(), Cp, ph, dh, pw, bpp, y, ep, nth);
    }
    return;
  }
  if (m.p)
    conv_direct_cl_impl<T, true>(g, x, m, w, bias, y, ep, nth);
  else
    conv_direct_cl_impl<T, false>(g, x, m, w, bias, y, ep, nth);
}

#define FC_INSTANTIATE(T) \
  template void conv_direct_cl<T>(const Geo&, In4<T>, In4<T>, WV<T>, const T*, Out4<T>, const Epi&, int);
FC_FOR_FLOAT_TYPES(FC_INSTANTIATE)
#undef FC_INSTANTIATE

}  // namespace FC_ISA
}  // namespace cpu
}  // namespace fastconv

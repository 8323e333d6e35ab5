// conv2d forward on NCHW output, implicit GEMM: per group,
//     C[Kg x pixels] = W_g[Kg x CgRS] * col[CgRS x pixels],
// vectors along the output pixels, so rows of a tile are stored straight into y's planes. The same
// kernels run dgrad's stride-1 correlations (conv2d_isa.cpp: conv_run).
//
// - A = the weights, packed once per call (or cached by Python: WeightPack) into [MR]-row panels
//   [G][ceil(Kg/MR)][CRS][MR], reduction order (c, r, s) (pack_weight_panels).
// - conv_pix_direct (stride <= 2, planes that waste little): B rows are runs of a zero-padded copy of
//   the task's input rows (phase planes for stride 2), no im2col packing; a task is a block of output
//   rows of one (image, group).
// - conv_pix (everything else): B = input patches packed per (image, group, pixel block) and kc block
//   as row-segment copies (contiguous when stride_w == 1).
// Tiling (AVX-512): microkernel 8x48 (24 zmm accumulators, kPixMR x kPixNV vectors); the B panel
// kc x NR stays <= 24 KiB so it is L1-resident while the A panels stream from L2 (kc = 128 floats for
// NR = 48). Reduction order fixed by the problem: results do not depend on the thread count.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/conv2d_paths.h"

namespace fastconv {
namespace cpu {
namespace FC_ISA {
namespace {

struct PixRun {
  int64_t pan, lane, len, p, q;  // p < 0: padding lanes (zeros)
};

template <typename T, int MR>
void pack_weight_panels(const Geo& g, const WV<T>& w, T* A, int nth) {
  const int64_t nIr = cdiv(g.Kg, MR), CRS = g.Cg * g.R * g.S;
  const PanelRows<T> rows(w, g.Cg, g.R, g.S, /*taps_outer=*/false);
#pragma omp parallel for num_threads(nth) schedule(static)
  for (int64_t t = 0; t < g.G * nIr; ++t) {
    const int64_t gi = t / nIr, ir = t % nIr;
    pack_panel<T>(w, rows, gi, ir * MR, std::min<int64_t>(MR, g.Kg - ir * MR), MR, A + t * CRS * MR);
  }
}

// conv_pix_direct: NCHW output, stride 1 or 2: direct convolution on a zero-padded input window, no
// packing of B. Output pixels live on the padded grid j' = p*Wp + q (q < Wp; columns q >= Q are
// computed and dropped), so for tap (c, r, s) the B row of NR pixels is NR consecutive elements of the
// window at offset j' + off(c, r, s). Task = (n, g, block of RB output rows); the window holds the
// (RB-1)*sh + (R-1)*|dh| + 1 input rows it needs for all Cg channels (padded copy, ReLU mask applied
// here), split into sh x sw phase planes for a strided problem so that B rows stay contiguous: each
// input element is copied once per task instead of once per tap as an im2col packing of strided
// columns would (c128k128 3x3 stride 2 on 32x32: conv_pix spends ~1/4 of its time packing B).
//
// Window rows u / columns v <-> input row p0*sh + hlo + u / column wlo + v. Tap (r, s) of output
// (p0 + pl, q) reads u = pl*sh + offr[r], v = q*sw + offw[s]; the window is split into sh x sw
// phase planes (plane (u % sh, v % sw) holds row u / sh, column v / sw), so a run of output
// columns reads a run of consecutive plane elements whatever the stride.
struct PixDirectPlan {
  int64_t sh, sw, nph, hlo, span_h, wlo;
  int64_t Wp, RB, nRb;      // plane width (output columns plus the taps' reach), rows per task, tasks per image
  int64_t nvr;              // vectors per output row when row_aligned
  bool row_aligned;
  int64_t NC;               // pixels of a task's panels
  int64_t rows_pl, ps, cs;  // plane rows read, plane size (with a zeroed slack row), channel stride
  int64_t nkb, kc;          // reduction blocks of kc
  std::vector<int64_t> offs;  // window offset of reduction element kk = (c, r, s)
  std::vector<char> used;     // planes some tap reads (1x1 stride 2 reads one of four)
  std::vector<QRange> qr;     // valid columns per column phase
  int64_t ntask, wsz, csz;
  bool stream_out;
};

template <typename T, int MR, int NV>
PixDirectPlan pix_direct_plan(const Geo& g, const Out4<T>& y) {
  constexpr int L = Simd<T>::L;
  constexpr int NR = NV * L;
  PixDirectPlan pl;
  const int64_t CRS = g.Cg * g.R * g.S, nIr = cdiv(g.Kg, MR);
  pl.sh = g.sh;
  pl.sw = g.sw;
  pl.nph = pl.sh * pl.sw;
  pl.hlo = -g.ph + std::min<int64_t>(0, (g.R - 1) * g.dh);
  pl.span_h = std::abs((g.R - 1) * g.dh);
  pl.wlo = -g.pw + std::min<int64_t>(0, (g.S - 1) * g.dw);
  std::vector<int64_t> offr(g.R), offw(g.S);
  int64_t maxr = 0, maxw = 0;
  for (int64_t r = 0; r < g.R; ++r) maxr = std::max(maxr, (offr[r] = r * g.dh - g.ph - pl.hlo) / pl.sh);
  for (int64_t t = 0; t < g.S; ++t) maxw = std::max(maxw, (offw[t] = t * g.dw - g.pw - pl.wlo) / pl.sw);
  pl.Wp = g.Q + maxw;
  pl.RB = std::max<int64_t>(1, std::min(g.P, cdiv(384, pl.Wp)));
  pl.nRb = cdiv(g.P, pl.RB);
  // Where the panel's vectors lie. On the padded grid (default) the NR lanes of a panel are NR
  // consecutive grid pixels, so a vector may straddle two output rows and carry the dropped columns
  // q >= Q, and the epilogue splits it lane by lane. Row-aligned, vector t of a task covers output row
  // t / nvr, columns (t % nvr)*L .. +L (the row's last vector masked when L does not divide Q): one
  // store per vector. Taken when it computes no more lanes than the grid, ceil(Q/L)*L <= Wp: the RGB
  // stem (Q = 32, Wp = 34), whose reduction is only 27 long, spends half its samples in the splitting
  // epilogue on the grid (N=32, 3->32, 32x32, NCHW, 2 threads: 0.45-0.57 ms row-aligned, torch
  // 0.55-0.65). A row-aligned vector reads at most nvr*L - 1 + maxw < 2*Wp plane elements from its row
  // start, so it stays inside the plane's rows and slack row.
  pl.nvr = cdiv(g.Q, L);
  pl.row_aligned = pl.nvr * L <= pl.Wp;
  const int64_t NCt = pl.row_aligned ? pl.RB * pl.nvr * L : pl.RB * pl.Wp;
  pl.NC = cdiv(NCt, NR) * NR;
  pl.rows_pl = pl.RB + maxr;
  pl.ps = (pl.rows_pl + 1) * pl.Wp;
  pl.cs = pl.nph * pl.ps + NR;  // with zeroed slack
  const int64_t KC = std::max<int64_t>(32, (24 * 1024) / (NR * (int64_t)sizeof(T)));
  pl.nkb = cdiv(CRS, KC);
  pl.kc = cdiv(CRS, pl.nkb);
  pl.offs.resize(CRS);
  pl.used.assign(pl.nph, 0);
  for (int64_t c = 0, kk = 0; c < g.Cg; ++c)
    for (int64_t r = 0; r < g.R; ++r)
      for (int64_t t = 0; t < g.S; ++t) {
        const int64_t p = (offr[r] % pl.sh) * pl.sw + offw[t] % pl.sw;
        pl.used[p] = 1;
        pl.offs[kk++] = c * pl.cs + p * pl.ps + (offr[r] / pl.sh) * pl.Wp + offw[t] / pl.sw;
      }
  pl.qr.resize(pl.sw);
  for (int64_t b = 0; b < pl.sw; ++b) pl.qr[b] = valid_cols(pl.wlo + b, pl.sw, g.W, pl.Wp);
  pl.ntask = g.N * g.G * pl.nRb;
  pl.wsz = g.Cg * pl.cs;
  pl.csz = pl.nkb > 1 ? nIr * MR * pl.NC : 0;
  // Non-temporal stores for a large output, as conv_cl (row-aligned vectors only: whole stores).
  pl.stream_out = pl.row_aligned && y.s3 == 1 && stream_output<T>(g);
  return pl;
}

// The task's input rows (all Cg channels of group gi, image n) into the zero-padded window.
template <typename T, int NR>
FC_INLINE void pix_direct_window(const PixDirectPlan& pl, const Geo& g, const In4<T>& x, const In4<T>& m, T* win,
                                 int64_t n, int64_t gi, int64_t p0, int64_t nrows) {
  const int64_t sh = pl.sh, sw = pl.sw, Wp = pl.Wp, ps = pl.ps;
  const int64_t nu = (nrows - 1) * sh + pl.span_h + 1;  // input rows of the task
  for (int64_t c = 0; c < g.Cg; ++c) {
    T* wc = win + c * pl.cs;
    const T* xc = x.p + n * x.s0 + (gi * g.Cg + c) * x.s1;
    const T* mc = m.p ? m.p + n * m.s0 + (gi * g.Cg + c) * m.s1 : nullptr;
    for (int64_t a = 0; a < sh; ++a)
      for (int64_t b = 0; b < sw; ++b) {
        if (!pl.used[a * sw + b]) continue;
        T* wp = wc + (a * sw + b) * ps;
        for (int64_t i = 0; i <= pl.rows_pl; ++i) {
          const int64_t u = a + sh * i, ih = p0 * sh + pl.hlo + u;
          if (u >= nu || ih < 0 || ih >= g.H)
            zero_n(wp + i * Wp, Wp);
          else
            copy_run(wp + i * Wp, Wp, pl.qr[b].lo, pl.qr[b].hi, xc + ih * x.s2, x.s3, mc ? mc + ih * m.s2 : nullptr,
                     m.s3, pl.wlo + b, sw);
        }
      }
    zero_n(wc + pl.nph * ps, NR);
  }
}

// The last block's epilogue of one MR x NR tile (rows = output channels ir*MR.., vectors v at output
// rows vrow[v], columns vcol[v] of the task): + bias, ReLU, stored into y (a padded-grid vector split
// at row boundaries, dropping the columns q >= Q).
template <typename T, int MR, int NV>
FC_INLINE void pix_direct_store(typename Simd<T>::V (&acc)[MR][NV], const PixDirectPlan& pl, const Geo& g,
                                const Out4<T>& y, T* ybase, const T* bias, const Epi& e, int64_t gi, int64_t ir,
                                int64_t nrows, const int64_t (&vrow)[NV], const int64_t (&vcol)[NV]) {
  using Sd = Simd<T>;
  using V = typename Sd::V;
  constexpr int L = Sd::L;
  const int64_t Wp = pl.Wp;
  // Calls f(dst, n) for each run of n stored values of vector v of row k (lanes in one output row).
  const auto runs = [&](T* yk, int v, auto&& f) {
    if (pl.row_aligned) {
      if (vrow[v] < nrows) f(yk + vrow[v] * y.s2 + vcol[v] * y.s3, (int)std::min<int64_t>(L, g.Q - vcol[v]), 0);
      return;
    }
    // split the vector at padded-row boundaries; keep columns q < Q of rows < nrows
    int64_t pr = vrow[v], qc = vcol[v];
    for (int l = 0; l < L && pr < nrows;) {
      const int in_row = (int)std::min<int64_t>(L - l, Wp - qc);
      const int nval = (int)std::max<int64_t>(0, std::min<int64_t>(in_row, g.Q - qc));
      if (nval > 0) f(yk + pr * y.s2 + qc * y.s3, nval, l);
      l += in_row;
      ++pr;
      qc = 0;
    }
  };
  FC_UNROLL for (int i = 0; i < MR; ++i) {
    const int64_t k = ir * MR + i;
    if (k >= g.Kg) break;
    const int64_t kabs = gi * g.Kg + k;
    T* yk = ybase + kabs * y.s1;
    const V bv = bias ? Sd::set1(bias[kabs]) : Sd::zero();
    FC_UNROLL for (int v = 0; v < NV; ++v) {
      V val = acc[i][v];
      if (bias) val = Sd::add(val, bv);
      val = epi_store_value<T>(e, val);
      runs(yk, v, [&](T* dst, int nval, int l) {
        if (y.s3 == 1) {
          if (nval == L)
            pl.row_aligned ? store_maybe_stream<T>(dst, val, pl.stream_out && epi_plain(e)) : Sd::store(dst, val);
          else if (pl.row_aligned)
            Sd::store_n(dst, val, nval);
          else
            Sd::store_lanes(dst, val, l, nval);
        } else {
          alignas(64) T tmp[L];
          Sd::store(tmp, val);
          for (int t = 0; t < nval; ++t) dst[t * y.s3] = tmp[l + t];
        }
      });
    }
  }
}

template <typename T, int MR, int NV>
void conv_pix_direct(const Geo& g, In4<T> x, In4<T> m, WV<T> w, const T* bias, Out4<T> y, const Epi& ep, int nth,
                     const T* Apre = nullptr) {
  using V = typename Simd<T>::V;
  constexpr int L = Simd<T>::L;
  constexpr int NR = NV * L;
  const int64_t CRS = g.Cg * g.R * g.S;
  const int64_t nIr = cdiv(g.Kg, MR);
  Buf<T> Aown(Apre ? 0 : pix_weight_floats<MR>(g));
  if (!Apre) pack_weight_panels<T, MR>(g, w, Aown.p, nth);
  const T* const Ap = Apre ? Apre : Aown.p;
  const PixDirectPlan pl = pix_direct_plan<T, MR, NV>(g, y);
  const int64_t Wp = pl.Wp, RB = pl.RB, nRb = pl.nRb, nvr = pl.nvr, ldc = pl.NC, wsz = pl.wsz, csz = pl.csz;
  const bool row_aligned = pl.row_aligned;
  Buf<T> scratch(nth * (wsz + csz));

#pragma omp parallel num_threads(nth)
  {
    const int tid = thread_id();
    T* win = scratch.p + tid * (wsz + csz);
    T* Cb = win + wsz;
    if (pl.nph > 1) zero_n(win, wsz);  // unused planes: never written, read only by dropped lanes
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < pl.ntask; ++task) {
      const int64_t rb = task % nRb, ng = task / nRb, gi = ng % g.G, n = ng / g.G;
      const int64_t p0 = rb * RB, nrows = std::min(RB, g.P - p0);
      const int64_t npan = row_aligned ? cdiv(nrows * nvr, NV) : cdiv(nrows * Wp, NR);
      pix_direct_window<T, NR>(pl, g, x, m, win, n, gi, p0, nrows);
      T* ybase = y.p + n * y.s0 + p0 * y.s2;
      for (int64_t kb = 0; kb < pl.nkb; ++kb) {
        const int64_t k0 = kb * pl.kc, kl = std::min(pl.kc, CRS - k0);
        const bool first = kb == 0, last = kb == pl.nkb - 1;
        for (int64_t jr = 0; jr < npan; ++jr) {
          // lane 0 of each vector of the panel: output row (padded-grid row) and column, and its plane offset
          int64_t vrow[NV], vcol[NV], voff[NV];
          for (int v = 0; v < NV; ++v) {
            if (row_aligned) {
              const int64_t t = jr * NV + v;
              vrow[v] = t / nvr;
              vcol[v] = (t % nvr) * L;
              // vectors past the task's rows (last panel) read row 0 and are never stored
              voff[v] = vrow[v] < nrows ? vrow[v] * Wp + vcol[v] : 0;
            } else {
              const int64_t j = jr * NR + v * L;
              vrow[v] = j / Wp;
              vcol[v] = j % Wp;
              voff[v] = j;
            }
          }
          for (int64_t ir = 0; ir < nIr; ++ir) {
            ukr_offs<T, MR, NV>(kl, Ap + ((gi * nIr + ir) * CRS + k0) * MR, win, pl.offs.data() + k0, voff,
                                [&](V(&acc)[MR][NV]) {
              T* ct = Cb + ir * MR * ldc + jr * NR;
              if (!first) add_tile<T, MR, NV>(acc, ct, ldc);
              if (!last) return store_tile<T, MR, NV>(acc, ct, ldc);  // partial sum of a kc block
              pix_direct_store<T, MR, NV>(acc, pl, g, y, ybase, bias, ep, gi, ir, nrows, vrow, vcol);
            });
          }
        }
      }
      if (!epi_plain(ep))  // the general epilogue over the task's output rows, every channel of the group
        for (int64_t k = 0; k < g.Kg; ++k) epi_fixup<T>(ep, ybase + (gi * g.Kg + k) * y.s1, y.s3, g.Q, nrows, y.s2);
#if defined(__AVX512F__)
      if (pl.stream_out) _mm_sfence();  // order this task's streamed stores before the loop's barrier
#endif
    }
  }
}

// conv_pix: the general NCHW kernel, B packed per (image, group, pixel block) and kc block.
template <typename T, int MR, int NV>
void conv_pix(const Geo& g, In4<T> x, In4<T> m, WV<T> w, const T* bias, Out4<T> y, const Epi& ep, int nth,
              const T* Apre = nullptr) {
  using Sd = Simd<T>;
  using V = typename Sd::V;
  constexpr int L = Sd::L;
  constexpr int NR = NV * L;
  const int64_t RS = g.R * g.S, CRS = g.Cg * RS, PQ = g.P * g.Q;
  const int64_t nIr = cdiv(g.Kg, MR);

  Buf<T> Aown(Apre ? 0 : pix_weight_floats<MR>(g));
  if (!Apre) pack_weight_panels<T, MR>(g, w, Aown.p, nth);
  const T* const Ap = Apre ? Apre : Aown.p;

  // kc: B micro-panel kc x NR <= 24 KiB (L1-resident while the A panels stream from L2).
  const int64_t KC = std::max<int64_t>(32, (24 * 1024) / (NR * (int64_t)sizeof(T)));
  const int64_t nkb = cdiv(CRS, KC), kc = cdiv(CRS, nkb);
  const int64_t npan_max = std::min<int64_t>(cdiv(PQ, NR), 8);
  const int64_t NC = npan_max * NR;  // pixels per task
  const int64_t nJb = cdiv(PQ, NC);
  const int64_t ntask = g.N * g.G * nJb;
  const bool plane_contig = (y.s3 == 1 && y.s2 == g.Q);
  const int64_t ldc = NC;
  const int64_t bsz = kc * NC, csz = nkb > 1 ? nIr * MR * NC : 0;
  const int64_t rmax = NC + npan_max + 2;
  Buf<T> scratch(nth * (bsz + csz));
  std::vector<PixRun> runs_all(nth * rmax);
  std::vector<int64_t> yoff_all(nth * NC);
  std::vector<QRange> qrange(g.S);
  for (int64_t s = 0; s < g.S; ++s) qrange[s] = valid_cols(s * g.dw - g.pw, g.sw, g.W, g.Q);

#pragma omp parallel num_threads(nth)
  {
    const int tid = thread_id();
    T* Bb = scratch.p + tid * (bsz + csz);
    T* Cb = Bb + bsz;
    PixRun* runs = runs_all.data() + tid * rmax;
    int64_t* yoff = yoff_all.data() + tid * NC;
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < ntask; ++task) {
      const int64_t jb = task % nJb, ng = task / nJb, gi = ng % g.G, n = ng / g.G;
      const int64_t j0 = jb * NC, nc = std::min(NC, PQ - j0), npan = cdiv(nc, NR);
      // Row segments of the pixel block, split at output-row and panel boundaries.
      int64_t nruns = 0;
      for (int64_t jj = 0; jj < npan * NR;) {
        const int64_t pan = jj / NR, lane = jj % NR;
        if (jj >= nc) {
          runs[nruns++] = {pan, lane, NR - lane, -1, 0};
          jj += NR - lane;
          continue;
        }
        const int64_t j = j0 + jj, p = j / g.Q, q = j % g.Q;
        const int64_t len = std::min({g.Q - q, NR - lane, nc - jj});
        runs[nruns++] = {pan, lane, len, p, q};
        jj += len;
      }
      if (!plane_contig)
        for (int64_t jj = 0; jj < nc; ++jj) {
          const int64_t j = j0 + jj;
          yoff[jj] = (j / g.Q) * y.s2 + (j % g.Q) * y.s3;
        }
      const T* xn = x.p + n * x.s0 + gi * g.Cg * x.s1;
      const T* mn = m.p ? m.p + n * m.s0 + gi * g.Cg * m.s1 : nullptr;
      for (int64_t kb = 0; kb < nkb; ++kb) {
        const int64_t k0 = kb * kc, kl = std::min(kc, CRS - k0);
        // pack B: [pan][kl][NR]; (c, r, s) advanced incrementally from k0.
        int64_t c = k0 / RS, r = (k0 % RS) / g.S, s = k0 % g.S;
        for (int64_t kk = k0; kk < k0 + kl; ++kk) {
          const T* xc = xn + c * x.s1;
          const T* mc = mn ? mn + c * m.s1 : nullptr;
          const int64_t offh = r * g.dh - g.ph, offw = s * g.dw - g.pw;
          const QRange qr = qrange[s];
          T* bk = Bb + (kk - k0) * NR;
          for (int64_t ri = 0; ri < nruns; ++ri) {
            const PixRun& ru = runs[ri];
            T* dst = bk + ru.pan * kl * NR + ru.lane;
            const int64_t ih = ru.p * g.sh + offh;
            if (ru.p < 0 || ih < 0 || ih >= g.H) {
              zero_n(dst, ru.len);
              continue;
            }
            const int64_t tlo = std::min(ru.len, std::max<int64_t>(0, qr.lo - ru.q));
            const int64_t thi = std::min(ru.len, std::max(tlo, qr.hi - ru.q));
            copy_run(dst, ru.len, tlo, thi, xc + ih * x.s2, x.s3, mc ? mc + ih * m.s2 : nullptr, m.s3,
                     ru.q * g.sw + offw, g.sw);
          }
          if (++s == g.S) {
            s = 0;
            if (++r == g.R) {
              r = 0;
              ++c;
            }
          }
        }
        const bool first = kb == 0, last = kb == nkb - 1;
        for (int64_t jr = 0; jr < npan; ++jr) {
          const T* bp = Bb + jr * kl * NR;
          for (int64_t ir = 0; ir < nIr; ++ir) {
            ukr_panel<T, MR, NV>(kl, Ap + ((gi * nIr + ir) * CRS + k0) * MR, bp, [&](V(&acc)[MR][NV]) {
              T* ct = Cb + ir * MR * ldc + jr * NR;
              if (!first) add_tile<T, MR, NV>(acc, ct, ldc);
              if (!last) return store_tile<T, MR, NV>(acc, ct, ldc);  // partial sum of a kc block
              const int64_t jbase = jr * NR;
              const bool full = plane_contig && jbase + NR <= nc;
              FC_UNROLL for (int i = 0; i < MR; ++i) {
                const int64_t k = ir * MR + i;
                if (k >= g.Kg) break;
                const int64_t kabs = gi * g.Kg + k;
                T* yrow = y.p + n * y.s0 + kabs * y.s1;
                const V bv = bias ? Sd::set1(bias[kabs]) : Sd::zero();
                FC_UNROLL for (int v = 0; v < NV; ++v) {
                  V val = acc[i][v];
                  if (bias) val = Sd::add(val, bv);
                  val = epi_store_value<T>(ep, val);
                  if (full) {
                    Sd::store(yrow + j0 + jbase + v * L, val);
                  } else {
                    alignas(64) T tmp[L];
                    Sd::store(tmp, val);
                    for (int l = 0; l < L; ++l) {
                      const int64_t jj = jbase + v * L + l;
                      if (jj < nc) yrow[plane_contig ? j0 + jj : yoff[jj]] = tmp[l];
                    }
                  }
                }
              }
            });
          }
        }
      }
      if (!epi_plain(ep))  // the general epilogue over the task's outputs (its pixel block, every channel)
        for (int64_t k = 0; k < g.Kg; ++k) {
          T* yk = y.p + n * y.s0 + (gi * g.Kg + k) * y.s1;
          if (plane_contig) {
            epi_fixup<T>(ep, yk + j0, 1, nc);
            continue;
          }
          for (int64_t ri = 0; ri < nruns; ++ri)
            if (runs[ri].p >= 0) epi_fixup<T>(ep, yk + runs[ri].p * y.s2 + runs[ri].q * y.s3, y.s3, runs[ri].len);
        }
    }
  }
}

}  // namespace

template <typename T>
void igemm_nchw_fwd(const Geo& g, In4<T> x, In4<T> m, WV<T> w, const T* bias, Out4<T> y, const Epi& ep, int nth,
                    WeightPack* pack, bool direct) {
  const T* A = cached_pack<T>(pack, pix_weight_floats<kPixMR>(g),
                              [&](T* p) { pack_weight_panels<T, kPixMR>(g, w, p, nth); });
  if (direct)
    conv_pix_direct<T, kPixMR, kPixNV>(g, x, m, w, bias, y, ep, nth, A);
  else
    conv_pix<T, kPixMR, kPixNV>(g, x, m, w, bias, y, ep, nth, A);
}

template void igemm_nchw_fwd<float>(const Geo&, In4<float>, In4<float>, WV<float>, const float*, Out4<float>,
                                    const Epi&, int, WeightPack*, bool);
template void igemm_nchw_fwd<double>(const Geo&, In4<double>, In4<double>, WV<double>, const double*, Out4<double>,
                                     const Epi&, int, WeightPack*, bool);

}  // namespace FC_ISA
}  // namespace cpu
}  // namespace fastconv

// conv2d forward on channels_last output, implicit GEMM (conv_cl): per group,
//     C[pixels x Kg] = col^T[pixels x RSCg] * W^T[RSCg x Kg],
// vectors along K, reduction order (r, s, c). The same engine runs dgrad's stride-1 correlations
// (conv2d_isa.cpp: conv_run).
//
// - B = the weights, packed once per call (or cached by Python: WeightPack) into K-column panels
//   [G][ceil(Kg/NR)][RS*Cg][NR] (pack_cl_weights).
// - A = the input patches. With a channels_last input, row i of A for tap (r, s) is the contiguous
//   channel run of one input pixel, so the microkernel reads it in place through a pointer table
//   (indirect convolution; padding taps point at a zero run or are left out). A masked input (the
//   fused ReLU's backward) or one whose channels are not contiguous packs its rows per block instead.
// - Modes (ClMode, named by the path chooser), chosen by cl_plan from the geometry and strides:
//     pointwise          1x1 stride 1 on dense tensors: one GEMM over the batch's pixels;
//     rows_padded_copy   whole filter rows in one block, few channels with padding (the RGB stem):
//                        each task copies its input rows with zero padding, every pixel a whole window;
//     rows_whole_windows whole filter rows in one block: interior pixels need one pointer each;
//     row_blocks         blocks of whole filter rows (dense channels_last, dw == 1);
//     taps               blocks of taps / channel chunks (grouped, dilated columns);
//     packed             A rows copied per block (masked or channel-strided input).
// - Tasks: up to 192 output pixels of one (image, group), dynamic schedule; each pixel's sum has one
//   order fixed by the plan, so results do not depend on the thread count.
// Tiling (AVX-512): 6x64 / 12x32 / 8x32 / 8x16 microkernels (with_rows_shape); a per-tap B block
// kc x NR is kept <= 32 KiB so it stays in the 48 KiB L1; row-merged blocks take up to 3/4 of the L2.
//
// The staged NCHW forward (AVX-512 float32, conv2d_isa.cpp decides when) runs conv_cl on
// channels_last copies of a few images at a time.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/cl_staging.h"
#include "cpu/conv2d_paths.h"

namespace fastconv {
namespace cpu {
namespace FC_ISA {
namespace {

struct Seg {
  int64_t t, c0, len;
};

// Reduction blocks over (tap, c): whole taps while Cg <= KC, else channel chunks of one tap.
inline void make_blocks(int64_t RS, int64_t Cg, int64_t KC, std::vector<Seg>& segs, std::vector<int64_t>& bstart) {
  segs.clear();
  bstart.clear();
  if (Cg <= KC) {
    const int64_t TB = std::max<int64_t>(1, KC / Cg);
    for (int64_t t0 = 0; t0 < RS; t0 += TB) {
      bstart.push_back((int64_t)segs.size());
      for (int64_t t = t0; t < std::min(RS, t0 + TB); ++t) segs.push_back({t, 0, Cg});
    }
  } else {
    const int64_t nch = cdiv(Cg, KC), ch = cdiv(Cg, nch);
    for (int64_t t = 0; t < RS; ++t)
      for (int64_t c0 = 0; c0 < Cg; c0 += ch) {
        bstart.push_back((int64_t)segs.size());
        segs.push_back({t, c0, std::min(ch, Cg - c0)});
      }
  }
  bstart.push_back((int64_t)segs.size());
}

// conv_cl's packed weights: B[G][nJr][RS*Cg (kk = tap*Cg + c)][NR], NR = NV * L output channels per
// panel (zero past Kg).
template <typename T, int NV>
int64_t cl_weight_floats(const Geo& g) {
  constexpr int NR = NV * Simd<T>::L;
  return g.G * cdiv(g.Kg, NR) * g.Cg * g.R * g.S * NR;
}
template <typename T, int NV>
void pack_cl_weights(const Geo& g, WV<T> w, T* B, int nth) {
  constexpr int NR = NV * Simd<T>::L;
  const int64_t nJr = cdiv(g.Kg, NR), CRS = g.Cg * g.R * g.S;
  const PanelRows<T> rows(w, g.Cg, g.R, g.S, /*taps_outer=*/true);
#pragma omp parallel for num_threads(nth) schedule(static)
  for (int64_t t = 0; t < g.G * nJr; ++t) {
    const int64_t gi = t / nJr, jr = t % nJr;
    pack_panel<T>(w, rows, gi, jr * NR, std::min<int64_t>(NR, g.Kg - jr * NR), NR, B + t * CRS * NR);
  }
}

// Pointwise layers (1x1, no padding, one group) on channels_last tensors are one GEMM
// C[N*P*Q x Kg] = X[N*P*Q x Cg] * B over the batch's pixels, so they need none of conv_cl's per-task
// machinery (pixel lists, row runs, output offsets, reduction blocks): each thread walks a contiguous
// range of MR-pixel tiles, a tile's row pointers are its pixels' channel rows and its whole reduction
// runs against one B panel (Cg x NR, up to half the L2: cl_plan's condition); the bias initializes
// the accumulators and the k loop is unrolled by 4. 1x1 64->64, N=32, 32x32, 2 threads, raw kernel
// call: 0.775 ms against conv_cl's 0.87-0.98. On dense tensors at stride 1 pixel j's rows are
// x + j*Cg and y + j*Kg; otherwise (stride 2, the input gradient's residue class of a strided 1x1
// layer, which writes every other pixel of dx, or views) they come from the pixel's (n, p, q): the
// 1x1 stride-2 input gradient of ResNet-50's c512k1024 28x28 layer, batch 8, 2 threads, took 16 ms
// on conv_cl's per-tap path, torch 9.
template <typename T, int MR, int NV>
void conv_cl_pointwise(const Geo& g, In4<T> xv, const T* Bp, const T* biasp, Out4<T> yv, const Epi& ep,
                       bool stream_out, int nth) {
  using Sd = Simd<T>;
  using V = typename Sd::V;
  constexpr int L = Sd::L;
  constexpr int NR = NV * L;
  const int64_t M = g.N * g.P * g.Q, Cg = g.Cg, Kg = g.Kg, nJr = cdiv(Kg, NR);
  const int64_t ntile = cdiv(M, MR);
  const bool dense = g.sh == 1 && g.sw == 1 && xv.s3 == Cg && xv.s2 == g.W * xv.s3 && xv.s0 == g.H * xv.s2 &&
                     yv.s3 == Kg && yv.s2 == g.Q * yv.s3 && yv.s0 == g.P * yv.s2;
  const T* const x = xv.p;
  T* const y = yv.p;
  const Epi e = ep;
  // Few pixel tiles (a small map at batch 1: 7x7 = 9 tiles) also split the output channels, so that
  // every thread has work: units (panel chunk, tile), chunk-major, so a thread's static share walks its
  // panels' tiles with the B panel in cache.
  // All of B larger than half the L2 (1x1 2048->512: 4 MiB): one panel per unit, so that a thread's
  // units walk every tile against one panel held in L2 and x's rows, not B, are what is re-read (the
  // panels of every tile in turn stream all of B from L3 per 6-pixel tile). Reasoned from the bytes,
  // not shown by a measurement: that layer's input gradient at 7x7, batch 8, 2 threads, stayed within
  // noise (5.4-6.0 ms either way; the per-call weight repack was the cost there, see dgrad_pack_info).
  const bool b_in_l2 = Cg * nJr * NR * (int64_t)sizeof(T) <= l2_cache_bytes() / 2;
  const int64_t jper = !b_in_l2 ? 1 : cdiv(nJr, ntile >= 4 * nth ? 1 : std::min(nJr, cdiv(4 * nth, ntile)));
  const int64_t nJs = cdiv(nJr, jper);
#pragma omp parallel num_threads(nth)
  {
#pragma omp for schedule(static)
    for (int64_t unit = 0; unit < ntile * nJs; ++unit) {
      const int64_t tile = unit % ntile, js = unit / ntile;
      const int64_t j0 = tile * MR, mr = std::min<int64_t>(MR, M - j0);
      const T* r[MR];
      T* yr[MR];
      // Rows past mr repeat the last pixel: tail lanes, never stored.
      if (dense) {
        FC_UNROLL for (int i = 0; i < MR; ++i) {
          r[i] = x + (j0 + std::min<int64_t>(i, mr - 1)) * Cg;
          yr[i] = y + (j0 + i) * Kg;
        }
      } else {
        int64_t n = j0 / (g.P * g.Q), p = (j0 / g.Q) % g.P, q = j0 % g.Q;
        FC_UNROLL for (int i = 0; i < MR; ++i) {
          if (i < mr) {
            r[i] = x + n * xv.s0 + p * g.sh * xv.s2 + q * g.sw * xv.s3;
            yr[i] = y + n * yv.s0 + p * yv.s2 + q * yv.s3;
            if (++q == g.Q) {
              q = 0;
              if (++p == g.P) {
                p = 0;
                ++n;
              }
            }
          } else {
            r[i] = r[i - 1];
            yr[i] = nullptr;
          }
        }
      }
      for (int64_t jr = js * jper; jr < std::min(nJr, (js + 1) * jper); ++jr) {
        const int64_t kb = jr * NR;
        // The bias is the accumulators' initial value, which saves MR * NV additions per tile.
        V acc[MR][NV];
        FC_UNROLL for (int i = 0; i < MR; ++i) FC_UNROLL for (int v = 0; v < NV; ++v)
            acc[i][v] = biasp ? Sd::load(biasp + kb + v * L) : Sd::zero();
        const T* bp = Bp + jr * Cg * NR;
#pragma GCC unroll 4
        for (int64_t k = 0; k < Cg; ++k) rows_rank1<T, MR, NV>(acc, r, k, bp + k * NR);
        FC_UNROLL for (int i = 0; i < MR; ++i) {
          if (i >= mr) break;
          T* yp = yr[i] + kb;
          FC_UNROLL for (int v = 0; v < NV; ++v) {
            const int64_t left = Kg - kb - v * L;  // output channels left from this vector on
            if (left <= 0) continue;
            const int nval = (int)std::min<int64_t>(L, left);
            const V val = epi_store_value<T>(e, acc[i][v]);
            if (nval == L)
              store_maybe_stream<T>(yp + v * L, val, stream_out);
            else
              Sd::store_n(yp + v * L, val, nval);
          }
        }
        if (!epi_plain(e)) {
          if (dense)
            epi_fixup<T>(e, y + j0 * Kg + kb, 1, std::min<int64_t>(NV * L, Kg - kb), mr, Kg);
          else
            for (int64_t i = 0; i < mr; ++i) epi_fixup<T>(e, yr[i] + kb, 1, std::min<int64_t>(NV * L, Kg - kb));
        }
      }
    }
#if defined(__AVX512F__)
    if (stream_out) _mm_sfence();
#endif
  }
}

// One conv_cl call's plan: reduction blocks, task size, mode and scratch sizes, from the geometry and
// the strides alone (no data), so that the path chooser can name the mode conv_cl will take.
template <typename T, int MR, int NV>
struct ClPlan {
  static constexpr int NR = NV * Simd<T>::L;
  int64_t nJr, Npad, SC, KC;
  bool indirect, rowmerge, prefetch_b, whole_windows, pointwise, pad_copy, stream_out;
  std::vector<Seg> segs;
  std::vector<int64_t> bstart;
  int64_t nblk, maxnseg = 0, maxklen = 0;
  int64_t nIrb, MC, nIb;
  int64_t nJs, jper, ntask;  // output-channel splits of a task's panels, panels per split
  int64_t Wp, xp_sz;  // the padded copy: columns of every window, floats per task
  int64_t csz, asz, gsegs, rows_sz;

  ClMode mode() const {
    if (pointwise) return ClMode::kPointwise;
    if (!indirect) return ClMode::kPacked;
    if (!rowmerge) return ClMode::kTaps;
    if (pad_copy) return ClMode::kRowsPaddedCopy;
    if (whole_windows) return ClMode::kRowsWholeWindows;
    return ClMode::kRowBlocks;
  }
};

template <typename T, int MR, int NV>
ClPlan<T, MR, NV> cl_plan(const Geo& g, const In4<T>& x, const In4<T>& m, const Out4<T>& y, int nth = 1) {
  constexpr int NR = NV * Simd<T>::L;
  ClPlan<T, MR, NV> pl;
  const int64_t PQ = g.P * g.Q;
  pl.nJr = cdiv(g.Kg, NR);
  pl.Npad = pl.nJr * NR;
  // Reduction blocks. Default: a B block kc x NR <= 32 KiB, L1-resident (48 KiB) next to the A rows,
  // which keeps a 128-channel tap whole (stride-2 128->128 layer, 1 thread: 153-158 GFLOP/s against
  // 142-150 with 24 KiB blocks of 64 channels).
  const int64_t KC_L1 = std::max<int64_t>(32, std::min<int64_t>(256, (32 * 1024) / (NR * (int64_t)sizeof(T))));
  pl.indirect = (x.s1 == 1 || g.Cg == 1) && m.p == nullptr;
  // Row merge: with dense channels_last pixels and dw == 1 the S taps of one filter row are one
  // contiguous run of S*Cg elements, so a segment covers a whole filter row; groups with border
  // pixels, whose runs cross the padding, take the row's S taps as segments instead. Its blocks are
  // whole filter rows, as many as keep the block's B (all NR panels) within three quarters of the L2
  // cache, so B streams from L2 instead of sitting in L1 (the stride-2 128->128 layer's 590 KB of B in
  // one block on a 1 MiB-L2 Zen 4 core: ratio to torch 0.98-1.02, against 0.94-0.96 in two blocks).
  // With all R rows in one block a pixel's sum stays in registers for the whole reduction (no
  // partial sums through C) and an interior pixel needs one pointer (whole_windows below): stride-2
  // 128->128 channels_last, 2 threads, 7.8 ms against 8.4 per tap. A block larger than L2 is slower
  // (256->256 3x3, 2.4 MB of B: 17.6 ms with all 3 rows in one block, against 11.8 with one row per
  // block).
  // With S == 1 a filter row is one tap; it is merged only when it fits one L1 block, for the
  // whole-window pixel walk (one division per row run, not per pixel and segment: 1x1 64->64, 32x32,
  // channels_last, 2 threads, 0.98-1.00 ms against 1.06-1.08).
  pl.SC = g.S * g.Cg;
  const int64_t row_bytes = pl.SC * pl.Npad * (int64_t)sizeof(T);  // B of one filter row, all panels
  const int64_t rows_per_block = std::min<int64_t>(g.R, l2_cache_bytes() * 3 / 4 / row_bytes);
  pl.rowmerge = pl.indirect && g.G == 1 && g.Cg > 1 && x.s3 == g.Cg && g.dw == 1 && (g.S > 1 || pl.SC <= KC_L1) &&
                (pl.SC <= KC_L1 || rows_per_block >= 1);
  pl.KC = pl.rowmerge ? std::max(KC_L1, rows_per_block * pl.SC) : KC_L1;
  // A row-merged block's B panel (KC x NR) larger than the L1 blocks streams from L2: the kernels
  // prefetch it (see kRowsPrefetchSteps).
  pl.prefetch_b = pl.KC > KC_L1;
  if (pl.rowmerge)
    make_blocks(g.R, pl.SC, pl.KC, pl.segs, pl.bstart);  // "tap" = filter row r
  else
    make_blocks(g.R * g.S, g.Cg, pl.KC, pl.segs, pl.bstart);
  pl.nblk = (int64_t)pl.bstart.size() - 1;
  // Row merge with the whole reduction in one block (all R filter rows, e.g. the RGB stem or a 3x3
  // layer of 128 channels): a pixel whose window is inside the input needs one pointer; its R row runs
  // are dh*x.s2 apart.
  pl.whole_windows = pl.rowmerge && pl.nblk == 1;
  for (int64_t b = 0; b < pl.nblk; ++b) {
    int64_t kl = 0;
    for (int64_t si = pl.bstart[b]; si < pl.bstart[b + 1]; ++si) kl += pl.segs[si].len;
    pl.maxnseg = std::max(pl.maxnseg, pl.bstart[b + 1] - pl.bstart[b]);
    pl.maxklen = std::max(pl.maxklen, kl);
  }
  // Tasks of up to 192 pixels, an image's split into equal ones: a 16x16 output in 132 + 124 pixels,
  // not 192 + 64 (the last task of a thread's share then ends close to the other thread's).
  pl.nIrb = cdiv(cdiv(PQ, cdiv(PQ, std::min(cdiv(PQ, MR), cdiv(192, MR)) * MR)), MR);
  pl.MC = pl.nIrb * MR;  // pixels per task
  pl.nIb = cdiv(PQ, pl.MC);
  // Few pixel tasks (small maps at batch 1: a 7x7 output is one task) also split the output channels:
  // at least two tasks per thread, each a run of whole panels. A pixel's sums do not change with the
  // split (each output element is still one microkernel reduction).
  const int64_t pixel_tasks = g.N * g.G * pl.nIb;
  pl.nJs = pixel_tasks >= 2 * nth ? 1 : std::min(pl.nJr, cdiv(2 * nth, pixel_tasks));
  pl.jper = cdiv(pl.nJr, pl.nJs);
  pl.nJs = cdiv(pl.nJr, pl.jper);
  pl.ntask = pixel_tasks * pl.nJs;
  // Non-temporal stores as stream_output says (RGB stem, N=32, 3->32, 32x32, channels_last, 4 MiB
  // out, 2 threads: 0.55 ms streamed, 0.60 plain).
  pl.stream_out = y.s1 == 1 && stream_output<T>(g);
  // Pointwise layers on channels_last tensors: one GEMM over the batch's pixels (see
  // conv_cl_pointwise). A B panel of up to half the L2 streams from L2 like the row-merge blocks. Every
  // output pixel must read an input pixel: an input gradient's residue class can have one more column
  // than dy (dx columns past the last window, e.g. 9 columns, 1x2 filter, stride 2), and those take the
  // per-tap path, which reads zeros there.
  pl.pointwise = g.R == 1 && g.S == 1 && g.ph == 0 && g.pw == 0 && g.G == 1 && m.p == nullptr &&
                 (g.P - 1) * g.sh < g.H && (g.Q - 1) * g.sw < g.W &&
                 g.Cg * NR * (int64_t)sizeof(T) <= l2_cache_bytes() / 2 && x.s1 == 1 && y.s1 == 1;
  // Padded copy for whole windows with padding and few input channels (e.g. the RGB stem): a task
  // copies the input rows its pixels read into Xp, zero rows and columns in the padding, so that every
  // pixel is a whole window of Xp and runs ukr_rows_strided; without it the border pixels (12% of a
  // 32x32 image with a 3x3 filter) take per-pixel copies and the per-segment row kernel. The copy is
  // (rows of the task + R - 1) x (padded width) x Cg, a few KiB for the stem, next to 24 KiB of the
  // task's output. Stem (N=32, 3->32, 32x32, channels_last), kernel alone, 2 threads: 0.25-0.29 ms
  // against 0.33 without the copy.
  pl.Wp = (g.Q - 1) * g.sw + g.S;  // padded columns of every window: iw = -pw .. Wp - pw - 1
  const int64_t task_rows = cdiv(pl.MC, g.Q) + 1;  // output rows one task's pixels can touch
  const int64_t xp_rows = (task_rows - 1) * g.sh + (g.R - 1) * g.dh + 1;
  pl.xp_sz = xp_rows * pl.Wp * g.Cg;
  pl.pad_copy = pl.whole_windows && (g.ph > 0 || g.pw > 0) && g.dh > 0 && pl.xp_sz * (int64_t)sizeof(T) <= 16 * 1024;
  pl.csz = pl.nblk > 1 ? pl.MC * pl.Npad : 0;
  pl.asz = pl.pad_copy ? pl.xp_sz : pl.indirect ? 0 : pl.MC * pl.maxklen;
  // Segments of one group of MR pixels in a block: a row-merged block's filter rows split into their
  // S taps for groups with border pixels (see cl_indirect_rows).
  pl.gsegs = std::max<int64_t>(pl.maxnseg, 1) * (pl.rowmerge ? g.S : 1);
  pl.rows_sz = pl.nIrb * pl.gsegs * MR;
  return pl;
}

// One thread's scratch for conv_cl's tasks: partial sums C (blocks > 1), the packed rows or padded
// copy A, and the task's pixel tables.
template <typename T>
struct ClTaskBufs {
  T* Cb;
  T* Ab;
  const T** rows;
  int64_t *lens, *boffs, *nsg;
  int64_t *yoff, *ihb, *iwb;
  const T** rbase;
};

// The pixels j0 .. j0 + mc of a task in the order the blocks walk them: their output offsets (yoff),
// window origins (ihb, iwb) and, for row merge, each pixel's filter-row-0 run (rbase; null for border
// pixels). The task's pixels are walked as row runs [qa, qb) of output row p: one division per run,
// not per pixel (a 64-bit division costs 40+ cycles, as much as the whole reduction of a pixel of the
// RGB stem layer, 27 multiply-adds per output channel).
// Whole-window mode: pixels whose whole window lies inside the input come first, so that the groups
// of MR of them run ukr_rows_strided; the rest follow. The order of pixels inside a task is free (each
// has its own output offset) and does not change any pixel's sum. Whole windows are the columns
// [qlo, qhi) of the rows whose R taps are all inside the input.
// Returns the number of whole-window pixels; seg_stride gets the distance between a whole window's
// filter-row runs.
template <typename T, int MR, int NV>
FC_INLINE int64_t cl_task_pixels(const ClPlan<T, MR, NV>& pl, const Geo& g, const In4<T>& x, const Out4<T>& y,
                                 const T* xn, int64_t n, int64_t j0, int64_t mc, const ClTaskBufs<T>& tb,
                                 int64_t& seg_stride) {
  // The geometry is read into locals: stores into the int64 arrays below could alias g's fields,
  // and the compiler would reload them per pixel.
  const int64_t Q = g.Q, sh = g.sh, sw = g.sw, ph = g.ph, pw = g.pw, S = g.S, W = g.W;
  const int64_t ih_last = (g.R - 1) * g.dh, H = g.H, ys0 = n * y.s0, ys2 = y.s2, ys3 = y.s3;
  const int64_t xs2 = x.s2, xs3 = x.s3;
  const bool rowmerge = pl.rowmerge;
  int64_t* const yoff = tb.yoff;
  int64_t* const ihb = tb.ihb;
  int64_t* const iwb = tb.iwb;
  const T** const rbase = tb.rbase;
  int64_t jj = 0;
  const auto emit = [&](int64_t p, int64_t qa, int64_t qb) {
    const int64_t ih0 = p * sh - ph;
    for (int64_t q = qa; q < qb; ++q, ++jj) {
      const int64_t iw0 = q * sw - pw;
      yoff[jj] = ys0 + p * ys2 + q * ys3;
      ihb[jj] = ih0;
      iwb[jj] = iw0;
      // Row merge: the pixel's S*Cg run of filter row 0 when it lies inside the input columns
      // (rows are checked per tap in cl_indirect_rows); null for border pixels, whose groups take
      // per-tap segments.
      rbase[jj] = (rowmerge && iw0 >= 0 && iw0 + S <= W) ? xn + ih0 * xs2 + iw0 * xs3 : nullptr;
    }
  };
  const auto row_runs = [&](auto&& f) {  // f(p, qa, qb) for the task's pixels j0 .. j0 + mc
    for (int64_t j = j0; j < j0 + mc;) {
      const int64_t p = j / Q, qa = j - p * Q, qb = std::min(Q, qa + (j0 + mc - j));
      f(p, qa, qb);
      j += qb - qa;
    }
  };
  seg_stride = g.dh * x.s2;  // whole windows: from one filter row's run to the next
  if (pl.pad_copy) {
    // Input rows ih_a .. ih_a + nrow - 1 (padding rows included) into Xp = Ab, row stride Wp * Cg.
    const int64_t Wp = pl.Wp;
    const int64_t p_a = j0 / Q, p_b = (j0 + mc - 1) / Q;
    const int64_t ih_a = p_a * sh - ph, nrow = (p_b - p_a) * sh + ih_last + 1;
    const int64_t xps2 = Wp * g.Cg;
    for (int64_t r = 0; r < nrow; ++r) {
      T* dst = tb.Ab + r * xps2;
      const int64_t ih = ih_a + r;
      const int64_t lo = std::min(Wp, pw), hi = std::max(lo, std::min(Wp, W + pw));  // columns in [0, W)
      if (ih < 0 || ih >= H || hi == lo) {
        zero_n(dst, Wp * g.Cg);
        continue;
      }
      zero_n(dst, lo * g.Cg);
      copy_n(dst + lo * g.Cg, xn + ih * xs2 + (lo - pw) * xs3, (hi - lo) * g.Cg);  // dense pixels (rowmerge)
      zero_n(dst + hi * g.Cg, (Wp - hi) * g.Cg);
    }
    row_runs([&](int64_t p, int64_t qa, int64_t qb) {
      const T* xr = tb.Ab + (p * sh - ph - ih_a) * xps2;
      for (int64_t q = qa; q < qb; ++q, ++jj) {
        yoff[jj] = ys0 + p * ys2 + q * ys3;
        rbase[jj] = xr + q * sw * g.Cg;
      }
    });
    const int64_t nir = cdiv(mc, MR);
    for (int64_t k = jj; k < nir * MR; ++k) rbase[k] = rbase[0];  // lanes past mc: read, never stored
    seg_stride = g.dh * xps2;
    return nir * MR;
  }
  if (pl.whole_windows) {
    const int64_t qlo = std::min(Q, cdiv(pw, sw)), qhi = std::max(qlo, std::min(Q, (W - S + pw) / sw + 1));
    // Rows ih0 .. ih0 + ih_last, in either order (an input gradient's correlation has dh < 0).
    const int64_t lo_off = std::min<int64_t>(0, ih_last), hi_off = std::max<int64_t>(0, ih_last);
    const auto h_whole = [&](int64_t p) { return p * sh - ph + lo_off >= 0 && p * sh - ph + hi_off < H; };
    row_runs([&](int64_t p, int64_t qa, int64_t qb) {
      if (h_whole(p)) emit(p, std::max(qa, qlo), std::max(std::max(qa, qlo), std::min(qb, qhi)));
    });
    const int64_t nwhole = jj;
    row_runs([&](int64_t p, int64_t qa, int64_t qb) {
      if (!h_whole(p)) return emit(p, qa, qb);
      emit(p, qa, std::max(qa, std::min(qb, qlo)));
      emit(p, std::max(qa, std::min(qb, qhi)), qb);
    });
    return nwhole;
  }
  row_runs(emit);
  return 0;
}

// Indirect rows of one reduction block for the task's groups of MR pixels from nir_whole on: each
// group gets the block's segments whose rows are not all padding (those would only multiply zeros),
// each with its B rows' offset in the block. Row-merged blocks: a group whose pixels all have their
// filter rows as whole runs (rbase) takes the rows as segments; a group with a border pixel takes the
// S taps of every filter row as segments, which point into x or at the zeros, so a window's padding
// costs neither a copy nor multiply-adds (the stride-2 128->128 layer: 31 of a 16x16 output's 256
// pixels, a third of each one's taps).
template <typename T, int MR, int NV>
FC_INLINE void cl_indirect_rows(const ClPlan<T, MR, NV>& pl, const Geo& g, const In4<T>& x, const T* xn,
                                const Seg* bs, int64_t nseg, int64_t nir_whole, int64_t nir, int64_t mc,
                                const ClTaskBufs<T>& tb, const T* z) {
  const bool rowmerge = pl.rowmerge;
  const int64_t gsegs = pl.gsegs;
  for (int64_t ir = nir_whole; ir < nir; ++ir) {
    const T** rg = tb.rows + ir * gsegs * MR;
    int64_t* lg = tb.lens + ir * gsegs;
    int64_t* og = tb.boffs + ir * gsegs;
    bool runs = rowmerge;
    for (int i = 0; i < MR; ++i)
      if (ir * MR + i < mc && tb.rbase[ir * MR + i] == nullptr) runs = false;
    const int64_t npiece = rowmerge && !runs ? g.S : 1;
    int64_t ns = 0, koff = 0;
    for (int64_t si = 0; si < nseg; ++si) {
      const int64_t tap = bs[si].t, plen = npiece > 1 ? g.Cg : bs[si].len;
      for (int64_t s = 0; s < npiece; ++s) {
        const T** rp = rg + ns * MR;
        bool any = false;
        for (int i = 0; i < MR; ++i) {
          const int64_t jj = ir * MR + i;
          const T* pt = z;
          if (jj < mc && rowmerge) {
            const int64_t ih = tb.ihb[jj] + tap * g.dh, iw = tb.iwb[jj] + s;  // dw == 1
            if (ih >= 0 && ih < g.H) {
              if (runs)
                pt = tb.rbase[jj] + tap * g.dh * x.s2;
              else if (iw >= 0 && iw < g.W)
                pt = xn + ih * x.s2 + iw * x.s3;
            }
          } else if (jj < mc) {
            const int64_t r = tap / g.S, st = tap - r * g.S;
            const int64_t ih = tb.ihb[jj] + r * g.dh, iw = tb.iwb[jj] + st * g.dw;
            if (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W) pt = xn + ih * x.s2 + iw * x.s3 + bs[si].c0 * x.s1;
          }
          rp[i] = pt;
          any = any || pt != z;
        }
        if (any) {
          lg[ns] = plen;
          og[ns] = koff + s * plen;
          ++ns;
        }
      }
      koff += bs[si].len;
    }
    tb.nsg[ir] = ns;
  }
}

// Packed rows of one reduction block (masked or channel-strided input): pixel jj's kl values in Ab,
// zeros in the padding and past the task's pixels; one segment per group.
template <typename T>
FC_INLINE void cl_packed_rows(int MR, int64_t gsegs, const Geo& g, const In4<T>& x, const In4<T>& m, const T* xn,
                              const T* mn, const Seg* bs, int64_t nseg, int64_t kl, int64_t nir, int64_t mc,
                              const ClTaskBufs<T>& tb) {
  for (int64_t ir = 0; ir < nir; ++ir) {
    tb.nsg[ir] = 1;
    tb.lens[ir * gsegs] = kl;
    tb.boffs[ir * gsegs] = 0;
  }
  for (int64_t jj = 0; jj < nir * MR; ++jj) {
    T* dst = tb.Ab + jj * kl;
    tb.rows[(jj / MR) * gsegs * MR + jj % MR] = dst;
    if (jj >= mc) {
      for (int64_t t = 0; t < kl; ++t) dst[t] = T(0);
      continue;
    }
    for (int64_t si = 0; si < nseg; ++si) {
      const int64_t tap = bs[si].t, r = tap / g.S, s = tap % g.S, len = bs[si].len;
      const int64_t ih = tb.ihb[jj] + r * g.dh, iw = tb.iwb[jj] + s * g.dw;
      if (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W) {
        const T* src = xn + ih * x.s2 + iw * x.s3 + bs[si].c0 * x.s1;
        if (mn) {
          const T* ms = mn + ih * m.s2 + iw * m.s3 + bs[si].c0 * m.s1;
          for (int64_t c = 0; c < len; ++c) dst[c] = masked(src[c * x.s1], ms[c * m.s1]);
        } else if (x.s1 == 1) {
          for (int64_t c = 0; c < len; ++c) dst[c] = src[c];
        } else {
          for (int64_t c = 0; c < len; ++c) dst[c] = src[c * x.s1];
        }
      } else {
        for (int64_t c = 0; c < len; ++c) dst[c] = T(0);
      }
      dst += len;
    }
  }
}

// The microkernel calls of one reduction block for every group of MR pixels and panel jr0 .. jr1 - 1 of
// NR output channels; the last block's epilogue adds the bias, applies ReLU and stores into y, earlier blocks
// leave partial sums in Cb.
template <typename T, int MR, int NV>
FC_INLINE void cl_block_compute(const ClPlan<T, MR, NV>& pl, const Geo& g, const Out4<T>& y, const T* Bp,
                                const T* biasp, const Epi& ep, int64_t gi, int64_t jr0, int64_t jr1, int64_t k0,
                                int64_t b, int64_t nir, int64_t nir_whole, int64_t mc, int64_t seg_stride,
                                const ClTaskBufs<T>& tb) {
  using Sd = Simd<T>;
  using V = typename Sd::V;
  constexpr int L = Sd::L;
  constexpr int NR = NV * L;
  const int64_t CRS = g.Cg * g.R * g.S, ldc = pl.Npad, gsegs = pl.gsegs;
  const bool first = b == 0, last = b == pl.nblk - 1, out_vec = y.s1 == 1;
  for (int64_t ir = 0; ir < nir; ++ir) {
    for (int64_t jr = jr0; jr < jr1; ++jr) {
      const T* bp = Bp + ((gi * pl.nJr + jr) * CRS + k0) * NR;
      const int64_t kb = jr * NR;
      const bool full = out_vec && kb + NR <= g.Kg;
      const auto epilogue = [&](V(&acc)[MR][NV]) {
        T* ct = tb.Cb + ir * MR * ldc + kb;
        if (!first) add_tile<T, MR, NV>(acc, ct, ldc);
        if (!last) return store_tile<T, MR, NV>(acc, ct, ldc);  // partial sum of a kc block
        // Everything the stores below need is read into locals first: they are captured by
        // reference, and a store through yp may alias them as far as the compiler knows, so it
        // would reload every flag and the bias from memory per vector (RGB stem, without the locals:
        // ~20% of the kernel's samples in this epilogue).
        const bool stream = pl.stream_out && epi_plain(ep), whole = full;  // epi_fixup rereads the task
        const Epi e = ep;
        const int64_t nst = std::min<int64_t>(MR, mc - ir * MR), ys1 = y.s1;
        const int64_t* const yo = tb.yoff + ir * MR;
        T* const yb = y.p + (gi * g.Kg + kb) * ys1;
        V bv[NV];
        FC_UNROLL for (int v = 0; v < NV; ++v) bv[v] = biasp ? Sd::load(biasp + gi * ldc + kb + v * L) : Sd::zero();
        const bool add_bias = biasp != nullptr;
        FC_UNROLL for (int i = 0; i < MR; ++i) {
          if (i >= nst) break;
          T* yp = yb + yo[i];
          FC_UNROLL for (int v = 0; v < NV; ++v) {
            V val = acc[i][v];
            if (add_bias) val = Sd::add(val, bv[v]);
            val = epi_store_value<T>(e, val);
            if (whole) {
              store_maybe_stream<T>(yp + v * L, val, stream);
            } else {
              alignas(64) T tmp[L];
              Sd::store(tmp, val);
              for (int l = 0; l < L; ++l)
                if (kb + v * L + l < g.Kg) yp[(v * L + l) * ys1] = tmp[l];
            }
          }
        }
      };
      const int64_t* lens = tb.lens + ir * gsegs;
      const int64_t* boffs = tb.boffs + ir * gsegs;
      const T* const* rows = tb.rows + ir * gsegs * MR;
      if (ir < nir_whole && pl.prefetch_b)
        ukr_rows_strided<T, MR, NV, true>(g.R, seg_stride, pl.SC, tb.rbase + ir * MR, bp, epilogue);
      else if (ir < nir_whole)
        ukr_rows_strided<T, MR, NV>(g.R, seg_stride, pl.SC, tb.rbase + ir * MR, bp, epilogue);
      else if (pl.prefetch_b)
        ukr_rows<T, MR, NV, true>(tb.nsg[ir], rows, lens, bp, epilogue, boffs);
      else
        ukr_rows<T, MR, NV>(tb.nsg[ir], rows, lens, bp, epilogue, boffs);
    }
  }
}

// Bpre: weights already packed by pack_cl_weights (callers that run several batches of one layer),
// or null to pack w here.
template <typename T, int MR, int NV>
void conv_cl(const Geo& g, In4<T> x, In4<T> m, WV<T> w, const T* bias, Out4<T> y, const Epi& ep, int nth,
             const T* Bpre = nullptr) {
  const ClPlan<T, MR, NV> pl = cl_plan<T, MR, NV>(g, x, m, y, nth);
  const int64_t PQ = g.P * g.Q, MC = pl.MC, nIb = pl.nIb, Npad = pl.Npad;
  Buf<T> Bown(Bpre ? 0 : cl_weight_floats<T, NV>(g));
  if (!Bpre) pack_cl_weights<T, NV>(g, w, Bown.p, nth);
  const T* const Bp = Bpre ? Bpre : Bown.p;
  std::vector<T> biasp(bias ? g.G * Npad : 0, T(0));
  if (bias)
    for (int64_t gi = 0; gi < g.G; ++gi)
      for (int64_t k = 0; k < g.Kg; ++k) biasp[gi * Npad + k] = bias[gi * g.Kg + k];
  if (pl.pointwise) {
    // One output pixel (an SE block's 1x1 convolutions on a 1x1 map at batch 1): one-row tiles, not
    // MR rows of which MR - 1 repeat the pixel (960 -> 240, one thread: 46.7 us with 12-row tiles).
    if constexpr (MR > 1)
      if (g.N * g.P * g.Q == 1)
        return conv_cl_pointwise<T, 1, NV>(g, x, Bp, bias ? biasp.data() : nullptr, y, ep,
                                           pl.stream_out && epi_plain(ep), nth);
    return conv_cl_pointwise<T, MR, NV>(g, x, Bp, bias ? biasp.data() : nullptr, y, ep,
                                        pl.stream_out && epi_plain(ep), nth);
  }

  const int64_t csz = pl.csz, asz = pl.asz, gsegs = pl.gsegs, rows_sz = pl.rows_sz, nIrb = pl.nIrb;
  Buf<T> scratch(nth * (csz + asz));
  std::vector<const T*> rows_all(nth * rows_sz);
  std::vector<int64_t> lens_all(nth * nIrb * gsegs), boffs_all(nth * nIrb * gsegs), nsg_all(nth * nIrb);
  std::vector<int64_t> yoff_all(nth * MC), ihb_all(nth * MC), iwb_all(nth * MC);
  std::vector<const T*> rbase_all(nth * MC);
  std::vector<T> zeros(std::max(g.Cg, pl.SC), T(0));

#pragma omp parallel num_threads(nth)
  {
    const int tid = thread_id();
    ClTaskBufs<T> tb;
    tb.Cb = scratch.p + tid * (csz + asz);
    tb.Ab = tb.Cb + csz;
    tb.rows = rows_all.data() + tid * rows_sz;
    tb.lens = lens_all.data() + tid * nIrb * gsegs;
    tb.boffs = boffs_all.data() + tid * nIrb * gsegs;
    tb.nsg = nsg_all.data() + tid * nIrb;
    tb.yoff = yoff_all.data() + tid * MC;
    tb.ihb = ihb_all.data() + tid * MC;
    tb.iwb = iwb_all.data() + tid * MC;
    tb.rbase = rbase_all.data() + tid * MC;
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < pl.ntask; ++task) {
      const int64_t js = task % pl.nJs, pt = task / pl.nJs;
      const int64_t ib = pt % nIb, ng = pt / nIb, gi = ng % g.G, n = ng / g.G;
      const int64_t jr0 = js * pl.jper, jr1 = std::min(pl.nJr, jr0 + pl.jper);
      const int64_t j0 = ib * MC, mc = std::min(MC, PQ - j0), nir = cdiv(mc, MR);
      const T* xn = x.p + n * x.s0 + gi * g.Cg * x.s1;
      int64_t seg_stride = 0;
      const int64_t nwhole = cl_task_pixels<T, MR, NV>(pl, g, x, y, xn, n, j0, mc, tb, seg_stride);
      const int64_t nir_whole = nwhole / MR;  // groups of MR whole-window pixels
      const T* mn = m.p ? m.p + n * m.s0 + gi * g.Cg * m.s1 : nullptr;
      int64_t k0 = 0;
      for (int64_t b = 0; b < pl.nblk; ++b) {
        const int64_t nseg = pl.bstart[b + 1] - pl.bstart[b];
        const Seg* bs = pl.segs.data() + pl.bstart[b];
        int64_t kl = 0;
        for (int64_t si = 0; si < nseg; ++si) kl += bs[si].len;
        if (pl.indirect)
          cl_indirect_rows<T, MR, NV>(pl, g, x, xn, bs, nseg, nir_whole, nir, mc, tb, zeros.data());
        else
          cl_packed_rows<T>(MR, gsegs, g, x, m, xn, mn, bs, nseg, kl, nir, mc, tb);
        cl_block_compute<T, MR, NV>(pl, g, y, Bp, bias ? biasp.data() : nullptr, ep, gi, jr0, jr1, k0, b, nir,
                                    nir_whole, mc, seg_stride, tb);
        k0 += kl;
      }
      if (!epi_plain(ep)) {  // the general epilogue over the task's outputs (still in L1 / L2)
        const int64_t k_lo = jr0 * ClPlan<T, MR, NV>::NR, k_hi = std::min(g.Kg, jr1 * ClPlan<T, MR, NV>::NR);
        for (int64_t jj = 0; jj < mc; ++jj)
          epi_fixup<T>(ep, y.p + tb.yoff[jj] + (gi * g.Kg + k_lo) * y.s1, y.s1, k_hi - k_lo);
      }
#if defined(__AVX512F__)
      if (pl.stream_out) _mm_sfence();  // order this task's streamed stores before the loop's barrier
#endif
    }
  }
}

template <typename T>
struct ClRunner {
  const Geo& g;
  In4<T> x, m;
  WV<T> w;
  const T* bias;
  Out4<T> y;
  Epi ep;
  int nth;
  WeightPack* pack;
  template <int MR, int NV>
  void operator()() const {
    const T* B = cached_pack<T>(pack, cl_weight_floats<T, NV>(g), [&](T* p) { pack_cl_weights<T, NV>(g, w, p, nth); });
    conv_cl<T, MR, NV>(g, x, m, w, bias, y, ep, nth, B);
  }
};

// conv_cl's pack for a problem: its size in T elements and its panel width NR, for the microkernel
// shape with_rows_shape picks (asked on every forward call: no plan).
template <typename T>
struct ClPackSize {
  const Geo& g;
  int64_t &count, &nr;
  template <int MR, int NV>
  void operator()() const {
    count = cl_weight_floats<T, NV>(g);
    nr = NV * Simd<T>::L;
  }
};

// The mode conv_cl takes for a problem (the path chooser's question).
template <typename T>
struct ClModeQuery {
  const Geo& g;
  const In4<T>& x;
  const In4<T>& m;
  const Out4<T>& y;
  ClMode& mode;
  template <int MR, int NV>
  void operator()() const {
    mode = cl_plan<T, MR, NV>(g, x, m, y).mode();
  }
};

// The staged NCHW forward: a few images at a time are copied to channels_last, convolved by conv_cl
// into a channels_last buffer and transposed into y. Batches of half an L2 of input per thread keep
// both copies in the L2 caches (32x128x32x32 -> 128 3x3 s2, 2 threads: 8.5-8.9 ms, against 9.5-10.2
// staging the whole batch at once); the weights are packed once for all batches.
struct StagedClRunner {
  const Geo& g;
  const Tensor4& x;
  WV<float> w;
  const float* bias;
  const Tensor4& y;
  Epi ep;
  int nth;
  WeightPack* pack;
  template <int MR, int NV>
  void operator()() const {
    const auto fill = [&](float* p) { pack_cl_weights<float, NV>(g, w, p, nth); };
    const float* B = cached_pack<float>(pack, cl_weight_floats<float, NV>(g), fill);
    Buf<float> Bown(B ? 0 : cl_weight_floats<float, NV>(g));
    if (!B) {
      fill(Bown.p);
      B = Bown.p;
    }
    const int64_t image_bytes = g.Cin * g.H * g.W * (int64_t)sizeof(float);
    // Images per batch: half an L2 of input per thread, and at least 4 conv_cl tasks (of <= 192
    // pixels) per thread so that the batch keeps every thread busy (the layer above: 8.5-9.0 ms with
    // 2-8 images per batch, against 13.8 with 1).
    const int64_t by_cache = nth * (l2_cache_bytes() / 2) / image_bytes;
    const int64_t by_tasks = cdiv(4 * nth, cdiv(g.P * g.Q, 192));
    const int64_t NB = std::max<int64_t>({int64_t(1), by_cache, by_tasks});
    for_staged_image_batches(g, x, y, NB, nth, [&](const Geo& gc, const In4<float>& xcl, const Out4<float>& ycl) {
      conv_cl<float, MR, NV>(gc, xcl, In4<float>{}, w, bias, ycl, ep, nth, B);
    });
  }
};

}  // namespace

template <typename T>
void igemm_nhwc_fwd(const Geo& g, In4<T> x, In4<T> m, WV<T> w, const T* bias, Out4<T> y, const Epi& ep, int nth,
                    WeightPack* pack) {
  with_rows_shape<T>(g.Kg, ClRunner<T>{g, x, m, w, bias, y, ep, nth, pack});
}

template <typename T>
void igemm_nhwc_pack_size(const Geo& g, int64_t& count, int64_t& nr) {
  with_rows_shape<T>(g.Kg, ClPackSize<T>{g, count, nr});
}

template <typename T>
ClMode igemm_nhwc_mode(const Geo& g, const In4<T>& x, const In4<T>& m, const Out4<T>& y) {
  ClMode mode = ClMode::kTaps;
  with_rows_shape<T>(g.Kg, ClModeQuery<T>{g, x, m, y, mode});
  return mode;
}

void igemm_nhwc_staged_nchw_fwd(const Geo& g, const Tensor4& x, WV<float> w, const float* bias, const Tensor4& y,
                                const Epi& ep, int nth, WeightPack* pack) {
  with_rows_shape<float>(g.Kg, StagedClRunner{g, x, w, bias, y, ep, nth, pack});
}

template void igemm_nhwc_fwd<float>(const Geo&, In4<float>, In4<float>, WV<float>, const float*, Out4<float>, const Epi&,
                                    int, WeightPack*);
template void igemm_nhwc_fwd<double>(const Geo&, In4<double>, In4<double>, WV<double>, const double*, Out4<double>,
                                     const Epi&, int, WeightPack*);
template void igemm_nhwc_pack_size<float>(const Geo&, int64_t&, int64_t&);
template void igemm_nhwc_pack_size<double>(const Geo&, int64_t&, int64_t&);
template ClMode igemm_nhwc_mode<float>(const Geo&, const In4<float>&, const In4<float>&, const Out4<float>&);
template ClMode igemm_nhwc_mode<double>(const Geo&, const In4<double>&, const In4<double>&, const Out4<double>&);

}  // namespace FC_ISA
}  // namespace cpu
}  // namespace fastconv

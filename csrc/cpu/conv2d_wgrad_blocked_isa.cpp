// Weight gradient of float32 convolutions (groups 1, any filter, stride, dilation, padding) at the
// AVX2 and AVX-512 levels, as rank updates over blocks of output pixels:
//     S[tap][c][k] = sum_{pixels t} X_tap[t][c] D[t][k],   dw[k][c][r][s] = S[r*S + s][c][k]
// with D[t] = dy's channel row of output pixel t (ReLU-masked for the fused op) and X_tap[t] = x's
// channel row at the input pixel tap (r, s) of t reads (zeros in the padding).
//
// Why: the GEMM wgrad kernels (conv2d_wgrad_gemm_isa.cpp) reduce over N*P*Q inside one long GEMM whose
// operands are re-packed per reduction chunk; on channels_last layers with few channels or a 64x64
// output that packing and the 64-row output tiles leave most of the FMA units idle (the C=3 stem,
// 1 thread: 4.6 ms against oneDNN's 0.7 ms).
//
// Schedule: pixels in (n, p, q) order are cut into blocks of 64 (kTileBlock; 256 for a sum matrix past
// 2 MiB, kTileBlockLong); a block's D[64][Kp] and its im2col rows X[64][R*S*C] (taps side by side, so a
// 3-channel stem has 27-long rows and 6-row register tiles stay 90% full) are gathered into L1/L2-sized
// buffers (channels_last rows, read in place from a channels_last x/dy or from a staging copy), then
// S[(tap, c)][k] gets the block's contribution through accumulate_positions (6 x kChunk register tiles,
// (tap, c) rows broadcast, k in vectors: 6 x 64 floats at AVX-512, 6 x 16 at AVX2).
// Blocks are split into at most 8 groups fixed by the problem (never by the thread count); each
// group accumulates its own S_g, and the S_g are summed in group order: bitwise deterministic for
// any number of threads. The bias gradient, when asked for, rides along the same way: each group
// sums the D rows it gathers (so dy is not read by a pass of its own: 8 MiB of a 1x1 64->64 layer's
// N=32 32x32 backward), then the groups' sums are added in order.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "cpu/cl_blocks.h"
#include "cpu/cl_staging.h"
#include "cpu/conv2d_wgrad_blocked.h"
#include "cpu/kernels.h"

namespace fastconv {
namespace cpu {
namespace FC_ISA {

bool wgrad_blocked_usable(const ConvDesc& d, DType dt) {
#if FC_CL_BLOCKS
  if (dt != kFloat32 || d.groups != 1 || d.C < 2 || d.N == 0) return false;
  return algorithm_switch_on("FASTCONV_CPU_WGRAD_BLOCKED");
#else
  (void)d;
  (void)dt;
  return false;
#endif
}

#if FC_CL_BLOCKS

namespace {

// sum[k_begin..k_end) += the nt rows of D (row stride Kp) while they are in L1, with four partial sums
// per vector (rows t % 4) so the adds do not wait on each other; a fixed order for a given nt. (Adding
// each row into sum as it is gathered, a load-add-store per vector and pixel, costs 0.25-0.3 ms of a
// 1.5 ms weight gradient of the 1x1 64->64 layer, N=32 32x32: as much as a separate pass over dy.)
void add_rows(const float* D, int64_t nt, int64_t Kp, int64_t k_begin, int64_t k_end, float* sum) {
  for (int64_t k = k_begin; k < k_end; k += L) {
    V a0 = Sf::zero(), a1 = Sf::zero(), a2 = Sf::zero(), a3 = Sf::zero();
    int64_t t = 0;
    for (; t + 4 <= nt; t += 4) {
      a0 = Sf::add(a0, Sf::load(D + t * Kp + k));
      a1 = Sf::add(a1, Sf::load(D + (t + 1) * Kp + k));
      a2 = Sf::add(a2, Sf::load(D + (t + 2) * Kp + k));
      a3 = Sf::add(a3, Sf::load(D + (t + 3) * Kp + k));
    }
    for (; t < nt; ++t) a0 = Sf::add(a0, Sf::load(D + t * Kp + k));
    Sf::store(sum + k, Sf::add(Sf::load(sum + k), Sf::add(Sf::add(a0, a1), Sf::add(a2, a3))));
  }
}

}  // namespace

void wgrad_blocked(const ConvDesc& d, const Tensor4& dy, const Tensor4& x, const Tensor4* relu_y,
                   const Tensor4& dw, float* dbias, int nth) {
  // Reduction rows: (tap, c) pairs, tap-major (im2col order), crs of them, padded to crsp floats.
  const int64_t C = d.C, K = d.K, Kp = round_up(K, L), taps = d.R * d.S, crs = taps * C, crsp = round_up(crs, L);
  const int64_t s_floats = crs * Kp;
  // A block's sums go through S in memory (load, add, store per register tile) once per block: with a
  // sum matrix past L2 that traffic bounds blocks of 64 pixels, so it takes blocks of 256 (from 512
  // pixels on), its register tiles walking c blocks outer. 2 threads, AMD EPYC Zen 4 (1 MiB L2), ms 64 ->
  // 256 (torch): DCGAN's 64x256x8x8 4x4 s2 -> 512 (8 MiB of S, 1024 pixels) 41.1 -> 27.0 (22-33), U-Net's
  // 4x512x32x32 2x2 s2 -> 1024 42.3 -> 30.9 (23-32), 8x512x14x14 3x3 s2 20.2 -> 15.5 (11-18); S of 2 MiB
  // gained nothing (64x128x16x16 4x4 s2 -> 256: 26.4 either way).
  const int64_t pixels = d.N * d.P * d.Q;
  const bool long_blocks = s_floats * int64_t(sizeof(float)) > (int64_t(2) << 20) && pixels >= 2 * kTileBlockLong;
  const int64_t bt = long_blocks ? kTileBlockLong : kTileBlock, blocks = cdiv(pixels, bt);
  StagedSrc xs(x, nullptr, kStageA, nth), gs(dy, relu_y, kStageB, nth);
  // Up to 8 groups of at least 2 blocks each, and at most 64 MiB of group sums.
  const int64_t max_groups = std::max<int64_t>(
      1, std::min<int64_t>({8, blocks / 2, (int64_t(64) << 20) / (4 * s_floats)}));
  const int64_t per_group = cdiv(blocks, max_groups) * bt;
  const int64_t groups = cdiv(pixels, per_group);  // every group non-empty (its S_g is written)
  // Few groups (a small map at batch 1: 7x7 is one block) also split the columns k of S into chunks of
  // whole kChunk-wide microkernel columns, so that every thread has work; each S element's sum is the
  // same either way. A task (group, column chunk) gathers its group's rows itself.
  const int64_t kchunks_all = cdiv(Kp, kChunk);
  // Every column-chunk task gathers its group's rows again, which costs more with long blocks: those
  // split only up to nth tasks (DCGAN's layer above: 28.8 ms at 2 * nth, 27.9 at nth).
  const int64_t want = long_blocks ? nth : 2 * nth;
  const int64_t kchunks_per = cdiv(kchunks_all, groups >= want ? 1 : std::min(kchunks_all, cdiv(want, groups)));
  const int64_t kper = kChunk * kchunks_per;
  const int64_t ksplit = cdiv(Kp, kper);
  FBuf Sb(kSums, groups * s_floats);
  std::vector<float> bsum(dbias ? groups * Kp : 0);  // [g][Kp]: group g's sums of its D rows
  // Per thread: a block of rows plus L floats of slack, which the last row block reads (and
  // discards) up to kMR-1 floats into. The slack is the thread's own: it is zeroed below while the
  // other threads work on their blocks.
  const int64_t x_block = bt * crsp + L;
  FBuf Xb(kTileV, nth * x_block), Db(kTileE, nth * bt * Kp + L);
  const Src& xv = xs.src;
  const Src& gv = gs.src;
#pragma omp parallel for num_threads(nth) schedule(dynamic, 1)
  for (int64_t task = 0; task < groups * ksplit; ++task) {
    const int64_t g = task / ksplit, k_begin = (task % ksplit) * kper, k_end = std::min(Kp, k_begin + kper);
    const int tid = thread_id();
    float* X = Xb.p + tid * x_block;
    float* D = Db.p + tid * bt * Kp;
    // Row padding [crs, crsp) and the slack after the last row: read by discarded accumulator rows
    // only, but kept zero (uninitialized memory could hold denormals that slow the FMAs).
    for (int64_t tt = 0; tt < bt; ++tt) std::fill(X + tt * crsp + crs, X + (tt + 1) * crsp, 0.f);
    std::fill(X + bt * crsp, X + bt * crsp + L, 0.f);
    const int64_t begin = std::min(pixels, g * per_group), end = std::min(pixels, begin + per_group);
    float* bs = dbias ? bsum.data() + g * Kp : nullptr;
    if (bs) std::fill(bs + k_begin, bs + k_end, 0.f);
    for (int64_t t0 = begin; t0 < end; t0 += bt) {
      const int64_t nt = std::min<int64_t>(bt, end - t0);
      int64_t n = t0 / (d.P * d.Q), p = (t0 / d.Q) % d.P, q = t0 % d.Q;  // pixel t0 + tt, stepped below
      for (int64_t tt = 0; tt < nt; ++tt) {
        // D row (channels past K are zero: they feed S columns that are never read).
        const float* drow = gv.p + n * gv.s0 + p * gv.s2 + q * gv.s3;
        float* dd = D + tt * Kp;
        for (int64_t k = 0; k < Kp; k += L)
          Sf::store(dd + k, Sf::load_n(drow + k, static_cast<int>(std::min<int64_t>(L, std::max<int64_t>(0, K - k)))));
        gather_im2col_row(d, xv, n, p, q, X + tt * crsp);
        if (++q == d.Q) {
          q = 0;
          if (++p == d.P) {
            p = 0;
            ++n;
          }
        }
      }
      if (bs) add_rows(D, nt, Kp, k_begin, k_end, bs);
      accumulate_positions(X, crsp, crs, D, Kp, nt, k_begin, k_end, Sb.p + g * s_floats, t0 == begin, long_blocks);
    }
  }
  write_dw_from_sums(d, Sb.p, Kp, groups, s_floats, dw, nth);
  if (dbias) {
    sum_groups_row(bsum.data(), 0, Kp, groups, Kp);
    std::copy(bsum.begin(), bsum.begin() + K, dbias);
  }
}

void with_channels_last_copy(const Tensor4& t, int nth, const std::function<void(const float*)>& f) {
  FBuf buf(kStageA, t.size[0] * t.size[1] * t.size[2] * t.size[3]);
  stage_channels_last(t, nullptr, buf.p, nth);
  f(buf.p);
}

void copy_from_channels_last(const float* src, const Tensor4& t, int nth) { unstage_channels_last(src, t, nth); }

void with_channels_last_output(const Tensor4& t, int nth, const std::function<void(float*)>& f) {
  FBuf buf(kStageB, t.size[0] * t.size[1] * t.size[2] * t.size[3]);
  f(buf.p);
  copy_from_channels_last(buf.p, t, nth);
}

void with_channels_last_copies(const Tensor4& a, const Tensor4& b, int nth,
                               const std::function<void(const float*, const float*)>& f) {
  FBuf ba(kStageA, a.size[0] * a.size[1] * a.size[2] * a.size[3]);
  FBuf bb(kStageB, b.size[0] * b.size[1] * b.size[2] * b.size[3]);
  stage_channels_last(a, nullptr, ba.p, nth);
  stage_channels_last(b, nullptr, bb.p, nth);
  f(ba.p, bb.p);
}

#else

void wgrad_blocked(const ConvDesc&, const Tensor4&, const Tensor4&, const Tensor4*, const Tensor4&, float*, int) {
  throw std::logic_error("fastconv: the blocked weight gradient needs the avx2 or avx512 build");
}

// At the baseline level the staging copies move 16 x 16 blocks (channels x pixels) element by element,
// in the compiler's vectors; the parallel units are rows (n, h). Same arena slots as the other levels.
namespace {

constexpr int64_t kCopyBlock = 16;

// dst[((n*H + h)*W + w)*C + c] = t[n][c][h][w] (to_cl), or the inverse (t written from dst).
template <bool to_cl>
void copy_channels_last(const Tensor4& t, float* cl, int nth) {
  const int64_t N = t.size[0], C = t.size[1], H = t.size[2], W = t.size[3];
  const auto& st = t.stride;
  float* tp = static_cast<float*>(t.data);
#pragma omp parallel for num_threads(nth) schedule(static)
  for (int64_t nh = 0; nh < N * H; ++nh) {
    float* trow = tp + (nh / H) * st[0] + (nh % H) * st[2];
    float* crow = cl + nh * W * C;
    for (int64_t c0 = 0; c0 < C; c0 += kCopyBlock)
      for (int64_t w0 = 0; w0 < W; w0 += kCopyBlock) {
        const int64_t c1 = std::min(C, c0 + kCopyBlock), w1 = std::min(W, w0 + kCopyBlock);
        for (int64_t w = w0; w < w1; ++w)
          for (int64_t c = c0; c < c1; ++c) {
            if constexpr (to_cl)
              crow[w * C + c] = trow[c * st[1] + w * st[3]];
            else
              trow[c * st[1] + w * st[3]] = crow[w * C + c];
          }
      }
  }
}

int64_t elements(const Tensor4& t) { return t.size[0] * t.size[1] * t.size[2] * t.size[3]; }

}  // namespace

void with_channels_last_copy(const Tensor4& t, int nth, const std::function<void(const float*)>& f) {
  FBuf buf(kStageA, elements(t));
  copy_channels_last<true>(t, buf.p, nth);
  f(buf.p);
}

void copy_from_channels_last(const float* src, const Tensor4& t, int nth) {
  copy_channels_last<false>(t, const_cast<float*>(src), nth);
}

void with_channels_last_output(const Tensor4& t, int nth, const std::function<void(float*)>& f) {
  FBuf buf(kStageB, elements(t));
  f(buf.p);
  copy_from_channels_last(buf.p, t, nth);
}

void with_channels_last_copies(const Tensor4& a, const Tensor4& b, int nth,
                               const std::function<void(const float*, const float*)>& f) {
  FBuf ba(kStageA, elements(a));
  FBuf bb(kStageB, elements(b));
  copy_channels_last<true>(a, ba.p, nth);
  copy_channels_last<true>(b, bb.p, nth);
  f(ba.p, bb.p);
}

#endif

}  // namespace FC_ISA
}  // namespace cpu
}  // namespace fastconv

// Weight gradient of float32 1x1 convolutions (groups 1, no padding, any stride) on channels_last
// tensors, AVX2 and AVX-512: a GEMM read straight out of the tensors,
//     dw[k][c] = sum_{pixels t} dy[t][k] * x[in(t)][c],
// where dy[t] is output pixel t's channel row and x[in(t)] the channel row of the input pixel it reads
// ((p*stride_h, q*stride_w) of the same image).
//
// Why: the blocked kernel (conv2d_wgrad_blocked_isa.cpp) copies every 64-pixel block of x and dy into
// gather buffers and sweeps the whole K x C sum matrix once per block. For a 1x1 layer both copies are
// plain copies of rows that are already contiguous, and a 2048 x 512 sum matrix (4 MiB) goes through
// L3 once per 64 pixels: ResNet-50's 1x1 weight gradients at batch 8, channels_last, ran at 0.63-0.85x
// torch (c2048k512 7x7: 9.9 ms against 7.0).
//
// Register tile: 6 rows of k (dy[t][k0..k0+6) broadcast, read in place) x kChunk columns of c (x's
// rows, copied per chunk into a strip: 4 zmm at AVX-512, 2 ymm at AVX2), 24 or 12 accumulators, summed
// over a chunk of up to
// kChunkPixels pixels before they are added into the sum matrix; while one chunk is multiplied the
// next one's rows are prefetched. The chunk's dy rows are walked as runs over which the row advances
// by a constant step (a whole chunk for stride 1 on dense tensors, an output row otherwise).
// Work: output tiles of up to kTileK x kTileC, split further (by the thread count) until there are
// 4 tasks per thread; when the whole K x C fits in few tiles (a 64 x 64 layer), the pixels are also
// cut into up to 8 groups, fixed by the problem, each with its own partial sums that are added in
// group order. Every dw element is one task's sum in a fixed pixel order: bitwise the same for any
// thread count.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "cpu/cl_blocks.h"
#include "cpu/conv2d_wgrad_pointwise.h"
#include "cpu/kernels.h"

namespace fastconv {
namespace cpu {
namespace FC_ISA {

bool wgrad_pointwise_usable(const ConvDesc& d, DType dt, const Tensor4& x, const Tensor4& dy, const Tensor4* relu_y) {
#if FC_CL_BLOCKS
  if (dt != kFloat32 || d.groups != 1 || d.R != 1 || d.S != 1 || d.pad_h != 0 || d.pad_w != 0) return false;
  if (d.N == 0 || d.C < 2 || relu_y != nullptr || x.stride[1] != 1 || dy.stride[1] != 1) return false;
  return algorithm_switch_on("FASTCONV_CPU_WGRAD_POINTWISE");
#else
  (void)d;
  (void)dt;
  (void)x;
  (void)dy;
  (void)relu_y;
  return false;
#endif
}

#if FC_CL_BLOCKS

namespace {

constexpr int64_t kChunkPixels = 96;   // pixels per register pass: a 96 x 64 strip of x is 24 KiB (L1: 32)
constexpr int64_t kTileK = 132;        // output tile rows (22 register tiles of 6)
constexpr int64_t kTileC = 256;        // output tile columns (256 / kChunk register tiles)

// One line of each of the next chunk's rows (x's or dy's, at float offset `off`), fetched into L2
// while the current chunk is multiplied: pixel i's line is requested at its pixel i. Without it the
// chunks' rows arrive from memory while nothing else runs: a 64 x 64 layer at 56x56, batch 8, 2
// threads, reads 12.8 MB (0.54 ms at 23.5 GB/s) beside 0.88 ms of FMAs, and took 1.4-1.7 ms.
struct Prefetch {
  const float* const* rows = nullptr;
  int64_t n = 0, off = 0;
};

// A run of pixels: row pointers that advance by the kernel's constant steps.
struct Run {
  const float* x;
  const float* dy;
  int64_t len;
};

// S[m][v*L + l] (+)= sum over the runs' pixels t of dy_t[k0 + m] * B[t][v*L + l], for m < MR and NV
// vectors of c, of which the last holds `tail` columns (B's lanes past them are zero; S's are not
// written); B: the chunk's packed x strip, kChunk floats per pixel. first: store instead of add.
template <int MR, int NV>
FC_INLINE void pointwise_ukr(const Run* runs, int nruns, int64_t dstep, int64_t k0, const float* __restrict b,
                             int tail, float* s, int64_t lds, bool first, const Prefetch& pf) {
  V acc[MR][NV];
  FC_UNROLL for (int m = 0; m < MR; ++m) FC_UNROLL for (int v = 0; v < NV; ++v) acc[m][v] = Sf::zero();
  int64_t i = 0;
  for (int r = 0; r < nruns; ++r) {
    const float* __restrict a = runs[r].dy + k0;
    for (int64_t t = 0; t < runs[r].len; ++t, ++i, a += dstep, b += kChunk) {
      if (i < pf.n) _mm_prefetch(reinterpret_cast<const char*>(pf.rows[i] + pf.off), _MM_HINT_T1);
      V bv[NV];
      FC_UNROLL for (int v = 0; v < NV; ++v) bv[v] = Sf::load(b + v * L);
      FC_UNROLL for (int m = 0; m < MR; ++m) {
        const V av = Sf::set1(a[m]);
        FC_UNROLL for (int v = 0; v < NV; ++v) acc[m][v] = Sf::fma(av, bv[v], acc[m][v]);
      }
    }
  }
  FC_UNROLL for (int m = 0; m < MR; ++m) {
    float* row = s + m * lds;
    FC_UNROLL for (int v = 0; v < NV - 1; ++v)
      Sf::store(row + v * L, first ? acc[m][v] : Sf::add(acc[m][v], Sf::load(row + v * L)));
    float* last = row + (NV - 1) * L;
    Sf::store_n(last, first ? acc[m][NV - 1] : Sf::add(acc[m][NV - 1], Sf::load_n(last, tail)), tail);
  }
}

template <int MR>
FC_INLINE void pointwise_tile_row(const Run* runs, int nruns, int64_t dstep, int64_t k0, const float* b, int64_t nc,
                                  float* s, int64_t lds, bool first, const Prefetch& pf) {
  const int nv = static_cast<int>(cdiv(nc, L));
  const int tail = static_cast<int>(nc - (nv - 1) * L);
  switch (nv) {
#if defined(__AVX512F__)
    case 4: pointwise_ukr<MR, 4>(runs, nruns, dstep, k0, b, tail, s, lds, first, pf); break;
    case 3: pointwise_ukr<MR, 3>(runs, nruns, dstep, k0, b, tail, s, lds, first, pf); break;
#endif
    case 2: pointwise_ukr<MR, 2>(runs, nruns, dstep, k0, b, tail, s, lds, first, pf); break;
    default: pointwise_ukr<MR, 1>(runs, nruns, dstep, k0, b, tail, s, lds, first, pf); break;
  }
}

// S[k][c] (+)= the chunk's contribution for k in [k_begin, k_end), c in [c_begin, c_end); S row k at
// S + k * lds (column c at + c). B: per-thread scratch for one x strip.
//
// x's rows are copied into strips of kChunk columns, pixel after pixel, first: read in place, rows C
// floats apart fall into few L1 sets when C*4 is a multiple of 1 KiB (256 channels: 16 of the 64 sets),
// so every k block re-read its strip from L2 (c256k128 56x56 at batch 8, 2 threads: 11.7 ms in place,
// 10.5 packed; torch 8.6-9.2). dy's 6 broadcasts per pixel stay in place: packing them too cost more
// than it saved (13.2 ms).
// next_x, next_dy: the next chunk's n_next row pointers (prefetched, a line per microkernel call).
void pointwise_chunk(const Run* runs, int nruns, int64_t xstep, int64_t dstep, int64_t k_begin, int64_t k_end,
                     int64_t c_begin, int64_t c_end, float* B, float* S, int64_t lds, bool first,
                     const float* const* next_x, const float* const* next_dy, int64_t n_next) {
  const int64_t x_lines = cdiv(c_end - c_begin, L), dy_lines = cdiv(k_end - k_begin, L);
  int64_t call = 0;
  for (int64_t c0 = c_begin; c0 < c_end; c0 += kChunk) {
    const int64_t nc = std::min<int64_t>(kChunk, c_end - c0);
    float* o = B;
    for (int r = 0; r < nruns; ++r) {
      const float* xr = runs[r].x + c0;
      for (int64_t t = 0; t < runs[r].len; ++t, xr += xstep, o += kChunk) {
        copy_n(o, xr, nc);
        zero_n(o + nc, round_up(nc, L) - nc);  // the last vector's lanes past nc
      }
    }
    for (int64_t k0 = k_begin; k0 < k_end; k0 += kMR, ++call) {
      Prefetch pf;
      if (call < x_lines)
        pf = Prefetch{next_x, n_next, c_begin + call * L};
      else if (call < x_lines + dy_lines)
        pf = Prefetch{next_dy, n_next, k_begin + (call - x_lines) * L};
      float* s = S + k0 * lds + c0;
      switch (std::min<int64_t>(kMR, k_end - k0)) {
        case 6: pointwise_tile_row<6>(runs, nruns, dstep, k0, B, nc, s, lds, first, pf); break;
        case 5: pointwise_tile_row<5>(runs, nruns, dstep, k0, B, nc, s, lds, first, pf); break;
        case 4: pointwise_tile_row<4>(runs, nruns, dstep, k0, B, nc, s, lds, first, pf); break;
        case 3: pointwise_tile_row<3>(runs, nruns, dstep, k0, B, nc, s, lds, first, pf); break;
        case 2: pointwise_tile_row<2>(runs, nruns, dstep, k0, B, nc, s, lds, first, pf); break;
        default: pointwise_tile_row<1>(runs, nruns, dstep, k0, B, nc, s, lds, first, pf); break;
      }
    }
  }
}

}  // namespace

void wgrad_pointwise(const ConvDesc& d, const Tensor4& dy, const Tensor4& x, const Tensor4& dw, int nth) {
  const int64_t C = d.C, K = d.K, P = d.P, Q = d.Q, pixels = d.N * P * Q;
  const float* xp = static_cast<const float*>(x.data);
  const float* dp = static_cast<const float*>(dy.data);
  // Steps between neighbouring output pixels of a row, and the offsets of pixel (n, p, q).
  const int64_t xstep = d.stride_w * x.stride[3], dstep = dy.stride[3];
  const auto x_at = [&](int64_t n, int64_t p, int64_t q) {
    return xp + n * x.stride[0] + p * d.stride_h * x.stride[2] + q * xstep;
  };
  const auto dy_at = [&](int64_t n, int64_t p, int64_t q) { return dp + n * dy.stride[0] + p * dy.stride[2] + q * dstep; };

  // Output tiles: at most kTileK x kTileC, balanced (rows a multiple of kMR, columns of kChunk), cut
  // further (rows first: narrower rows re-read x, the larger operand of the deep layers, less often
  // than narrower columns re-read dy) while there are fewer than 4 tasks per thread. Pixel groups
  // (fixed by the problem): enough for 8 tasks with the full-size tiles, each of at least 1024 pixels.
  int64_t kt = cdiv(K, kTileK), ct = cdiv(C, kTileC);
  const int64_t groups = std::max<int64_t>(1, std::min<int64_t>({8, cdiv(8, kt * ct), pixels / 1024}));
  while (groups * kt * ct < 4 * nth) {
    if (cdiv(K, 2 * kt) >= 2 * kMR)
      kt *= 2;
    else if (cdiv(C, 2 * ct) >= kChunk)
      ct *= 2;
    else
      break;
  }
  const int64_t tk = round_up(cdiv(K, kt), kMR), tc = round_up(cdiv(C, ct), kChunk);
  kt = cdiv(K, tk);
  ct = cdiv(C, tc);
  const int64_t per_group = cdiv(pixels, groups);
  // One group writing a dense [K][C] dw: the sums go straight there; else into [g][K][C] partial sums.
  const bool direct = groups == 1 && dw.stride[1] == 1 && dw.stride[0] == C;
  FBuf Sb(kSums, direct ? 1 : groups * K * C);
  float* S = direct ? static_cast<float*>(dw.data) : Sb.p;
  FBuf Bb(kTileV, nth * kChunkPixels * kChunk);

#pragma omp parallel for num_threads(nth) schedule(dynamic, 1)
  for (int64_t task = 0; task < groups * kt * ct; ++task) {
    const int64_t g = task / (kt * ct), kb = (task / ct) % kt, cb = task % ct;
    const int64_t k_begin = kb * tk, k_end = std::min(K, k_begin + tk);
    const int64_t c_begin = cb * tc, c_end = std::min(C, c_begin + tc);
    float* Sg = S + g * K * C;
    const int64_t begin = g * per_group, end = std::min(pixels, begin + per_group);
    float* B = Bb.p + thread_id() * kChunkPixels * kChunk;
    Run runs[kChunkPixels];
    const float* rows[2][2][kChunkPixels];  // [chunk parity][x, dy][pixel]
    const auto fill_rows = [&](int64_t t0, int64_t t1, const float** xr, const float** dr) {
      int64_t n = t0 / (P * Q), p = (t0 / Q) % P, q = t0 % Q;
      for (int64_t i = 0; i < t1 - t0; ++i) {
        xr[i] = x_at(n, p, q);
        dr[i] = dy_at(n, p, q);
        if (++q == Q) {
          q = 0;
          if (++p == P) {
            p = 0;
            ++n;
          }
        }
      }
    };
    fill_rows(begin, std::min(end, begin + kChunkPixels), rows[0][0], rows[0][1]);
    for (int64_t t0 = begin, parity = 0; t0 < end; t0 += kChunkPixels, parity ^= 1) {
      const int64_t t1 = std::min(end, t0 + kChunkPixels), t2 = std::min(end, t1 + kChunkPixels);
      const float** xr = rows[parity][0];
      const float** dr = rows[parity][1];
      fill_rows(t1, t2, rows[parity ^ 1][0], rows[parity ^ 1][1]);
      // The chunk's runs: a run goes on where both rows continue one step after the previous pixel.
      int nruns = 0;
      for (int64_t i = 0; i < t1 - t0; ++i) {
        Run* last = nruns ? &runs[nruns - 1] : nullptr;
        if (last && last->x + last->len * xstep == xr[i] && last->dy + last->len * dstep == dr[i])
          ++last->len;
        else
          runs[nruns++] = Run{xr[i], dr[i], 1};
      }
      pointwise_chunk(runs, nruns, xstep, dstep, k_begin, k_end, c_begin, c_end, B, Sg, C, t0 == begin,
                      rows[parity ^ 1][0], rows[parity ^ 1][1], t2 - t1);
    }
  }
  if (direct) return;
  // dw[k][c] = S_0 + S_1 + ... in group order.
  float* out = static_cast<float*>(dw.data);
#pragma omp parallel for num_threads(nth) schedule(static)
  for (int64_t k = 0; k < K; ++k)
    for (int64_t c = 0; c < C; ++c) {
      float v = S[k * C + c];
      for (int64_t g = 1; g < groups; ++g) v += S[g * K * C + k * C + c];
      out[k * dw.stride[0] + c * dw.stride[1]] = v;
    }
}

#else

void wgrad_pointwise(const ConvDesc&, const Tensor4&, const Tensor4&, const Tensor4&, int) {
  throw std::logic_error("fastconv: the pointwise weight gradient needs the avx2 or avx512 build");
}

#endif

}  // namespace FC_ISA
}  // namespace cpu
}  // namespace fastconv

// Weight gradient of float32 convolutions whose filter rows are short runs of input (an RGB stem: a
// 3x3 filter on 3 channels reads 9 consecutive floats of a channels_last row per tap row), AVX-512:
//     S[r][j][k] = sum_{pixels t} X_r[t][j] D[t][k],   dw[k][c][r][s] = S[r][s*C + c][k],
// with D[t] = dy's channel row of output pixel t (ReLU-masked for the fused op) and X_r[t] the S*C
// floats of filter row r of pixel t's window (zeros in the padding).
//
// Why: the blocked kernel (conv2d_wgrad_blocked_isa.cpp) gathers every 64-pixel block's 27-float
// im2col rows and D rows into buffers, then runs 6 x 64 register tiles over them; for the 3-channel
// stems of MobileNet / ShuffleNet / EfficientNet / RegNet (3 -> 16..32, 3x3 s2, 224x224, batch 8,
// 2 threads) that took 3.0 ms against torch's 0.9-1.2. Here the window rows are read in place
// (broadcast one float at a time) against D rows held in registers: per pixel and filter row, NV
// vector loads of dy, S*C broadcasts and S*C*NV multiply-adds, all accumulators (S*C x NV <= 24) in
// registers across a 64-pixel chunk, whose dy rows stay in L1 while the R filter rows take turns.
//
// Work: pixels in (n, p, q) order cut into up to 8 groups fixed by the problem (never by the thread
// count), times chunks of 32 output channels; each group has its own S_g, the S_g are summed in group
// order: bitwise the same for any thread count. The bias gradient is left to the caller.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "cpu/cl_blocks.h"
#include "cpu/conv2d_wgrad_rows.h"
#include "cpu/kernels.h"

namespace fastconv {
namespace cpu {
namespace FC_ISA {

#if defined(__AVX512F__)
namespace {
constexpr int64_t kRowsMaxRun = 12;     // S*C floats of a filter row, one accumulator row each
constexpr int64_t kRowsChunk = 64;      // pixels whose dy rows stay in L1 while the filter rows take turns
constexpr int64_t kRowsGroupMin = 4096;  // pixels per group at least (each group writes R*run*Kp sums)
}  // namespace
#endif

bool wgrad_rows_usable(const ConvDesc& d, DType dt) {
#if defined(__AVX512F__)
  // C >= 2 as the blocked kernel's: one channel (a 1 x K x 1 x 1 layer's huge NCHW dy) keeps the GEMM
  // kernels, which read dy in place instead of staging it.
  if (dt != kFloat32 || d.groups != 1 || d.dil_w != 1 || d.N == 0 || d.C < 2 || d.C * d.S > kRowsMaxRun)
    return false;
  return algorithm_switch_on("FASTCONV_CPU_WGRAD_ROWS");
#else
  (void)d;
  (void)dt;
  return false;
#endif
}

#if defined(__AVX512F__)

namespace {

// S rows [r][j] (j < RUN, NV vectors of k from k0; row stride Kp, filter row r at + r*RUN*Kp) +=, or =
// when first, the contribution of pixels [t0, t1) of one chunk. nl: valid lanes of the last vector.
template <int RUN, int NV>
void rows_chunk(const ConvDesc& d, const Src& xv, const Src& gv, int64_t t0, int64_t t1, int64_t k0, int nl,
                float* S, int64_t Kp, bool first) {
  const int64_t C = d.C, PQ = d.P * d.Q;
  const bool dense_row = xv.s3 == C;  // a filter row's S taps are one run of S*C floats
  alignas(64) float tmp[kRowsMaxRun];
  for (int64_t r = 0; r < d.R; ++r) {
    float* Sr = S + r * RUN * Kp + k0;
    V acc[RUN][NV];
    FC_UNROLL for (int j = 0; j < RUN; ++j) FC_UNROLL for (int v = 0; v < NV; ++v)
        acc[j][v] = first ? Sf::zero() : Sf::load(Sr + j * Kp + v * L);
    int64_t n = t0 / PQ, p = (t0 / d.Q) % d.P, q = t0 % d.Q;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t h = p * d.stride_h - d.pad_h + r * d.dil_h;
      if (h >= 0 && h < d.H) {
        const float* dyp = gv.p + n * gv.s0 + p * gv.s2 + q * gv.s3 + k0;
        V dv[NV];
        FC_UNROLL for (int v = 0; v < NV; ++v) dv[v] = v + 1 < NV ? Sf::load(dyp + v * L) : Sf::load_n(dyp + v * L, nl);
        const int64_t w0 = q * d.stride_w - d.pad_w;
        const float* xrow = xv.p + n * xv.s0 + h * xv.s2;
        const float* src;
        if (dense_row && w0 >= 0 && w0 + d.S <= d.W) {
          src = xrow + w0 * C;
        } else {  // border columns (or a non-dense row): the window row through zeros
          for (int64_t s = 0; s < d.S; ++s)
            for (int64_t c = 0; c < C; ++c) {
              const int64_t w = w0 + s;
              tmp[s * C + c] = (w >= 0 && w < d.W) ? xrow[w * xv.s3 + c] : 0.f;
            }
          src = tmp;
        }
        FC_UNROLL for (int j = 0; j < RUN; ++j) {
          const V b = Sf::set1(src[j]);
          FC_UNROLL for (int v = 0; v < NV; ++v) acc[j][v] = Sf::fma(b, dv[v], acc[j][v]);
        }
      }
      if (++q == d.Q) {
        q = 0;
        if (++p == d.P) {
          p = 0;
          ++n;
        }
      }
    }
    FC_UNROLL for (int j = 0; j < RUN; ++j) FC_UNROLL for (int v = 0; v < NV; ++v) Sf::store(Sr + j * Kp + v * L, acc[j][v]);
  }
}

template <int RUN>
void rows_chunk_nv(const ConvDesc& d, const Src& xv, const Src& gv, int64_t t0, int64_t t1, int64_t k0, int nv,
                   int nl, float* S, int64_t Kp, bool first) {
  if (nv == 2)
    rows_chunk<RUN, 2>(d, xv, gv, t0, t1, k0, nl, S, Kp, first);
  else
    rows_chunk<RUN, 1>(d, xv, gv, t0, t1, k0, nl, S, Kp, first);
}

using ChunkFn = void (*)(const ConvDesc&, const Src&, const Src&, int64_t, int64_t, int64_t, int, int, float*, int64_t,
                         bool);

ChunkFn chunk_fn(int64_t run) {
  switch (run) {
    case 1: return rows_chunk_nv<1>;
    case 2: return rows_chunk_nv<2>;
    case 3: return rows_chunk_nv<3>;
    case 4: return rows_chunk_nv<4>;
    case 5: return rows_chunk_nv<5>;
    case 6: return rows_chunk_nv<6>;
    case 7: return rows_chunk_nv<7>;
    case 8: return rows_chunk_nv<8>;
    case 9: return rows_chunk_nv<9>;
    case 10: return rows_chunk_nv<10>;
    case 11: return rows_chunk_nv<11>;
    default: return rows_chunk_nv<12>;
  }
}

}  // namespace

void wgrad_rows(const ConvDesc& d, const Tensor4& dy, const Tensor4& x, const Tensor4* relu_y, const Tensor4& dw,
                int nth) {
  const int64_t C = d.C, K = d.K, Kp = round_up(K, L), run = d.S * C;
  const int64_t pixels = d.N * d.P * d.Q;
  StagedSrc xs(x, nullptr, kStageA, nth), gs(dy, relu_y, kStageB, nth);
  const int64_t groups = std::max<int64_t>(1, std::min<int64_t>(8, pixels / kRowsGroupMin));
  const int64_t per_group = round_up(cdiv(pixels, groups), kRowsChunk);
  const int64_t ngroups = cdiv(pixels, per_group);  // every group non-empty (its S_g is written)
  const int64_t kchunks = cdiv(Kp, 2 * L);
  const int64_t s_floats = d.R * run * Kp;
  FBuf Sb(kSums, ngroups * s_floats);
  const ChunkFn fn = chunk_fn(run);
  const Src& xv = xs.src;
  const Src& gv = gs.src;
#pragma omp parallel for num_threads(nth) schedule(dynamic, 1)
  for (int64_t task = 0; task < ngroups * kchunks; ++task) {
    const int64_t g = task / kchunks, k0 = (task % kchunks) * 2 * L;
    const int nv = static_cast<int>(std::min<int64_t>(2, (Kp - k0) / L));
    const int nl = static_cast<int>(std::min<int64_t>(L, K - (k0 + (nv - 1) * L)));
    const int64_t begin = g * per_group, end = std::min(pixels, begin + per_group);
    for (int64_t t0 = begin; t0 < end; t0 += kRowsChunk)
      fn(d, xv, gv, t0, std::min(end, t0 + kRowsChunk), k0, nv, nl, Sb.p + g * s_floats, Kp, t0 == begin);
  }
  // S[r][s*C + c][k] is row (r*S + s)*C + c, the blocked kernel's order.
  write_dw_from_sums(d, Sb.p, Kp, ngroups, s_floats, dw, nth);
}

#else

void wgrad_rows(const ConvDesc&, const Tensor4&, const Tensor4&, const Tensor4*, const Tensor4&, int) {
  throw std::logic_error("fastconv: the filter-row weight gradient needs the avx512 build");
}

#endif

}  // namespace FC_ISA
}  // namespace cpu
}  // namespace fastconv

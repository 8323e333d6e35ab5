// conv2d forward / dgrad / wgrad on the CPU: the path chooser and the router to the algorithm files
// (conv2d_paths.h lists them).
//
// One engine, conv_run(), computes a generalized correlation
//     y[n, g*Kg+k, p, q] = act( bias + sum_{c<Cg, r<R, s<S} w(g,k,c,r,s) * x~[n, g*Cg+c, p*sh-ph+r*dh, q*sw-pw+s*dw] )
// where pads and dilations may be negative, w() is a strided weight view and x~ is the input read
// through its strides, zero outside [0,H)x[0,W), optionally masked (x~ = 0 where mask <= 0); it runs
// one of the forward algorithms (plan_engine picks by the output layout and the groups).
// The forward pass is conv_run() on (x, w). dgrad is conv_run() too: for every residue class
// (a, b) of dx's rows/columns modulo the stride, only the taps r with (a + ph - r*dh) % sh == 0 reach
// the dx sub-grid h = a + sh*i, and for those taps p = i + (a+ph-r0*dh)/sh - j*lcm(sh,dh)/sh
// (r = r0 + j*lcm/dh): a stride-1 correlation of dy with negative dilation and swapped K/C weight
// strides. So dgrad costs the forward's FLOPs (no zero-inserted dy, no col2im scatter, no atomics)
// and the ReLU mask of the fused op is applied while packing dy.
//
// The path chooser: choose_fwd, dgrad_route (+ plan_engine for each residue class) and wgrad_algo
// decide every call; conv2d_path() names what they decide for Python (fastconv._C.conv2d_path) and
// tests, from the same functions, so the name is what runs.
//
// Determinism: every output element is produced by exactly one task, with a reduction order that
// depends only on the problem (kc blocking, fixed reduction chunks), never on the thread count or on
// scheduling; no atomics. Results are therefore bitwise identical for any nthreads (per ISA level).
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "cpu/conv2d_dgrad_taps.h"
#include "cpu/conv2d_paths.h"
#include "cpu/conv2d_wgrad_blocked.h"
#include "cpu/conv2d_wgrad_pointwise.h"
#include "cpu/conv2d_wgrad_rows.h"
#include "cpu/conv2d_winograd.h"

namespace fastconv {
namespace cpu {
namespace FC_ISA {
namespace {

// One conv_run problem after the pointwise flattening, with the algorithm that computes it.
template <typename T>
struct EnginePlan {
  ConvAlgo algo;
  Geo g;
  In4<T> x, m;
  Out4<T> y;
};

// 1x1, stride 1, no padding, dense planes: one flat row of H*W pixels (longer packing runs). Only the
// pixel geometry changes, never what the weights pack into.
template <typename T>
void flatten_pointwise(Geo& g, In4<T>& x, In4<T>& m, Out4<T>& y) {
  if (g.R == 1 && g.S == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0 && g.P == g.H && g.Q == g.W &&
      x.s2 == g.W * x.s3 && y.s2 == g.Q * y.s3 && (m.p == nullptr || m.s2 == g.W * m.s3)) {
    g.W = g.Q = g.H * g.W;
    g.H = g.P = 1;
    x.s2 = g.W * x.s3;
    y.s2 = g.Q * y.s3;
    m.s2 = g.W * m.s3;
  }
}

// The engine's algorithm: depthwise loops for one input channel per group, else implicit GEMM along
// the output's contiguous dimension; NCHW outputs take the direct (window) kernel when its plane
// width Wp wastes at most 1/8 of the lanes.
template <typename T>
EnginePlan<T> plan_engine(const Geo& g0, In4<T> x, In4<T> m, Out4<T> y) {
  EnginePlan<T> e{ConvAlgo::kNone, g0, x, m, y};
  if (g0.N == 0 || g0.P <= 0 || g0.Q <= 0 || g0.Kout == 0) return e;
  flatten_pointwise(e.g, e.x, e.m, e.y);
  const Geo& g = e.g;
  const bool y_cl = (e.y.s1 == 1 && g.Kout > 1);
  if (g.Cg == 1) {
    const bool dw_cl = g.Kg == 1 && g.G > 1 && y_cl && e.x.s1 == 1 && (e.m.p == nullptr || e.m.s1 == 1);
    e.algo = dw_cl ? ConvAlgo::kDepthwiseNhwc : ConvAlgo::kDepthwiseNchw;
  } else if (y_cl && e.x.s1 == 1 && (e.m.p == nullptr || e.m.s1 == 1) && grouped_nhwc_usable<T>(g)) {
    e.algo = ConvAlgo::kGroupedNhwc;
  } else if (y_cl) {
    e.algo = ConvAlgo::kIgemmNhwc;
  } else {
    const int64_t Wp = g.Q + cdiv(std::abs((g.S - 1) * g.dw), g.sw);  // upper bound of the plane width
    const bool direct = g.sh <= 2 && g.sw <= 2 && Wp <= 1024 && g.Q * 8 >= Wp * 7;
    e.algo = direct ? ConvAlgo::kIgemmNchwDirect : ConvAlgo::kIgemmNchwPacked;
  }
  return e;
}

// pack: the forward's cached weight pack (conv2d_fwd_pack_info says which), or null.
template <typename T>
void run_engine(const EnginePlan<T>& e, WV<T> w, const T* bias, const Epi& ep, int nth, WeightPack* pack) {
  switch (e.algo) {
    case ConvAlgo::kDepthwiseNhwc:
      return conv_direct_cl(e.g, e.x, e.m, w, bias, e.y, ep, nth);
    case ConvAlgo::kDepthwiseNchw:
      return conv_direct_plane(e.g, e.x, e.m, w, bias, e.y, ep, nth);
    case ConvAlgo::kIgemmNhwc:
      return igemm_nhwc_fwd(e.g, e.x, e.m, w, bias, e.y, ep, nth, pack);
    case ConvAlgo::kGroupedNhwc:
      return grouped_nhwc_fwd(e.g, e.x, e.m, w, bias, e.y, ep, nth, pack);
    case ConvAlgo::kIgemmNchwDirect:
    case ConvAlgo::kIgemmNchwPacked:
      return igemm_nchw_fwd(e.g, e.x, e.m, w, bias, e.y, ep, nth, pack, e.algo == ConvAlgo::kIgemmNchwDirect);
    default:
      return;  // kNone: an empty problem
  }
}

template <typename T>
void conv_run(const Geo& g0, In4<T> x, In4<T> m, WV<T> w, const T* bias, Out4<T> y, const Epi& ep, int nth,
              WeightPack* pack = nullptr) {
  run_engine(plan_engine(g0, x, m, y), w, bias, ep, nth, pack);
}

// A dense NCHW tensor of t's sizes at buf.
inline Tensor4 dense_nchw(const Tensor4& t, void* buf) {
  Tensor4 r = t;
  r.data = buf;
  r.stride = {t.size[1] * t.size[2] * t.size[3], t.size[2] * t.size[3], t.size[3], 1};
  return r;
}

// A dense channels_last tensor of t's sizes at buf.
inline Tensor4 dense_channels_last(const Tensor4& t, void* buf) {
  Tensor4 r = t;
  r.data = buf;
  r.stride = {t.size[1] * t.size[2] * t.size[3], 1, t.size[3] * t.size[1], t.size[1]};
  return r;
}

// ---------------------------------------------------------------------------------------------
// Forward.

// NCHW float32 layers that run faster through the channels_last engine (conv_cl) than through the NCHW
// kernels, counting a channels_last copy of the input and the transpose of the output back to NCHW:
// - strided spatial filters on wide channels, where the input is 4x the output and conv_cl's long
//   register-resident sums win (2 threads: 32x128x32x32 -> 128 3x3 s2 8.4-9.2 ms staged against 10.3
//   direct). 64 channels gain nothing, and a 1x1 stride 2 or the 7x7 s2 RGB stem is slower staged;
// - small maps of wide layers (P*Q <= kStageSmallMap: ResNet's 14x14 and 7x7 stages at any batch), where
//   the NCHW kernels' vectors along a few output columns waste lanes, and few output pixels in all
//   (N*P*Q <= kStageFewPixels: 28x28 at batch 1), where the NCHW kernels split too little work over the
//   threads: 1x512x28x28 1x1 -> 128 runs 0.69 ms staged against 1.52 (torch 0.83), but 2x128x28x28
//   1x1 -> 512 1.56 against 1.20, and 56x56 at batch 1 gains nothing (/tmp A/B, steady allocator);
// - one output row of one filter row (a conv1d on (N, C, 1, L) views) on wide channels, where the NCHW
//   kernels run 0.68-0.92x torch and conv_cl 1.06-1.60x (2 threads, fastconv bench --table conv1d:
//   8x64x4096 k3 7.6 ms NCHW against 4.2 ms channels_last, torch 5.2).
// At the AVX2 level (float32, the same bounds) the NCHW kernels trail conv_cl further, so every spatial
// filter on >= 64 channels each way stages too. 2 threads, AMD EPYC Zen 3, ms staged against the NCHW
// kernels: 32x256x14x14 3x3 51.6 vs 64.6, 32x64x56x56 3x3 57.3 vs 66.7, 32x128x32x32 3x3 s2 19.9 vs
// 23.4, 8x128x28x28 3x3 14.0 vs 13.8; the small-map bounds hold there as well (1x512x7x7 1x1 -> 2048
// 0.89 vs 2.88, 1x256x14x14 3x3 1.87 vs 4.99); 32x64x32x32 1x1 (3.6 vs 3.0) and the RGB stem (1.34 vs
// 1.14) stay NCHW.
constexpr int64_t kStageSmallMap = 256;
constexpr int64_t kStageFewPixels = 1024;
constexpr int64_t kStageDgradMap = 64;  // the input gradient's small-map bound (dgrad_route)
inline bool stage_nchw_forward(const Geo& g, const Tensor4& x, const Tensor4& y) {
  if (g.N == 0 || g.P <= 0 || g.Q <= 0 || x.stride[1] == 1 || y.stride[1] == 1 || g.G != 1 || g.dh != 1 ||
      g.dw != 1)
    return false;
  const bool strided_wide = g.Cg >= 128 && g.R * g.S > 1 && g.sh >= 2 && g.sw >= 2;
  const bool small_map =
      (g.P * g.Q <= kStageSmallMap || g.N * g.P * g.Q <= kStageFewPixels) && g.Cg >= 64 && g.Kg >= 64;
  const bool one_row = g.H == 1 && g.P == 1 && g.R == 1 && g.Cg >= 64 && g.Kg >= 64;
  const bool spatial_avx2 = kIsaLevel == 1 && g.R * g.S > 1 && g.Cg >= 64 && g.Kg >= 64;
  return strided_wide || small_map || one_row || spatial_avx2;
}

// NCHW narrow-group layers (grouped_nhwc_usable) on small maps run the channels_last grouped kernel on
// staged copies, where the NCHW kernels' vectors along 7 output columns waste most lanes (2 threads,
// batch 8, RegNet-Y-400MF's c440 7x7 3x3 g55: 0.28 ms staged against 1.43, torch 0.23). From 14x14 up
// the copies cost what the kernel saves (c208 14x14 g26 0.49 ms either way, c104 28x28 1.01 staged
// against 0.89).
inline bool stage_grouped_nchw(const Geo& g, const Tensor4& x, const Tensor4& y) {
  return g.N > 0 && g.P > 0 && g.Q > 0 && x.stride[1] != 1 && y.stride[1] != 1 && grouped_nhwc_usable<float>(g) &&
         (g.P * g.Q <= kStageDgradMap || g.N * g.P * g.Q <= kStageFewPixels);
}

// The general epilogue over a whole output y (N x Kout x P x Q, any strides), one (n, k) plane per task.
template <typename T>
void epilogue_pass(const Epi& ep, const Out4<T>& y, const Geo& g, int nth) {
#pragma omp parallel for num_threads(nth) schedule(static)
  for (int64_t nk = 0; nk < g.N * g.Kout; ++nk)
    epi_fixup<T>(ep, y.p + (nk / g.Kout) * y.s0 + (nk % g.Kout) * y.s1, y.s3, g.Q, g.P, y.s2);
}

template <typename T>
struct FwdChoice {
  ConvAlgo algo;
  EnginePlan<T> engine;  // for the engine's algorithms
  bool stage_x = false;  // the engine reads a channels_last copy of x (stage_depthwise_input)
};

// A depthwise layer of an NCHW x and a channels_last output (ShuffleNetV2's stride-2 units, whose input
// comes out of a channel shuffle in NCHW while the weight is channels_last) runs the channels_last
// kernel on a channels_last copy of x: the NCHW kernel's vectors run along an output row and scatter
// into y's channel-strided pixels. 2 threads, batch 8, 3x3 s2, counting the copy: 232 channels at 14x14
// 0.53 ms -> 0.12 (torch 0.18), 116 at 28x28 0.41 -> 0.14 (torch 0.34).
template <typename T>
bool stage_depthwise_input(const Geo& g, const Tensor4& x, const Tensor4& y) {
  return std::is_same_v<T, float> && kIsaLevel == 2 && g.Cg == 1 && g.Kg == 1 && g.G >= Simd<T>::L &&
         x.stride[1] != 1 && y.stride[1] == 1 && g.H * g.W > 1;
}

// The forward's path: Winograd (3x3 stride 1 float32, conv2d_winograd.h decides), the staged NCHW
// engine, or plan_engine's choice.
template <typename T>
FwdChoice<T> choose_fwd(const ConvDesc& d, DType dt, const Tensor4& x, const Tensor4& y) {
  const Geo g = geo_of(d);
  FwdChoice<T> c{ConvAlgo::kNone, plan_engine<T>(g, in_view<T>(x), In4<T>{}, out_view<T>(y))};
  if (c.engine.algo == ConvAlgo::kNone) return c;
  if (winograd_usable(d, dt)) {
    c.algo = ConvAlgo::kWinograd;
  } else if (std::is_same_v<T, float> && kIsaLevel >= 1 && stage_nchw_forward(g, x, y)) {
    c.algo = ConvAlgo::kIgemmNhwcStaged;
  } else if (std::is_same_v<T, float> && kIsaLevel == 2 && stage_grouped_nchw(g, x, y)) {
    c.algo = ConvAlgo::kGroupedNhwcStaged;
  } else if (c.engine.algo == ConvAlgo::kDepthwiseNchw && stage_depthwise_input<T>(g, x, y)) {
    c.engine = plan_engine<T>(g, in_view<T>(dense_channels_last(x, nullptr)), In4<T>{}, out_view<T>(y));
    c.algo = c.engine.algo;
    c.stage_x = true;
  } else {
    c.algo = c.engine.algo;
  }
  return c;
}

template <typename T>
void fwd_impl(const ConvDesc& d, DType dt, const Tensor4& x, const Tensor4& w, const void* bias, const Tensor4& y,
              const Epi& ep, WeightPack* pack, int nth) {
  const FwdChoice<T> c = choose_fwd<T>(d, dt, x, y);
  if (c.algo == ConvAlgo::kWinograd)
    return winograd_fwd(d, x, w, static_cast<const float*>(bias), y, ep, pack, nth);
  const Geo g = geo_of(d);
  const WV<T> wv{static_cast<const T*>(w.data), g.Kg * w.stride[0], w.stride[0], w.stride[1], w.stride[2],
                 w.stride[3]};
  if constexpr (std::is_same_v<T, float>) {
    if (c.algo == ConvAlgo::kIgemmNhwcStaged || c.algo == ConvAlgo::kGroupedNhwcStaged) {
      const auto staged = c.algo == ConvAlgo::kIgemmNhwcStaged ? igemm_nhwc_staged_nchw_fwd
                                                                 : grouped_nhwc_staged_nchw_fwd;
      if (!ep.has_res) return staged(g, x, wv, static_cast<const float*>(bias), y, ep, nth, pack);
      // The residual sits at y's (NCHW) offsets, not at those of the channels_last buffer: the
      // activation and residual go over y after the transpose, while it is in the caches.
      staged(g, x, wv, static_cast<const float*>(bias), y, Epi{}, nth, pack);
      return epilogue_pass<float>(ep, out_view<float>(y), g, nth);
    }
    if (c.stage_x) {
      return with_channels_last_copy(x, nth, [&](const float* xs) {
        const Tensor4 xc = dense_channels_last(x, const_cast<float*>(xs));
        run_engine(plan_engine<T>(g, in_view<T>(xc), In4<T>{}, out_view<T>(y)), wv, static_cast<const T*>(bias), ep,
                   nth, pack);
      });
    }
  }
  run_engine(c.engine, wv, static_cast<const T*>(bias), ep, nth, pack);
}

enum PackFamily : int64_t { kPackWinograd = 1, kPackClPanels = 2, kPackPixPanels = 3, kPackGroupBlocks = 4 };

// PackInfo::kind: family, microkernel width (NR columns or MR rows), dtype, ISA level and groups (the
// same weight tensor used with another groups count packs differently), each in its own digits.
inline int64_t pack_kind(PackFamily family, int64_t width, DType dt, int64_t groups) {
  return family + 8 * (width + 256 * (dt + 2 * (kIsaLevel + 4 * groups)));
}

// The pack an engine of algorithm `algo` keeps for geometry g (the forward's, or an input-gradient
// correlation's with the channel roles swapped); {} for the engines that use none.
template <typename T>
PackInfo engine_pack_info(ConvAlgo algo, const Geo& g, DType dt, int64_t groups) {
  constexpr int64_t floats_per = sizeof(T) / sizeof(float);
  switch (algo) {
    case ConvAlgo::kIgemmNhwc:
    case ConvAlgo::kIgemmNhwcStaged: {
      int64_t count = 0, nr = 0;
      igemm_nhwc_pack_size<T>(g, count, nr);
      return PackInfo{count * floats_per, pack_kind(kPackClPanels, nr, dt, groups)};
    }
    case ConvAlgo::kIgemmNchwDirect:
    case ConvAlgo::kIgemmNchwPacked:
      return PackInfo{pix_weight_floats<kPixMR>(g) * floats_per, pack_kind(kPackPixPanels, kPixMR, dt, groups)};
    case ConvAlgo::kGroupedNhwc:
    case ConvAlgo::kGroupedNhwcStaged:
      return PackInfo{grouped_nhwc_pack_size<T>(g) * floats_per, pack_kind(kPackGroupBlocks, Simd<T>::L, dt, groups)};
    default:
      return {};
  }
}

template <typename T>
PackInfo fwd_pack_info(const ConvDesc& d, DType dt, const Tensor4& x, const Tensor4& y) {
  const FwdChoice<T> c = choose_fwd<T>(d, dt, x, y);
  if (c.algo == ConvAlgo::kWinograd)
    return PackInfo{winograd_pack_floats(d, dt, WinogradPass::kForward), pack_kind(kPackWinograd, 0, dt, d.groups)};
  const bool grouped = c.algo == ConvAlgo::kGroupedNhwc || c.algo == ConvAlgo::kGroupedNhwcStaged;
  return engine_pack_info<T>(c.algo, grouped ? geo_of(d) : c.engine.g, dt, d.groups);
}

// ---------------------------------------------------------------------------------------------
// Input gradient.

// dgrad's correlation for the residue class (a, b) of dx's rows and columns (see the header):
// dx[n, c, a + sh*i, b + sw*j] = sum_{k, jr, js} w[k][c][r0 + jr*rstep][s0 + js*sstep]
//                                * dy[n, k, i + (a+ph-r0*dh)/sh - jr*(rstep*dh/sh), ...]
// taps == false: no tap reaches the class (its dx elements are zeros).
struct ResidueClass {
  bool taps;
  Geo g;
  int64_t r0, rstep, s0, sstep;
};

inline ResidueClass residue_class(const ConvDesc& d, int64_t a, int64_t b) {
  const int64_t G = d.groups, Cg = d.C / G, Kg = d.K / G;
  const int64_t Hs = cdiv(d.H - a, d.stride_h), Ws = cdiv(d.W - b, d.stride_w);
  ResidueClass rc{};
  int64_t Rn, Sn;
  residue_taps(a, d.pad_h, d.dil_h, d.stride_h, d.R, rc.r0, rc.rstep, Rn);
  residue_taps(b, d.pad_w, d.dil_w, d.stride_w, d.S, rc.s0, rc.sstep, Sn);
  rc.taps = Rn > 0 && Sn > 0;
  if (rc.taps)
    rc.g = Geo{d.N, d.K, d.P, d.Q, d.C, Hs, Ws, Rn, Sn, G, Kg, Cg, 1, 1,
               -((a + d.pad_h - rc.r0 * d.dil_h) / d.stride_h), -((b + d.pad_w - rc.s0 * d.dil_w) / d.stride_w),
               -(rc.rstep * d.dil_h / d.stride_h), -(rc.sstep * d.dil_w / d.stride_w)};
  else
    rc.g = Geo{d.N, d.K, d.P, d.Q, d.C, Hs, Ws, 0, 0, G, Kg, Cg, 1, 1, 0, 0, 1, 1};
  return rc;
}

// dx's view of the residue class (a, b): rows a + sh*i, columns b + sw*j.
template <typename T>
Out4<T> residue_view(const ConvDesc& d, const Out4<T>& dxv, int64_t a, int64_t b) {
  return {dxv.p + a * dxv.s2 + b * dxv.s3, dxv.s0, dxv.s1, d.stride_h * dxv.s2, d.stride_w * dxv.s3};
}

enum class DgradRoute : int {
  kNone, kWinograd, kMaskDyFirst, kNchwCopies, kClOutput, kClCopies, kTapsAsChannels, kStaged,
  kResidueClasses
};

// NCHW depthwise layers (one channel per group, multiplier 1) on small output maps run their gradients
// on channels_last copies: the NCHW kernels vectorize along output rows of 7 or 14 pixels, the
// channels_last ones along the channels. float32, AVX-512 (the staging copies), >= one vector of
// channels, no fused ReLU mask (dgrad's masked NCHW dy is masked first, then comes here unmasked).
// 2 threads, batch 8, ours NCHW -> staged, counting the copies (torch): wgrad 116ch 14x14 3x3 0.64 ->
// 0.20 ms (0.14), 232ch 7x7 0.63 -> 0.13 (0.11); dgrad 116ch 14x14 0.25 -> 0.18 (0.16), 232ch 7x7
// 0.30 -> 0.12 (0.13), 232ch 14x14 s2 0.94 -> 0.26 (0.19). Input or output maps above kStageSmallMap
// stay NCHW: 116ch 28x28 s2 dgrad 0.55 -> 0.96 staged (the channels_last stride-2 dgrad is the slower
// one there), 58ch 28x28 s1 gained nothing.
template <typename T>
bool depthwise_stages_nchw(const ConvDesc& d, const Tensor4& x, const Tensor4& dy, bool relu) {
  return std::is_same_v<T, float> && kIsaLevel == 2 && !relu && d.groups == d.C && d.K == d.C &&
         d.C >= Simd<T>::L && x.stride[1] != 1 && dy.stride[1] != 1 && d.P * d.Q <= kStageSmallMap &&
         d.H * d.W <= kStageSmallMap && d.H * d.W > 1;
}

// The input gradient of a strided NCHW float32 layer with >= 32 channels each way runs on channels_last
// copies of dy and dx: the NCHW kernels' vectors along a residue class's few output columns (4-7 at a
// 7x7 or 4x4 dy) waste lanes. At AVX-512 every such layer stages (AMD EPYC Zen 4, 2 threads, dgrad alone
// counting the copies, ms NCHW -> staged (torch)): DCGAN's 64x256x8x8 4x4 s2 -> 512 channels 70.9 ->
// 22.7 (20.2), 64x128x16x16 -> 256 33.6 -> 27.6 (35.7), 8x256x56x56 3x3 s2 48.0 -> 38.9 (67.5),
// 8x512x28x28 3x3 s2 45.8 -> 35.8 (41.5), 8x64x112x112 3x3 s2 17.8 -> 15.5 (26.7), 8x256x28x28 1x1 s2
// -> 512 4.1 -> 2.4 (3.7): no layer measured was slower staged. At AVX2 only small dy maps stage (the
// stride-1 staging's bounds: P*Q <= kStageDgradMap or N*P*Q <= kStageFewPixels; AMD EPYC Zen 3:
// 1x512x14x14 3x3 s2 20.4 -> 6.9 ms, 1x1024x14x14 1x1 s2 -> 2048 14.4 -> 7.3, 64x256x8x8 4x4 s2 143 ->
// 84), larger maps lost there (8x512x28x28 1x1 s2 59 -> 78, 8x64x112x112 3x3 s2 79 -> 108).
template <typename T>
bool strided_dgrad_stages_nchw(const ConvDesc& d, const Tensor4& dx, const Tensor4& dy, bool relu) {
  if (!std::is_same_v<T, float> || kIsaLevel == 0 || relu || d.groups != 1 || d.C < 32 || d.K < 32 ||
      (d.stride_h == 1 && d.stride_w == 1) || dx.stride[1] == 1 || dy.stride[1] == 1 || d.H * d.W <= 1 ||
      d.P * d.Q <= 1)
    return false;
  return kIsaLevel == 2 || d.P * d.Q <= kStageDgradMap || d.N * d.P * d.Q <= kStageFewPixels;
}

// kNchwCopies: a channels_last dx of 2 .. L/4 channels (at the AVX2 level, 8 float lanes: up to 4), unless
// the filter's taps tile dx (taps_merge: those become S*C or R*S*C output channels instead).
// DCGAN's last layer as a transposed convolution (64 -> 3, 4x4 s2, 32x32 -> 64x64, batch 64, channels_last;
// its forward is this input gradient), 2 threads, AMD EPYC Zen 3, a noisy VM: 0.69-0.81x torch, against
// 0.65-0.74x as residue classes over the 3 channels.
template <typename T>
bool few_channels_nchw_copies(const ConvDesc& d, const Tensor4& dx) {
  if (dx.stride[1] != 1 || d.C < 2 || d.groups != 1 || d.H * d.W == 1) return false;
  const bool few = 4 * d.C <= Simd<T>::L || (std::is_same_v<T, float> && kIsaLevel == 1 && d.C <= 4);
  return few && taps_merge(d, dx) == TapsMerge::kNone;
}

// The input gradient's route:
// - kMaskDyFirst: NCHW dy of the fused op is masked in one streaming pass first; the NCHW paths would
//   apply the mask element by element while filling their windows (1x1 64-channel bench layer, N=32,
//   32x32, 1 thread, masked there: 13.4 ms against 3.9 unmasked).
// - kNchwCopies: a channels_last input gradient with few channels (few_channels_nchw_copies: the
//   gradient of an RGB input). The engine's kernels vectorize over the C output channels, so 3 of 16
//   float lanes would work (RGB stem, N=32, 32->3, 32x32, 2 threads: 1.8-2.1 ms against 0.84 for the
//   NCHW kernels), so dy is copied to NCHW (mask applied on the way), the NCHW kernels run, and dx is
//   copied back. A one-pixel dx is the same in both layouts (excluding it also keeps the NCHW call from
//   coming back).
// - kClOutput: an NCHW input gradient of a channels_last dy (a layer whose input is NCHW and whose
//   output is channels_last: the first layers after ShuffleNetV2's channel shuffle, whose .contiguous()
//   returns NCHW). The NCHW kernels read dy's channel rows across the pixels they vectorize over, so
//   the correlation writes a channels_last dx into a scratch buffer, copied to dx after (float32,
//   AVX-512: with_channels_last_output; >= one vector of channels, so the copy moves whole vectors).
//   2 threads, batch 8: 464 -> 1024 1x1 at 7x7 4.47 ms -> 2.16 (torch 3.2); 232-channel 3x3 s2
//   depthwise at 14x14 1.67 ms -> 0.24 (torch 0.23), both counting the copy.
// - kStaged: a stride-1 NCHW float32 input gradient (no mask) of >= 64 channels each way on a map of
//   <= kStageDgradMap pixels, or <= kStageFewPixels in all: conv_cl on channels_last copies of dy and
//   dx, as the forward stages (2 threads: 8x2048x7x7 1x1 -> 512 dgrad 6.1 ms against 9.6 on the NCHW
//   kernels, torch 4.9; 1x128x28x28 -> 512 0.80 against 1.24, torch 0.64). 14x14 maps at batch 2-8
//   gained nothing (8x576 -> 96: 1.44 ms against 1.37), so they stay on the NCHW kernels. The AVX2
//   level (float32) stages within the same bounds, where the forward stages: AMD EPYC Zen 3, 2 threads,
//   8x2048x7x7 1x1 -> 512 5.3-5.8 ms against 10.1-11.4, 1x256x14x14 3x3 1.4-1.8 against 4.3-4.6.
// - kClCopies: channels_last copies of an NCHW dy and dx around the engine: depthwise layers on small
//   maps (depthwise_stages_nchw), strided layers of >= 32 channels (strided_dgrad_stages_nchw).
// - kTapsAsChannels: taps that tile dx become output channels (taps_merge, conv2d_dgrad_taps.h).
// - kResidueClasses: one engine correlation per residue class (residue_class).
template <typename T>
DgradRoute dgrad_route(const ConvDesc& d, DType dt, const Tensor4& dy, bool relu, const Tensor4& dx) {
  if (winograd_usable(d, dt)) return DgradRoute::kWinograd;
  if (d.N == 0) return DgradRoute::kNone;
  if (relu && dy.stride[1] != 1) return DgradRoute::kMaskDyFirst;
  if (few_channels_nchw_copies<T>(d, dx)) return DgradRoute::kNchwCopies;
  if (std::is_same_v<T, float> && kIsaLevel == 2 && dx.stride[1] != 1 && dy.stride[1] == 1 && d.K > 1 &&
      d.C >= Simd<T>::L && d.H * d.W > 1 && d.P * d.Q > 1)
    return DgradRoute::kClOutput;
  if (depthwise_stages_nchw<T>(d, dx, dy, relu) || strided_dgrad_stages_nchw<T>(d, dx, dy, relu))
    return DgradRoute::kClCopies;
  if (taps_merge(d, dx) != TapsMerge::kNone) return DgradRoute::kTapsAsChannels;
  if (std::is_same_v<T, float> && kIsaLevel >= 1 && !relu && d.stride_h == 1 && d.stride_w == 1 &&
      d.dil_h == 1 && d.dil_w == 1) {
    Geo g = residue_class(d, 0, 0).g;
    g.dh = g.dw = 1;  // the correlation's flipped taps (dilation -1) cost what the forward's do
    if (stage_nchw_forward(g, dy, dx) && (g.P * g.Q <= kStageDgradMap || g.N * g.P * g.Q <= kStageFewPixels))
      return DgradRoute::kStaged;
  }
  return DgradRoute::kResidueClasses;
}

// The weights of the residue class rc's correlation: w's taps from (r0, s0) in steps of (rstep, sstep),
// with the roles of input and output channels swapped.
template <typename T>
WV<T> residue_weights(const ConvDesc& d, const ResidueClass& rc, const Tensor4& w) {
  const T* wp = static_cast<const T*>(w.data);
  return WV<T>{wp + rc.r0 * w.stride[2] + rc.s0 * w.stride[3], (d.K / d.groups) * w.stride[0], w.stride[1],
               w.stride[0], rc.rstep * w.stride[2], rc.sstep * w.stride[3]};
}

// dy (any strides) copied into buf as a dense NCHW tensor (N*K*P*Q elements), with the ReLU mask of
// relu_y applied when it is given; returns the copy's Tensor4. The parallel units are rows (n, p): a
// channels_last dy row (Q*K elements) stays in L1 while its K output rows are written.
template <typename T>
Tensor4 dense_nchw_grad(const ConvDesc& d, const Tensor4& dy, const Tensor4* relu_y, T* buf, int nth) {
  const int64_t K = d.K, P = d.P, Q = d.Q;
  if constexpr (std::is_same_v<T, float>) {
    // An unmasked dense channels_last dy: the staging's block transposes instead of strided element
    // reads (DCGAN's 64 -> 3 transposed layer, batch 64, dy 16.8 MB: the element loop took ~10 ms of 24).
    if (relu_y == nullptr && dy.stride == dense_channels_last(dy, nullptr).stride) {
      const Tensor4 t = dense_nchw(dy, buf);
      copy_from_channels_last(static_cast<const float*>(dy.data), t, nth);
      return t;
    }
  }
  const In4<T> g = in_view<T>(dy), mk = relu_y ? in_view<T>(*relu_y) : In4<T>{};
#pragma omp parallel for num_threads(nth) schedule(static)
  for (int64_t np = 0; np < d.N * P; ++np) {
    const int64_t n = np / P, p = np % P;
    for (int64_t k = 0; k < K; ++k) {
      T* out = buf + ((n * K + k) * P + p) * Q;
      const T* gr = g.p + n * g.s0 + k * g.s1 + p * g.s2;
      if (relu_y) {
        const T* mr = mk.p + n * mk.s0 + k * mk.s1 + p * mk.s2;
        for (int64_t q = 0; q < Q; ++q) out[q] = masked(gr[q * g.s3], mr[q * mk.s3]);
      } else {
        for (int64_t q = 0; q < Q; ++q) out[q] = gr[q * g.s3];
      }
    }
  }
  Tensor4 t = dy;
  t.data = buf;
  t.stride = {K * P * Q, P * Q, Q, 1};
  return t;
}

// The input gradient's pack when it runs several correlations (the residue classes, or the parts of
// the taps-as-channels route): one part per correlation with taps, each that correlation's engine pack
// (conv_cl panels, the NCHW kernels' panels, the narrow-group blocks) of the taps it reads, at
// 64-byte-aligned offsets. parts: (a, b, offset, floats) per correlation; info {} when an engine packs
// nothing or the formats differ. info.taps is 0 when one residue class holds the whole filter (any
// stride-1 layer, a 1x1 layer at any stride: the same values as every other such pack of the weight),
// else a 63-bit FNV-1a hash of the route and the parts' tap subsets, so that the cache keeps packs of
// other subsets (another stride or padding of the same weight) or arrangements apart.
struct PartPacks {
  PackInfo info;
  std::vector<std::array<int64_t, 4>> parts;
};

class PartPacker {
 public:
  explicit PartPacker(int64_t route) { mix(route); }

  // Adds the engine pack of the correlation e for part (a, b); `taps` selects its taps.
  template <typename T>
  void add(int64_t a, int64_t b, const EnginePlan<T>& e, DType dt, int64_t groups, std::initializer_list<int64_t> taps) {
    const PackInfo p = engine_pack_info<T>(e.algo, e.g, dt, groups);
    if (p.floats == 0 || (kind_ >= 0 && p.kind != kind_)) failed_ = true;
    if (failed_) return;
    kind_ = p.kind;
    packs_.parts.push_back({a, b, offset_, p.floats});
    offset_ += cdiv(p.floats, 16) * 16;
    mix(a);
    mix(b);
    for (int64_t f : taps) mix(f);
  }

  // whole: the one part is the pack any residue-class or forward pack of the whole filter is.
  PartPacks result(bool whole) {
    if (failed_ || packs_.parts.empty()) return {};
    packs_.info = PackInfo{offset_, kind_, packs_.parts.size() == 1 && whole ? 0 : static_cast<int64_t>((hash_ >> 1) | 1)};
    return packs_;
  }

 private:
  void mix(int64_t f) { hash_ = (hash_ ^ static_cast<uint64_t>(f)) * 1099511628211ull; }
  PartPacks packs_;
  uint64_t hash_ = 1469598103934665603ull;
  int64_t kind_ = -1, offset_ = 0;
  bool failed_ = false;
};

// The caller's pack's part for correlation (a, b) in `part`, or null when the pack is not used.
inline WeightPack* part_pack(const PartPacks& pp, WeightPack* pack, bool use_pack, int64_t a, int64_t b,
                             WeightPack& part) {
  if (!use_pack) return nullptr;
  for (const auto& pt : pp.parts)
    if (pt[0] == a && pt[1] == b) {
      part = WeightPack{pack->data + pt[2], pt[3], pack->ready};
      return &part;
    }
  return nullptr;
}

template <typename T>
PartPacks class_packs(const ConvDesc& d, DType dt, const Tensor4& dy, const Tensor4* relu_y, const Tensor4& dx) {
  PartPacker packer(static_cast<int64_t>(DgradRoute::kResidueClasses));
  const In4<T> dyv = in_view<T>(dy), mv = relu_y ? in_view<T>(*relu_y) : In4<T>{};
  const Out4<T> dxv = out_view<T>(dx);
  bool whole = false;
  for (int64_t a = 0; a < std::min(d.stride_h, d.H); ++a)
    for (int64_t b = 0; b < std::min(d.stride_w, d.W); ++b) {
      const ResidueClass rc = residue_class(d, a, b);
      if (!rc.taps) continue;
      packer.add<T>(a, b, plan_engine<T>(rc.g, dyv, mv, residue_view(d, dxv, a, b)), dt, d.groups,
                    {rc.r0, rc.rstep, rc.g.R, rc.s0, rc.sstep, rc.g.S});
      whole = rc.g.R == d.R && rc.g.S == d.S;
    }
  return packer.result(whole);
}

// The taps-as-channels route's engine plan for part t (the weight view is the caller's).
template <typename T>
EnginePlan<T> taps_part_plan(const ConvDesc& d, TapsMerge m, const Tensor4& dy, const Tensor4* relu_y,
                             const Tensor4& dx, const TapsPart& t) {
  return plan_engine<T>(t.g, in_view<T>(dy), relu_y ? in_view<T>(*relu_y) : In4<T>{},
                        taps_part_view<T>(d, m, out_view<T>(dx), t));
}

template <typename T>
PartPacks taps_packs(const ConvDesc& d, DType dt, const Tensor4& dy, const Tensor4* relu_y, const Tensor4& dx) {
  const TapsMerge m = taps_merge(d, dx);
  PartPacker packer(static_cast<int64_t>(DgradRoute::kTapsAsChannels) + 16 * static_cast<int64_t>(m));
  for (const TapsPart& t : taps_parts(d, m))
    if (t.taps) packer.add<T>(t.a, 0, taps_part_plan<T>(d, m, dy, relu_y, dx, t), dt, d.groups, {t.r0, t.rstep, t.g.R});
  return packer.result(false);
}

// The taps-as-channels route: each part's correlation, zeros for the row phases no tap reaches. The
// weight is read in the merged channels' order: w itself when its strides give it, else a copy (made
// only when some part's pack still has to be filled).
template <typename T>
void taps_as_channels_dgrad(const ConvDesc& d, DType dt, const Tensor4& dy, const Tensor4& w, const Tensor4* relu_y,
                            const Tensor4& dx, WeightPack* pack, int nth) {
  const TapsMerge m = taps_merge(d, dx);
  const PartPacks pp = pack ? taps_packs<T>(d, dt, dy, relu_y, dx) : PartPacks{};
  const bool use_pack = pack && pp.info.floats > 0 && pack->floats >= pp.info.floats;
  const bool copy = !taps_weight_in_order(d, m, dx, w) && !(use_pack && pack->ready);
  Buf<T> wbuf(copy ? d.K * d.C * d.R * d.S : 0);
  const Tensor4 wm = copy ? taps_weight_copy<T>(d, m, dx, w, wbuf.p) : w;
  const Out4<T> dxv = out_view<T>(dx);
  bool all_ready = use_pack;
  for (const TapsPart& t : taps_parts(d, m)) {
    if (!t.taps) {  // kColumns: a row phase no tap reaches; its rows are W*C contiguous elements
      const Out4<T> v = taps_part_view<T>(d, m, dxv, t);
#pragma omp parallel for num_threads(nth) schedule(static)
      for (int64_t ni = 0; ni < d.N * t.g.P; ++ni) {
        T* row = v.p + (ni / t.g.P) * v.s0 + (ni % t.g.P) * v.s2;
        std::fill(row, row + d.W * d.C, T(0));
      }
      continue;
    }
    WeightPack part;
    WeightPack* part_ptr = part_pack(pp, pack, use_pack, t.a, 0, part);
    run_engine<T>(taps_part_plan<T>(d, m, dy, relu_y, dx, t), taps_part_weights<T>(wm, t), nullptr, Epi{}, nth,
               part_ptr);
    all_ready = all_ready && part_ptr != nullptr && part.ready;
  }
  if (use_pack) pack->ready = all_ready;
}

template <typename T>
PackInfo dgrad_pack_info(const ConvDesc& d, DType dt, const Tensor4& dy, const Tensor4* relu_y, const Tensor4& dx) {
  switch (dgrad_route<T>(d, dt, dy, relu_y != nullptr, dx)) {
    case DgradRoute::kWinograd:
      return PackInfo{winograd_pack_floats(d, dt, WinogradPass::kInputGrad), pack_kind(kPackWinograd, 1, dt, d.groups)};
    case DgradRoute::kMaskDyFirst:
      return dgrad_pack_info<T>(d, dt, dense_nchw(dy, nullptr), nullptr, dx);
    case DgradRoute::kNchwCopies:
      return dgrad_pack_info<T>(d, dt, dense_nchw(dy, nullptr), nullptr, dense_nchw(dx, nullptr));
    case DgradRoute::kClOutput:
      return dgrad_pack_info<T>(d, dt, dy, relu_y, dense_channels_last(dx, nullptr));
    case DgradRoute::kClCopies:
      return dgrad_pack_info<T>(d, dt, dense_channels_last(dy, nullptr), nullptr, dense_channels_last(dx, nullptr));
    case DgradRoute::kStaged:
      return engine_pack_info<T>(ConvAlgo::kIgemmNhwcStaged, residue_class(d, 0, 0).g, dt, d.groups);
    case DgradRoute::kTapsAsChannels:
      return taps_packs<T>(d, dt, dy, relu_y, dx).info;
    case DgradRoute::kResidueClasses:
      return class_packs<T>(d, dt, dy, relu_y, dx).info;
    default:
      return {};
  }
}

template <typename T>
void dgrad_impl(const ConvDesc& d, DType dt, const Tensor4& dy, const Tensor4& w, const Tensor4* relu_y,
                const Tensor4& dx, WeightPack* pack, int nth) {
  switch (dgrad_route<T>(d, dt, dy, relu_y != nullptr, dx)) {
    case DgradRoute::kNone:
      return;
    case DgradRoute::kWinograd:
      return winograd_dgrad(d, dy, w, relu_y, dx, pack, nth);
    case DgradRoute::kMaskDyFirst: {
      Buf<T> dy_masked(d.N * d.K * d.P * d.Q);
      return dgrad_impl<T>(d, dt, dense_nchw_grad<T>(d, dy, relu_y, dy_masked.p, nth), w, nullptr, dx, pack, nth);
    }
    case DgradRoute::kNchwCopies: {
      const int64_t C = d.C, H = d.H, W = d.W;
      Buf<T> dy_nchw(d.N * d.K * d.P * d.Q), dx_nchw(d.N * C * H * W);
      dgrad_impl<T>(d, dt, dense_nchw_grad<T>(d, dy, relu_y, dy_nchw.p, nth), w, nullptr, dense_nchw(dx, dx_nchw.p),
                    pack, nth);
      const Out4<T> o = out_view<T>(dx);
#pragma omp parallel for num_threads(nth) schedule(static)
      for (int64_t nh = 0; nh < d.N * H; ++nh) {
        const int64_t n = nh / H, h = nh % H;
        for (int64_t iw = 0; iw < W; ++iw)
          for (int64_t c = 0; c < C; ++c)
            o.p[n * o.s0 + c * o.s1 + h * o.s2 + iw * o.s3] = dx_nchw.p[((n * C + c) * H + h) * W + iw];
      }
      return;
    }
    case DgradRoute::kClOutput:
      if constexpr (std::is_same_v<T, float>)
        with_channels_last_output(dx, nth, [&](float* buf) {
          dgrad_impl<T>(d, dt, dy, w, relu_y, dense_channels_last(dx, buf), pack, nth);
        });
      return;
    case DgradRoute::kClCopies:
      if constexpr (std::is_same_v<T, float>)
        with_channels_last_copy(dy, nth, [&](const float* dys) {
          with_channels_last_output(dx, nth, [&](float* dxs) {
            dgrad_impl<T>(d, dt, dense_channels_last(dy, const_cast<float*>(dys)), w, nullptr,
                          dense_channels_last(dx, dxs), pack, nth);
          });
        });
      return;
    case DgradRoute::kTapsAsChannels:
      return taps_as_channels_dgrad<T>(d, dt, dy, w, relu_y, dx, pack, nth);
    case DgradRoute::kStaged:
      if constexpr (std::is_same_v<T, float>) {
        const ResidueClass rc = residue_class(d, 0, 0);
        return igemm_nhwc_staged_nchw_fwd(rc.g, dy, residue_weights<float>(d, rc, w), nullptr, dx, Epi{}, nth, pack);
      }
      break;  // not routed here: float32 only
    case DgradRoute::kResidueClasses:
      break;
  }
  const In4<T> dyv = in_view<T>(dy);
  const In4<T> mv = relu_y ? in_view<T>(*relu_y) : In4<T>{};
  const Out4<T> dxv = out_view<T>(dx);
  // Each class's part of the pack (class_packs); all of them ready once every class has filled its own.
  const PartPacks cp = pack ? class_packs<T>(d, dt, dy, relu_y, dx) : PartPacks{};
  const bool use_pack = pack && cp.info.floats > 0 && pack->floats >= cp.info.floats;
  bool all_ready = use_pack;
  for (int64_t a = 0; a < std::min(d.stride_h, d.H); ++a)
    for (int64_t b = 0; b < std::min(d.stride_w, d.W); ++b) {
      const ResidueClass rc = residue_class(d, a, b);
      const Out4<T> ys = residue_view(d, dxv, a, b);
      if (!rc.taps) {  // no tap reaches this sub-grid
        if (ys.s1 == 1) {  // channels_last: a pixel's C channels are contiguous
#pragma omp parallel for num_threads(nth) schedule(static)
          for (int64_t ni = 0; ni < d.N * rc.g.P; ++ni) {
            T* row = ys.p + (ni / rc.g.P) * ys.s0 + (ni % rc.g.P) * ys.s2;
            for (int64_t j = 0; j < rc.g.Q; ++j) std::fill(row + j * ys.s3, row + j * ys.s3 + d.C, T(0));
          }
          continue;
        }
#pragma omp parallel for num_threads(nth) schedule(static)
        for (int64_t nc = 0; nc < d.N * d.C; ++nc) {
          T* base = ys.p + (nc / d.C) * ys.s0 + (nc % d.C) * ys.s1;
          for (int64_t i = 0; i < rc.g.P; ++i)
            for (int64_t j = 0; j < rc.g.Q; ++j) base[i * ys.s2 + j * ys.s3] = T(0);
        }
        continue;
      }
      WeightPack part;
      WeightPack* part_ptr = part_pack(cp, pack, use_pack, a, b, part);
      conv_run<T>(rc.g, dyv, mv, residue_weights<T>(d, rc, w), nullptr, ys, Epi{}, nth, part_ptr);
      all_ready = all_ready && part_ptr != nullptr && part.ready;
    }
  if (use_pack) pack->ready = all_ready;
}

// ---------------------------------------------------------------------------------------------
// Weight gradient.

// A 1x1 weight gradient of an NCHW x (a channel slice after ShuffleNetV2's channel shuffle, its last
// 464->1024 layer) with a channels_last dy reads a channels_last copy of x, as the pointwise kernel
// wants. 2 threads, batch 8, 7x7, 464->1024, counting the 0.7 MB copy: 1.91 ms against wgrad_blocked's
// 2.39 (torch 2.15).
template <typename T>
bool wgrad_pointwise_stages_x(const ConvDesc& d, DType dt, const Tensor4& x, const Tensor4& dy,
                              const Tensor4* relu_y) {
  return std::is_same_v<T, float> && kIsaLevel == 2 && x.stride[1] != 1 && dy.stride[1] == 1 && d.C >= Simd<T>::L &&
         wgrad_pointwise_usable(d, dt, dense_channels_last(x, nullptr), dy, relu_y);
}

// A 1x1 weight gradient of NCHW x and dy on small maps (ResNet-50's 14x14 and 7x7 stages at batch 1)
// reads channels_last copies of both: wgrad_blocked sweeps the whole K x C sum matrix per 64-pixel
// block, so with 49-196 pixels per image the sweep, not the FMAs, bounds it (2 threads, 1x512x7x7 ->
// 2048: 2.32 ms, torch 1.07).
template <typename T>
bool wgrad_pointwise_stages_both(const ConvDesc& d, DType dt, const Tensor4& x, const Tensor4& dy,
                                 const Tensor4* relu_y) {
  return std::is_same_v<T, float> && kIsaLevel == 2 && x.stride[1] != 1 && dy.stride[1] != 1 && d.C >= Simd<T>::L &&
         d.P * d.Q <= kStageSmallMap && d.H * d.W > 1 &&
         wgrad_pointwise_usable(d, dt, dense_channels_last(x, nullptr), dense_channels_last(dy, nullptr), relu_y);
}

// At the AVX2 level an NCHW x goes through the blocked weight gradient (which stages x and dy in
// channels_last) only for a filter with taps on >= 16 channels and >= 2048 output pixels in all; the
// NCHW GEMM kernels keep the rest. 2 threads, blocked vs GEMM (torch) ms: 32x64x32x32 3x3 18.4 vs 23.5
// (19.4), 8x64x56x56 3x3 16.4 vs 18.5 (15.9); but 1x1 8x64x56x56 -> 256 11.1 vs 8.8 (8.1), the RGB stem
// 8x3x224x224 7x7 s2 22.2 vs 17.3 (15.7), 8x512x7x7 3x3 28.1 vs 20.8 (15.0), 8x256x28x28 3x3 s2 26.2 vs
// 17.6 (22.1): a small map's pixels do not pay for the staging and the sweeps of the sum matrix.
template <typename T>
bool wgrad_blocked_skips_nchw(const ConvDesc& d, const Tensor4& x) {
  return kIsaLevel == 1 && x.stride[1] != 1 && (d.R * d.S == 1 || d.C < 16 || d.N * d.P * d.Q < 2048);
}

// A layer of one input channel and several output channels (groups 1: an audio or grey-scale stem) is
// depthwise by the rule in wgrad_algo, but wgrad_depthwise vectorizes a channel multiplier (Kg > 1) only
// along contiguous stride-1 rows; a strided or channels_last layer would take its scalar loop, so it
// takes the GEMM kernels. 2 threads, AMD EPYC Zen 4, ms scalar depthwise -> GEMM (torch): wav2vec's
// 4x1x16000 10-tap stride-5 -> 512 27.9 -> 4.5 (4.2), channels_last dy 124 -> 8.9 (28.0); 8x1x224x224 3x3
// s2 -> 32 12.8 -> 2.6 (1.7), channels_last dy 24.5 -> 3.4 (5.8). (The vectorized rows stay: 8x1x4096
// 3-tap -> 64 0.31 ms against 5.0 on the GEMM kernels.)
inline bool one_channel_wgrad_gemm(const ConvDesc& d, const Tensor4& x, const Tensor4& dy, const Tensor4* relu_y) {
  const bool rows_vectorize = x.stride[3] == 1 && dy.stride[3] == 1 && d.stride_w == 1 &&
                              (relu_y == nullptr || relu_y->stride[3] == 1);
  return d.C == 1 && d.groups == 1 && d.K > 1 && !rows_vectorize;
}

template <typename T>
ConvAlgo wgrad_algo(const ConvDesc& d, DType dt, const Tensor4& x, const Tensor4& dy, const Tensor4* relu_y) {
  if (winograd_wgrad_usable(d, dt)) return ConvAlgo::kWinograd;
  if (wgrad_pointwise_usable(d, dt, x, dy, relu_y)) return ConvAlgo::kWgradPointwise;
  if (wgrad_pointwise_stages_x<T>(d, dt, x, dy, relu_y)) return ConvAlgo::kWgradPointwise;
  if (wgrad_pointwise_stages_both<T>(d, dt, x, dy, relu_y)) return ConvAlgo::kWgradPointwise;
  if (wgrad_rows_usable(d, dt)) return ConvAlgo::kWgradRows;
  if (wgrad_blocked_usable(d, dt) && !wgrad_blocked_skips_nchw<T>(d, x)) return ConvAlgo::kWgradBlocked;
  if (d.N == 0) return ConvAlgo::kNone;
  if (d.C == d.groups && !one_channel_wgrad_gemm(d, x, dy, relu_y)) return ConvAlgo::kWgradDepthwise;
  if (x.stride[1] == 1 && dy.stride[1] == 1 && (relu_y == nullptr || relu_y->stride[1] == 1) &&
      wgrad_grouped_nhwc_usable<T>(geo_of(d)))
    return ConvAlgo::kWgradGroupedNhwc;
  return x.stride[1] == 1 ? ConvAlgo::kWgradGemmNhwc : ConvAlgo::kWgradGemmNchw;
}

// The weight gradient's staged inputs (wgrad_staging), for the mixed-layout layers that dgrad's kClOutput
// serves too (an NCHW x, often a channel slice after a channel shuffle, with a channels_last dy):
// - kX: the kernel reads a channels_last copy of x, which it vectorizes over with dy. Depthwise:
//   2 threads, batch 8, 3x3 s2, counting the copy: 232 channels at 14x14 1.74 ms -> 0.17 (torch 0.40);
//   116 at 28x28 1.44 -> 0.38 (torch 0.75). Pointwise (1x1 layers, see wgrad_pointwise_stages_x).
// - kXAndDy: depthwise layers whose x and dy are both NCHW on small maps (depthwise_stages_nchw).
enum class WgradStaging { kNone, kX, kXAndDy };

template <typename T>
WgradStaging wgrad_staging(ConvAlgo algo, const ConvDesc& d, const Tensor4& x, const Tensor4& dy, bool relu) {
  if (!std::is_same_v<T, float> || kIsaLevel != 2 || x.stride[1] == 1) return WgradStaging::kNone;
  if (algo == ConvAlgo::kWgradPointwise)  // chosen on copies: wgrad_pointwise_stages_x / _both
    return dy.stride[1] == 1 ? WgradStaging::kX : WgradStaging::kXAndDy;
  if (algo != ConvAlgo::kWgradDepthwise) return WgradStaging::kNone;
  if (depthwise_stages_nchw<T>(d, x, dy, relu)) return WgradStaging::kXAndDy;
  return dy.stride[1] == 1 && d.C >= Simd<T>::L && d.H * d.W > 1 ? WgradStaging::kX : WgradStaging::kNone;
}

template <typename T>
void zero_wgrad(const ConvDesc& d, const Tensor4* dw, void* dbias) {
  if (dw) {
    const Out4<T> o = out_view<T>(*dw);
    for (int64_t k = 0; k < d.K; ++k)
      for (int64_t c = 0; c < d.C / d.groups; ++c)
        for (int64_t r = 0; r < d.R; ++r)
          for (int64_t s = 0; s < d.S; ++s) o.p[k * o.s0 + c * o.s1 + r * o.s2 + s * o.s3] = T(0);
  }
  if (dbias)
    for (int64_t k = 0; k < d.K; ++k) static_cast<T*>(dbias)[k] = T(0);
}

// dw (if non-null) by wgrad_algo's choice, then dbias (if non-null and not carried along by it).
template <typename T>
void wgrad_impl(const ConvDesc& d, DType dt, const Tensor4& dy, const Tensor4& x, const Tensor4* relu_y,
                const Tensor4* dw, void* dbias, int nth) {
  const In4<T> mv = relu_y ? in_view<T>(*relu_y) : In4<T>{};
  const ConvAlgo algo = wgrad_algo<T>(d, dt, x, dy, relu_y);
  if (algo == ConvAlgo::kNone) return zero_wgrad<T>(d, dw, dbias);
  const WgradStaging staging = wgrad_staging<T>(algo, d, x, dy, relu_y != nullptr);
  bool bias_done = false;
  if (dw) {
    switch (algo) {
      case ConvAlgo::kWinograd:
        winograd_wgrad(d, dy, x, relu_y, *dw, nth);
        break;
      case ConvAlgo::kWgradPointwise:
        if constexpr (std::is_same_v<T, float>) {
          if (staging == WgradStaging::kX) {
            with_channels_last_copy(x, nth, [&](const float* xs) {
              wgrad_pointwise(d, dy, dense_channels_last(x, const_cast<float*>(xs)), *dw, nth);
            });
            break;
          }
          if (staging == WgradStaging::kXAndDy) {
            with_channels_last_copies(x, dy, nth, [&](const float* xs, const float* dys) {
              wgrad_pointwise(d, dense_channels_last(dy, const_cast<float*>(dys)),
                              dense_channels_last(x, const_cast<float*>(xs)), *dw, nth);
            });
            break;
          }
        }
        wgrad_pointwise(d, dy, x, *dw, nth);
        break;
      case ConvAlgo::kWgradBlocked:
        wgrad_blocked(d, dy, x, relu_y, *dw, static_cast<float*>(dbias), nth);
        bias_done = true;  // summed on the way
        break;
      case ConvAlgo::kWgradRows:
        wgrad_rows(d, dy, x, relu_y, *dw, nth);
        break;
      case ConvAlgo::kWgradDepthwise:
        if constexpr (std::is_same_v<T, float>) {
          if (staging == WgradStaging::kXAndDy) {
            with_channels_last_copies(x, dy, nth, [&](const float* xs, const float* dys) {
              const Tensor4 xc = dense_channels_last(x, const_cast<float*>(xs));
              const Tensor4 dyc = dense_channels_last(dy, const_cast<float*>(dys));
              bias_done = wgrad_depthwise<T>(d, in_view<T>(xc), in_view<T>(dyc), mv, out_view<T>(*dw),
                                             static_cast<T*>(dbias), nth);
            });
            break;
          }
          if (staging == WgradStaging::kX) {
            with_channels_last_copy(x, nth, [&](const float* xs) {
              const Tensor4 xc = dense_channels_last(x, const_cast<float*>(xs));
              bias_done = wgrad_depthwise<T>(d, in_view<T>(xc), in_view<T>(dy), mv, out_view<T>(*dw),
                                             static_cast<T*>(dbias), nth);
            });
            break;
          }
        }
        bias_done = wgrad_depthwise<T>(d, in_view<T>(x), in_view<T>(dy), mv, out_view<T>(*dw), static_cast<T*>(dbias),
                                       nth);
        break;
      case ConvAlgo::kWgradGroupedNhwc:
        wgrad_grouped_nhwc<T>(d, in_view<T>(x), in_view<T>(dy), mv, out_view<T>(*dw), nth);
        break;
      case ConvAlgo::kWgradGemmNhwc:
        wgrad_gemm_nhwc<T>(d, in_view<T>(x), in_view<T>(dy), mv, out_view<T>(*dw), nth);
        break;
      default:
        wgrad_gemm_nchw<T>(d, in_view<T>(x), in_view<T>(dy), mv, out_view<T>(*dw), nth);
    }
  }
  if (dbias && !bias_done) {
    if (d.N == 0) return zero_wgrad<T>(d, nullptr, dbias);
    bias_grad<T>(d, in_view<T>(dy), mv, static_cast<T*>(dbias), nth);
  }
}

// ---------------------------------------------------------------------------------------------
// Path names (conv2d_path).

const char* algo_name(ConvAlgo a) {
  switch (a) {
    case ConvAlgo::kNone: return "none";
    case ConvAlgo::kWinograd: return "winograd_f4x4_3x3";
    case ConvAlgo::kIgemmNhwc: return "igemm_nhwc";
    case ConvAlgo::kIgemmNhwcStaged: return "igemm_nhwc_staged_nchw";
    case ConvAlgo::kIgemmNchwDirect: return "igemm_nchw_direct";
    case ConvAlgo::kIgemmNchwPacked: return "igemm_nchw_packed";
    case ConvAlgo::kDepthwiseNhwc: return "depthwise_nhwc";
    case ConvAlgo::kDepthwiseNchw: return "depthwise_nchw";
    case ConvAlgo::kGroupedNhwc: return "grouped_nhwc";
    case ConvAlgo::kGroupedNhwcStaged: return "grouped_nhwc_staged_nchw";
    case ConvAlgo::kWgradGroupedNhwc: return "wgrad_grouped_nhwc";
    case ConvAlgo::kWgradBlocked: return "wgrad_blocked";
    case ConvAlgo::kWgradRows: return "wgrad_rows";
    case ConvAlgo::kWgradPointwise: return "wgrad_pointwise";
    case ConvAlgo::kWgradDepthwise: return "wgrad_depthwise";
    case ConvAlgo::kWgradGemmNhwc: return "wgrad_gemm_nhwc";
    case ConvAlgo::kWgradGemmNchw: return "wgrad_gemm_nchw";
  }
  return "?";
}

const char* cl_mode_name(ClMode m) {
  switch (m) {
    case ClMode::kPointwise: return "pointwise";
    case ClMode::kRowsPaddedCopy: return "rows_padded_copy";
    case ClMode::kRowsWholeWindows: return "rows_whole_windows";
    case ClMode::kRowBlocks: return "row_blocks";
    case ClMode::kTaps: return "taps";
    case ClMode::kPacked: return "packed";
  }
  return "?";
}

// "igemm_nhwc/<mode>" for conv_cl, else the algorithm's name.
template <typename T>
std::string engine_name(const EnginePlan<T>& e) {
  if (e.algo != ConvAlgo::kIgemmNhwc) return algo_name(e.algo);
  return std::string(algo_name(e.algo)) + "/" + cl_mode_name(igemm_nhwc_mode<T>(e.g, e.x, e.m, e.y));
}

// "igemm_nhwc_staged_nchw/<mode>": conv_cl on dense channels_last copies of the input and output.
template <typename T>
std::string staged_path(const Geo& g) {
  const In4<T> xcl{nullptr, g.H * g.W * g.Cin, 1, g.W * g.Cin, g.Cin};
  const Out4<T> ycl{nullptr, g.P * g.Q * g.Kout, 1, g.Q * g.Kout, g.Kout};
  return std::string(algo_name(ConvAlgo::kIgemmNhwcStaged)) + "/" +
         cl_mode_name(igemm_nhwc_mode<T>(g, xcl, In4<T>{}, ycl));
}

template <typename T>
std::string fwd_path(const ConvDesc& d, DType dt, const Tensor4& x, const Tensor4& y) {
  const FwdChoice<T> c = choose_fwd<T>(d, dt, x, y);
  if (c.stage_x) return "channels_last_x > " + engine_name(c.engine);
  if (c.algo != ConvAlgo::kIgemmNhwcStaged) return c.algo == c.engine.algo ? engine_name(c.engine) : algo_name(c.algo);
  return staged_path<T>(c.engine.g);
}

// A dense NCHW tensor of t's sizes (no data: for naming the path alone).
inline Tensor4 nchw_like(const Tensor4& t) { return dense_nchw(t, nullptr); }

template <typename T>
std::string dgrad_path(const ConvDesc& d, DType dt, const Tensor4& dy, bool relu, const Tensor4& dx) {
  switch (dgrad_route<T>(d, dt, dy, relu, dx)) {
    case DgradRoute::kNone:
      return "none";
    case DgradRoute::kWinograd:
      return algo_name(ConvAlgo::kWinograd);
    case DgradRoute::kMaskDyFirst:
      return "masked_dy_copy > " + dgrad_path<T>(d, dt, nchw_like(dy), false, dx);
    case DgradRoute::kNchwCopies:
      return "nchw_copies > " + dgrad_path<T>(d, dt, nchw_like(dy), false, nchw_like(dx));
    case DgradRoute::kClOutput:
      return "channels_last_dx > " + dgrad_path<T>(d, dt, dy, relu, dense_channels_last(dx, nullptr));
    case DgradRoute::kClCopies:
      return "channels_last_copies > " +
             dgrad_path<T>(d, dt, dense_channels_last(dy, nullptr), false, dense_channels_last(dx, nullptr));
    case DgradRoute::kTapsAsChannels: {
      const TapsMerge m = taps_merge(d, dx);
      for (const TapsPart& t : taps_parts(d, m))
        if (t.taps) return "taps_as_channels > " + engine_name(taps_part_plan<T>(d, m, dy, relu ? &dy : nullptr, dx, t));
      return "taps_as_channels > none";
    }
    case DgradRoute::kStaged:
      return staged_path<T>(residue_class(d, 0, 0).g);
    case DgradRoute::kResidueClasses:
      break;
  }
  // The engine of the first residue class that has taps (the classes differ only in their sizes).
  const In4<T> m = relu ? In4<T>{nullptr, dy.stride[0], dy.stride[1], dy.stride[2], dy.stride[3]} : In4<T>{};
  for (int64_t a = 0; a < std::min(d.stride_h, d.H); ++a)
    for (int64_t b = 0; b < std::min(d.stride_w, d.W); ++b) {
      const ResidueClass rc = residue_class(d, a, b);
      if (!rc.taps) continue;
      EnginePlan<T> e = plan_engine<T>(rc.g, in_view<T>(dy), m, residue_view(d, out_view<T>(dx), a, b));
      return "residue_classes > " + engine_name(e);
    }
  return "residue_classes > none";
}

template <typename T>
std::string conv_path(int pass, const ConvDesc& d, DType dt, const Tensor4& x, const Tensor4& y, bool relu) {
  if (pass == kConvFwd) return fwd_path<T>(d, dt, x, y);
  if (pass == kConvDgrad) return dgrad_path<T>(d, dt, y, relu, x);
  const ConvAlgo algo = wgrad_algo<T>(d, dt, x, y, relu ? &y : nullptr);
  switch (wgrad_staging<T>(algo, d, x, y, relu)) {
    case WgradStaging::kXAndDy: return std::string("channels_last_copies > ") + algo_name(algo);
    case WgradStaging::kX: return std::string("channels_last_x > ") + algo_name(algo);
    default: return algo_name(algo);
  }
}

}  // namespace

void conv2d_fwd(const ConvDesc& d, DType dt, const Tensor4& x, const Tensor4& w, const void* bias, const Tensor4& y,
                const ConvEpilogue& epilogue, WeightPack* pack, int nthreads) {
  const int nth = std::max(1, nthreads);
  Epi ep;
  ep.act = static_cast<Act>(epilogue.act);
  if (epilogue.residual != nullptr) {  // same strides as y: the residual sits a fixed distance from each output
    ep.has_res = true;
    ep.res_after = epilogue.residual_after;
    ep.res = (static_cast<const char*>(epilogue.residual) - static_cast<const char*>(y.data)) /
             (dt == kFloat64 ? 8 : 4);
  }
  if (dt == kFloat32)
    fwd_impl<float>(d, dt, x, w, bias, y, ep, pack, nth);
  else if (dt == kFloat64)
    fwd_impl<double>(d, dt, x, w, bias, y, ep, pack, nth);
  else
    throw std::invalid_argument("conv2d_fwd: unsupported dtype");
}

void conv2d_dgrad(const ConvDesc& d, DType dt, const Tensor4& dy, const Tensor4& w, const Tensor4* relu_y,
                  const Tensor4& dx, WeightPack* pack, int nthreads) {
  const int nth = std::max(1, nthreads);
  if (dt == kFloat32)
    dgrad_impl<float>(d, dt, dy, w, relu_y, dx, pack, nth);
  else if (dt == kFloat64)
    dgrad_impl<double>(d, dt, dy, w, relu_y, dx, pack, nth);
  else
    throw std::invalid_argument("conv2d_dgrad: unsupported dtype");
}

void conv2d_wgrad(const ConvDesc& d, DType dt, const Tensor4& dy, const Tensor4& x, const Tensor4* relu_y,
                  const Tensor4* dw, void* dbias, int nthreads) {
  const int nth = std::max(1, nthreads);
  if (dt == kFloat32)
    wgrad_impl<float>(d, dt, dy, x, relu_y, dw, dbias, nth);
  else if (dt == kFloat64)
    wgrad_impl<double>(d, dt, dy, x, relu_y, dw, dbias, nth);
  else
    throw std::invalid_argument("conv2d_wgrad: unsupported dtype");
}

int64_t conv2d_weight_pack_floats(const ConvDesc& d, DType dt, int pass) {
  return winograd_pack_floats(d, dt, pass == 0 ? WinogradPass::kForward : WinogradPass::kInputGrad);
}

PackInfo conv2d_dgrad_pack_info(const ConvDesc& d, DType dt, const Tensor4& dy, const Tensor4* relu_y,
                                const Tensor4& dx) {
  if (dt == kFloat32) return dgrad_pack_info<float>(d, dt, dy, relu_y, dx);
  if (dt == kFloat64) return dgrad_pack_info<double>(d, dt, dy, relu_y, dx);
  throw std::invalid_argument("conv2d_dgrad_pack_info: unsupported dtype");
}

PackInfo conv2d_fwd_pack_info(const ConvDesc& d, DType dt, const Tensor4& x, const Tensor4& y) {
  if (dt == kFloat32) return fwd_pack_info<float>(d, dt, x, y);
  if (dt == kFloat64) return fwd_pack_info<double>(d, dt, x, y);
  throw std::invalid_argument("conv2d_fwd_pack_info: unsupported dtype");
}

std::string conv2d_path(int pass, const ConvDesc& d, DType dt, const Tensor4& x, const Tensor4& y, bool relu) {
  if (pass != kConvFwd && pass != kConvDgrad && pass != kConvWgrad)
    throw std::invalid_argument("conv2d_path: pass must be 0 (fwd), 1 (dgrad) or 2 (wgrad)");
  if (dt == kFloat32) return conv_path<float>(pass, d, dt, x, y, relu);
  if (dt == kFloat64) return conv_path<double>(pass, d, dt, x, y, relu);
  throw std::invalid_argument("conv2d_path: unsupported dtype");
}

}  // namespace FC_ISA
}  // namespace cpu
}  // namespace fastconv

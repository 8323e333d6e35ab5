// Launchers of the conv2d kernels (kernels/conv2d_*.cuh): validate what the kernels rely on, choose
// the kernel (depthwise direct vs implicit GEMM), its tiling and compile-time flags (dtype, layout,
// bias, ReLU, mask: the one dispatch of each op), launch on the caller's stream and check the launch.
//
// Grids are 1-D: every kernel folds its block coordinates into blockIdx.x (2^31 - 1 blocks), so no
// size runs into the 65535 limit of grid.y / grid.z.
#include "launch.h"   // first: CUDA's names under nvcc, or the SIMT emulator's
#include "conv2d_tc.h"

#include "conv2d_depthwise.cuh"
#include "conv2d_dgrad.cuh"
#include "conv2d_fwd.cuh"
#include "conv2d_igemm.cuh"
#include "conv2d_wgrad.cuh"

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace fc {
namespace {

// Every per-dimension coordinate is a 32-bit int in the kernels, with room for the kOutside sentinel
// plus a tap offset: sizes, padded extents and filter spans stay below 2^28.
constexpr std::int64_t kMaxDim = std::int64_t(1) << 28;
constexpr std::int64_t kMaxBlocks = 2147483647;

[[noreturn]] void fail(const char* op, const std::string& what) {
  throw std::invalid_argument(std::string("fastconv CUDA ") + op + ": " + what);
}

void check_dim(const char* op, const char* name, std::int64_t v) {
  if (v < 0 || v >= kMaxDim) fail(op, std::string(name) + " = " + std::to_string(v) + " is outside [0, 2^28)");
}

ConvGeom make_geom(const char* op, const ConvShape& s) {
  if (s.groups <= 0 || s.C % s.groups != 0 || s.K % s.groups != 0)
    fail(op, "groups = " + std::to_string(s.groups) + " must divide C = " + std::to_string(s.C) + " and K = " +
                 std::to_string(s.K));
  if (s.stride_h <= 0 || s.stride_w <= 0 || s.dil_h <= 0 || s.dil_w <= 0 || s.pad_h < 0 || s.pad_w < 0)
    fail(op, "stride and dilation must be positive and padding non-negative");
  check_dim(op, "N", s.N); check_dim(op, "C", s.C); check_dim(op, "H", s.H); check_dim(op, "W", s.W);
  check_dim(op, "K", s.K); check_dim(op, "R", s.R); check_dim(op, "S", s.S); check_dim(op, "P", s.P);
  check_dim(op, "Q", s.Q);
  check_dim(op, "H + 2 * pad_h", s.H + 2 * std::int64_t(s.pad_h));
  check_dim(op, "W + 2 * pad_w", s.W + 2 * std::int64_t(s.pad_w));
  check_dim(op, "(R - 1) * dil_h + 1", (s.R - 1) * std::int64_t(s.dil_h) + 1);
  check_dim(op, "(S - 1) * dil_w + 1", (s.S - 1) * std::int64_t(s.dil_w) + 1);
  check_dim(op, "P * stride_h", s.P * std::int64_t(s.stride_h));
  check_dim(op, "Q * stride_w", s.Q * std::int64_t(s.stride_w));
  if ((s.C / s.groups) * s.R * s.S >= kMaxBlocks)   // one output channel's filter: an int in the kernels
    fail(op, "C / groups * R * S = " + std::to_string((s.C / s.groups) * s.R * s.S) + " must be below 2^31");
  ConvGeom g;
  g.N = int(s.N); g.C = int(s.C); g.H = int(s.H); g.W = int(s.W); g.K = int(s.K); g.R = int(s.R); g.S = int(s.S);
  g.P = int(s.P); g.Q = int(s.Q);
  g.stride_h = s.stride_h; g.stride_w = s.stride_w; g.pad_h = s.pad_h; g.pad_w = s.pad_w;
  g.dil_h = s.dil_h; g.dil_w = s.dil_w; g.groups = s.groups;
  g.Cg = int(s.C / s.groups); g.Kg = int(s.K / s.groups);
  return g;
}

Tensor4 as_t4(const HostTensor4& t) {
  Tensor4 r;
  r.n = t.size[0]; r.c = t.size[1]; r.h = t.size[2]; r.w = t.size[3];
  r.sn = t.stride[0]; r.sc = t.stride[1]; r.sh = t.stride[2]; r.sw = t.stride[3];
  return r;
}

void check_tensor(const char* op, const char* name, const HostTensor4& t, std::int64_t n, std::int64_t c,
                  std::int64_t h, std::int64_t w) {
  const std::int64_t want[4] = {n, c, h, w};
  for (int i = 0; i < 4; ++i) {
    if (t.size[i] != want[i])
      fail(op, std::string(name) + " has size " + std::to_string(t.size[i]) + " in dimension " + std::to_string(i) +
                   ", expected " + std::to_string(want[i]));
    if (t.stride[i] < 0) fail(op, std::string(name) + " has a negative stride");
  }
  if (t.data == nullptr && n * c * h * w > 0) fail(op, std::string(name) + " is a null pointer");
}

// Channels-last order (the kernels' NHWC gathers and stores) when channels are closer in memory than
// columns; correctness does not depend on it, only coalescing.
bool channels_last(const HostTensor4& t) { return t.stride[1] < t.stride[3]; }

// Depthwise direct kernels for groups == C (one input channel per group); one image's outputs and
// inputs must fit their 32-bit per-image index.
bool use_depthwise(const ConvShape& s) {
  constexpr std::int64_t kMaxPerImage = std::int64_t(1) << 30;
  return s.groups == s.C && s.K * s.P * s.Q < kMaxPerImage && s.C * s.H * s.W < kMaxPerImage;
}

unsigned blocks_or_fail(const char* op, std::int64_t blocks) {
  if (blocks <= 0 || blocks > kMaxBlocks) fail(op, "problem too large for one launch (" + std::to_string(blocks) + " blocks)");
  return unsigned(blocks);
}

std::int64_t cdiv(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

template <class F>
void dispatch_bool(bool b, F&& f) {
  if (b) f(std::true_type{});
  else f(std::false_type{});
}

// Calls f(std::integral_constant<int, TILE>{}) with the tiling (conv2d_igemm.cuh) for element type T
// and `cols` GEMM columns (Kg, or Cg for dgrad): 128x128 tiles above 64 columns, else 128x64 (a
// 128-wide tile would leave half its columns idle); fp64 always 64x64 with 4x4 micro-tiles.
template <class T, class F>
void dispatch_tile(std::int64_t cols, F&& f) {
  if constexpr (std::is_same<T, double>::value) {
    f(std::integral_constant<int, igemm::kTileF64>{});
  } else {
    if (cols > 64) f(std::integral_constant<int, igemm::kTileLarge>{});
    else f(std::integral_constant<int, igemm::kTileNarrow>{});
  }
}

std::int64_t gcd(std::int64_t a, std::int64_t b) {
  while (b) { const std::int64_t t = a % b; a = b; b = t; }
  return a;
}

// dgrad stride phases: the first tap r in [0, rstep) with r * dil = phase + pad (mod stride), or -1
// when no tap reaches the phase (then none does: the solutions repeat every rstep = stride / gcd).
int dgrad_first_tap(int phase, int pad, int dil, int stride, int rstep, int R) {
  for (int r = 0; r < rstep && r < R; ++r)
    if ((phase + pad - std::int64_t(r) * dil) % stride == 0) return r;
  return -1;
}

// ---- wgrad split-reduction plan ------------------------------------------------------------------
// Enough (tile, split) blocks to fill a large GPU (~4 waves of 132 SMs at 1 block each), each split
// at least kMinKtilesPerSplit k-tiles (256 output pixels) long so the partial sums' traffic stays
// small against the GEMM, and the workspace below 256 MiB.
constexpr std::int64_t kWgradTargetBlocks = 512;
constexpr std::int64_t kMinKtilesPerSplit = 32;
constexpr std::int64_t kMaxWorkspaceBytes = std::int64_t(256) << 20;

struct WgradPlan {
  std::int64_t m_tiles = 0, n_tiles = 0, ktiles = 0, kt_per_split = 0;
  int splits = 1;
  std::size_t workspace_bytes = 0;
};

template <class Cfg, class AccT>
WgradPlan wgrad_plan(const ConvShape& s) {
  WgradPlan p;
  const std::int64_t Cg = s.C / s.groups, Kg = s.K / s.groups, CRS = Cg * s.R * s.S;
  p.m_tiles = cdiv(CRS, Cfg::BM);
  p.n_tiles = cdiv(Kg, Cfg::BN);
  p.ktiles = cdiv(s.N * s.P * s.Q, Cfg::BK);
  const std::int64_t tiles = p.m_tiles * p.n_tiles * s.groups;
  std::int64_t splits = cdiv(kWgradTargetBlocks, tiles);
  splits = std::min(splits, p.ktiles / kMinKtilesPerSplit);
  splits = std::min(splits, kMaxWorkspaceBytes / std::max<std::int64_t>(1, s.K * CRS * std::int64_t(sizeof(AccT))));
  splits = std::max<std::int64_t>(splits, 1);
  p.kt_per_split = cdiv(p.ktiles, splits);
  p.splits = int(cdiv(p.ktiles, p.kt_per_split));   // no empty split
  p.workspace_bytes = p.splits > 1 ? std::size_t(p.splits) * std::size_t(s.K * CRS) * sizeof(AccT) : 0;
  return p;
}

template <class T>
std::size_t wgrad_workspace_bytes_t(const ConvShape& s) {
  if (use_depthwise(s)) return 0;
  std::size_t bytes = 0;
  dispatch_tile<T>(s.K / s.groups, [&](auto tile) {
    bytes = wgrad_plan<typename igemm::TileOf<decltype(tile)::value>::type, typename Acc<T>::type>(s).workspace_bytes;
  });
  return bytes;
}

// ---- bias gradient / depthwise weight gradient: channel reductions ----------------------------------
template <class T>
void launch_channel_reduce(const char* op, const ConvShape& s, const ConvGeom& g, const HostTensor4& dy,
                           const HostTensor4* relu_y, const HostTensor4* x, const HostTensor4* dw, void* out,
                           std::uintptr_t stream) {
  ChannelReduceParams<T> p{};
  p.N = g.N; p.P = g.P; p.Q = g.Q; p.K = g.K;
  p.H = g.H; p.W = g.W; p.R = g.R; p.S = g.S; p.sh = g.stride_h; p.sw = g.stride_w; p.ph = g.pad_h;
  p.pw = g.pad_w; p.dh = g.dil_h; p.dw = g.dil_w; p.mult = g.Kg;
  p.dy = as_t4(dy);
  p.dyp = static_cast<const T*>(dy.data);
  if (relu_y) { p.ry = as_t4(*relu_y); p.ryp = static_cast<const T*>(relu_y->data); }
  if (x) { p.x = as_t4(*x); p.xp = static_cast<const T*>(x->data); }
  if (dw) p.out = as_t4(*dw);
  p.outp = static_cast<T*>(out);
  // NHWC: 32 adjacent channels x 8 pixel lanes; NCHW: one channel x 256 pixel lanes.
  const bool cl = channels_last(dy);
  const int CB = cl ? 32 : 1, PY = 256 / CB;
  p.k_chunks = int(cdiv(g.K, CB));
  p.pix = igemm::make_radix(g.N, g.P, g.Q, PY);
  const std::int64_t taps = x ? std::int64_t(g.R) * g.S : 1;
  const unsigned blocks = blocks_or_fail(op, p.k_chunks * taps);
  dispatch_bool(relu_y != nullptr, [&](auto mask) {
    dispatch_bool(x != nullptr, [&](auto with_x) {
      auto kernel = conv2d_channel_reduce_kernel<T, decltype(mask)::value, decltype(with_x)::value>;
      FC_LAUNCH(kernel, dim3(blocks), dim3(CB, PY), 0, as_stream(stream), p);
      FC_CHECK_LAUNCH(x ? "conv2d_depthwise_wgrad" : "conv2d_bias_grad");
    });
  });
}

// ---- forward --------------------------------------------------------------------------------------
template <class T>
void fwd_depthwise(const ConvShape& s, const ConvGeom& g, const HostTensor4& x, const HostTensor4& w,
                   const void* bias, const HostTensor4& y, bool relu, std::uintptr_t stream) {
  DepthwiseParams<T> p{};
  p.g = g;
  p.x = as_t4(x); p.w = as_t4(w); p.y = as_t4(y);
  p.xp = static_cast<const T*>(x.data); p.wp = static_cast<const T*>(w.data);
  p.bias = static_cast<const T*>(bias); p.outp = static_cast<T*>(y.data);
  p.cl = channels_last(y);
  p.chunks = int(cdiv(s.K * s.P * s.Q, kDepthwiseThreads));
  const unsigned blocks = blocks_or_fail("conv2d_fwd", s.N * p.chunks);
  dispatch_bool(bias != nullptr, [&](auto hb) {
    dispatch_bool(relu, [&](auto fr) {
      auto kernel = conv2d_depthwise_fwd_kernel<T, decltype(hb)::value, decltype(fr)::value>;
      FC_LAUNCH(kernel, dim3(blocks), dim3(kDepthwiseThreads), 0, as_stream(stream), p);
      FC_CHECK_LAUNCH("conv2d_depthwise_fwd");
    });
  });
}

template <class T>
void fwd_igemm(const ConvShape& s, const ConvGeom& g, const HostTensor4& x, const HostTensor4& w,
               const void* bias, const HostTensor4& y, bool relu, std::uintptr_t stream) {
  const bool cl = channels_last(x);
  dispatch_tile<T>(g.Kg, [&](auto tile) {
    constexpr int TILE = decltype(tile)::value;
    using Cfg = typename igemm::TileOf<TILE>::type;
    Conv2dFwdParams<T> p{};
    p.g = g;
    p.x = as_t4(x); p.w = as_t4(w); p.y = as_t4(y);
    p.xp = static_cast<const T*>(x.data); p.wp = static_cast<const T*>(w.data);
    p.bias = static_cast<const T*>(bias); p.yp = static_cast<T*>(y.data);
    p.M = s.N * s.P * s.Q;
    p.m_tiles = cdiv(p.M, Cfg::BM);
    p.n_tiles = int(cdiv(g.Kg, Cfg::BN));
    p.kr = cl ? igemm::make_radix(g.R, g.S, g.Cg, Cfg::BK) : igemm::make_radix(g.Cg, g.R, g.S, Cfg::BK);
    const unsigned blocks = blocks_or_fail("conv2d_fwd", p.m_tiles * p.n_tiles * g.groups);
    dispatch_bool(cl, [&](auto cl_t) {
      dispatch_bool(bias != nullptr, [&](auto hb) {
        dispatch_bool(relu, [&](auto fr) {
          auto kernel = conv2d_fwd_kernel<T, TILE, decltype(cl_t)::value, decltype(hb)::value, decltype(fr)::value>;
          FC_LAUNCH(kernel, dim3(blocks), dim3(Cfg::NT), 0, as_stream(stream), p);
          FC_CHECK_LAUNCH("conv2d_fwd");
        });
      });
    });
  });
}

// ---- dgrad ----------------------------------------------------------------------------------------
template <class T>
void dgrad_depthwise(const ConvShape& s, const ConvGeom& g, const HostTensor4& dy, const HostTensor4& w,
                     const HostTensor4* relu_y, const HostTensor4& dx, std::uintptr_t stream) {
  DepthwiseParams<T> p{};
  p.g = g;
  p.x = as_t4(dx); p.w = as_t4(w); p.y = as_t4(dy);
  p.xp = static_cast<const T*>(dy.data); p.wp = static_cast<const T*>(w.data);
  if (relu_y) { p.ry = as_t4(*relu_y); p.ryp = static_cast<const T*>(relu_y->data); }
  p.outp = static_cast<T*>(dx.data);
  p.cl = channels_last(dx);
  p.chunks = int(cdiv(s.C * s.H * s.W, kDepthwiseThreads));
  const unsigned blocks = blocks_or_fail("conv2d_dgrad", s.N * p.chunks);
  dispatch_bool(relu_y != nullptr, [&](auto mask) {
    auto kernel = conv2d_depthwise_dgrad_kernel<T, decltype(mask)::value>;
    FC_LAUNCH(kernel, dim3(blocks), dim3(kDepthwiseThreads), 0, as_stream(stream), p);
    FC_CHECK_LAUNCH("conv2d_depthwise_dgrad");
  });
}

template <class T>
void dgrad_igemm(const ConvShape& s, const ConvGeom& g, const HostTensor4& dy, const HostTensor4& w,
                 const HostTensor4* relu_y, const HostTensor4& dx, std::uintptr_t stream) {
  const bool cl = channels_last(dy);
  dispatch_tile<T>(g.Cg, [&](auto tile) {
    constexpr int TILE = decltype(tile)::value;
    using Cfg = typename igemm::TileOf<TILE>::type;
    Conv2dDgradParams<T> p{};
    p.g = g;
    p.dy = as_t4(dy); p.w = as_t4(w); p.dx = as_t4(dx);
    p.dyp = static_cast<const T*>(dy.data); p.wp = static_cast<const T*>(w.data); p.dxp = static_cast<T*>(dx.data);
    if (relu_y) { p.ry = as_t4(*relu_y); p.ryp = static_cast<const T*>(relu_y->data); }
    p.rstep_h = int(s.stride_h / gcd(s.stride_h, s.dil_h));
    p.rstep_w = int(s.stride_w / gcd(s.stride_w, s.dil_w));
    p.dp_h = p.rstep_h * s.dil_h / s.stride_h;
    p.dp_w = p.rstep_w * s.dil_w / s.stride_w;
    p.n_tiles = int(cdiv(g.Cg, Cfg::BN));
    // One launch per stride phase (pixels h = ph_h + hh * stride_h, w = ph_w + ww * stride_w).
    for (int ph_h = 0; ph_h < s.stride_h && ph_h < s.H; ++ph_h) {
      for (int ph_w = 0; ph_w < s.stride_w && ph_w < s.W; ++ph_w) {
        p.ph_h = ph_h;
        p.ph_w = ph_w;
        p.Hp = int(cdiv(s.H - ph_h, s.stride_h));
        p.Wp = int(cdiv(s.W - ph_w, s.stride_w));
        p.Mp = s.N * p.Hp * p.Wp;
        p.m_tiles = cdiv(p.Mp, Cfg::BM);
        const int r0 = dgrad_first_tap(ph_h, s.pad_h, s.dil_h, s.stride_h, p.rstep_h, int(s.R));
        const int s0 = dgrad_first_tap(ph_w, s.pad_w, s.dil_w, s.stride_w, p.rstep_w, int(s.S));
        const std::int64_t nR = r0 < 0 ? 0 : cdiv(s.R - r0, p.rstep_h), nS = s0 < 0 ? 0 : cdiv(s.S - s0, p.rstep_w);
        p.r0 = std::max(r0, 0);
        p.s0 = std::max(s0, 0);
        // Output row of tap jr for pixel hh: (ph_h + hh*sh + pad - (r0 + jr*rstep)*dh) / sh = hh + base_p - jr*dp.
        p.base_p = r0 < 0 ? 0 : (ph_h + s.pad_h - r0 * s.dil_h) / s.stride_h;
        p.base_q = s0 < 0 ? 0 : (ph_w + s.pad_w - s0 * s.dil_w) / s.stride_w;
        p.ktiles = int(cdiv(g.Kg * nR * nS, Cfg::BK));
        p.kr = igemm::Radix3{1, 1, 0, 0, 0, 0};
        if (p.ktiles > 0)
          p.kr = cl ? igemm::make_radix(int(nR), int(nS), g.Kg, Cfg::BK) : igemm::make_radix(g.Kg, int(nR), int(nS), Cfg::BK);
        const unsigned blocks = blocks_or_fail("conv2d_dgrad", p.m_tiles * p.n_tiles * g.groups);
        dispatch_bool(cl, [&](auto cl_t) {
          dispatch_bool(relu_y != nullptr, [&](auto mask) {
            auto kernel = conv2d_dgrad_kernel<T, TILE, decltype(cl_t)::value, decltype(mask)::value>;
            FC_LAUNCH(kernel, dim3(blocks), dim3(Cfg::NT), 0, as_stream(stream), p);
            FC_CHECK_LAUNCH("conv2d_dgrad");
          });
        });
      }
    }
  });
}

// ---- wgrad ----------------------------------------------------------------------------------------
template <class T>
void wgrad_igemm(const ConvShape& s, const ConvGeom& g, const HostTensor4& dy, const HostTensor4& x,
                 const HostTensor4* relu_y, const HostTensor4& dw, void* workspace, std::size_t workspace_bytes,
                 std::uintptr_t stream) {
  using AccT = typename Acc<T>::type;
  const bool cl = channels_last(x);
  dispatch_tile<T>(g.Kg, [&](auto tile) {
    constexpr int TILE = decltype(tile)::value;
    using Cfg = typename igemm::TileOf<TILE>::type;
    const WgradPlan plan = wgrad_plan<Cfg, AccT>(s);
    if (plan.workspace_bytes > 0 && (workspace == nullptr || workspace_bytes < plan.workspace_bytes))
      fail("conv2d_wgrad", "workspace of " + std::to_string(workspace_bytes) + " bytes, need " +
                               std::to_string(plan.workspace_bytes) + " (conv2d_wgrad_workspace_bytes)");
    Conv2dWgradParams<T> p{};
    p.g = g;
    p.dy = as_t4(dy); p.x = as_t4(x); p.dw = as_t4(dw);
    p.dyp = static_cast<const T*>(dy.data); p.xp = static_cast<const T*>(x.data); p.dwp = static_cast<T*>(dw.data);
    if (relu_y) { p.ry = as_t4(*relu_y); p.ryp = static_cast<const T*>(relu_y->data); }
    p.ws = plan.splits > 1 ? static_cast<AccT*>(workspace) : nullptr;
    p.m_tiles = plan.m_tiles;
    p.n_tiles = int(plan.n_tiles);
    p.splits = plan.splits;
    p.kt_per_split = int(plan.kt_per_split);
    p.ktiles = plan.ktiles;
    p.kr = igemm::make_radix(g.N, g.P, g.Q, Cfg::BK);
    const unsigned blocks = blocks_or_fail("conv2d_wgrad", plan.m_tiles * plan.n_tiles * g.groups * plan.splits);
    dispatch_bool(cl, [&](auto cl_t) {
      dispatch_bool(relu_y != nullptr, [&](auto mask) {
        auto kernel = conv2d_wgrad_kernel<T, TILE, decltype(cl_t)::value, decltype(mask)::value>;
        FC_LAUNCH(kernel, dim3(blocks), dim3(Cfg::NT), 0, as_stream(stream), p);
        FC_CHECK_LAUNCH("conv2d_wgrad");
      });
    });
    if (plan.splits > 1) {
      const std::int64_t total = s.K * (s.C / s.groups) * s.R * s.S;
      const unsigned rblocks = unsigned(std::min<std::int64_t>(cdiv(total, 256), 65536));   // grid-stride loop
      auto kernel = conv2d_wgrad_reduce_kernel<T>;
      FC_LAUNCH(kernel, dim3(rblocks), dim3(256), 0, as_stream(stream), static_cast<const AccT*>(workspace),
                plan.splits, g.K, g.Cg, g.R, g.S, cl, as_t4(dw), static_cast<T*>(dw.data));
      FC_CHECK_LAUNCH("conv2d_wgrad_reduce");
    }
  });
}

}  // namespace

void conv2d_fwd(const ConvShape& s, DType dtype, const HostTensor4& x, const HostTensor4& w, const void* bias,
                const HostTensor4& y, bool relu, std::uintptr_t stream) {
  const char* op = "conv2d_fwd";
  const ConvGeom g = make_geom(op, s);
  check_tensor(op, "input", x, s.N, s.C, s.H, s.W);
  check_tensor(op, "weight", w, s.K, s.C / s.groups, s.R, s.S);
  check_tensor(op, "output", y, s.N, s.K, s.P, s.Q);
  if (s.N == 0) return;
  if (s.tensor_cores && !use_depthwise(s) &&
      conv2d_fwd_tensor_core(s, dtype, x, w, bias, y, relu, s.allow_tf32, stream))
    return;
  dispatch_dtype(dtype, op, [&](auto tag) {
    using T = decltype(tag);
    if (use_depthwise(s)) fwd_depthwise<T>(s, g, x, w, bias, y, relu, stream);
    else fwd_igemm<T>(s, g, x, w, bias, y, relu, stream);
  });
}

void conv2d_dgrad(const ConvShape& s, DType dtype, const HostTensor4& dy, const HostTensor4& w,
                  const HostTensor4* relu_y, const HostTensor4& dx, std::uintptr_t stream) {
  const char* op = "conv2d_dgrad";
  const ConvGeom g = make_geom(op, s);
  check_tensor(op, "grad_output", dy, s.N, s.K, s.P, s.Q);
  check_tensor(op, "weight", w, s.K, s.C / s.groups, s.R, s.S);
  check_tensor(op, "grad_input", dx, s.N, s.C, s.H, s.W);
  if (relu_y) check_tensor(op, "relu_output", *relu_y, s.N, s.K, s.P, s.Q);
  if (s.N == 0) return;
  if (s.tensor_cores && !use_depthwise(s) &&
      conv2d_dgrad_tensor_core(s, dtype, dy, w, relu_y, dx, s.allow_tf32, stream))
    return;
  dispatch_dtype(dtype, op, [&](auto tag) {
    using T = decltype(tag);
    if (use_depthwise(s)) dgrad_depthwise<T>(s, g, dy, w, relu_y, dx, stream);
    else dgrad_igemm<T>(s, g, dy, w, relu_y, dx, stream);
  });
}

std::size_t conv2d_wgrad_workspace_bytes(const ConvShape& s, DType dtype) {
  make_geom("conv2d_wgrad_workspace_bytes", s);
  std::size_t bytes = 0;
  dispatch_dtype(dtype, "conv2d_wgrad_workspace_bytes", [&](auto tag) { bytes = wgrad_workspace_bytes_t<decltype(tag)>(s); });
  // The layouts (which decide whether the tensor-core path runs) are not known here: room for either.
  if (s.tensor_cores && !use_depthwise(s) && (dtype != kFloat64))
    bytes = std::max(bytes, conv2d_wgrad_tc_workspace_bytes(s, dtype));
  return bytes;
}

void conv2d_wgrad(const ConvShape& s, DType dtype, const HostTensor4& dy, const HostTensor4& x,
                  const HostTensor4* relu_y, const HostTensor4* dw, void* db, void* workspace,
                  std::size_t workspace_bytes, std::uintptr_t stream) {
  const char* op = "conv2d_wgrad";
  const ConvGeom g = make_geom(op, s);
  check_tensor(op, "grad_output", dy, s.N, s.K, s.P, s.Q);
  check_tensor(op, "input", x, s.N, s.C, s.H, s.W);
  if (relu_y) check_tensor(op, "relu_output", *relu_y, s.N, s.K, s.P, s.Q);
  if (dw) check_tensor(op, "grad_weight", *dw, s.K, s.C / s.groups, s.R, s.S);
  if (s.N == 0) return;
  dispatch_dtype(dtype, op, [&](auto tag) {
    using T = decltype(tag);
    if (dw) {
      if (use_depthwise(s)) launch_channel_reduce<T>("conv2d_wgrad", s, g, dy, relu_y, &x, dw, dw->data, stream);
      else if (!(s.tensor_cores && conv2d_wgrad_tensor_core(s, dtype, dy, x, relu_y, *dw, workspace, workspace_bytes,
                                                            s.allow_tf32, stream)))
        wgrad_igemm<T>(s, g, dy, x, relu_y, *dw, workspace, workspace_bytes, stream);
    }
    if (db) launch_channel_reduce<T>("conv2d_wgrad", s, g, dy, relu_y, nullptr, nullptr, db, stream);
  });
}

}  // namespace fc

// Launchers of the tensor-core convolution kernels (kernels/conv2d_tc.cuh): eligibility, the choice of
// tile configuration (and wgrad's split), the one dispatch over dtype / bias / ReLU, the launch on the
// caller's stream. See conv2d_tc.h for the contract (false = not eligible, the caller runs SIMT).
#include "launch.h"   // first: CUDA's names under nvcc, or the SIMT emulator's

#include "conv2d_tc.cuh"
#include "conv2d_tc.h"

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace fc {
namespace {

// The configurations of TcConfig, in its order (see conv2d_tc.cuh for the smem and register budget).
using Tc128x128 = tc::TcTile<128, 128, 2, 4, 3>;
using Tc128x64 = tc::TcTile<128, 64, 2, 2, 4>;
using Tc64x128 = tc::TcTile<64, 128, 2, 2, 4>;
using Tc64x64 = tc::TcTile<64, 64, 2, 2, 4>;

// Per-dimension coordinates are 32-bit ints in the kernels (with room for the outside-row sentinel).
constexpr std::int64_t kMaxDim = std::int64_t(1) << 28;
constexpr std::int64_t kMaxGridX = 2147483647;
// wgrad split: enough blocks for ~4 waves of 132 SMs, at least kMinKtilesPerSplit k-tiles per split,
// fp32 partial sums below 256 MiB.
constexpr std::int64_t kWgradTargetBlocks = 512;
constexpr std::int64_t kMinKtilesPerSplit = 16;
constexpr std::int64_t kMaxWorkspaceBytes = std::int64_t(256) << 20;

[[noreturn]] void fail(const char* op, const std::string& what) {
  throw std::invalid_argument(std::string("fastconv CUDA ") + op + ": " + what);
}

std::int64_t cdiv(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

struct DeviceInfo {
  int major = 0, sms = 0;
};

// The current device's compute capability (major) and multiprocessor count. The emulator runs the
// sm_80 code path; 108 SMs (A100) stand in for the heuristic there.
DeviceInfo device_info() {
  DeviceInfo d;
#if defined(__CUDACC__)
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&d.major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) {
    (void)cudaGetLastError();   // not sticky: leave no error for the next launch check
    return DeviceInfo{};
  }
#else
  d.major = 8;
  d.sms = 108;
#endif
  return d;
}

int vec_of(DType dtype) { return dtype == kFloat32 ? 4 : 8; }    // elements per 16-byte chunk
int bk_of(DType dtype) { return 4 * vec_of(dtype); }              // k-tile depth: 4 chunks

// A stride matters only where the dimension has more than one index.
bool stride_ok(const HostTensor4& t, int dim, std::int64_t vec) { return t.size[dim] <= 1 || t.stride[dim] % vec == 0; }
bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

// "" when t is channels-last with 16-byte chunks along the channels, else why not.
std::string chunked(const HostTensor4& t, const char* name, std::int64_t vec) {
  if (t.stride[1] != 1 && t.size[1] > 1)
    return std::string(name) + " is not channels_last (channel stride " + std::to_string(t.stride[1]) + ")";
  if (!stride_ok(t, 0, vec) || !stride_ok(t, 2, vec) || !stride_ok(t, 3, vec) || !aligned16(t.data))
    return std::string(name) + " strides or address not 16-byte aligned";
  return "";
}

std::string common_ineligible(const ConvShape& s, DType dtype, bool allow_tf32) {
  if (dtype == kFloat64) return "float64 has no tensor-core path";
  if (dtype == kFloat32 && !allow_tf32) return "float32 without allow_tf32 (TF32 not allowed)";
  if (dtype != kFloat32 && dtype != kFloat16 && dtype != kBFloat16) return "unsupported dtype";
  if (s.groups <= 0 || s.C % s.groups != 0 || s.K % s.groups != 0) return "inconsistent groups";
  for (std::int64_t v : {s.N, s.C, s.H, s.W, s.K, s.R, s.S, s.P, s.Q, s.H + 2 * std::int64_t(s.pad_h),
                         s.W + 2 * std::int64_t(s.pad_w), s.P * s.stride_h, s.Q * s.stride_w,
                         (s.R - 1) * s.dil_h + 1, (s.S - 1) * s.dil_w + 1, s.P * s.Q, s.H * s.W})
    if (v < 0 || v >= kMaxDim) return "a size is outside [0, 2^28)";
  if (s.R * s.S * std::max(s.C, s.K) >= (std::int64_t(1) << 30)) return "R * S * channels too large";
  if (s.groups > std::int64_t(kMaxGridYZ)) return "too many groups for the grid";
  return "";
}

std::string multiple(const char* what, std::int64_t v, std::int64_t vec) {
  return std::string(what) + " = " + std::to_string(v) + " is not a multiple of " + std::to_string(vec) +
         " (16-byte cp.async chunks)";
}

struct Candidate {
  int id, bm, bn, occupancy;   // occupancy: co-resident blocks per SM (smem, registers, threads)
  double efficiency;           // relative mma throughput of a block (operand reuse of its tile)
};
constexpr Candidate kCandidates[] = {
    {kTc128x128, 128, 128, 2, 1.0},
    {kTc128x64, 128, 64, 3, 0.9},
    {kTc64x128, 64, 128, 3, 0.9},
    {kTc64x64, 64, 64, 4, 0.75},
};

// Tile for a GEMM of M x N (x batch independent GEMMs). Time model: an SM runs b = ceil(blocks / sms)
// blocks; a block's work is bm * bn / efficiency, done at the SM's throughput with min(b, occupancy)
// blocks resident (j resident blocks hide latency as j / (j + 0.5) of peak). The reduction length is
// common to all candidates. Untuned: a first guess until GPU measurements (bench/) refine it.
int choose_tile(std::int64_t M, std::int64_t N, std::int64_t batch, int sms) {
  if (sms <= 0) sms = std::max(1, device_info().sms);
  int best = kTc64x64;
  double best_cost = 0;
  for (const Candidate& c : kCandidates) {
    const std::int64_t blocks = cdiv(M, c.bm) * cdiv(N, c.bn) * std::max<std::int64_t>(1, batch);
    const std::int64_t b = cdiv(blocks, sms);
    const double resident = double(std::min<std::int64_t>(b, c.occupancy));
    const double cost = double(b) * c.bm * c.bn / c.efficiency / (resident / (resident + 0.5));
    if (best_cost == 0 || cost < best_cost) {
      best = c.id;
      best_cost = cost;
    }
  }
  return best;
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

void check_args(const char* op, const ConvShape& s, int config) {
  if (s.groups <= 0 || s.C % s.groups != 0 || s.K % s.groups != 0)
    fail(op, "groups = " + std::to_string(s.groups) + " must divide C and K");
  if (config < kTcAuto || config >= kTcConfigs) fail(op, "unknown tile configuration " + std::to_string(config));
}

// Calls f(T{}, Cfg{}) for the dtype and configuration.
template <class F>
void dispatch(DType dtype, int config, F&& f) {
  auto with_cfg = [&](auto tag) {
    switch (config) {
      case kTc128x128: f(tag, Tc128x128{}); break;
      case kTc128x64: f(tag, Tc128x64{}); break;
      case kTc64x128: f(tag, Tc64x128{}); break;
      default: f(tag, Tc64x64{}); break;
    }
  };
  switch (dtype) {
    case kFloat32: with_cfg(float{}); break;
    case kFloat16: with_cfg(__half{}); break;
    default: with_cfg(__nv_bfloat16{}); break;
  }
}

template <class K>
void set_smem(K kernel, int bytes) {
#if defined(__CUDACC__)
  if (bytes > 48 * 1024) cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
#else
  (void)kernel;
  (void)bytes;
#endif
}

// ---- forward ------------------------------------------------------------------------------------------
template <class T, class Cfg>
void launch_fwd(const ConvShape& s, const HostTensor4& x, const HostTensor4& w, const void* bias,
                const HostTensor4& y, bool relu, std::uintptr_t stream) {
  const int Cg = int(s.C / s.groups), Kg = int(s.K / s.groups);
  const int bk = Cfg::CHUNKS * tc::MmaOp<T>::VEC;
  tc::TcFwdParams<T> p;
  p.x = static_cast<const T*>(x.data);
  p.w = static_cast<const T*>(w.data);
  p.bias = static_cast<const T*>(bias);
  p.y = static_cast<T*>(y.data);
  p.x_sn = x.stride[0]; p.x_sh = x.stride[2]; p.x_sw = x.stride[3];
  p.w_sk = w.stride[0]; p.w_sr = w.stride[2]; p.w_ss = w.stride[3];
  p.y_sn = y.stride[0]; p.y_sk = y.stride[1]; p.y_sp = y.stride[2]; p.y_sq = y.stride[3];
  p.M = s.N * s.P * s.Q;
  p.PQ = int(s.P * s.Q);
  p.Q = int(s.Q);
  p.H = int(s.H); p.W = int(s.W); p.R = int(s.R); p.S = int(s.S);
  p.stride_h = s.stride_h; p.stride_w = s.stride_w; p.pad_h = s.pad_h; p.pad_w = s.pad_w;
  p.dil_h = s.dil_h; p.dil_w = s.dil_w;
  p.Cg = Cg;
  p.Kg = Kg;
  p.ktiles = int(cdiv(s.R * s.S * Cg, bk));
  p.step_c = bk % Cg;
  p.step_s = int((bk / Cg) % s.S);
  p.step_r = int(bk / (std::int64_t(Cg) * s.S));

  const dim3 grid(unsigned(cdiv(p.M, Cfg::BM)), unsigned(cdiv(Kg, Cfg::BN)), unsigned(s.groups));
  auto kernel = bias ? (relu ? tc::conv2d_fwd_tc<T, Cfg, true, true> : tc::conv2d_fwd_tc<T, Cfg, true, false>)
                     : (relu ? tc::conv2d_fwd_tc<T, Cfg, false, true> : tc::conv2d_fwd_tc<T, Cfg, false, false>);
  set_smem(kernel, Cfg::SMEM_BYTES);
  FC_LAUNCH(kernel, grid, dim3(Cfg::NT), Cfg::SMEM_BYTES, as_stream(stream), p);
  FC_CHECK_LAUNCH("conv2d_fwd_tc");
}

// ---- dgrad --------------------------------------------------------------------------------------------
template <class T, class Cfg>
void launch_dgrad(const ConvShape& s, const HostTensor4& dy, const HostTensor4& w, const HostTensor4& dx,
                  std::uintptr_t stream) {
  const int Cg = int(s.C / s.groups), Kg = int(s.K / s.groups);
  const int bk = Cfg::CHUNKS * tc::MmaOp<T>::VEC;
  tc::TcDgradParams<T> p;
  p.dy = static_cast<const T*>(dy.data);
  p.w = static_cast<const T*>(w.data);
  p.dx = static_cast<T*>(dx.data);
  p.dy_sn = dy.stride[0]; p.dy_sp = dy.stride[2]; p.dy_sq = dy.stride[3];
  p.w_sk = w.stride[0]; p.w_sr = w.stride[2]; p.w_ss = w.stride[3];
  p.dx_sn = dx.stride[0]; p.dx_sc = dx.stride[1]; p.dx_sh = dx.stride[2]; p.dx_sw = dx.stride[3];
  p.M = s.N * s.H * s.W;
  p.HW = int(s.H * s.W);
  p.W = int(s.W);
  p.P = int(s.P); p.Q = int(s.Q); p.R = int(s.R); p.S = int(s.S);
  p.stride_h = s.stride_h; p.stride_w = s.stride_w; p.pad_h = s.pad_h; p.pad_w = s.pad_w;
  p.dil_h = s.dil_h; p.dil_w = s.dil_w;
  p.Cg = Cg;
  p.Kg = Kg;
  p.ktiles = int(cdiv(s.R * s.S * Kg, bk));
  p.step_k = bk % Kg;
  p.step_s = int((bk / Kg) % s.S);
  p.step_r = int(bk / (std::int64_t(Kg) * s.S));
  const dim3 grid(unsigned(cdiv(p.M, Cfg::BM)), unsigned(cdiv(Cg, Cfg::BN)), unsigned(s.groups));
  auto kernel = tc::conv2d_dgrad_tc<T, Cfg>;
  set_smem(kernel, Cfg::SMEM_BYTES);
  FC_LAUNCH(kernel, grid, dim3(Cfg::NT), Cfg::SMEM_BYTES, as_stream(stream), p);
  FC_CHECK_LAUNCH("conv2d_dgrad_tc");
}

// ---- wgrad --------------------------------------------------------------------------------------------
struct WgradPlan {
  int config = kTc64x64;
  std::int64_t ktiles = 0, kt_per_split = 0;
  int splits = 1;
  std::size_t workspace_bytes = 0;
};

WgradPlan wgrad_plan(const ConvShape& s, DType dtype, int config, int splits) {
  WgradPlan pl;
  const std::int64_t Kg = s.K / s.groups, RSC = s.R * s.S * (s.C / s.groups), NPQ = s.N * s.P * s.Q;
  pl.config = config != kTcAuto ? config : Kg > 64 ? (RSC > 64 ? kTc128x128 : kTc128x64) : (RSC > 64 ? kTc64x128 : kTc64x64);
  const Candidate& c = kCandidates[pl.config];
  pl.ktiles = std::max<std::int64_t>(1, cdiv(NPQ, bk_of(dtype)));
  const std::int64_t tiles = cdiv(Kg, c.bm) * cdiv(RSC, c.bn) * s.groups;
  std::int64_t want = splits > 0 ? splits : cdiv(kWgradTargetBlocks, tiles);
  if (splits <= 0) want = std::min(want, std::max<std::int64_t>(1, pl.ktiles / kMinKtilesPerSplit));
  const std::int64_t partial_bytes = s.groups * Kg * RSC * std::int64_t(sizeof(float));
  want = std::min(want, std::max<std::int64_t>(1, kMaxWorkspaceBytes / std::max<std::int64_t>(1, partial_bytes)));
  want = std::min<std::int64_t>(want, std::max<std::int64_t>(1, kMaxGridYZ / s.groups));
  want = std::max<std::int64_t>(1, std::min(want, pl.ktiles));
  pl.kt_per_split = cdiv(pl.ktiles, want);
  pl.splits = int(cdiv(pl.ktiles, pl.kt_per_split));
  pl.workspace_bytes = pl.splits > 1 ? std::size_t(partial_bytes) * pl.splits : 0;
  return pl;
}

template <class T, class Cfg>
void launch_wgrad(const ConvShape& s, const WgradPlan& pl, const HostTensor4& dy, const HostTensor4& x,
                  const HostTensor4& dw, void* workspace, std::uintptr_t stream) {
  const int Cg = int(s.C / s.groups), Kg = int(s.K / s.groups);
  const int bk = Cfg::CHUNKS * tc::MmaOp<T>::VEC;
  tc::TcWgradParams<T> p;
  p.dy = static_cast<const T*>(dy.data);
  p.x = static_cast<const T*>(x.data);
  p.dw = static_cast<T*>(dw.data);
  p.ws = static_cast<float*>(workspace);
  p.dy_sn = dy.stride[0]; p.dy_sp = dy.stride[2]; p.dy_sq = dy.stride[3];
  p.x_sn = x.stride[0]; p.x_sh = x.stride[2]; p.x_sw = x.stride[3];
  p.dw_sk = dw.stride[0]; p.dw_sc = dw.stride[1]; p.dw_sr = dw.stride[2]; p.dw_ss = dw.stride[3];
  p.N = int(s.N); p.P = int(s.P); p.Q = int(s.Q); p.H = int(s.H); p.W = int(s.W); p.R = int(s.R); p.S = int(s.S);
  p.stride_h = s.stride_h; p.stride_w = s.stride_w; p.pad_h = s.pad_h; p.pad_w = s.pad_w;
  p.dil_h = s.dil_h; p.dil_w = s.dil_w;
  p.Cg = Cg;
  p.Kg = Kg;
  p.RSC = int(s.R * s.S * Cg);
  p.ktiles = int(pl.ktiles);
  p.kt_per_split = int(pl.kt_per_split);
  p.splits = pl.splits;
  p.step_q = int(bk % s.Q);
  p.step_p = int((bk / s.Q) % s.P);
  p.step_n = int(bk / (s.P * s.Q));
  const dim3 grid(unsigned(cdiv(Kg, Cfg::BM)), unsigned(cdiv(p.RSC, Cfg::BN)), unsigned(s.groups * pl.splits));
  auto kernel = tc::conv2d_wgrad_tc<T, Cfg>;
  set_smem(kernel, Cfg::SMEM_BYTES);
  FC_LAUNCH(kernel, grid, dim3(Cfg::NT), Cfg::SMEM_BYTES, as_stream(stream), p);
  FC_CHECK_LAUNCH("conv2d_wgrad_tc");
  if (pl.splits > 1) {
    const std::int64_t total = s.groups * std::int64_t(Kg) * p.RSC;
    auto reduce = tc::conv2d_wgrad_tc_reduce<T>;
    FC_LAUNCH(reduce, dim3(unsigned(cdiv(total, 256))), dim3(256), 0, as_stream(stream), p.ws, p.dw, p.dw_sk,
              p.dw_sc, p.dw_sr, p.dw_ss, s.groups, pl.splits, Kg, p.RSC, p.S, Cg);
    FC_CHECK_LAUNCH("conv2d_wgrad_tc_reduce");
  }
}

}  // namespace

const char* tc_config_name(int config) {
  switch (config) {
    case kTc128x128: return "128x128";
    case kTc128x64: return "128x64";
    case kTc64x128: return "64x128";
    case kTc64x64: return "64x64";
    default: return "?";
  }
}

// ---- forward ------------------------------------------------------------------------------------------
std::string conv2d_fwd_tc_ineligible(const ConvShape& s, DType dtype, const HostTensor4& x, const HostTensor4& w,
                                     const HostTensor4& y, bool allow_tf32) {
  std::string why = common_ineligible(s, dtype, allow_tf32);
  if (!why.empty()) return why;
  const std::int64_t vec = vec_of(dtype), Cg = s.C / s.groups, Kg = s.K / s.groups;
  if (Cg % vec != 0) return multiple("C / groups", Cg, vec);
  if (!(why = chunked(x, "input", vec)).empty()) return why;
  if (!(why = chunked(w, "weight (KRSC)", vec)).empty()) return why;
  if (cdiv(s.N * s.P * s.Q, 64) > kMaxGridX || cdiv(Kg, 64) > kMaxGridYZ) return "grid too large";
  if (device_info().major < 8) return "the device is older than sm_80";
  (void)y;
  return "";
}

int conv2d_fwd_tc_choose(const ConvShape& s, DType dtype, int sms) {
  (void)dtype;
  return choose_tile(s.N * s.P * s.Q, s.K / std::max(1, s.groups), s.groups, sms);
}

bool conv2d_fwd_tensor_core(const ConvShape& s, DType dtype, const HostTensor4& x, const HostTensor4& w,
                            const void* bias, const HostTensor4& y, bool relu, bool allow_tf32,
                            std::uintptr_t stream, int config) {
  const char* op = "conv2d_fwd_tensor_core";
  check_args(op, s, config);
  check_tensor(op, "input", x, s.N, s.C, s.H, s.W);
  check_tensor(op, "weight", w, s.K, s.C / s.groups, s.R, s.S);
  check_tensor(op, "output", y, s.N, s.K, s.P, s.Q);
  if (!conv2d_fwd_tc_ineligible(s, dtype, x, w, y, allow_tf32).empty()) return false;
  if (s.N == 0) return true;
  if (config == kTcAuto) config = conv2d_fwd_tc_choose(s, dtype);
  dispatch(dtype, config, [&](auto tag, auto cfg) {
    launch_fwd<decltype(tag), decltype(cfg)>(s, x, w, bias, y, relu, stream);
  });
  return true;
}

// ---- dgrad --------------------------------------------------------------------------------------------
std::string conv2d_dgrad_tc_ineligible(const ConvShape& s, DType dtype, const HostTensor4& dy, const HostTensor4& w,
                                       const HostTensor4* relu_y, const HostTensor4& dx, bool allow_tf32) {
  std::string why = common_ineligible(s, dtype, allow_tf32);
  if (!why.empty()) return why;
  if (relu_y) return "the fused ReLU mask is not applied on the tensor-core path";
  const std::int64_t vec = vec_of(dtype), Cg = s.C / s.groups, Kg = s.K / s.groups;
  if (Kg % vec != 0) return multiple("K / groups", Kg, vec);
  if (Cg % vec != 0) return multiple("C / groups", Cg, vec);
  if (!(why = chunked(dy, "grad_output", vec)).empty()) return why;
  if (!(why = chunked(w, "weight (KRSC)", vec)).empty()) return why;
  if (cdiv(s.N * s.H * s.W, 64) > kMaxGridX || cdiv(Cg, 64) > kMaxGridYZ) return "grid too large";
  if (device_info().major < 8) return "the device is older than sm_80";
  (void)dx;
  return "";
}

bool conv2d_dgrad_tensor_core(const ConvShape& s, DType dtype, const HostTensor4& dy, const HostTensor4& w,
                              const HostTensor4* relu_y, const HostTensor4& dx, bool allow_tf32,
                              std::uintptr_t stream, int config) {
  const char* op = "conv2d_dgrad_tensor_core";
  check_args(op, s, config);
  check_tensor(op, "grad_output", dy, s.N, s.K, s.P, s.Q);
  check_tensor(op, "weight", w, s.K, s.C / s.groups, s.R, s.S);
  check_tensor(op, "grad_input", dx, s.N, s.C, s.H, s.W);
  if (!conv2d_dgrad_tc_ineligible(s, dtype, dy, w, relu_y, dx, allow_tf32).empty()) return false;
  if (s.N == 0) return true;
  if (config == kTcAuto) config = choose_tile(s.N * s.H * s.W, s.C / s.groups, s.groups, 0);
  dispatch(dtype, config, [&](auto tag, auto cfg) {
    launch_dgrad<decltype(tag), decltype(cfg)>(s, dy, w, dx, stream);
  });
  return true;
}

// ---- wgrad --------------------------------------------------------------------------------------------
std::string conv2d_wgrad_tc_ineligible(const ConvShape& s, DType dtype, const HostTensor4& dy, const HostTensor4& x,
                                       const HostTensor4* relu_y, const HostTensor4& dw, bool allow_tf32) {
  std::string why = common_ineligible(s, dtype, allow_tf32);
  if (!why.empty()) return why;
  if (relu_y) return "the fused ReLU mask is not applied on the tensor-core path";
  const std::int64_t vec = vec_of(dtype), Cg = s.C / s.groups, Kg = s.K / s.groups;
  if (Kg % vec != 0) return multiple("K / groups", Kg, vec);
  if (Cg % vec != 0) return multiple("C / groups", Cg, vec);
  if (!(why = chunked(dy, "grad_output", vec)).empty()) return why;
  if (!(why = chunked(x, "input", vec)).empty()) return why;
  if (s.N * s.P * s.Q + 64 * std::int64_t(bk_of(dtype)) >= (std::int64_t(1) << 31)) return "N * P * Q too large";
  if (cdiv(Kg, 64) > kMaxGridX || cdiv(s.R * s.S * Cg, 64) > kMaxGridYZ) return "grid too large";
  if (device_info().major < 8) return "the device is older than sm_80";
  (void)dw;
  return "";
}

std::size_t conv2d_wgrad_tc_workspace_bytes(const ConvShape& s, DType dtype, int config, int splits) {
  check_args("conv2d_wgrad_tc_workspace_bytes", s, config);
  if (s.N == 0) return 0;
  return wgrad_plan(s, dtype, config, splits).workspace_bytes;
}

bool conv2d_wgrad_tensor_core(const ConvShape& s, DType dtype, const HostTensor4& dy, const HostTensor4& x,
                              const HostTensor4* relu_y, const HostTensor4& dw, void* workspace,
                              std::size_t workspace_bytes, bool allow_tf32, std::uintptr_t stream, int config,
                              int splits) {
  const char* op = "conv2d_wgrad_tensor_core";
  check_args(op, s, config);
  check_tensor(op, "grad_output", dy, s.N, s.K, s.P, s.Q);
  check_tensor(op, "input", x, s.N, s.C, s.H, s.W);
  check_tensor(op, "grad_weight", dw, s.K, s.C / s.groups, s.R, s.S);
  if (!conv2d_wgrad_tc_ineligible(s, dtype, dy, x, relu_y, dw, allow_tf32).empty()) return false;
  if (s.N == 0) return false;   // dw = 0: not a GEMM (the caller zero-fills)
  const WgradPlan pl = wgrad_plan(s, dtype, config, splits);
  if (pl.workspace_bytes > 0 && (workspace == nullptr || workspace_bytes < pl.workspace_bytes))
    fail(op, "workspace of " + std::to_string(workspace_bytes) + " bytes, " + std::to_string(pl.workspace_bytes) +
                 " needed (conv2d_wgrad_tc_workspace_bytes)");
  dispatch(dtype, pl.config, [&](auto tag, auto cfg) {
    launch_wgrad<decltype(tag), decltype(cfg)>(s, pl, dy, x, dw, workspace, stream);
  });
  return true;
}

}  // namespace fc

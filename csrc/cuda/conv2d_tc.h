// Launchers of the tensor-core convolution kernels (kernels/conv2d_tc.cuh: forward, dgrad, wgrad), plain
// C++ like api.h so that both builds share them: nvcc's (fastconv._C_cuda) and the SIMT emulator's
// (fastconv._C_emu).
//
// They are a fast path, not an op: each conv2d_*_tensor_core returns false, launching nothing, when the
// problem is not eligible (conv2d_*_tc_ineligible says why), and the caller (csrc/cuda/conv2d.cu) then
// runs the SIMT kernels. Eligible: fp16 / bf16, or fp32 with allow_tf32 (torch.backends.cudnn.allow_tf32);
// an sm_80+ device; x channels_last and w KRSC (channel stride 1 in both, other strides and both base
// addresses 16-byte aligned) with C / groups a multiple of 16 bytes / sizeof(dtype) (8 for fp16/bf16,
// 4 for fp32), so every 16-byte cp.async chunk lies in one filter tap. y and bias: any layout.
#pragma once

#include <cstdint>
#include <string>

#include "api.h"

namespace fc {

// Tile configurations of the forward kernel (BM x BN output tile, BK = 32 fp16/bf16 or 16 fp32 elements).
enum TcConfig : int {
  kTcAuto = -1,      // the heuristic (conv2d_fwd_tc_choose)
  kTc128x128 = 0,    // 8 warps, 3 stages
  kTc128x64 = 1,     // 4 warps, 4 stages
  kTc64x128 = 2,     // 4 warps, 4 stages
  kTc64x64 = 3,      // 4 warps, 4 stages
  kTcConfigs = 4,
};
const char* tc_config_name(int config);

// "" when conv2d_fwd_tensor_core would run the problem, else the first reason it would not.
std::string conv2d_fwd_tc_ineligible(const ConvShape& s, DType dtype, const HostTensor4& x, const HostTensor4& w,
                                     const HostTensor4& y, bool allow_tf32);

// The tile configuration the heuristic picks for (N*P*Q, K/groups, R*S*C/groups) on a GPU with `sms`
// multiprocessors (0: the current device's, or 108 in the emulator).
int conv2d_fwd_tc_choose(const ConvShape& s, DType dtype, int sms = 0);

// y = conv(x, w) + bias (bias: K values of dtype, or null), then max(y, 0) when relu, on tensor cores.
// Returns false (nothing launched) when not eligible; throws std::invalid_argument on inconsistent
// arguments and std::runtime_error on a launch failure. config: kTcAuto or a TcConfig (tests).
bool conv2d_fwd_tensor_core(const ConvShape& s, DType dtype, const HostTensor4& x, const HostTensor4& w,
                            const void* bias, const HostTensor4& y, bool relu, bool allow_tf32,
                            std::uintptr_t stream, int config = kTcAuto);

// dx = conv_transpose(dy, w) on tensor cores. Eligible as the forward, with dy channels_last and K / groups
// a multiple of VEC as well (dy's chunks run along k); dx: any layout. The fused-ReLU mask (relu_y) is
// not applied on this path: relu_y != null is not eligible (the caller masks dy first, or runs SIMT).
std::string conv2d_dgrad_tc_ineligible(const ConvShape& s, DType dtype, const HostTensor4& dy, const HostTensor4& w,
                                       const HostTensor4* relu_y, const HostTensor4& dx, bool allow_tf32);
bool conv2d_dgrad_tensor_core(const ConvShape& s, DType dtype, const HostTensor4& dy, const HostTensor4& w,
                              const HostTensor4* relu_y, const HostTensor4& dx, bool allow_tf32,
                              std::uintptr_t stream, int config = kTcAuto);

// dw = correlate(x, dy) on tensor cores, the N*P*Q reduction split over blocks; the partial sums go to
// `workspace` (fp32) and a second kernel adds them in split order: bitwise identical run to run. Eligible
// with dy and x channels_last, C / groups and K / groups multiples of VEC; dw: any layout. No bias
// gradient and no ReLU mask here (relu_y != null: not eligible).
std::string conv2d_wgrad_tc_ineligible(const ConvShape& s, DType dtype, const HostTensor4& dy, const HostTensor4& x,
                                       const HostTensor4* relu_y, const HostTensor4& dw, bool allow_tf32);
// Bytes of workspace conv2d_wgrad_tensor_core needs for this problem (0 when it runs unsplit).
// splits: 0 = the heuristic's, else forced (tests).
std::size_t conv2d_wgrad_tc_workspace_bytes(const ConvShape& s, DType dtype, int config = kTcAuto, int splits = 0);
bool conv2d_wgrad_tensor_core(const ConvShape& s, DType dtype, const HostTensor4& dy, const HostTensor4& x,
                              const HostTensor4* relu_y, const HostTensor4& dw, void* workspace,
                              std::size_t workspace_bytes, bool allow_tf32, std::uintptr_t stream,
                              int config = kTcAuto, int splits = 0);

}  // namespace fc

// fastconv CPU kernel interface.
//
// The C++ side never links libtorch: Python hands over raw data pointers, logical sizes and strides
// (in elements) and a dtype code. Every 4-d tensor is described in logical NCHW order, so a
// channels_last tensor is only another stride pattern (stride[1] == 1); kernels choose their loop
// order from the strides of the tensor they write.
//
// Kernels are compiled once per instruction-set level (see setup.py): each `*_isa.cpp` file is built
// three times with -DFC_ISA=baseline|avx2|avx512 and the matching -m flags, and defines its functions
// inside `namespace fastconv::cpu::FC_ISA`. dispatch.cpp picks the best level the running CPU supports,
// so the module never executes an instruction the CPU lacks.
#pragma once

#include <array>
#include <cstdint>
#include <string>

namespace fastconv {
namespace cpu {

enum DType : int { kFloat32 = 0, kFloat64 = 1 };

// The three passes of a convolution, as conv2d_path names them.
enum ConvPass : int { kConvFwd = 0, kConvDgrad = 1, kConvWgrad = 2 };

// A strided 4-d view. Logical dims are N, C, H, W (for a weight: K, C/groups, R, S).
struct Tensor4 {
  void* data = nullptr;
  std::array<int64_t, 4> size{};
  std::array<int64_t, 4> stride{};
  bool channels_last() const { return stride[1] == 1 && size[1] > 1; }
};

// Convolution problem in CUTLASS letters. Input N x C x H x W, weight K x (C/groups) x R x S,
// output N x K x P x Q with P = (H + 2*pad_h - dil_h*(R-1) - 1) / stride_h + 1 (Q likewise).
// Asymmetric 'same' padding is resolved in Python (it pads the input view), so pads are symmetric.
struct ConvDesc {
  int64_t N = 0, C = 0, H = 0, W = 0;
  int64_t K = 0, R = 0, S = 0;
  int64_t P = 0, Q = 0;
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;
  int64_t dil_h = 1, dil_w = 1;
  int64_t groups = 1;
};

// Caller-owned storage for a transformed/packed weight, reused across calls (fastconv/backends/cpu.py
// caches it per weight tensor and version). ready == false: the kernel writes the pack before using
// it; ready == true: the kernel trusts the contents (same weight values, same problem).
struct WeightPack {
  float* data = nullptr;
  int64_t floats = 0;
  bool ready = false;
};

// What a forward kernel keeps in a WeightPack: how many floats, and the pack's format. Formats differ
// by kernel family (the Winograd transform, conv_cl's K-column panels, the NCHW kernels' K-row panels),
// microkernel shape, dtype, ISA level and groups, and a pack is only ever valid for its own format, so
// Python caches one pack per (weight, kind); kind 0: the kernel uses no pack.
struct PackInfo {
  int64_t floats = 0;
  int64_t kind = 0;
  // The input gradient's pack of one residue class holds some of the weight's taps: which ones (a
  // number that differs between tap subsets); 0 = all of them (the forward, any stride-1 layer).
  int64_t taps = 0;
};

// The forward convolution's epilogue after the bias: an activation (act: 0 none, 1 relu, 2 relu6,
// 3 silu, 4 hardswish, 5 hardsigmoid, 6 gelu, 7 sigmoid; torch's definitions) and an optional residual
// input with y's sizes and strides, added before the activation or after it (residual_after).
struct ConvEpilogue {
  int act = 0;
  const void* residual = nullptr;
  bool residual_after = false;
};

// Pooling window description; P, Q computed in Python with torch's ceil_mode rule.
struct PoolDesc {
  int64_t N = 0, C = 0, H = 0, W = 0;
  int64_t P = 0, Q = 0;
  int64_t kernel_h = 1, kernel_w = 1;
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;
  int64_t dil_h = 1, dil_w = 1;       // max pool only (avg pool has no dilation)
  bool count_include_pad = true;      // avg pool only
  int64_t divisor_override = 0;       // avg pool only; 0 = none
};

// Non-temporal (streaming) output stores of the convolution kernels behind conv_run (the forward and
// the input gradient): kAuto decides per call (stream_output in conv2d_common.h, by output size,
// multiply-adds per output element and the L3 cache); kAlways / kNever force them on / off for every
// output of at least one whole vector, so that tests run both store paths on any machine (they write
// the same bits) and benchmarks can compare them. Initially FASTCONV_CPU_STREAM_STORES=
// auto|always|never (default auto); set_stream_stores in dispatch.h.
enum class StreamStores : int { kAuto = 0, kAlways = 1, kNever = 2 };
StreamStores stream_stores();

}  // namespace cpu
}  // namespace fastconv

// The kernel entry points, declared once per ISA namespace. All of them:
//  - read inputs through their strides (any layout, non-contiguous views),
//  - write outputs through their strides, overwriting (never accumulating into) the output,
//  - are deterministic: the same inputs give bitwise-identical outputs for a given thread count
//    and ISA level (no floating-point atomics, fixed reduction order),
//  - use at most `nthreads` OpenMP threads.
//
// conv2d_fwd:   y = conv(x, w) [+ bias], then the epilogue (ConvEpilogue); bias is contiguous length K or null.
// conv2d_dgrad: dx = d/dx; when relu_y is non-null, dy is multiplied by (relu_y > 0) on the fly
//               (the fused conv+ReLU backward: relu_y is the fused op's output).
//               pack (may be null): cache for the packed weight, see WeightPack.
// conv2d_weight_pack_floats: size of the Winograd pack for pass 0 (forward) / 1 (dgrad); 0 = no
//               Winograd for that pass.
// conv2d_fwd_pack_info: the pack conv2d_fwd uses for x and y of these strides (any kernel family),
//               {0, 0} when it uses none (depthwise direct loops, empty problems).
// conv2d_dgrad_pack_info: the pack conv2d_dgrad uses for dy, relu_y and dx of these strides (the
//               Winograd transform, or the panels of the one residue class with taps); {0, 0}: none.
// conv2d_path: the algorithm the pass (ConvPass) runs for tensors of these sizes and strides (x: the
//               input or dx, y: the output or dy; relu: the fused op's mask in dgrad), named as the
//               path chooser in conv2d_isa.cpp decides it, e.g. "igemm_nhwc/rows_whole_windows".
// conv2d_wgrad: dw (if non-null) and dbias (contiguous length K, if non-null), with the same mask.
// max_pool2d_fwd: y and indices (int64, flat h*W+w within the input plane, as torch).
// max_pool2d_bwd: dx = scatter-add of dy at indices.
// avg_pool2d_fwd / avg_pool2d_bwd: torch's divisor rules (count_include_pad, divisor_override,
//               windows clipped at the padded border in ceil_mode).
// adaptive_*_pool2d_*: torch's adaptive windows for an output of d.P x d.Q (kernel, stride, padding
//               unused); adaptive max's indices as max_pool2d's, its backward is max_pool2d_bwd.
// adaptive_pool2d_path: the path the adaptive kernels take (pass 0 avg fwd, 1 max fwd, 2 avg bwd; x is
//               the input, or dx for pass 2), pool2d_adaptive_isa.cpp.
#define FASTCONV_DECLARE_CPU_KERNELS(ISA)                                                         \
  namespace fastconv {                                                                            \
  namespace cpu {                                                                                 \
  namespace ISA {                                                                                 \
  void conv2d_fwd(const ConvDesc& d, DType dt, const Tensor4& x, const Tensor4& w,                \
                  const void* bias, const Tensor4& y, const ConvEpilogue& epilogue,               \
                  WeightPack* pack, int nthreads);                                                \
  void conv2d_dgrad(const ConvDesc& d, DType dt, const Tensor4& dy, const Tensor4& w,             \
                    const Tensor4* relu_y, const Tensor4& dx, WeightPack* pack, int nthreads);    \
  int64_t conv2d_weight_pack_floats(const ConvDesc& d, DType dt, int pass);                       \
  PackInfo conv2d_fwd_pack_info(const ConvDesc& d, DType dt, const Tensor4& x, const Tensor4& y); \
  PackInfo conv2d_dgrad_pack_info(const ConvDesc& d, DType dt, const Tensor4& dy,                 \
                                  const Tensor4* relu_y, const Tensor4& dx);                      \
  void conv2d_wgrad(const ConvDesc& d, DType dt, const Tensor4& dy, const Tensor4& x,             \
                    const Tensor4* relu_y, const Tensor4* dw, void* dbias, int nthreads);         \
  std::string conv2d_path(int pass, const ConvDesc& d, DType dt, const Tensor4& x,                \
                          const Tensor4& y, bool relu);                                           \
  void max_pool2d_fwd(const PoolDesc& d, DType dt, const Tensor4& x, const Tensor4& y,            \
                      const Tensor4* indices, int nthreads);                                      \
  void max_pool2d_bwd(const PoolDesc& d, DType dt, const Tensor4& dy, const Tensor4& indices,     \
                      const Tensor4& dx, int nthreads);                                           \
  void avg_pool2d_fwd(const PoolDesc& d, DType dt, const Tensor4& x, const Tensor4& y,            \
                      int nthreads);                                                              \
  void avg_pool2d_bwd(const PoolDesc& d, DType dt, const Tensor4& dy, const Tensor4& dx,          \
                      int nthreads);                                                              \
  void adaptive_avg_pool2d_fwd(const PoolDesc& d, DType dt, const Tensor4& x, const Tensor4& y,   \
                               int nthreads);                                                     \
  void adaptive_max_pool2d_fwd(const PoolDesc& d, DType dt, const Tensor4& x, const Tensor4& y,   \
                               const Tensor4& indices, int nthreads);                             \
  void adaptive_avg_pool2d_bwd(const PoolDesc& d, DType dt, const Tensor4& dy, const Tensor4& dx, \
                               int nthreads);                                                     \
  std::string adaptive_pool2d_path(int pass, const PoolDesc& d, const Tensor4& x);                \
  }                                                                                               \
  }                                                                                               \
  }

FASTCONV_DECLARE_CPU_KERNELS(baseline)
FASTCONV_DECLARE_CPU_KERNELS(avx2)
FASTCONV_DECLARE_CPU_KERNELS(avx512)

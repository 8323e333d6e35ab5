// The CUDA backend's launcher interface: plain C++ (no CUDA types), so the pybind11 bindings
// (csrc/cuda/bind.cpp, compiled by g++) serve both builds of the launchers: nvcc's (fastconv._C_cuda,
// device pointers, the caller's stream) and the SIMT emulator's (fastconv._C_emu, host pointers, the
// stream ignored). Python (fastconv/backends/cuda.py) validates and allocates; launchers choose a
// kernel and its tiling (dispatch once, here), launch on `stream` and check the launch error.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fc {

enum DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// A tensor as (N, C, H, W)-logical sizes and element strides: NCHW, NHWC (channels_last) and strided
// views all fit. For weights the letters are (K, C/groups, R, S). data may be null when numel == 0.
struct HostTensor4 {
  void* data = nullptr;
  std::int64_t size[4] = {0, 0, 0, 0};
  std::int64_t stride[4] = {0, 0, 0, 0};
};

struct ConvShape {
  std::int64_t N, C, H, W;     // input
  std::int64_t K, R, S;        // filter: K output channels, R x S taps, C / groups input channels each
  std::int64_t P, Q;           // output
  int stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups;
  // Math options: fp32 may run on tensor cores in TF32 (torch.backends.cudnn.allow_tf32, as cuDNN);
  // tensor_cores = false keeps every call on the SIMT kernels (tests of those, comparisons).
  bool allow_tf32 = false;
  bool tensor_cores = true;
};

struct PoolShape {
  std::int64_t N, C, H, W, P, Q;
  int kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
};

// ---- conv2d (csrc/cuda/conv2d.cu) ----------------------------------------------------------------
// Each conv launcher runs the tensor-core kernels (conv2d_tc.h) when the problem is eligible and
// s.tensor_cores is set, the SIMT kernels otherwise.
// y = conv(x, w) + bias (bias may be null), then max(y, 0) when relu.
void conv2d_fwd(const ConvShape& s, DType dtype, const HostTensor4& x, const HostTensor4& w, const void* bias,
                const HostTensor4& y, bool relu, std::uintptr_t stream);
// dx = conv_transpose(dy * m, w), m = 0 where relu_y <= 0 and 1 elsewhere (NaN passes, as torch's
// threshold_backward); relu_y is null for the plain conv.
void conv2d_dgrad(const ConvShape& s, DType dtype, const HostTensor4& dy, const HostTensor4& w,
                  const HostTensor4* relu_y, const HostTensor4& dx, std::uintptr_t stream);
// Bytes of scratch memory conv2d_wgrad needs (its deterministic split reduction); may be 0.
std::size_t conv2d_wgrad_workspace_bytes(const ConvShape& s, DType dtype);
// dw = correlate(x, dy * m) (dw may be null: not requested), db = sum over N, P, Q of dy * m (db may be
// null), m as for dgrad. No floating-point atomics: bitwise identical run to run.
void conv2d_wgrad(const ConvShape& s, DType dtype, const HostTensor4& dy, const HostTensor4& x,
                  const HostTensor4* relu_y, const HostTensor4* dw, void* db, void* workspace,
                  std::size_t workspace_bytes, std::uintptr_t stream);

// ---- pooling (csrc/cuda/pool2d.cu) ---------------------------------------------------------------
// indices (int64, may be null) hold the flat h * W + w position of each maximum in its input plane,
// as torch's; NaN propagates (a NaN in the window is the maximum).
void max_pool2d_fwd(const PoolShape& s, DType dtype, const HostTensor4& x, const HostTensor4& y,
                    const HostTensor4* indices, std::uintptr_t stream);
// dx[i] = sum of dy over the windows whose maximum was input i (a gather: deterministic).
void max_pool2d_bwd(const PoolShape& s, DType dtype, const HostTensor4& dy, const HostTensor4& indices,
                    const HostTensor4& dx, std::uintptr_t stream);
// divisor_override <= 0: none. ceil_mode only decides P and Q, which arrive already computed, and
// the last windows' clipping (count_include_pad counts padding but not the part beyond it).
void avg_pool2d_fwd(const PoolShape& s, DType dtype, const HostTensor4& x, const HostTensor4& y,
                    bool count_include_pad, std::int64_t divisor_override, std::uintptr_t stream);
void avg_pool2d_bwd(const PoolShape& s, DType dtype, const HostTensor4& dy, const HostTensor4& dx,
                    bool count_include_pad, std::int64_t divisor_override, std::uintptr_t stream);

// ---- adaptive pooling (csrc/cuda/pool2d.cu, kernels/pool2d_adaptive.cuh) -------------------------
// Output s.P x s.Q with torch's adaptive windows; the window fields of s are unused. With indices:
// adaptive max (indices as max_pool2d_fwd's), without: adaptive average (P = Q = 1: global average).
void adaptive_pool2d_fwd(const PoolShape& s, DType dtype, const HostTensor4& x, const HostTensor4& y,
                         const HostTensor4* indices, std::uintptr_t stream);
// dx: the gather of dy over the windows holding each input element (max: where its index matches).
void adaptive_pool2d_bwd(const PoolShape& s, DType dtype, const HostTensor4& dy, const HostTensor4* indices,
                         const HostTensor4& dx, std::uintptr_t stream);

}  // namespace fc

// Weight gradient of float32 1x1 channels_last convolutions on AVX2 and AVX-512 (conv2d_wgrad_pointwise_isa.cpp).
#pragma once

#include "cpu/kernels.h"

namespace fastconv {
namespace cpu {
namespace FC_ISA {

// True when conv2d_wgrad computes dw through wgrad_pointwise: float32, AVX2 or AVX-512 build, groups 1, a 1x1
// filter without padding (any stride), x and dy channels_last, no fused ReLU mask, and
// FASTCONV_CPU_WGRAD_POINTWISE is not 0.
bool wgrad_pointwise_usable(const ConvDesc& d, DType dt, const Tensor4& x, const Tensor4& dy, const Tensor4* relu_y);

// dw[k][c][0][0] = sum_{n,p,q} dy[n,k,p,q] * x[n, c, p*stride_h, q*stride_w]; the bias gradient is not computed.
void wgrad_pointwise(const ConvDesc& d, const Tensor4& dy, const Tensor4& x, const Tensor4& dw, int nth);

}  // namespace FC_ISA
}  // namespace cpu
}  // namespace fastconv

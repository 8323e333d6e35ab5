// Blocked weight gradient for float32 convolutions on AVX2 and AVX-512 (conv2d_wgrad_blocked_isa.cpp).
#pragma once

#include "cpu/kernels.h"

namespace fastconv {
namespace cpu {
namespace FC_ISA {

// True when conv2d_wgrad computes dw through wgrad_blocked: float32, AVX2 or AVX-512 build, groups 1,
// more than one input channel, and FASTCONV_CPU_WGRAD_BLOCKED is not 0. (3x3 stride-1 layers that
// winograd_usable() accepts go to Winograd first.)
bool wgrad_blocked_usable(const ConvDesc& d, DType dt);

// dw[k][c][r][s] = sum_{n,p,q} dy[n,k,p,q] (masked by relu_y > 0) * x[n, c, p*sh - ph + r*dh, q*sw - pw + s*dw],
// and, unless dbias is null, dbias[k] = sum_{n,p,q} of the same masked dy.
void wgrad_blocked(const ConvDesc& d, const Tensor4& dy, const Tensor4& x, const Tensor4* relu_y,
                   const Tensor4& dw, float* dbias, int nth);

}  // namespace FC_ISA
}  // namespace cpu
}  // namespace fastconv

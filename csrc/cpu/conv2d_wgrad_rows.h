// Filter-row weight gradient for float32 convolutions with few input channels on AVX-512
// (conv2d_wgrad_rows_isa.cpp).
#pragma once

#include "cpu/kernels.h"

namespace fastconv {
namespace cpu {
namespace FC_ISA {

// True when conv2d_wgrad computes dw through wgrad_rows: float32, AVX-512 build, groups 1, column
// dilation 1, more than one input channel, a filter row of at most 12 floats (S * C <= 12: a 3x3 filter on up to 4 channels), and
// FASTCONV_CPU_WGRAD_ROWS is not 0 (off: the blocked kernel takes them). 3x3 stride-1 layers that
// winograd_usable() accepts go to Winograd first.
bool wgrad_rows_usable(const ConvDesc& d, DType dt);

// dw[k][c][r][s] = sum_{n,p,q} dy[n,k,p,q] (masked by relu_y > 0) * x[n, c, p*sh - ph + r*dh, q*sw - pw + s];
// the bias gradient is not computed.
void wgrad_rows(const ConvDesc& d, const Tensor4& dy, const Tensor4& x, const Tensor4* relu_y, const Tensor4& dw,
                int nth);

}  // namespace FC_ISA
}  // namespace cpu
}  // namespace fastconv

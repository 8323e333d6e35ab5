// Winograd F(4x4, 3x3) convolution for float32 3x3 stride-1 layers (conv2d_winograd_isa.cpp).
//
// Declared per ISA level (this header is included inside the FC_ISA builds); the avx512 and avx2 builds
// implement it, the baseline build reports it unusable and the direct kernels run.
#pragma once

#include <cstdint>

#include "cpu/epilogue.h"
#include "cpu/kernels.h"

namespace fastconv {
namespace cpu {
namespace FC_ISA {

// Which pass a weight pack serves: the forward uses G w G^T of w[k][c]; the input gradient is a
// forward convolution of dy with the flipped, transposed weight w[k][c][2-r][2-s] (C outputs).
enum class WinogradPass : int { kForward = 0, kInputGrad = 1 };

// True when the pass runs through Winograd: float32, AVX-512 or AVX2 build, 3x3, stride 1, dilation 1,
// groups 1, pads 0..2, at least 16 channels on both sides, tiles at least half useful, and
// FASTCONV_CPU_WINOGRAD is not 0, and at least 32 output tiles of 4x4 in the batch.
bool winograd_usable(const ConvDesc& d, DType dt);
// The same for the weight gradient, whose tile bound is lower at the AVX2 level (16 tiles, not 32).
bool winograd_wgrad_usable(const ConvDesc& d, DType dt);

// Floats of the transformed weight for `pass` (36 x Cin x Kout rounded up to the vector lanes); 0 when unusable.
int64_t winograd_pack_floats(const ConvDesc& d, DType dt, WinogradPass pass);

// y = epilogue(conv(x, w) [+ bias]) (epilogue.h); pack (may be null) holds/receives the transformed weight.
void winograd_fwd(const ConvDesc& d, const Tensor4& x, const Tensor4& w, const float* bias, const Tensor4& y,
                  const Epi& ep, WeightPack* pack, int nth);
// dx = conv_transpose(dy [masked by relu_y > 0], w).
void winograd_dgrad(const ConvDesc& d, const Tensor4& dy, const Tensor4& w, const Tensor4* relu_y,
                    const Tensor4& dx, WeightPack* pack, int nth);
// dw = sum over tiles of G^T [(B^T x B) . (A dy A^T)] G (dy masked by relu_y > 0).
void winograd_wgrad(const ConvDesc& d, const Tensor4& dy, const Tensor4& x, const Tensor4* relu_y,
                    const Tensor4& dw, int nth);

}  // namespace FC_ISA
}  // namespace cpu
}  // namespace fastconv

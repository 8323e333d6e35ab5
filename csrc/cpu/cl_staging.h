// A channels_last staging copy of a float32 tensor for kernels outside the cl_blocks.h files
// (defined in conv2d_wgrad_blocked_isa.cpp, which owns the copy loop and the per-thread scratch arena).
#pragma once

#include <functional>

#include "cpu/kernels.h"

namespace fastconv {
namespace cpu {
namespace FC_ISA {

// Calls f(dst) with dst[((n*H + h)*W + w)*C + c] = t[n][c][h][w], a copy in the calling thread's
// scratch arena that lives until f returns. Every ISA level: the AVX-512 and AVX2 builds transpose
// L x L blocks in registers, the baseline copy the blocks element by element.
void with_channels_last_copy(const Tensor4& t, int nth, const std::function<void(const float*)>& f);

// Calls f(dst) with a scratch buffer for t in channels_last order (dst[((n*H + h)*W + w)*C + c]),
// then copies it into t (any strides). Same arena and ISA rules as with_channels_last_copy; the two
// buffers are distinct, so the calls nest.
void with_channels_last_output(const Tensor4& t, int nth, const std::function<void(float*)>& f);

// t (any strides) = src, a dense channels_last buffer of t's sizes (src[((n*H + h)*W + w)*C + c]): the
// copy with_channels_last_output makes after its callback, for a caller that holds src itself.
void copy_from_channels_last(const float* src, const Tensor4& t, int nth);

// Calls f(da, db) with channels_last copies of a and b (as with_channels_last_copy), both alive until f
// returns. Same arena and ISA rules; it does not nest with the two functions above.
void with_channels_last_copies(const Tensor4& a, const Tensor4& b, int nth,
                               const std::function<void(const float*, const float*)>& f);

}  // namespace FC_ISA
}  // namespace cpu
}  // namespace fastconv

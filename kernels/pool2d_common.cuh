// What the pooling kernels (pool2d_max.cuh, pool2d_avg.cuh) share: the pooling geometry as a kernel
// argument, the thread -> (n, c, h, w) mapping for both layouts, and -inf.
//
// Mapping. Every pooling kernel is elementwise over one tensor (the output for the forward, the input
// gradient for the backward gathers): one thread per element. The sample n comes from the grid's y and
// z (n = blockIdx.z * gridDim.y + blockIdx.y), the element within the sample from x:
// j = blockIdx.x * 256 + threadIdx.x, split so that consecutive threads of a warp take consecutive
// addresses of the tensors that move the bytes:
//   kChannelsLast = true : j = (h * W + w) * C + c   (c fastest: NHWC rows are contiguous)
//   kChannelsLast = false: j = (c * H + h) * W + w   (w fastest: NCHW rows are contiguous)
// The launcher picks the one that matches the strides; every address still goes through the tensor's
// own strides, so any strided view is correct under either mapping (only slower).
// j is split in 32-bit (the launcher checks a sample has fewer than 2^31 elements): a 32-bit division
// by a runtime size is ~20 inline instructions, a 64-bit one a subroutine call, whose calling
// convention makes ptxas spill registers. Element offsets are 64-bit (fc::offset): N can be large, and
// strided views address far more than 2^31 elements.
#pragma once

#include "common.cuh"

namespace fc {

// Threads per block of every pooling kernel: elementwise, no shared memory, so the block size only
// needs to be a multiple of the warp and big enough to keep a few blocks' worth of loads in flight.
// The kernels deliberately carry no __launch_bounds__(256): with it, ptxas (nvcc 13) holds the
// backward kernels to 32 registers on sm_80 and spills around the IEEE division's slow-path call;
// without it they take 39-52 registers and spill nothing.
constexpr int kPoolThreads = 256;

// The pooling descriptor the kernels take by value. Everything but N is int: the launcher checks that
// a sample (C x H x W, C x P x Q) has fewer than 2^31 elements and that window coordinates fit.
struct PoolGeom {
  index_t N;
  int C, H, W, P, Q;
  int kh, kw, sh, sw, ph, pw, dh, dw;
};

struct PoolCoord {
  index_t n;
  int c, h, w;
};

// This thread's element (n, c, h, w) of a tensor of sizes (N, C, H, W); false for the threads past
// the end (the last block of a sample, the last z slice of samples).
template <bool kChannelsLast>
__device__ __forceinline__ bool pool_thread_coord(index_t N, int C, int H, int W, PoolCoord& r) {
  r.n = static_cast<index_t>(blockIdx.z) * gridDim.y + blockIdx.y;
  unsigned j = blockIdx.x * blockDim.x + threadIdx.x;
  if (r.n >= N || j >= static_cast<unsigned>(C) * H * W) return false;
  if (kChannelsLast) {
    r.c = static_cast<int>(j % C);
    j /= C;
    r.w = static_cast<int>(j % W);
    r.h = static_cast<int>(j / W);
  } else {
    r.w = static_cast<int>(j % W);
    j /= W;
    r.h = static_cast<int>(j % H);
    r.c = static_cast<int>(j / H);
  }
  return true;
}

// The first tap of a dilated window starting at `start` that lies at or after 0 (torch's
// `while (start < 0) start += dilation`, in closed form).
__device__ __forceinline__ int pool_first_inside(int start, int dil) {
  return start >= 0 ? start : start + ((-start + dil - 1) / dil) * dil;
}

// -inf, the identity of max: an empty (all-padding) window yields it, as torch's.
template <class A> struct NegInf;
template <> struct NegInf<float> {
  __device__ __forceinline__ static float get() { return __int_as_float(static_cast<int>(0xff800000u)); }
};
template <> struct NegInf<double> {
  __device__ __forceinline__ static double get() {
    return __longlong_as_double(static_cast<long long>(0xfff0000000000000ull));
  }
};

}  // namespace fc

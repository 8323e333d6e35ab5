// Small kernels that exercise the SIMT emulator itself (tests/test_emu_runtime.py): each uses one
// CUDA construct the project's kernels rely on, in a correct form and, where it matters, a broken
// one the emulator must expose (a missing barrier gives a wrong result in some thread order; a
// barrier inside divergent code is reported instead of hanging).
#pragma once

#include "simt_emulator.h"

namespace fc_emu_selftest {

// Block sum through shared memory: tree reduction with a barrier per level. With
// skip_barrier, the barrier between the stores and the first level is left out.
__global__ void block_sum(const float* x, float* out, int n, bool skip_barrier) {
  __shared__ float buf[256];
  const int t = threadIdx.x;
  const int i = blockIdx.x * blockDim.x + t;
  buf[t] = i < n ? x[i] : 0.f;
  if (!skip_barrier) __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half /= 2) {
    if (t < half) buf[t] += buf[t + half];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = buf[0];
}

// Warp sum with __shfl_down_sync (mode 0), __shfl_xor_sync butterfly (mode 1), and a broadcast of
// lane 0's value with __shfl_sync (mode 2); one result per warp (lane 0 writes).
__global__ void warp_sum(const float* x, float* out, int mode) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  float v = x[blockIdx.x * blockDim.x + threadIdx.x];
  if (mode == 0) {
    for (int d = 16; d > 0; d /= 2) v += __shfl_down_sync(0xffffffffu, v, d);
  } else if (mode == 1) {
    for (int d = 16; d > 0; d /= 2) v += __shfl_xor_sync(0xffffffffu, v, d);
  } else {
    v = __shfl_sync(0xffffffffu, v, 0);
  }
  if (mode == 1 || mode == 2) {
    out[blockIdx.x * blockDim.x + threadIdx.x] = v;   // every lane holds the result
  } else if (lane == 0) {
    out[blockIdx.x * (blockDim.x / 32) + warp] = v;
  }
}

// Ballot of (x[i] > 0) per warp; lane 0 writes the mask.
__global__ void warp_ballot(const float* x, unsigned* out) {
  const unsigned m = __ballot_sync(0xffffffffu, x[blockIdx.x * blockDim.x + threadIdx.x] > 0.f);
  if (threadIdx.x % 32 == 0) out[(blockIdx.x * blockDim.x + threadIdx.x) / 32] = m;
}

// A barrier only the first half of the block reaches: an error, not a hang.
__global__ void divergent_barrier(float* out) {
  if (threadIdx.x < blockDim.x / 2) {
    __syncthreads();
  }
  out[threadIdx.x] = 1.f;
}

// Histogram with atomicAdd on ints and floats from many blocks at once.
__global__ void atomic_histogram(const int* bins, int n, int* counts, float* weights) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    atomicAdd(&counts[bins[i]], 1);
    atomicAdd(&weights[bins[i]], 0.5f);
  }
}

// Copies the dynamic shared memory as the block finds it, before any write (the emulator fills it
// with 0xFF bytes, a NaN for floats), then a write-barrier-read round trip through it.
__global__ void dynamic_smem_roundtrip(float* before, float* after) {
  FC_EXTERN_SHARED(float, smem);
  const int t = threadIdx.x;
  before[t] = smem[t];
  __syncthreads();
  smem[t] = static_cast<float>(t);
  __syncthreads();
  after[t] = smem[blockDim.x - 1 - t];
}

// Writes the thread and block coordinates of a 3-d launch: out[block][thread] = packed coordinates.
__global__ void coordinates(int* out) {
  const int block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const int thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int threads = blockDim.x * blockDim.y * blockDim.z;
  out[block * threads + thread] = ((blockIdx.z * 8 + blockIdx.y) * 8 + blockIdx.x) * 4096 +
                                  (threadIdx.z * 16 + threadIdx.y) * 16 + threadIdx.x;
}

}  // namespace fc_emu_selftest

// Shared by every kernel in kernels/: the portability layer between nvcc, NVRTC (the CuPy path) and
// the CPU SIMT emulator (csrc/emu/simt_emulator.h, which the emulator build includes before any
// kernel), and the conversions between storage types and the accumulator type.
//
// Rules for kernel files, so that all three compilers accept them:
//   - include only other kernels/*.cuh files (NVRTC has no host headers);
//   - write `__device__` / `__global__` without `inline` (the emulator defines them as `inline`);
//   - dynamic shared memory through FC_EXTERN_SHARED(T, name), never `extern __shared__` directly;
//   - inline PTX only inside `#if defined(__CUDA_ARCH__)`, with an emulated `#else`;
//   - indices that can exceed 2^31 (element offsets into whole tensors) are `long long` (fc::index_t).
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#include <cuda_fp16.h>
#include <cuda_bf16.h>
// One agreed name for the dynamic shared-memory buffer: every kernel declares the same array, so
// kernels templated on different element types do not redeclare it with conflicting types.
#define FC_EXTERN_SHARED(T, name)                                  \
  extern __shared__ __align__(16) unsigned char fc_dynamic_smem[]; \
  T* name = reinterpret_cast<T*>(fc_dynamic_smem)
#elif !defined(FC_SIMT_EMULATOR)
#error "kernels/*.cuh compile with nvcc, NVRTC, or g++ with csrc/emu/simt_emulator.h included first"
#endif

namespace fc {

using index_t = long long;

// Storage type -> accumulator type: fp32 for fp32/fp16/bf16, fp64 for fp64.
template <class T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T> struct Store;
template <> struct Store<float> { __device__ __forceinline__ static float from(float v) { return v; } };
template <> struct Store<double> { __device__ __forceinline__ static double from(double v) { return v; } };
template <> struct Store<__half> { __device__ __forceinline__ static __half from(float v) { return __float2half_rn(v); } };
template <> struct Store<__nv_bfloat16> {
  __device__ __forceinline__ static __nv_bfloat16 from(float v) { return __float2bfloat16_rn(v); }
};
// from_acc<T>(acc): round the accumulator once into the storage type.
template <class T, class A>
__device__ __forceinline__ T from_acc(A v) { return Store<T>::from(v); }

// Activation tensor geometry: sizes in CUTLASS letters and element strides, so one kernel reads
// NCHW, NHWC (channels_last) and strided views alike.
struct Tensor4 {
  index_t n, c, h, w;          // sizes
  index_t sn, sc, sh, sw;      // strides in elements
};

__device__ __forceinline__ index_t offset(const Tensor4& t, index_t n, index_t c, index_t h, index_t w) {
  return n * t.sn + c * t.sc + h * t.sh + w * t.sw;
}

__device__ __forceinline__ index_t ceil_div(index_t a, index_t b) { return (a + b - 1) / b; }

}  // namespace fc

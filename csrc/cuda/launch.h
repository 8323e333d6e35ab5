// Host-side launch helpers shared by every launcher in csrc/cuda/*.cu. The launchers compile with
// nvcc into fastconv._C_cuda, and with g++ against the SIMT emulator into fastconv._C_emu (the tests'
// way of running them without a GPU): FC_LAUNCH is `<<<...>>>` under nvcc and an emulated launch
// otherwise, and FC_CHECK_LAUNCH turns a launch error into a C++ exception naming the kernel
// (pybind11 turns it into a Python RuntimeError). Launchers include this header before any kernel.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "api.h"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#define FC_LAUNCH(kernel, grid, block, smem_bytes, stream, ...) \
  kernel<<<(grid), (block), (smem_bytes), (stream)>>>(__VA_ARGS__)
#elif defined(FC_SIMT_EMULATOR)
#include "simt_emulator.h"   // csrc/emu/: CUDA's names for g++, before any kernel is included
#define FC_LAUNCH(kernel, grid, block, smem_bytes, stream, ...) \
  ::fc_emu::launch_kernel(#kernel, (kernel), (grid), (block), (smem_bytes), __VA_ARGS__)
#else
#error "csrc/cuda/*.cu compile with nvcc, or with g++ and csrc/emu/simt_emulator.h included first"
#endif

#define FC_CHECK_LAUNCH(name)                                                                     \
  do {                                                                                            \
    cudaError_t fc_err_ = cudaGetLastError();                                                     \
    if (fc_err_ != cudaSuccess)                                                                   \
      throw std::runtime_error(std::string("fastconv CUDA kernel ") + (name) +                    \
                               " failed to launch: " + cudaGetErrorString(fc_err_));            \
  } while (0)

namespace fc {

// The caller's stream, as torch.cuda.current_stream().cuda_stream (an integer handle).
inline cudaStream_t as_stream(std::uintptr_t handle) { return reinterpret_cast<cudaStream_t>(handle); }

// Calls f(T{}) with T the storage type of dtype: the one switch over dtypes of each launcher.
template <class F>
void dispatch_dtype(DType dtype, const char* op, F&& f) {
  switch (dtype) {
    case kFloat32: f(float{}); break;
    case kFloat64: f(double{}); break;
    case kFloat16: f(__half{}); break;
    case kBFloat16: f(__nv_bfloat16{}); break;
    default: throw std::invalid_argument(std::string(op) + ": unsupported dtype code " + std::to_string(int(dtype)));
  }
}

// Grid dimension y/z limit of every CUDA GPU; x allows 2^31 - 1.
constexpr unsigned kMaxGridYZ = 65535;

}  // namespace fc

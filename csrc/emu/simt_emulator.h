// A SIMT emulator: runs CUDA kernels (kernels/*.cuh, compiled by g++ as host C++) on the CPU, so CI
// tests their logic without a GPU.
//
// Model. A launch runs its blocks one after another (or several at once on host threads, see
// set_host_threads); inside a block every CUDA thread is a fiber with its own stack, scheduled
// cooperatively on one host thread. A fiber runs until it blocks at a barrier (__syncthreads,
// __syncwarp, any warp shuffle or vote) or returns; then the next runnable fiber runs. Threads are
// visited in a configurable order (forward, reversed, or a seeded shuffle): a kernel that forgets a
// barrier reads shared memory that another thread has not written yet (or has already overwritten)
// in at least one of the orders, and gives a wrong result. Barrier misuse (threads of a block that
// return while others wait at __syncthreads, shuffles with different masks) is reported as an error
// instead of hanging.
//
// Mapping of CUDA constructs:
//   threadIdx/blockIdx/blockDim/gridDim  fields of the running fiber / block (macros below)
//   __shared__                           static thread_local: one copy per host thread, and one
//                                        block runs at a time on a host thread
//   extern __shared__                    FC_EXTERN_SHARED(T, name): a per-block buffer of the launch's
//                                        dynamic size, filled with 0xFF bytes (NaN for floats) so a
//                                        read before a write shows up
//   __syncthreads / __syncwarp           barriers with a generation counter
//   __shfl*_sync / __ballot_sync / ...   a per-warp exchange slot between two warp barriers
//   atomicAdd/Max/Min/Exch/CAS           GCC __atomic builtins (CAS loops for floats): blocks may run
//                                        on several host threads at once
//   __half, __nv_bfloat16                16-bit storage types with round-to-nearest-even conversions
//   inline PTX                           not available: kernels wrap it in #if __CUDA_ARCH__ and give
//                                        an emulated #else (kernels/ptx_*.cuh)
// A context switch is a few instructions of hand-written x86-64 assembly (simt_emulator.cpp): about
// 17 ns against ~200 ns for swapcontext, which saves and restores the signal mask with a system call.
#pragma once

#define FC_SIMT_EMULATOR 1

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

// ---- CUDA vector and launch types ---------------------------------------------------------------
struct uint3 { unsigned x, y, z; };
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) int2 { int x, y; };
struct alignas(16) int4 { int x, y, z, w; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }

constexpr int warpSize = 32;

enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
};
using cudaStream_t = struct CUstream_st*;

// ---- function and variable qualifiers -----------------------------------------------------------
// Kernels are exported (default visibility) so that the launch recorder can name them with dladdr.
#define __global__ inline __attribute__((visibility("default")))
#define __device__ inline
#define __host__
#define __forceinline__
#define __noinline__
#define __constant__ inline
#define __shared__ static thread_local
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

namespace fc_emu {

struct Barrier {
  int arrived = 0;
  std::uint64_t generation = 0;
  unsigned mask = 0;        // warp barriers: the participating lanes of this round
};

// A cp.async issued by a thread and not yet performed (kernels/ptx_wrappers.cuh emulates cp.async as a
// deferred copy: queued at issue, performed by cp.async.wait_group / wait_all).
struct AsyncCopy {
  void* dst;
  const void* src;
  unsigned cp_bytes, src_bytes;   // src_bytes < cp_bytes: the rest of dst is zero-filled
};

struct Fiber {
  void* sp = nullptr;       // saved stack pointer while switched out
  uint3 thread_idx{0, 0, 0};
  unsigned linear = 0;      // x + y*bx + z*bx*by
  enum State { kReady, kRunning, kWaiting, kDone } state = kReady;
  Barrier* wait_on = nullptr;
  std::uint64_t wait_generation = 0;
  const char* wait_what = "";
  // This thread's cp.async state: copies in issue order, and the end index (into async_copies) of
  // each committed group, oldest first. A new block starts with fresh fibers, so nothing carries over.
  std::vector<AsyncCopy> async_copies;
  std::vector<std::size_t> async_group_ends;
};

struct Warp {
  Barrier barrier;
  unsigned live = 0;              // lanes that exist and have not returned
  std::uint64_t slot[32] = {};    // shuffle/vote exchange, one value per lane
};

struct Block;
Block& current_block();
Fiber& current_fiber();
const uint3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();
void* dynamic_shared_memory();

// Barriers and warp exchange (simt_emulator.cpp).
void syncthreads();
void syncwarp(unsigned mask);
std::uint64_t warp_exchange(unsigned mask, std::uint64_t mine, int source_lane, bool source_valid);
unsigned warp_ballot(unsigned mask, bool predicate);
unsigned lane_id();

enum class Order { forward = 0, reversed = 1, shuffled = 2 };
void set_thread_order(Order order, std::uint64_t seed = 0);
Order thread_order();
void set_host_threads(int n);
int host_threads();

// Statistics of the last launch on this process (tests use them to check a kernel really ran).
struct LaunchStats { std::uint64_t launches = 0, blocks = 0, threads = 0, barriers = 0, switches = 0; };
LaunchStats launch_stats();
void reset_launch_stats();

cudaError_t take_last_error();
cudaError_t peek_last_error();
void launch_impl(const char* name, dim3 grid, dim3 block, std::size_t dynamic_smem,
                 const std::function<void()>& body);

template <class F>
void launch(const char* name, dim3 grid, dim3 block, std::size_t dynamic_smem, F&& body) {
  launch_impl(name, grid, block, dynamic_smem, std::function<void()>(std::forward<F>(body)));
}

// Launch recording (the NVRTC/CuPy path, fastconv/backends/cuda_nvrtc.py): while a host thread
// records, FC_LAUNCH runs nothing and appends (kernel symbol, grid, block, dynamic shared memory, the
// bytes of each argument converted to the kernel's parameter type) to that thread's list. The
// launchers make every decision (checks, kernel choice, tiling) as usual, and the pointers they pass
// are never dereferenced, so they may be device pointers that a GPU replays the launches on.
struct RecordedLaunch {
  std::string symbol;                 // the kernel's mangled name: the same under nvcc and NVRTC
  dim3 grid, block;
  std::size_t dynamic_smem = 0;
  std::vector<std::string> params;    // one byte string per kernel parameter
};
void start_recording();
std::vector<RecordedLaunch> stop_recording();
bool recording();
void record_launch(const char* name, const void* kernel, dim3 grid, dim3 block, std::size_t dynamic_smem,
                   std::vector<std::string> params);

template <class P, class A>
std::string param_bytes(A&& a) {
  const std::decay_t<P> value = static_cast<std::decay_t<P>>(std::forward<A>(a));
  return std::string(reinterpret_cast<const char*>(&value), sizeof(value));
}

// FC_LAUNCH under the emulator: records, or runs the kernel with its arguments converted to the
// parameter types (as a real launch converts them).
template <class... P, class... A>
void launch_kernel(const char* name, void (*kernel)(P...), dim3 grid, dim3 block, std::size_t dynamic_smem,
                   A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "FC_LAUNCH: wrong number of kernel arguments");
  if (recording()) {
    record_launch(name, reinterpret_cast<const void*>(kernel), grid, block, dynamic_smem,
                  {param_bytes<P>(std::forward<A>(args))...});
    return;
  }
  launch(name, grid, block, dynamic_smem, [=]() { kernel(static_cast<std::decay_t<P>>(args)...); });
}

template <class T>
inline std::uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a type over 8 bytes");
  std::uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <class T>
inline T from_bits(std::uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

}  // namespace fc_emu

#define threadIdx (::fc_emu::current_fiber().thread_idx)
#define blockIdx (::fc_emu::block_idx())
#define blockDim (::fc_emu::block_dim())
#define gridDim (::fc_emu::grid_dim())
#define FC_EXTERN_SHARED(T, name) T* name = reinterpret_cast<T*>(::fc_emu::dynamic_shared_memory())

inline void __syncthreads() { ::fc_emu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::fc_emu::syncwarp(mask); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

// ---- warp shuffles and votes ---------------------------------------------------------------------
// width splits the warp into segments of `width` lanes, as in CUDA; a source outside the segment
// (up/down) leaves the caller's value unchanged.
template <class T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = warpSize) {
  const int lane = static_cast<int>(::fc_emu::lane_id());
  const int base = lane - lane % width;
  const int from = base + ((src % width) + width) % width;
  return ::fc_emu::from_bits<T>(::fc_emu::warp_exchange(mask, ::fc_emu::to_bits(v), from, true));
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = warpSize) {
  const int lane = static_cast<int>(::fc_emu::lane_id());
  const int from = lane - static_cast<int>(delta);
  const bool ok = from >= lane - lane % width;
  return ::fc_emu::from_bits<T>(::fc_emu::warp_exchange(mask, ::fc_emu::to_bits(v), from, ok));
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = warpSize) {
  const int lane = static_cast<int>(::fc_emu::lane_id());
  const int from = lane + static_cast<int>(delta);
  const bool ok = from < lane - lane % width + width;
  return ::fc_emu::from_bits<T>(::fc_emu::warp_exchange(mask, ::fc_emu::to_bits(v), from, ok));
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = warpSize) {
  const int lane = static_cast<int>(::fc_emu::lane_id());
  const int from = lane ^ lane_mask;
  const bool ok = from < lane - lane % width + width;
  return ::fc_emu::from_bits<T>(::fc_emu::warp_exchange(mask, ::fc_emu::to_bits(v), from, ok));
}
inline unsigned __ballot_sync(unsigned mask, int pred) { return ::fc_emu::warp_ballot(mask, pred != 0); }
inline int __any_sync(unsigned mask, int pred) { return ::fc_emu::warp_ballot(mask, pred != 0) != 0; }
inline int __all_sync(unsigned mask, int pred) {
  return ::fc_emu::warp_ballot(mask, pred != 0) == ::fc_emu::warp_ballot(mask, true);
}
inline unsigned __activemask() { return ::fc_emu::warp_ballot(0xffffffffu, true); }

// ---- atomics (blocks may run concurrently on host threads) ----------------------------------------
template <class T>
inline T fc_emu_atomic_add(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline int atomicAdd(int* p, int v) { return fc_emu_atomic_add(p, v); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return fc_emu_atomic_add(p, v); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) { return fc_emu_atomic_add(p, v); }
template <class F, class Bits>
inline F fc_emu_atomic_add_float(F* p, F v) {
  Bits* bits = reinterpret_cast<Bits*>(p);
  Bits old_bits = __atomic_load_n(bits, __ATOMIC_SEQ_CST);
  for (;;) {
    F old_value, new_value;
    std::memcpy(&old_value, &old_bits, sizeof(F));
    new_value = old_value + v;
    Bits new_bits;
    std::memcpy(&new_bits, &new_value, sizeof(F));
    if (__atomic_compare_exchange_n(bits, &old_bits, new_bits, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
      return old_value;
  }
}
inline float atomicAdd(float* p, float v) { return fc_emu_atomic_add_float<float, std::uint32_t>(p, v); }
inline double atomicAdd(double* p, double v) { return fc_emu_atomic_add_float<double, std::uint64_t>(p, v); }
template <class T, class Op>
inline T fc_emu_atomic_update(T* p, Op op) {
  T old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
  while (!__atomic_compare_exchange_n(p, &old, op(old), false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
  }
  return old;
}
inline int atomicMax(int* p, int v) { return fc_emu_atomic_update(p, [v](int o) { return o > v ? o : v; }); }
inline int atomicMin(int* p, int v) { return fc_emu_atomic_update(p, [v](int o) { return o < v ? o : v; }); }
inline int atomicExch(int* p, int v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicExch(unsigned* p, unsigned v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
inline int atomicCAS(int* p, int expected, int desired) {
  __atomic_compare_exchange_n(p, &expected, desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  return expected;
}
inline unsigned atomicCAS(unsigned* p, unsigned expected, unsigned desired) {
  __atomic_compare_exchange_n(p, &expected, desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  return expected;
}

// ---- device math the kernels use ------------------------------------------------------------------
template <class T>
inline T __ldg(const T* p) { return *p; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
inline float __fdividef(float a, float b) { return a / b; }
// Bit casts (kernels build constants such as -inf from their bits: NVRTC has no <limits>).
inline float __int_as_float(int v) { return ::fc_emu::from_bits<float>(static_cast<std::uint32_t>(v)); }
inline int __float_as_int(float v) { return static_cast<int>(static_cast<std::uint32_t>(::fc_emu::to_bits(v))); }
inline double __longlong_as_double(long long v) { return ::fc_emu::from_bits<double>(static_cast<std::uint64_t>(v)); }
inline long long __double_as_longlong(double v) { return static_cast<long long>(::fc_emu::to_bits(v)); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
using std::fmaxf;
using std::fminf;
using std::fmax;
using std::fmin;

// ---- 16-bit floating-point storage types -----------------------------------------------------------
// Conversions round to nearest even, as __float2half_rn / __float2bfloat16_rn on the GPU.
// Default visibility: a kernel template instantiated on a hidden class type is itself hidden (the
// modules build with -fvisibility=hidden), and the launch recorder could not name it.
struct __attribute__((visibility("default"))) __half { unsigned short x; };
struct __attribute__((visibility("default"))) __nv_bfloat16 { unsigned short x; };

inline float __half2float(__half h) {
  _Float16 f;
  std::memcpy(&f, &h.x, 2);
  return static_cast<float>(f);
}
inline __half __float2half_rn(float v) {
  _Float16 f = static_cast<_Float16>(v);   // IEEE conversion: round to nearest even
  __half h;
  std::memcpy(&h.x, &f, 2);
  return h;
}
inline __half __float2half(float v) { return __float2half_rn(v); }
inline float __bfloat162float(__nv_bfloat16 b) {
  std::uint32_t bits = static_cast<std::uint32_t>(b.x) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float v) {
  std::uint32_t bits;
  std::memcpy(&bits, &v, 4);
  __nv_bfloat16 b;
  if ((bits & 0x7fffffffu) > 0x7f800000u) {
    b.x = static_cast<unsigned short>((bits >> 16) | 0x40u);   // NaN stays a (quiet) NaN
  } else {
    bits += 0x7fffu + ((bits >> 16) & 1u);                      // round to nearest even
    b.x = static_cast<unsigned short>(bits >> 16);
  }
  return b;
}
inline __nv_bfloat16 __float2bfloat16(float v) { return __float2bfloat16_rn(v); }

// ---- host runtime API the launchers use ----------------------------------------------------------
inline cudaError_t cudaGetLastError() { return ::fc_emu::take_last_error(); }
inline cudaError_t cudaPeekAtLastError() { return ::fc_emu::peek_last_error(); }
inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    default: return "unspecified launch failure";
  }
}

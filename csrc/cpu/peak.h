// Machine-peak probes (peak_isa.cpp): the roofs that the benchmark report measures itself.
//
// The %peak column and the roofline of bench/ compare a kernel with what this CPU can do at all, so
// the roofs must not be another library's kernel: fma_peak is the vector FMA throughput of the ISA
// level in use (independent register-resident FMA chains, no memory traffic), stream_scale is
// STREAM's "scale" kernel (b[i] = s * a[i]) over arrays far beyond the caches. Like the kernels,
// they are compiled once per ISA level and reached through the KernelTable (dispatch.h), so the
// probe runs the same instruction set as the kernels it is the roof of.
#pragma once

#include <cstdint>

namespace fastconv {
namespace cpu {

// One probe's best repeat.
struct ProbeResult {
  double work = 0;         // FLOPs (fma_peak) or bytes counted (stream_scale) in one repeat
  double seconds = 0;      // wall time of the best repeat: steady clock around the parallel region
  int threads = 0;         // OpenMP threads that ran (may be fewer than requested: OMP_THREAD_LIMIT)
  int accumulators = 0;    // fma_peak: independent vector FMA chains per thread
  int vector_floats = 0;   // float lanes per vector register (16 avx512, 8 avx2, 4 baseline)
  double checksum = 0;     // fma_peak: sum of every accumulator lane, so no chain can be dropped
  int64_t mismatches = 0;  // stream_scale: elements with b[i] != s * a[i] after the last repeat
};

}  // namespace cpu
}  // namespace fastconv

// fma_peak:      each of nthreads threads runs `iterations` x accumulators independent vector FMAs
//                (acc = acc * m + c); work = 2 * vector_floats * accumulators * iterations * threads.
// stream_fill:   a[i] = a deterministic pattern, b[i] = 0, with stream_scale's split over nthreads
//                threads (first touch: each thread's pages are the ones it later streams).
// stream_scale:  b[i] = scalar * a[i] for i < n, `repeats` times; work = 2 * sizeof(float) * n
//                (STREAM's count: one read, one write; write-allocate traffic is not counted).
#define FASTCONV_DECLARE_PEAK_PROBES(ISA)                                                          \
  namespace fastconv {                                                                            \
  namespace cpu {                                                                                 \
  namespace ISA {                                                                                 \
  ProbeResult fma_peak(int64_t iterations, int repeats, int nthreads);                            \
  void stream_fill(float* a, float* b, int64_t n, int nthreads);                                  \
  ProbeResult stream_scale(const float* a, float* b, int64_t n, float scalar, int repeats,        \
                           int nthreads);                                                         \
  }                                                                                               \
  }                                                                                               \
  }

FASTCONV_DECLARE_PEAK_PROBES(baseline)
FASTCONV_DECLARE_PEAK_PROBES(avx2)
FASTCONV_DECLARE_PEAK_PROBES(avx512)

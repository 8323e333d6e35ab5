// Machine-peak probes for the benchmark report's roofs (declared in peak.h): the vector FMA throughput
// and STREAM's "scale" bandwidth, measured with the ISA level the kernels run at.
//
// fma_peak: every thread keeps kAccumulators vector registers of independent chains acc = acc * m + c
// (m = 1 - 2^-20, c = 2^-20: the chains converge to 1.0, so no overflow, no denormals, any iteration
// count). A chain's next FMA waits for its previous one (latency 4 cycles on Skylake-SP to Sapphire
// Rapids) and two FMA ports each accept one per cycle, so at least 4 x 2 = 8 chains must be in flight;
// 24 of the 32 zmm registers (12 of the 16 ymm/xmm) leave room for the m and c vectors and for a
// longer latency. The chains are summed into `checksum` and returned, so the compiler has to compute
// every one; m and c are read through volatile so it cannot fold them either. No memory is touched in
// the loop: this is the core's arithmetic roof, which no convolution reaches (loads and packing share
// the issue slots), hence a fair 100 % for the %peak column.
//
// stream_scale: STREAM's scale kernel b[i] = s * a[i] (McCalpin's counting: 2 * 4 bytes per element,
// one read and one write; the write-allocate read of b is real traffic that is not counted, as in
// STREAM). Plain (temporal) stores: what the conv and pool kernels use, so the roof is the bandwidth
// they can get. Each thread owns one contiguous range (a 64-byte multiple, so no cache line is shared)
// and stream_fill gives it the same range, so with first-touch page placement every thread streams
// the pages it faulted in. The caller passes arrays far beyond the last-level cache (bench: 2 x 256
// MiB). After the timed repeats, every element is compared bitwise with s * a[i].
//
// Both time the whole parallel region with a steady clock and keep the best of `repeats` (the first
// repeat also pays for waking the OpenMP pool and, on AVX-512, the frequency-license change).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu/gemm_microkernel.h"
#include "cpu/peak.h"

namespace fastconv {
namespace cpu {
namespace FC_ISA {
namespace {

using Clock = std::chrono::steady_clock;
using S = Simd<float>;
using V = S::V;

#if defined(__AVX512F__)
constexpr int kAccumulators = 24;  // of 32 zmm registers
#else
constexpr int kAccumulators = 12;  // of 16 ymm (avx2) / xmm (baseline) registers
#endif

int team_size() {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// The FMA chains of one thread; returns the sum of every lane of every accumulator.
double fma_chains(int64_t iterations, float m, float c) {
  const V mv = S::set1(m), cv = S::set1(c);
  V acc[kAccumulators];
  FC_UNROLL for (int i = 0; i < kAccumulators; ++i) acc[i] = S::set1(1.0f + (float)i * 0x1p-10f);
  for (int64_t it = 0; it < iterations; ++it) {
    FC_UNROLL for (int i = 0; i < kAccumulators; ++i) acc[i] = S::fma(acc[i], mv, cv);
  }
  alignas(64) float lanes[S::L];
  double sum = 0;
  for (int i = 0; i < kAccumulators; ++i) {
    S::store(lanes, acc[i]);
    for (int l = 0; l < S::L; ++l) sum += lanes[l];
  }
  return sum;
}

// [begin, end) of thread t of T over n floats: equal shares with inner edges rounded down to 16
// floats (64 bytes), so that no two threads write the same cache line.
void stream_range(int64_t n, int t, int T, int64_t* begin, int64_t* end) {
  auto edge = [n, T](int k) -> int64_t { return k >= T ? n : std::min(n, (n * k / T) & ~int64_t(15)); };
  *begin = edge(t);
  *end = edge(t + 1);
}

// b[i0, i1) = s * a[i0, i1). V is a GCC vector type at every level (__m512, __m256, vector_size(16)),
// so `*` is one vector multiply (Simd has only fma; fma(a, s, 0) would turn -0 products into +0).
void scale_range(const float* __restrict a, float* __restrict b, int64_t i0, int64_t i1, float s) {
  constexpr int L = S::L;
  const V sv = S::set1(s);
  int64_t i = i0;
  for (; i + 4 * L <= i1; i += 4 * L) {
    const V a0 = S::load(a + i), a1 = S::load(a + i + L), a2 = S::load(a + i + 2 * L), a3 = S::load(a + i + 3 * L);
    S::store(b + i, a0 * sv);
    S::store(b + i + L, a1 * sv);
    S::store(b + i + 2 * L, a2 * sv);
    S::store(b + i + 3 * L, a3 * sv);
  }
  for (; i + L <= i1; i += L) S::store(b + i, S::load(a + i) * sv);
  for (; i < i1; ++i) b[i] = s * a[i];
}

}  // namespace

ProbeResult fma_peak(int64_t iterations, int repeats, int nthreads) {
  volatile float m_opaque = 1.0f - 0x1p-20f, c_opaque = 0x1p-20f;
  const float m = m_opaque, c = c_opaque;
  const int nt = std::max(1, nthreads);
  ProbeResult best;
  best.accumulators = kAccumulators;
  best.vector_floats = S::L;
  for (int rep = 0; rep < std::max(1, repeats); ++rep) {
    double checksum = 0;
    int ran = 1;
    const auto t0 = Clock::now();
#pragma omp parallel num_threads(nt) reduction(+ : checksum)
    {
      checksum += fma_chains(iterations, m, c);
      if (thread_id() == 0) ran = team_size();
    }
    const double sec = seconds_since(t0);
    if (rep == 0 || sec < best.seconds) {
      best.seconds = sec;
      best.threads = ran;
      best.checksum = checksum;
    }
  }
  best.work = 2.0 * S::L * kAccumulators * (double)iterations * best.threads;
  return best;
}

void stream_fill(float* a, float* b, int64_t n, int nthreads) {
#pragma omp parallel num_threads(std::max(1, nthreads))
  {
    int64_t i0, i1;
    stream_range(n, thread_id(), team_size(), &i0, &i1);
    for (int64_t i = i0; i < i1; ++i) {
      a[i] = 1.0f + (float)(i & 1023) * 0x1p-10f;  // [1, 2): exact, and s * a[i] never under/overflows
      b[i] = 0.0f;
    }
  }
}

ProbeResult stream_scale(const float* a, float* b, int64_t n, float scalar, int repeats, int nthreads) {
  const int nt = std::max(1, nthreads);
  ProbeResult best;
  best.vector_floats = S::L;
  for (int rep = 0; rep < std::max(1, repeats); ++rep) {
    int ran = 1;
    const auto t0 = Clock::now();
#pragma omp parallel num_threads(nt)
    {
      int64_t i0, i1;
      stream_range(n, thread_id(), team_size(), &i0, &i1);
      scale_range(a, b, i0, i1, scalar);
      if (thread_id() == 0) ran = team_size();
    }
    const double sec = seconds_since(t0);
    if (rep == 0 || sec < best.seconds) {
      best.seconds = sec;
      best.threads = ran;
    }
  }
  best.work = 2.0 * sizeof(float) * (double)n;
  int64_t mismatches = 0;
#pragma omp parallel for num_threads(nt) schedule(static) reduction(+ : mismatches)
  for (int64_t i = 0; i < n; ++i) {
    const float want = scalar * a[i];
    mismatches += std::memcmp(&want, b + i, sizeof(float)) != 0;
  }
  best.mismatches = mismatches;
  return best;
}

}  // namespace FC_ISA
}  // namespace cpu
}  // namespace fastconv

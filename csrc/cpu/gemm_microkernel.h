// Register-blocked GEMM microkernels for the CPU convolution kernels (the conv2d_*_isa.cpp files).
//
// Compiled once per ISA level (this header is included by *_isa.cpp files, which are built with
// -DFC_ISA=baseline|avx2|avx512), so everything lives in namespace fastconv::cpu::FC_ISA: the three
// copies must never be merged by the linker (an ODR clash would run AVX-512 code on a baseline CPU).
//
// Simd<T>: one vector register of T (zmm under __AVX512F__, ymm under __AVX2__+__FMA__, else 16-byte
// GCC vector extension = SSE2 on x86). FMA is spelled explicitly: the build uses -std=c++17, which
// turns floating-point contraction off, so a*b+c would never become an FMA.
//
// Two microkernels compute an MR x NR tile, NR = NV * Simd<T>::L, in MR*NV vector accumulators:
//   ukr_panel: A packed as [kc][MR] (broadcast one A element per row), B packed as [kc][NR];
//   ukr_rows:  A given as MR row pointers per segment (row i, element kk at rows[i][kk]), which lets
//              a row point straight into a channels_last input (indirect convolution, no packing),
//              B packed as [sum of segment lengths][NR].
// Both hand the accumulators to an epilogue functor (accumulate/store/bias/ReLU while in registers).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef FC_ISA
#error "FC_ISA must be defined (baseline, avx2 or avx512)"
#endif

#define FC_UNROLL _Pragma("GCC unroll 32")
#define FC_INLINE inline __attribute__((always_inline))

namespace fastconv {
namespace cpu {
namespace FC_ISA {

// The calling thread's index in the current OpenMP team (0 outside one): picks per-thread scratch.
inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

template <typename T>
struct Simd;

#if defined(__AVX512F__)
template <>
struct Simd<float> {
  using V = __m512;
  static constexpr int L = 16;
  static FC_INLINE V load(const float* p) { return _mm512_loadu_ps(p); }
  static FC_INLINE void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static FC_INLINE V set1(float a) { return _mm512_set1_ps(a); }
  static FC_INLINE V zero() { return _mm512_setzero_ps(); }
  static FC_INLINE V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static FC_INLINE V add(V a, V b) { return _mm512_add_ps(a, b); }
  // n < L leading lanes (others zero / untouched); masked-off lanes are never accessed.
  static FC_INLINE V load_n(const float* p, int n) { return _mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), p); }
  static FC_INLINE void store_n(float* p, V v, int n) { _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1), v); }
  // lanes [l, l+n) of v to p[0..n)
  static FC_INLINE void store_lanes(float* p, V v, int l, int n) {
    const __mmask16 k = (__mmask16)(((1u << n) - 1) << l);
    _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1), _mm512_maskz_compress_ps(k, v));
  }
  // v < 0 ? 0 : v  (NaN stays NaN, like torch.relu)
  // m <= 0 ? 0 : v  (torch's threshold_backward with the ReLU output m)
  static FC_INLINE V mask_le0(V v, V m) {
    return _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(m, _mm512_setzero_ps(), _CMP_LE_OQ), _mm512_setzero_ps());
  }
  static FC_INLINE V relu(V v) {
    return _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ), _mm512_setzero_ps());
  }
};
template <>
struct Simd<double> {
  using V = __m512d;
  static constexpr int L = 8;
  static FC_INLINE V load(const double* p) { return _mm512_loadu_pd(p); }
  static FC_INLINE void store(double* p, V v) { _mm512_storeu_pd(p, v); }
  static FC_INLINE V set1(double a) { return _mm512_set1_pd(a); }
  static FC_INLINE V zero() { return _mm512_setzero_pd(); }
  static FC_INLINE V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static FC_INLINE V add(V a, V b) { return _mm512_add_pd(a, b); }
  static FC_INLINE V load_n(const double* p, int n) { return _mm512_maskz_loadu_pd((__mmask8)((1u << n) - 1), p); }
  static FC_INLINE void store_n(double* p, V v, int n) { _mm512_mask_storeu_pd(p, (__mmask8)((1u << n) - 1), v); }
  static FC_INLINE void store_lanes(double* p, V v, int l, int n) {
    const __mmask8 k = (__mmask8)(((1u << n) - 1) << l);
    _mm512_mask_storeu_pd(p, (__mmask8)((1u << n) - 1), _mm512_maskz_compress_pd(k, v));
  }
  static FC_INLINE V mask_le0(V v, V m) {
    return _mm512_mask_mov_pd(v, _mm512_cmp_pd_mask(m, _mm512_setzero_pd(), _CMP_LE_OQ), _mm512_setzero_pd());
  }
  static FC_INLINE V relu(V v) {
    return _mm512_mask_mov_pd(v, _mm512_cmp_pd_mask(v, _mm512_setzero_pd(), _CMP_LT_OQ), _mm512_setzero_pd());
  }
};
#elif defined(__AVX2__) && defined(__FMA__)
template <>
struct Simd<float> {
  using V = __m256;
  static constexpr int L = 8;
  static FC_INLINE V load(const float* p) { return _mm256_loadu_ps(p); }
  static FC_INLINE void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static FC_INLINE V set1(float a) { return _mm256_set1_ps(a); }
  static FC_INLINE V zero() { return _mm256_setzero_ps(); }
  static FC_INLINE V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static FC_INLINE V add(V a, V b) { return _mm256_add_ps(a, b); }
  static FC_INLINE __m256i lanes(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static FC_INLINE V load_n(const float* p, int n) { return _mm256_maskload_ps(p, lanes(n)); }
  static FC_INLINE void store_n(float* p, V v, int n) { _mm256_maskstore_ps(p, lanes(n), v); }
  static FC_INLINE void store_lanes(float* p, V v, int l, int n) {
    alignas(64) float tmp[L];
    store(tmp, v);
    for (int i = 0; i < n; ++i) p[i] = tmp[l + i];
  }
  static FC_INLINE V mask_le0(V v, V m) {
    const V z = _mm256_setzero_ps();
    return _mm256_blendv_ps(v, z, _mm256_cmp_ps(m, z, _CMP_LE_OQ));
  }
  static FC_INLINE V relu(V v) {
    const V z = _mm256_setzero_ps();
    return _mm256_blendv_ps(v, z, _mm256_cmp_ps(v, z, _CMP_LT_OQ));
  }
};
template <>
struct Simd<double> {
  using V = __m256d;
  static constexpr int L = 4;
  static FC_INLINE V load(const double* p) { return _mm256_loadu_pd(p); }
  static FC_INLINE void store(double* p, V v) { _mm256_storeu_pd(p, v); }
  static FC_INLINE V set1(double a) { return _mm256_set1_pd(a); }
  static FC_INLINE V zero() { return _mm256_setzero_pd(); }
  static FC_INLINE V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static FC_INLINE V add(V a, V b) { return _mm256_add_pd(a, b); }
  static FC_INLINE __m256i lanes(int n) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
  }
  static FC_INLINE V load_n(const double* p, int n) { return _mm256_maskload_pd(p, lanes(n)); }
  static FC_INLINE void store_n(double* p, V v, int n) { _mm256_maskstore_pd(p, lanes(n), v); }
  static FC_INLINE void store_lanes(double* p, V v, int l, int n) {
    alignas(64) double tmp[L];
    store(tmp, v);
    for (int i = 0; i < n; ++i) p[i] = tmp[l + i];
  }
  static FC_INLINE V mask_le0(V v, V m) {
    const V z = _mm256_setzero_pd();
    return _mm256_blendv_pd(v, z, _mm256_cmp_pd(m, z, _CMP_LE_OQ));
  }
  static FC_INLINE V relu(V v) {
    const V z = _mm256_setzero_pd();
    return _mm256_blendv_pd(v, z, _mm256_cmp_pd(v, z, _CMP_LT_OQ));
  }
};
#else
// Portable 16-byte vectors (SSE2 on x86-64; NEON etc. elsewhere). No FMA: multiply then add.
template <typename T>
struct SimdGeneric {
  typedef T V __attribute__((vector_size(16)));
  static constexpr int L = 16 / sizeof(T);
  static FC_INLINE V load(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  }
  static FC_INLINE void store(T* p, V v) { std::memcpy(p, &v, sizeof(V)); }
  static FC_INLINE V set1(T a) {
    V v;
    for (int i = 0; i < L; ++i) v[i] = a;
    return v;
  }
  static FC_INLINE V zero() { return V{}; }
  static FC_INLINE V fma(V a, V b, V c) { return a * b + c; }
  static FC_INLINE V add(V a, V b) { return a + b; }
  static FC_INLINE V load_n(const T* p, int n) {
    V v = V{};
    for (int i = 0; i < n; ++i) v[i] = p[i];
    return v;
  }
  static FC_INLINE void store_n(T* p, V v, int n) {
    for (int i = 0; i < n; ++i) p[i] = v[i];
  }
  static FC_INLINE void store_lanes(T* p, V v, int l, int n) {
    for (int i = 0; i < n; ++i) p[i] = v[l + i];
  }
  static FC_INLINE V relu(V v) { return v < V{} ? V{} : v; }
  static FC_INLINE V mask_le0(V v, V m) { return m <= V{} ? V{} : v; }
};
template <>
struct Simd<float> : SimdGeneric<float> {};
template <>
struct Simd<double> : SimdGeneric<double> {};
#endif

// dst[0..n) = 0 and dst[0..n) = src[0..n) without libc calls (runs are short: one output row).
template <typename T>
FC_INLINE void zero_n(T* dst, int64_t n) {
  using S = Simd<T>;
  constexpr int L = S::L;
  int64_t t = 0;
  for (; t + L <= n; t += L) S::store(dst + t, S::zero());
  if (t < n) S::store_n(dst + t, S::zero(), (int)(n - t));
}
template <typename T>
FC_INLINE void copy_n(T* __restrict dst, const T* __restrict src, int64_t n) {
  using S = Simd<T>;
  constexpr int L = S::L;
  int64_t t = 0;
  for (; t + L <= n; t += L) S::store(dst + t, S::load(src + t));
  if (t < n) S::store_n(dst + t, S::load_n(src + t, (int)(n - t)), (int)(n - t));
}

// C[MR x NR] = sum_k A[k][0..MR) (x) B[k][0..NR); A and B packed contiguously per k.
template <typename T, int MR, int NV, typename Epi>
FC_INLINE void ukr_panel(int64_t kc, const T* __restrict a, const T* __restrict b, Epi&& epi) {
  using S = Simd<T>;
  using V = typename S::V;
  constexpr int L = S::L;
  V acc[MR][NV];
  FC_UNROLL for (int i = 0; i < MR; ++i) FC_UNROLL for (int v = 0; v < NV; ++v) acc[i][v] = S::zero();
  for (int64_t k = 0; k < kc; ++k) {
    V bv[NV];
    FC_UNROLL for (int v = 0; v < NV; ++v) bv[v] = S::load(b + v * L);
    FC_UNROLL for (int i = 0; i < MR; ++i) {
      const V av = S::set1(a[i]);
      FC_UNROLL for (int v = 0; v < NV; ++v) acc[i][v] = S::fma(av, bv[v], acc[i][v]);
    }
    a += MR;
    b += NV * L;
  }
  epi(acc);
}

// C[MR x NR] = sum_k A[k][0..MR) (x) B vectors v = b[offs[k] + voff[v] + 0..L): B rows read in place at
// per-k offsets, each of the NV vectors at its own offset (direct convolution on a zero-padded input
// window, see conv_pix_direct: voff[v] = v*L for consecutive pixels, or one vector per output row run).
template <typename T, int MR, int NV, typename Epi>
FC_INLINE void ukr_offs(int64_t kc, const T* __restrict a, const T* __restrict b, const int64_t* __restrict offs,
                        const int64_t (&voff)[NV], Epi&& epi) {
  using S = Simd<T>;
  using V = typename S::V;
  V acc[MR][NV];
  FC_UNROLL for (int i = 0; i < MR; ++i) FC_UNROLL for (int v = 0; v < NV; ++v) acc[i][v] = S::zero();
  for (int64_t k = 0; k < kc; ++k) {
    const T* bk = b + offs[k];
    V bv[NV];
    FC_UNROLL for (int v = 0; v < NV; ++v) bv[v] = S::load(bk + voff[v]);
    FC_UNROLL for (int i = 0; i < MR; ++i) {
      const V av = S::set1(a[i]);
      FC_UNROLL for (int v = 0; v < NV; ++v) acc[i][v] = S::fma(av, bv[v], acc[i][v]);
    }
    a += MR;
  }
  epi(acc);
}

// How far ahead (rank-1 steps) the row kernels prefetch B into L1 when asked to (PFB): for a B block
// that streams from L2 (conv_cl's row-merged blocks, hundreds of KiB), the hardware prefetchers leave
// the kernel waiting on L2. A 6 x 4 kernel alone (one core, AVX-512, Intel Xeon VM), B of 288 KiB:
// 191-194 GFLOP/s with the prefetch 4-16 steps ahead, against 178 without. With B in L1 the prefetches
// cost ~5%, so the callers ask only for blocks larger than L1.
constexpr int kRowsPrefetchSteps = 8;

// One rank-1 update of the row kernels: acc[i][.] += r[i][k] * b[0..NR); PFB: prefetch the B row
// kRowsPrefetchSteps ahead (a hint: the lines past B's end that it touches are never read).
template <typename T, int MR, int NV, bool PFB = false>
FC_INLINE void rows_rank1(typename Simd<T>::V (&acc)[MR][NV], const T* const (&r)[MR], int64_t k,
                          const T* __restrict b) {
  using S = Simd<T>;
  typename S::V bv[NV];
  FC_UNROLL for (int v = 0; v < NV; ++v) bv[v] = S::load(b + v * S::L);
  if (PFB)
    FC_UNROLL for (int v = 0; v < NV; ++v) __builtin_prefetch(b + (kRowsPrefetchSteps * NV + v) * S::L, 0, 3);
  FC_UNROLL for (int i = 0; i < MR; ++i) {
    const typename S::V av = S::set1(r[i][k]);
    FC_UNROLL for (int v = 0; v < NV; ++v) acc[i][v] = S::fma(av, bv[v], acc[i][v]);
  }
}

// C[MR x NR] = sum over segments s, k < lens[s] of rows[s*MR + i][k] * B[.][0..NR). B is consumed
// sequentially across segments, or, given boffs, segment s reads B rows boffs[s] .. boffs[s] + lens[s]
// (a caller that leaves out segments whose rows are all padding: conv_cl's border pixels).
template <typename T, int MR, int NV, bool PFB = false, typename Epi>
FC_INLINE void ukr_rows(int64_t nseg, const T* const* rows, const int64_t* lens, const T* __restrict b,
                        Epi&& epi, const int64_t* boffs = nullptr) {
  using S = Simd<T>;
  using V = typename S::V;
  constexpr int L = S::L;
  V acc[MR][NV];
  FC_UNROLL for (int i = 0; i < MR; ++i) FC_UNROLL for (int v = 0; v < NV; ++v) acc[i][v] = S::zero();
  const T* bs = b;
  for (int64_t sg = 0; sg < nseg; ++sg) {
    const T* r[MR];
    FC_UNROLL for (int i = 0; i < MR; ++i) r[i] = rows[sg * MR + i];
    const int64_t len = lens[sg];
    if (boffs) bs = b + boffs[sg] * (NV * L);
    for (int64_t k = 0; k < len; ++k, bs += NV * L) rows_rank1<T, MR, NV, PFB>(acc, r, k, bs);
  }
  epi(acc);
}

// ukr_rows with every row's segments at one stride: segment sg of row i is rows[i] + sg * seg_stride,
// len elements long. One shared index addresses all MR rows, so a segment costs no pointer loads
// (the RGB stem's filter rows: 3 segments of 9 floats, rows[i] = the pixel's window in the input).
template <typename T, int MR, int NV, bool PFB = false, typename Epi>
FC_INLINE void ukr_rows_strided(int64_t nseg, int64_t seg_stride, int64_t len, const T* const* rows,
                                const T* __restrict b, Epi&& epi) {
  using S = Simd<T>;
  using V = typename S::V;
  constexpr int L = S::L;
  V acc[MR][NV];
  FC_UNROLL for (int i = 0; i < MR; ++i) FC_UNROLL for (int v = 0; v < NV; ++v) acc[i][v] = S::zero();
  const T* r[MR];
  FC_UNROLL for (int i = 0; i < MR; ++i) r[i] = rows[i];
  for (int64_t sg = 0, off = 0; sg < nseg; ++sg, off += seg_stride)
    for (int64_t k = off; k < off + len; ++k, b += NV * L) rows_rank1<T, MR, NV, PFB>(acc, r, k, b);
  epi(acc);
}

}  // namespace FC_ISA
}  // namespace cpu
}  // namespace fastconv

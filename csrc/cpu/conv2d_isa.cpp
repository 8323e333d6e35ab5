// conv2d forward / dgrad / wgrad on the CPU: implicit GEMM with on-the-fly packing (BLIS style),
// register-blocked microkernels from gemm_microkernel.h, OpenMP over disjoint output tiles.
//
// One engine, conv_run(), computes a generalized correlation
//     y[n, g*Kg+k, p, q] = act( bias + sum_{c<Cg, r<R, s<S} w(g,k,c,r,s) * x~[n, g*Cg+c, p*sh-ph+r*dh, q*sw-pw+s*dw] )
// where pads and dilations may be negative, w() is a strided weight view and x~ is the input read
// through its strides, zero outside [0,H)x[0,W), optionally masked (x~ = 0 where mask <= 0).
// The forward pass is conv_run() on (x, w). dgrad is conv_run() too: for every residue class
// (a, b) of dx's rows/columns modulo the stride, only the taps r with (a + ph - r*dh) % sh == 0 reach
// the dx sub-grid h = a + sh*i, and for those taps p = i + (a+ph-r0*dh)/sh - j*lcm(sh,dh)/sh
// (r = r0 + j*lcm/dh): a stride-1 correlation of dy with negative dilation and swapped K/C weight
// strides. So dgrad costs the forward's FLOPs (no zero-inserted dy, no col2im scatter, no atomics)
// and the ReLU mask of the fused op is applied while packing dy.
//
// conv_run() picks a path by the output layout:
//  - NCHW output (conv_pix): C[Kg x pixels] = W_g[Kg x CgRS] * col[CgRS x pixels]; vectors run along
//    the output pixels so rows of the tile are stored straight into y's planes. A = weights packed
//    once per call in [MR]-row panels (shared); B = input patches packed per (n, g, pixel block) and
//    kc-block, as row-segment copies (contiguous when stride_w == 1).
//  - channels_last output (conv_cl): C[pixels x Kg] = col^T[pixels x RSCg] * W^T[RSCg x Kg]; vectors
//    run along K. Reduction order (r, s, c): with a channels_last input, row i of A for tap (r,s) is
//    the contiguous channel run of one input pixel, so the microkernel reads it in place through a
//    pointer table (indirect convolution; padding taps point at a zero run). Otherwise (mask,
//    non-channel-contiguous input) the rows are packed per block. Pointwise layers (1x1, stride 1,
//    no padding) on dense channels_last tensors are one GEMM over the batch's pixels
//    (conv_cl_pointwise).
//  - groups with one input channel per group (depthwise): direct loops (conv_direct_*), vectorized
//    along W (NCHW) or along C (channels_last).
// wgrad: C[CgRS x Kg] = col[CgRS x NPQ] * dy^T[NPQ x Kg] (wgrad_gemm, ukr_rows), tasks own
// disjoint (group, row block, fixed reduction chunk) tiles; chunks are summed in chunk order.
//
// Tiling numbers (AVX-512, 2 cores, 48 KiB L1d / 2 MiB L2 per core): microkernel 8x48 (24 zmm
// accumulators) for NCHW, 6x64 / 8x32 for channels_last; the B micro-panel kc x NR is kept <= 24 KiB
// so it stays in L1 while the A rows stream from L2 (kc = 128 floats for NR = 48).
//
// Determinism: every output element is produced by exactly one task, with a reduction order that
// depends only on the problem (kc blocking, fixed reduction chunks), never on the thread count or on
// scheduling; no atomics. Results are therefore bitwise identical for any nthreads (per ISA level).
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include <unistd.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu/gemm_microkernel.h"
#include "cpu/kernels.h"
#include "cpu/cl_staging.h"
#include "cpu/conv2d_wgrad.h"
#include "cpu/winograd.h"

namespace fastconv {
namespace cpu {
namespace FC_ISA {
namespace {

inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A cache size that sysconf reports (glibc reads it from CPUID), or fallback when it does not say.
inline int64_t cache_bytes(int name, int64_t fallback) {
  const long v = sysconf(name);
  return v > 0 ? (int64_t)v : fallback;
}

// Bytes of one core's L2 cache; 1 MiB when the system does not say.
inline int64_t l2_cache_bytes() {
  static const int64_t bytes = cache_bytes(_SC_LEVEL2_CACHE_SIZE, int64_t(1) << 20);
  return bytes;
}

// Bytes of the last-level (L3) cache (a VM may report its host's); 0 when the system does not say.
inline int64_t l3_cache_bytes() {
  static const int64_t bytes = cache_bytes(_SC_LEVEL3_CACHE_SIZE, 0);
  return bytes;
}

// 64-byte aligned, uninitialized scratch; allocated outside parallel regions so bad_alloc propagates.
template <typename T>
struct Buf {
  T* p = nullptr;
  explicit Buf(int64_t n) {
    size_t bytes = (static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(T) + 63) & ~size_t(63);
    p = static_cast<T*>(std::aligned_alloc(64, bytes));
    if (p == nullptr) throw std::bad_alloc();
  }
  ~Buf() { std::free(p); }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
};

// Generalized problem (see the header comment). Cg = Cin/G, Kg = Kout/G.
struct Geo {
  int64_t N, Cin, H, W, Kout, P, Q, R, S, G, Cg, Kg;
  int64_t sh, sw, ph, pw, dh, dw;
};

// Whether a conv_run kernel (forward, or dgrad's correlations) writes its output with non-temporal
// stores (store_maybe_stream). Streaming skips the read-for-ownership of every output line, but the
// next layer then reads the output from memory instead of the L3 cache. Rules, from the bench's layers (2 threads, fp32, N=32; ratios to
// torch in the bench harness, where each call's output lives until the next call returns):
// - an output within the L2 caches (< 2 MiB) is written plainly: it is read back from cache;
// - a layer with few multiply-adds per output element (C/groups*R*S < 64) streams: it is bound by
//   moving data, and its plain stores wait on the read-for-ownership with little work to overlap.
//   Intel Xeon (L3 480 MiB): RGB stem channels_last (27 per output) 0.30-0.32 -> 0.25-0.26 ms streamed.
//   A kernel that prefetches its output lines for writing a block ahead of the stores passes
//   few_macs_stream = false: the read-for-ownership then overlaps the work of the block before, and
//   plain stores win (the channels_last depthwise kernel, 9 per output: see dwcl_scratch_at);
// - other layers stream only an output of at least half the L3 cache, which would not stay cached for
//   the next layer anyway. On the Xeon, plain stores were ahead for the 1x1 64->64 (8 MiB out; 1.00-1.07
//   against 0.92-1.03 streamed) and the stride-2 128->128 layer (0.92-0.96 against 0.91).
// StreamStores::kAlways / kNever (kernels.h) override the rules.
template <typename T>
bool stream_output(const Geo& g, bool few_macs_stream = true) {
  const StreamStores mode = stream_stores();
  if (mode != StreamStores::kAuto) return mode == StreamStores::kAlways;
  const int64_t out_bytes = g.N * g.Kout * g.P * g.Q * (int64_t)sizeof(T);
  if (out_bytes < (int64_t(2) << 20)) return false;
  if (few_macs_stream && g.Cg * g.R * g.S < 64) return true;
  const int64_t l3 = l3_cache_bytes();
  return l3 == 0 || 2 * out_bytes >= l3;
}

template <typename T>
struct In4 {
  const T* p = nullptr;
  int64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
};
template <typename T>
struct Out4 {
  T* p = nullptr;
  int64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
};
// w(g, k, c, r, s) = p[g*sg + k*sk + c*sc + r*sr + s*ss]
template <typename T>
struct WV {
  const T* p;
  int64_t sg, sk, sc, sr, ss;
  T at(int64_t g, int64_t k, int64_t c, int64_t r, int64_t s) const {
    return p[g * sg + k * sk + c * sc + r * sr + s * ss];
  }
};

// torch's threshold_backward(grad, relu_out, 0): relu_out <= 0 ? 0 : grad (a NaN relu_out keeps grad).
// Written as a bit mask, not a select: about half of a ReLU mask is zeros in no pattern, and gcc
// compiled the select in the scalar layout-copy loops to a branch that mispredicted on every other
// element (RGB stem channels_last input gradient with ReLU, 2 threads: 3.55 ms against 1.50 without
// the mask).
template <typename T>
FC_INLINE T masked(T v, T m) {
  using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  static_assert(sizeof(U) == sizeof(T), "masked: float or double");
  U bits;
  std::memcpy(&bits, &v, sizeof(T));
  bits &= U(0) - U(!(m <= T(0)));  // all ones to keep grad, zero to drop it
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

// The lanes of v added from lane 0 up, starting from +0: a fixed order, so a reduction that keeps
// per-lane sums and finishes with this gives the same bits on every run.
template <typename T>
FC_INLINE T sum_lanes_in_order(typename Simd<T>::V v) {
  alignas(64) T lanes[Simd<T>::L];
  Simd<T>::store(lanes, v);
  T tot = T(0);
  for (int l = 0; l < Simd<T>::L; ++l) tot += lanes[l];
  return tot;
}

// Tiles of a reduction split over blocks (row stride ld): the first block stores its MR x NR tile,
// later blocks add the stored partial sum into their accumulators.
template <typename T, int MR, int NV>
FC_INLINE void add_tile(typename Simd<T>::V (&acc)[MR][NV], const T* ct, int64_t ld) {
  using Sd = Simd<T>;
  FC_UNROLL for (int i = 0; i < MR; ++i) FC_UNROLL for (int v = 0; v < NV; ++v)
      acc[i][v] = Sd::add(acc[i][v], Sd::load(ct + i * ld + v * Sd::L));
}

template <typename T, int MR, int NV>
FC_INLINE void store_tile(typename Simd<T>::V (&acc)[MR][NV], T* ct, int64_t ld) {
  using Sd = Simd<T>;
  FC_UNROLL for (int i = 0; i < MR; ++i) FC_UNROLL for (int v = 0; v < NV; ++v)
      Sd::store(ct + i * ld + v * Sd::L, acc[i][v]);
}

template <typename T, int MR, int NV>
FC_INLINE void store_or_accumulate(typename Simd<T>::V (&acc)[MR][NV], T* ct, int64_t ld, bool first) {
  if (!first) add_tile<T, MR, NV>(acc, ct, ld);
  store_tile<T, MR, NV>(acc, ct, ld);
}

// Stores a whole vector: non-temporally when stream is set and p is 64-byte aligned (AVX-512; the
// large-output paths of conv_cl, conv_cl_pointwise and the depthwise copy-out), else plainly.
template <typename T>
FC_INLINE void store_maybe_stream(T* p, typename Simd<T>::V v, bool stream) {
#if defined(__AVX512F__)
  if (stream && (reinterpret_cast<uintptr_t>(p) & 63) == 0) {
    if constexpr (sizeof(T) == 4)
      _mm512_stream_ps(reinterpret_cast<float*>(p), v);
    else
      _mm512_stream_pd(reinterpret_cast<double*>(p), v);
    return;
  }
#endif
  Simd<T>::store(p, v);
}

// ceil(a / b) for b > 0 and any sign of a.
inline int64_t ceil_div(int64_t a, int64_t b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); }

// Output columns q in [lo, hi) read a valid input column for a tap at offset off: 0 <= q*sw + off < W.
struct QRange {
  int64_t lo, hi;
};
inline QRange valid_cols(int64_t off, int64_t sw, int64_t W, int64_t Q) {
  const int64_t lo = std::min(Q, std::max<int64_t>(0, ceil_div(-off, sw)));
  const int64_t hi = std::min(Q, std::max(lo, ceil_div(W - off, sw)));
  return {lo, hi};
}

// dst[t] = src[2t] for t < n (stride-2 columns; AVX-512: two loads and one permute per 16 floats,
// never reading past src[2(n-1)]).
template <typename T>
FC_INLINE void copy_even(T* __restrict d, const T* __restrict src, int64_t n) {
  int64_t t = 0;
#if defined(__AVX512F__)
  if constexpr (sizeof(T) == 4) {
    const __m512i idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    for (; t + 16 < n; t += 16)
      _mm512_storeu_ps(reinterpret_cast<float*>(d + t),
                       _mm512_permutex2var_ps(_mm512_loadu_ps(reinterpret_cast<const float*>(src + 2 * t)), idx,
                                              _mm512_loadu_ps(reinterpret_cast<const float*>(src + 2 * t + 16))));
  } else {
    const __m512i idx = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
    for (; t + 8 < n; t += 8)
      _mm512_storeu_pd(reinterpret_cast<double*>(d + t),
                       _mm512_permutex2var_pd(_mm512_loadu_pd(reinterpret_cast<const double*>(src + 2 * t)), idx,
                                              _mm512_loadu_pd(reinterpret_cast<const double*>(src + 2 * t + 8))));
  }
#endif
  for (; t < n; ++t) d[t] = src[2 * t];
}

// One row segment: dst[t] = x[row, iw0 + t*sw] for t in [tlo, thi) (the valid columns), else 0.
// row/mrow point at column 0 of the input row and are only dereferenced at valid columns.
template <typename T>
FC_INLINE void copy_run(T* __restrict dst, int64_t len, int64_t tlo, int64_t thi, const T* row, int64_t sx,
                        const T* mrow, int64_t smx, int64_t iw0, int64_t sw) {
  zero_n(dst, tlo);
  if (thi > tlo) {
    const int64_t i0 = iw0 + tlo * sw;
    const int64_t n = thi - tlo;
    const T* src = row + i0 * sx;
    T* d = dst + tlo;
    if (mrow != nullptr) {
      const T* m = mrow + i0 * smx;
      const int64_t st = sw * sx, sm = sw * smx;
      for (int64_t t = 0; t < n; ++t) d[t] = masked(src[t * st], m[t * sm]);
    } else if (sw * sx == 1) {
      copy_n(d, src, n);
    } else if (sw * sx == 2) {
      copy_even(d, src, n);
    } else {
      const int64_t st = sw * sx;
      for (int64_t t = 0; t < n; ++t) d[t] = src[t * st];
    }
  }
  zero_n(dst + thi, len - thi);
}

// ---------------------------------------------------------------------------------------------
// NCHW output: C[Kg x pixels], vectors along pixels.
struct PixRun {
  int64_t pan, lane, len, p, q;  // p < 0: padding lanes (zeros)
};

// A for the NCHW path: [G][ceil(Kg/MR)][CRS][MR], reduction order (c, r, s); rows past Kg are zero.
template <int MR>
int64_t pix_weight_floats(const Geo& g) {
  return g.G * cdiv(g.Kg, MR) * g.Cg * g.R * g.S * MR;
}
template <typename T, int MR>
void pack_weight_panels(const Geo& g, const WV<T>& w, T* A, int nth) {
  const int64_t nIr = cdiv(g.Kg, MR), CRS = g.Cg * g.R * g.S;
#pragma omp parallel for num_threads(nth) schedule(static)
  for (int64_t t = 0; t < g.G * nIr; ++t) {
    const int64_t gi = t / nIr, ir = t % nIr;
    T* dst = A + t * CRS * MR;
    for (int64_t c = 0; c < g.Cg; ++c)
      for (int64_t r = 0; r < g.R; ++r)
        for (int64_t s = 0; s < g.S; ++s)
          for (int i = 0; i < MR; ++i) {
            const int64_t k = ir * MR + i;
            *dst++ = k < g.Kg ? w.at(gi, k, c, r, s) : T(0);
          }
  }
}

// NCHW output, stride 1 or 2: direct convolution on a zero-padded input window, no packing of B.
// Output pixels live on the padded grid j' = p*Wp + q (q < Wp; columns q >= Q are computed and
// dropped), so for tap (c, r, s) the B row of NR pixels is NR consecutive elements of the window at
// offset j' + off(c, r, s). Task = (n, g, block of RB output rows); the window holds the
// (RB-1)*sh + (R-1)*|dh| + 1 input rows it needs for all Cg channels (padded copy, ReLU mask applied
// here), split into sh x sw phase planes for a strided problem so that B rows stay contiguous: each
// input element is copied once per task instead of once per tap as an im2col packing of strided
// columns would (c128k128 3x3 stride 2 on 32x32: conv_pix spent ~1/4 of its time packing B and ran
// 288-pixel blocks for 256 output pixels).
template <typename T, int MR, int NV>
void conv_pix_direct(const Geo& g, In4<T> x, In4<T> m, WV<T> w, const T* bias, Out4<T> y, bool relu, int nth,
                     const T* Apre = nullptr) {
  using Sd = Simd<T>;
  using V = typename Sd::V;
  constexpr int L = Sd::L;
  constexpr int NR = NV * L;
  const int64_t RS = g.R * g.S, CRS = g.Cg * RS;
  const int64_t nIr = cdiv(g.Kg, MR);
  Buf<T> Aown(Apre ? 0 : pix_weight_floats<MR>(g));
  if (!Apre) pack_weight_panels<T, MR>(g, w, Aown.p, nth);
  const T* const Ap = Apre ? Apre : Aown.p;

  // Window rows u / columns v <-> input row p0*sh + hlo + u / column wlo + v. Tap (r, s) of output
  // (p0 + pl, q) reads u = pl*sh + offr[r], v = q*sw + offw[s]; the window is split into sh x sw
  // phase planes (plane (u % sh, v % sw) holds row u / sh, column v / sw), so a run of output
  // columns reads a run of consecutive plane elements whatever the stride.
  const int64_t sh = g.sh, sw = g.sw, nph = sh * sw;
  const int64_t hlo = -g.ph + std::min<int64_t>(0, (g.R - 1) * g.dh);
  const int64_t span_h = std::abs((g.R - 1) * g.dh);
  const int64_t wlo = -g.pw + std::min<int64_t>(0, (g.S - 1) * g.dw);
  std::vector<int64_t> offr(g.R), offw(g.S);
  int64_t maxr = 0, maxw = 0;
  for (int64_t r = 0; r < g.R; ++r) maxr = std::max(maxr, (offr[r] = r * g.dh - g.ph - hlo) / sh);
  for (int64_t t = 0; t < g.S; ++t) maxw = std::max(maxw, (offw[t] = t * g.dw - g.pw - wlo) / sw);
  const int64_t Wp = g.Q + maxw;  // plane width: output columns plus the taps' reach
  const int64_t RB = std::max<int64_t>(1, std::min(g.P, cdiv(384, Wp)));  // output rows per task
  const int64_t nRb = cdiv(g.P, RB);
  // Where the panel's vectors lie. On the padded grid (default) the NR lanes of a panel are NR
  // consecutive grid pixels, so a vector may straddle two output rows and carry the dropped columns
  // q >= Q, and the epilogue splits it lane by lane. Row-aligned, vector t of a task covers output row
  // t / nvr, columns (t % nvr)*L .. +L (the row's last vector masked when L does not divide Q): one
  // store per vector. Taken when it computes no more lanes than the grid, ceil(Q/L)*L <= Wp: the RGB
  // stem (Q = 32, Wp = 34) spent half its samples outside the FMA loop, in the splitting epilogue, its
  // reduction being only 27 long (N=32, 3->32, 32x32, NCHW, 2 threads, interleaved with torch: 0.70-0.98
  // -> 0.45-0.57 ms; torch 0.55-0.65). A row-aligned vector reads at most nvr*L - 1 + maxw < 2*Wp plane
  // elements from its row start, so it stays inside the plane's rows and slack row.
  const int64_t nvr = cdiv(g.Q, L);
  const bool row_aligned = nvr * L <= Wp;
  const int64_t NCt = row_aligned ? RB * nvr * L : RB * Wp, npan_max = cdiv(NCt, NR), NC = npan_max * NR;
  const int64_t rows_pl = RB + maxr;                 // plane rows read by the taps
  const int64_t ps = (rows_pl + 1) * Wp;             // plane size, with a zeroed slack row
  const int64_t cs = nph * ps + NR;                  // channel stride in the window, with zeroed slack
  const int64_t KC = std::max<int64_t>(32, (24 * 1024) / (NR * (int64_t)sizeof(T)));
  const int64_t nkb = cdiv(CRS, KC), kc = cdiv(CRS, nkb);
  std::vector<int64_t> offs(CRS);
  std::vector<char> used(nph, 0);  // planes some tap reads (1x1 stride 2 reads one of four)
  for (int64_t c = 0, kk = 0; c < g.Cg; ++c)
    for (int64_t r = 0; r < g.R; ++r)
      for (int64_t t = 0; t < g.S; ++t) {
        const int64_t pl = (offr[r] % sh) * sw + offw[t] % sw;
        used[pl] = 1;
        offs[kk++] = c * cs + pl * ps + (offr[r] / sh) * Wp + offw[t] / sw;
      }
  std::vector<QRange> qr(sw);
  for (int64_t b = 0; b < sw; ++b) qr[b] = valid_cols(wlo + b, sw, g.W, Wp);
  const int64_t ntask = g.N * g.G * nRb;
  const int64_t ldc = NC;
  const int64_t wsz = g.Cg * cs, csz = nkb > 1 ? nIr * MR * NC : 0;
  Buf<T> scratch(nth * (wsz + csz));
  // Non-temporal stores for a large output, as conv_cl (row-aligned vectors only: whole stores).
  [[maybe_unused]] const bool stream_out = row_aligned && y.s3 == 1 && stream_output<T>(g);

#pragma omp parallel num_threads(nth)
  {
    const int tid = thread_id();
    T* win = scratch.p + tid * (wsz + csz);
    T* Cb = win + wsz;
    if (nph > 1) zero_n(win, wsz);  // unused planes: never written, read only by dropped lanes
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < ntask; ++task) {
      const int64_t rb = task % nRb, ng = task / nRb, gi = ng % g.G, n = ng / g.G;
      const int64_t p0 = rb * RB, nrows = std::min(RB, g.P - p0);
      const int64_t npan = row_aligned ? cdiv(nrows * nvr, NV) : cdiv(nrows * Wp, NR);
      const int64_t nu = (nrows - 1) * sh + span_h + 1;  // input rows of the task
      for (int64_t c = 0; c < g.Cg; ++c) {
        T* wc = win + c * cs;
        const T* xc = x.p + n * x.s0 + (gi * g.Cg + c) * x.s1;
        const T* mc = m.p ? m.p + n * m.s0 + (gi * g.Cg + c) * m.s1 : nullptr;
        for (int64_t a = 0; a < sh; ++a)
          for (int64_t b = 0; b < sw; ++b) {
            if (!used[a * sw + b]) continue;
            T* wp = wc + (a * sw + b) * ps;
            for (int64_t i = 0; i <= rows_pl; ++i) {
              const int64_t u = a + sh * i, ih = p0 * sh + hlo + u;
              if (u >= nu || ih < 0 || ih >= g.H)
                zero_n(wp + i * Wp, Wp);
              else
                copy_run(wp + i * Wp, Wp, qr[b].lo, qr[b].hi, xc + ih * x.s2, x.s3, mc ? mc + ih * m.s2 : nullptr,
                         m.s3, wlo + b, sw);
            }
          }
        zero_n(wc + nph * ps, NR);
      }
      T* ybase = y.p + n * y.s0 + p0 * y.s2;
      for (int64_t kb = 0; kb < nkb; ++kb) {
        const int64_t k0 = kb * kc, kl = std::min(kc, CRS - k0);
        const bool first = kb == 0, last = kb == nkb - 1;
        for (int64_t jr = 0; jr < npan; ++jr) {
          // lane 0 of each vector of the panel: output row (padded-grid row) and column, and its plane offset
          int64_t vrow[NV], vcol[NV], voff[NV];
          for (int v = 0; v < NV; ++v) {
            if (row_aligned) {
              const int64_t t = jr * NV + v;
              vrow[v] = t / nvr;
              vcol[v] = (t % nvr) * L;
              // vectors past the task's rows (last panel) read row 0 and are never stored
              voff[v] = vrow[v] < nrows ? vrow[v] * Wp + vcol[v] : 0;
            } else {
              const int64_t j = jr * NR + v * L;
              vrow[v] = j / Wp;
              vcol[v] = j % Wp;
              voff[v] = j;
            }
          }
          for (int64_t ir = 0; ir < nIr; ++ir) {
            ukr_offs<T, MR, NV>(kl, Ap + ((gi * nIr + ir) * CRS + k0) * MR, win, offs.data() + k0, voff,
                                [&](V(&acc)[MR][NV]) {
              T* ct = Cb + ir * MR * ldc + jr * NR;
              if (!first) add_tile<T, MR, NV>(acc, ct, ldc);
              if (!last) return store_tile<T, MR, NV>(acc, ct, ldc);  // partial sum of a kc block
              FC_UNROLL for (int i = 0; i < MR; ++i) {
                const int64_t k = ir * MR + i;
                if (k >= g.Kg) break;
                const int64_t kabs = gi * g.Kg + k;
                T* yk = ybase + kabs * y.s1;
                const V bv = bias ? Sd::set1(bias[kabs]) : Sd::zero();
                FC_UNROLL for (int v = 0; v < NV; ++v) {
                  V val = acc[i][v];
                  if (bias) val = Sd::add(val, bv);
                  if (relu) val = Sd::relu(val);
                  if (row_aligned) {
                    if (vrow[v] >= nrows) continue;
                    T* dst = yk + vrow[v] * y.s2 + vcol[v] * y.s3;
                    const int nval = (int)std::min<int64_t>(L, g.Q - vcol[v]);
                    if (y.s3 == 1) {
                      if (nval == L)
                        store_maybe_stream<T>(dst, val, stream_out);
                      else
                        Sd::store_n(dst, val, nval);
                    } else {
                      alignas(64) T tmp[L];
                      Sd::store(tmp, val);
                      for (int t = 0; t < nval; ++t) dst[t * y.s3] = tmp[t];
                    }
                    continue;
                  }
                  // split the vector at padded-row boundaries; keep columns q < Q of rows < nrows
                  int64_t pr = vrow[v], qc = vcol[v];
                  for (int l = 0; l < L && pr < nrows;) {
                    const int in_row = (int)std::min<int64_t>(L - l, Wp - qc);
                    const int nval = (int)std::max<int64_t>(0, std::min<int64_t>(in_row, g.Q - qc));
                    if (nval > 0) {
                      T* dst = yk + pr * y.s2 + qc * y.s3;
                      if (y.s3 == 1) {
                        if (nval == L)
                          Sd::store(dst, val);
                        else
                          Sd::store_lanes(dst, val, l, nval);
                      } else {
                        alignas(64) T tmp[L];
                        Sd::store(tmp, val);
                        for (int t = 0; t < nval; ++t) dst[t * y.s3] = tmp[l + t];
                      }
                    }
                    l += in_row;
                    ++pr;
                    qc = 0;
                  }
                }
              }
            });
          }
        }
      }
#if defined(__AVX512F__)
      if (stream_out) _mm_sfence();  // order this task's streamed stores before the loop's barrier
#endif
    }
  }
}

template <typename T, int MR, int NV>
void conv_pix(const Geo& g, In4<T> x, In4<T> m, WV<T> w, const T* bias, Out4<T> y, bool relu, int nth,
              const T* Apre = nullptr) {
  using Sd = Simd<T>;
  using V = typename Sd::V;
  constexpr int L = Sd::L;
  constexpr int NR = NV * L;
  const int64_t RS = g.R * g.S, CRS = g.Cg * RS, PQ = g.P * g.Q;
  const int64_t nIr = cdiv(g.Kg, MR);

  Buf<T> Aown(Apre ? 0 : pix_weight_floats<MR>(g));
  if (!Apre) pack_weight_panels<T, MR>(g, w, Aown.p, nth);
  const T* const Ap = Apre ? Apre : Aown.p;

  // kc: B micro-panel kc x NR <= 24 KiB (L1-resident while the A panels stream from L2).
  const int64_t KC = std::max<int64_t>(32, (24 * 1024) / (NR * (int64_t)sizeof(T)));
  const int64_t nkb = cdiv(CRS, KC), kc = cdiv(CRS, nkb);
  const int64_t npan_max = std::min<int64_t>(cdiv(PQ, NR), 8);
  const int64_t NC = npan_max * NR;  // pixels per task
  const int64_t nJb = cdiv(PQ, NC);
  const int64_t ntask = g.N * g.G * nJb;
  const bool plane_contig = (y.s3 == 1 && y.s2 == g.Q);
  const int64_t ldc = NC;
  const int64_t bsz = kc * NC, csz = nkb > 1 ? nIr * MR * NC : 0;
  const int64_t rmax = NC + npan_max + 2;
  Buf<T> scratch(nth * (bsz + csz));
  std::vector<PixRun> runs_all(nth * rmax);
  std::vector<int64_t> yoff_all(nth * NC);
  std::vector<QRange> qrange(g.S);
  for (int64_t s = 0; s < g.S; ++s) qrange[s] = valid_cols(s * g.dw - g.pw, g.sw, g.W, g.Q);

#pragma omp parallel num_threads(nth)
  {
    const int tid = thread_id();
    T* Bb = scratch.p + tid * (bsz + csz);
    T* Cb = Bb + bsz;
    PixRun* runs = runs_all.data() + tid * rmax;
    int64_t* yoff = yoff_all.data() + tid * NC;
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < ntask; ++task) {
      const int64_t jb = task % nJb, ng = task / nJb, gi = ng % g.G, n = ng / g.G;
      const int64_t j0 = jb * NC, nc = std::min(NC, PQ - j0), npan = cdiv(nc, NR);
      // Row segments of the pixel block, split at output-row and panel boundaries.
      int64_t nruns = 0;
      for (int64_t jj = 0; jj < npan * NR;) {
        const int64_t pan = jj / NR, lane = jj % NR;
        if (jj >= nc) {
          runs[nruns++] = {pan, lane, NR - lane, -1, 0};
          jj += NR - lane;
          continue;
        }
        const int64_t j = j0 + jj, p = j / g.Q, q = j % g.Q;
        const int64_t len = std::min({g.Q - q, NR - lane, nc - jj});
        runs[nruns++] = {pan, lane, len, p, q};
        jj += len;
      }
      if (!plane_contig)
        for (int64_t jj = 0; jj < nc; ++jj) {
          const int64_t j = j0 + jj;
          yoff[jj] = (j / g.Q) * y.s2 + (j % g.Q) * y.s3;
        }
      const T* xn = x.p + n * x.s0 + gi * g.Cg * x.s1;
      const T* mn = m.p ? m.p + n * m.s0 + gi * g.Cg * m.s1 : nullptr;
      for (int64_t kb = 0; kb < nkb; ++kb) {
        const int64_t k0 = kb * kc, kl = std::min(kc, CRS - k0);
        // pack B: [pan][kl][NR]; (c, r, s) advanced incrementally from k0.
        int64_t c = k0 / RS, r = (k0 % RS) / g.S, s = k0 % g.S;
        for (int64_t kk = k0; kk < k0 + kl; ++kk) {
          const T* xc = xn + c * x.s1;
          const T* mc = mn ? mn + c * m.s1 : nullptr;
          const int64_t offh = r * g.dh - g.ph, offw = s * g.dw - g.pw;
          const QRange qr = qrange[s];
          T* bk = Bb + (kk - k0) * NR;
          for (int64_t ri = 0; ri < nruns; ++ri) {
            const PixRun& ru = runs[ri];
            T* dst = bk + ru.pan * kl * NR + ru.lane;
            const int64_t ih = ru.p * g.sh + offh;
            if (ru.p < 0 || ih < 0 || ih >= g.H) {
              zero_n(dst, ru.len);
              continue;
            }
            const int64_t tlo = std::min(ru.len, std::max<int64_t>(0, qr.lo - ru.q));
            const int64_t thi = std::min(ru.len, std::max(tlo, qr.hi - ru.q));
            copy_run(dst, ru.len, tlo, thi, xc + ih * x.s2, x.s3, mc ? mc + ih * m.s2 : nullptr, m.s3,
                     ru.q * g.sw + offw, g.sw);
          }
          if (++s == g.S) {
            s = 0;
            if (++r == g.R) {
              r = 0;
              ++c;
            }
          }
        }
        const bool first = kb == 0, last = kb == nkb - 1;
        for (int64_t jr = 0; jr < npan; ++jr) {
          const T* bp = Bb + jr * kl * NR;
          for (int64_t ir = 0; ir < nIr; ++ir) {
            ukr_panel<T, MR, NV>(kl, Ap + ((gi * nIr + ir) * CRS + k0) * MR, bp, [&](V(&acc)[MR][NV]) {
              T* ct = Cb + ir * MR * ldc + jr * NR;
              if (!first) add_tile<T, MR, NV>(acc, ct, ldc);
              if (!last) return store_tile<T, MR, NV>(acc, ct, ldc);  // partial sum of a kc block
              const int64_t jbase = jr * NR;
              const bool full = plane_contig && jbase + NR <= nc;
              FC_UNROLL for (int i = 0; i < MR; ++i) {
                const int64_t k = ir * MR + i;
                if (k >= g.Kg) break;
                const int64_t kabs = gi * g.Kg + k;
                T* yrow = y.p + n * y.s0 + kabs * y.s1;
                const V bv = bias ? Sd::set1(bias[kabs]) : Sd::zero();
                FC_UNROLL for (int v = 0; v < NV; ++v) {
                  V val = acc[i][v];
                  if (bias) val = Sd::add(val, bv);
                  if (relu) val = Sd::relu(val);
                  if (full) {
                    Sd::store(yrow + j0 + jbase + v * L, val);
                  } else {
                    alignas(64) T tmp[L];
                    Sd::store(tmp, val);
                    for (int l = 0; l < L; ++l) {
                      const int64_t jj = jbase + v * L + l;
                      if (jj < nc) yrow[plane_contig ? j0 + jj : yoff[jj]] = tmp[l];
                    }
                  }
                }
              }
            });
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// channels_last output: C[pixels x Kg], vectors along K, reduction order (tap, c).
struct Seg {
  int64_t t, c0, len;
};

// Reduction blocks over (tap, c): whole taps while Cg <= KC, else channel chunks of one tap.
inline void make_blocks(int64_t RS, int64_t Cg, int64_t KC, std::vector<Seg>& segs, std::vector<int64_t>& bstart) {
  segs.clear();
  bstart.clear();
  if (Cg <= KC) {
    const int64_t TB = std::max<int64_t>(1, KC / Cg);
    for (int64_t t0 = 0; t0 < RS; t0 += TB) {
      bstart.push_back((int64_t)segs.size());
      for (int64_t t = t0; t < std::min(RS, t0 + TB); ++t) segs.push_back({t, 0, Cg});
    }
  } else {
    const int64_t nch = cdiv(Cg, KC), ch = cdiv(Cg, nch);
    for (int64_t t = 0; t < RS; ++t)
      for (int64_t c0 = 0; c0 < Cg; c0 += ch) {
        bstart.push_back((int64_t)segs.size());
        segs.push_back({t, c0, std::min(ch, Cg - c0)});
      }
  }
  bstart.push_back((int64_t)segs.size());
}

// conv_cl's packed weights: B[G][nJr][RS*Cg (kk = tap*Cg + c)][NR], NR = NV * L output channels per
// panel (zero past Kg).
template <typename T, int NV>
int64_t cl_weight_floats(const Geo& g) {
  constexpr int NR = NV * Simd<T>::L;
  return g.G * cdiv(g.Kg, NR) * g.Cg * g.R * g.S * NR;
}
template <typename T, int NV>
void pack_cl_weights(const Geo& g, WV<T> w, T* B, int nth) {
  constexpr int NR = NV * Simd<T>::L;
  const int64_t nJr = cdiv(g.Kg, NR), CRS = g.Cg * g.R * g.S;
#pragma omp parallel for num_threads(nth) schedule(static)
  for (int64_t t = 0; t < g.G * nJr; ++t) {
    const int64_t gi = t / nJr, jr = t % nJr;
    T* dst = B + t * CRS * NR;
    for (int64_t r = 0; r < g.R; ++r)
      for (int64_t s = 0; s < g.S; ++s)
        for (int64_t c = 0; c < g.Cg; ++c)
          for (int l = 0; l < NR; ++l) {
            const int64_t k = jr * NR + l;
            *dst++ = k < g.Kg ? w.at(gi, k, c, r, s) : T(0);
          }
  }
}

// Pointwise layers (1x1, stride 1, no padding, one group) on dense channels_last tensors are one GEMM
// C[N*P*Q x Kg] = X[N*P*Q x Cg] * B over the batch's pixels, which are consecutive rows of Cg (x) and
// Kout (y) elements, so it needs none of conv_cl's per-task machinery (pixel lists, row runs, output
// offsets, reduction blocks): each thread walks a contiguous range of MR-pixel tiles, a tile's row
// pointers are x + pixel * Cg and its whole reduction runs against one B panel (Cg x NR, up to half
// the L2: the caller's condition); the bias initializes the accumulators and the k loop is unrolled
// by 4. Measured (2 threads, raw kernel call, ms, conv_cl -> this):
// 1x1 64->64 N=32 32x32 0.87-0.98 -> 0.775 (torch 0.80-0.85); with B panels from L2 (ResNet-50
// shapes, N=8): 256->64 56x56 2.39 -> 2.28, 512->128 28x28 2.54 -> 2.18, 1024->256 14x14 2.66 -> 2.26.
template <typename T, int MR, int NV>
void conv_cl_pointwise(const Geo& g, const T* x, const T* Bp, const T* biasp, T* y, bool relu, bool stream_out,
                       int nth) {
  using Sd = Simd<T>;
  using V = typename Sd::V;
  constexpr int L = Sd::L;
  constexpr int NR = NV * L;
  const int64_t M = g.N * g.P * g.Q, Cg = g.Cg, Kg = g.Kg, nJr = cdiv(Kg, NR);
  const int64_t ntile = cdiv(M, MR);
#pragma omp parallel num_threads(nth)
  {
#pragma omp for schedule(static)
    for (int64_t tile = 0; tile < ntile; ++tile) {
      const int64_t j0 = tile * MR, mr = std::min<int64_t>(MR, M - j0);
      const T* r[MR];
      FC_UNROLL for (int i = 0; i < MR; ++i) r[i] = x + (j0 + std::min<int64_t>(i, mr - 1)) * Cg;  // tail lanes: never stored
      for (int64_t jr = 0; jr < nJr; ++jr) {
        const int64_t kb = jr * NR;
        // The bias is the accumulators' initial value, which saves MR * NV additions per tile.
        V acc[MR][NV];
        FC_UNROLL for (int i = 0; i < MR; ++i) FC_UNROLL for (int v = 0; v < NV; ++v)
            acc[i][v] = biasp ? Sd::load(biasp + kb + v * L) : Sd::zero();
        const T* bp = Bp + jr * Cg * NR;
#pragma GCC unroll 4
        for (int64_t k = 0; k < Cg; ++k) rows_rank1<T, MR, NV>(acc, r, k, bp + k * NR);
        FC_UNROLL for (int i = 0; i < MR; ++i) {
          if (i >= mr) break;
          T* yp = y + (j0 + i) * Kg + kb;
          FC_UNROLL for (int v = 0; v < NV; ++v) {
            V val = acc[i][v];
            if (relu) val = Sd::relu(val);
            const int64_t left = Kg - kb - v * L;  // output channels left from this vector on
            if (left >= L) {
              store_maybe_stream<T>(yp + v * L, val, stream_out);
            } else if (left > 0) {
              Sd::store_n(yp + v * L, val, (int)left);
            }
          }
        }
      }
    }
#if defined(__AVX512F__)
    if (stream_out) _mm_sfence();
#endif
  }
}

// Bpre: weights already packed by pack_cl_weights (callers that run several batches of one layer),
// or null to pack w here.
template <typename T, int MR, int NV>
void conv_cl(const Geo& g, In4<T> x, In4<T> m, WV<T> w, const T* bias, Out4<T> y, bool relu, int nth,
             const T* Bpre = nullptr) {
  using Sd = Simd<T>;
  using V = typename Sd::V;
  constexpr int L = Sd::L;
  constexpr int NR = NV * L;
  const int64_t RS = g.R * g.S, CRS = g.Cg * RS, PQ = g.P * g.Q;
  const int64_t nJr = cdiv(g.Kg, NR), Npad = nJr * NR;

  Buf<T> Bown(Bpre ? 0 : cl_weight_floats<T, NV>(g));
  if (!Bpre) pack_cl_weights<T, NV>(g, w, Bown.p, nth);
  const T* const Bp = Bpre ? Bpre : Bown.p;
  std::vector<T> biasp(bias ? g.G * Npad : 0, T(0));
  if (bias)
    for (int64_t gi = 0; gi < g.G; ++gi)
      for (int64_t k = 0; k < g.Kg; ++k) biasp[gi * Npad + k] = bias[gi * g.Kg + k];

  // Reduction blocks. Default: a B block kc x NR <= 32 KiB, L1-resident (48 KiB) next to the A rows.
  // 24 KiB split a 128-channel tap into two blocks of 64; 32 KiB keeps it whole (stride-2 128->128
  // layer, 1 thread: 142-150 -> 153-158 GFLOP/s, fewer partial-sum passes through C).
  const int64_t KC_L1 = std::max<int64_t>(32, std::min<int64_t>(256, (32 * 1024) / (NR * (int64_t)sizeof(T))));
  const bool indirect = (x.s1 == 1 || g.Cg == 1) && m.p == nullptr;
  // Row merge: with dense channels_last pixels and dw == 1 the S taps of one filter row are one
  // contiguous run of S*Cg elements, so a segment covers a whole filter row; groups with border
  // pixels, whose runs cross the padding, take the row's S taps as segments instead. Its blocks are
  // whole filter rows, as many as keep the block's B (all NR panels) within three quarters of the L2
  // cache, so B streams from L2 instead of sitting in L1. (Half the L2 split the stride-2 128->128
  // layer's 590 KB of B into two blocks on a 1 MiB-L2 core (Zen 4); in one block, 2 threads,
  // interleaved with torch: ratio 0.94-0.96 -> 0.98-1.02. On 2 MiB L2 both fractions give the same
  // blocks for the bench's layers.)
  // With all R rows in one block a pixel's sum stays in registers for the whole reduction (no
  // partial sums through C) and an interior pixel needs one pointer (whole_windows below). Measured
  // (2 threads, ms, interleaved runs): stride-2 128->128 channels_last 8.4 -> 7.8 (1 thread 17.2 ->
  // 15.6); 64->64 3x3 direct 8.3 -> 7.5. A block larger than L2 is slower: 256->256 3x3 with all 3
  // rows (2.4 MB of B) 12.5 -> 17.6, with one row per block (0.8 MB) 11.8.
  // With S == 1 a filter row is one tap; it is merged only when it fits one L1 block (the blocks are
  // then those of the per-tap path), for the whole-window pixel walk: one division per row run instead
  // of one per pixel and segment. 1x1 64->64, 32x32, channels_last, 2 threads: 1.06-1.08 -> 0.98-1.00 ms.
  const int64_t SC = g.S * g.Cg;
  const int64_t row_bytes = SC * Npad * (int64_t)sizeof(T);  // B of one filter row, all panels
  const int64_t rows_per_block = std::min<int64_t>(g.R, l2_cache_bytes() * 3 / 4 / row_bytes);
  const bool rowmerge = indirect && g.G == 1 && g.Cg > 1 && x.s3 == g.Cg && g.dw == 1 && (g.S > 1 || SC <= KC_L1) &&
                        (SC <= KC_L1 || rows_per_block >= 1);
  const int64_t KC = rowmerge ? std::max(KC_L1, rows_per_block * SC) : KC_L1;
  // A row-merged block's B panel (KC x NR) larger than the L1 blocks streams from L2: the kernels
  // prefetch it (see kRowsPrefetchSteps).
  const bool prefetch_b = KC > KC_L1;
  std::vector<Seg> segs;
  std::vector<int64_t> bstart;
  if (rowmerge)
    make_blocks(g.R, SC, KC, segs, bstart);  // "tap" = filter row r
  else
    make_blocks(RS, g.Cg, KC, segs, bstart);
  const int64_t nblk = (int64_t)bstart.size() - 1;
  // Row merge with the whole reduction in one block (all R filter rows, e.g. the RGB stem or a 3x3
  // layer of 128 channels): a pixel whose window is inside the input needs one pointer; its R row runs
  // are dh*x.s2 apart.
  const bool whole_windows = rowmerge && nblk == 1;
  int64_t maxnseg = 0, maxklen = 0;
  for (int64_t b = 0; b < nblk; ++b) {
    int64_t kl = 0;
    for (int64_t si = bstart[b]; si < bstart[b + 1]; ++si) kl += segs[si].len;
    maxnseg = std::max(maxnseg, bstart[b + 1] - bstart[b]);
    maxklen = std::max(maxklen, kl);
  }

  // Tasks of up to 192 pixels, an image's split into equal ones: a 16x16 output in 132 + 124 pixels,
  // not 192 + 64 (the last task of a thread's share then ends close to the other thread's).
  const int64_t nIrb = cdiv(cdiv(PQ, cdiv(PQ, std::min(cdiv(PQ, MR), cdiv(192, MR)) * MR)), MR);
  const int64_t MC = nIrb * MR;  // pixels per task
  const int64_t nIb = cdiv(PQ, MC);
  const int64_t ntask = g.N * g.G * nIb;
  const bool out_vec = (y.s1 == 1);
  const int64_t ldc = Npad;
  // Non-temporal stores as stream_output says. Measured on the RGB stem layer (N=32, 3->32, 32x32,
  // channels_last, 4 MiB out), streamed against plain: 0.60 -> 0.55 ms with 2 threads.
  [[maybe_unused]] const bool stream_out = out_vec && stream_output<T>(g);
  // Pointwise layers on dense channels_last tensors: one GEMM over the batch's pixels (see
  // conv_cl_pointwise). A B panel of up to half the L2 streams from L2 like the row-merge blocks below.
  const bool pointwise = g.R == 1 && g.S == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0 && g.G == 1 &&
                         m.p == nullptr && g.Cg * NR * (int64_t)sizeof(T) <= l2_cache_bytes() / 2 && x.s1 == 1 &&
                         x.s3 == g.Cg && x.s2 == g.W * x.s3 && x.s0 == g.H * x.s2 && y.s1 == 1 && y.s3 == g.Kout &&
                         y.s2 == g.Q * y.s3 && y.s0 == g.P * y.s2;
  if (pointwise)
    return conv_cl_pointwise<T, MR, NV>(g, x.p, Bp, bias ? biasp.data() : nullptr, y.p, relu, stream_out, nth);

  // Padded copy for whole windows with padding and few input channels (e.g. the RGB stem): a task
  // copies the input rows its pixels read into Xp, zero rows and columns in the padding, so that every
  // pixel is a whole window of Xp and runs ukr_rows_strided; without it the border pixels (12% of a
  // 32x32 image with a 3x3 filter) took materialized per-pixel copies and the per-segment row kernel.
  // The copy is (rows of the task + R - 1) x (padded width) x Cg, a few KiB for the stem, next to
  // 24 KiB of the task's output. Measured on the stem (N=32, 3->32, 32x32, channels_last), kernel
  // alone: 1 thread 0.62 -> 0.48 ms, 2 threads 0.33 -> 0.25-0.29 ms.
  const int64_t Wp = (g.Q - 1) * g.sw + g.S;  // padded columns of every window: iw = -pw .. Wp - pw - 1
  const int64_t task_rows = cdiv(MC, g.Q) + 1;  // output rows one task's pixels can touch
  const int64_t xp_rows = (task_rows - 1) * g.sh + (g.R - 1) * g.dh + 1;
  const int64_t xp_sz = xp_rows * Wp * g.Cg;
  const bool pad_copy = whole_windows && (g.ph > 0 || g.pw > 0) && xp_sz * (int64_t)sizeof(T) <= 16 * 1024;
  const int64_t csz = nblk > 1 ? MC * Npad : 0;
  const int64_t asz = pad_copy ? xp_sz : indirect ? 0 : MC * maxklen;
  Buf<T> scratch(nth * (csz + asz));
  // Segments of one group of MR pixels in a block: a row-merged block's filter rows split into their
  // S taps for groups with border pixels (see the indirect rows below).
  const int64_t gsegs = std::max<int64_t>(maxnseg, 1) * (rowmerge ? g.S : 1);
  const int64_t rows_sz = nIrb * gsegs * MR;
  std::vector<const T*> rows_all(nth * rows_sz);
  std::vector<int64_t> lens_all(nth * nIrb * gsegs), boffs_all(nth * nIrb * gsegs), nsg_all(nth * nIrb);
  std::vector<int64_t> yoff_all(nth * MC), ihb_all(nth * MC), iwb_all(nth * MC);
  std::vector<const T*> rbase_all(nth * MC);
  std::vector<T> zeros(std::max(g.Cg, SC), T(0));

#pragma omp parallel num_threads(nth)
  {
    const int tid = thread_id();
    T* Cb = scratch.p + tid * (csz + asz);
    T* Ab = Cb + csz;
    const T** rows = rows_all.data() + tid * rows_sz;
    int64_t* lens = lens_all.data() + tid * nIrb * gsegs;
    int64_t* boffs = boffs_all.data() + tid * nIrb * gsegs;
    int64_t* nsg = nsg_all.data() + tid * nIrb;
    int64_t* yoff = yoff_all.data() + tid * MC;
    int64_t* ihb = ihb_all.data() + tid * MC;
    int64_t* iwb = iwb_all.data() + tid * MC;
    const T** rbase = rbase_all.data() + tid * MC;
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < ntask; ++task) {
      const int64_t ib = task % nIb, ng = task / nIb, gi = ng % g.G, n = ng / g.G;
      const int64_t j0 = ib * MC, mc = std::min(MC, PQ - j0), nir = cdiv(mc, MR);
      const T* xn = x.p + n * x.s0 + gi * g.Cg * x.s1;
      // The task's pixels are walked as row runs [qa, qb) of output row p: one division per run, not
      // per pixel (a 64-bit division costs 40+ cycles, as much as the whole reduction of a pixel of the
      // RGB stem layer, 27 multiply-adds per output channel).
      // Whole-window mode: pixels whose whole window lies inside the input come first, so that the
      // groups of MR of them run ukr_rows_strided; the rest follow. The order of pixels inside a task
      // is free (each has its own output offset) and does not change any pixel's sum. Whole windows
      // are the columns [qlo, qhi) of the rows whose R taps are all inside the input.
      // The geometry is read into locals: stores into the int64 arrays below could alias g's fields,
      // which made the compiler reload them per pixel.
      const int64_t Q = g.Q, sh = g.sh, sw = g.sw, ph = g.ph, pw = g.pw, S = g.S, W = g.W;
      const int64_t ih_last = (g.R - 1) * g.dh, H = g.H, ys0 = n * y.s0, ys2 = y.s2, ys3 = y.s3;
      const int64_t xs2 = x.s2, xs3 = x.s3;
      int64_t jj = 0;
      const auto emit = [&](int64_t p, int64_t qa, int64_t qb) {
        const int64_t ih0 = p * sh - ph;
        for (int64_t q = qa; q < qb; ++q, ++jj) {
          const int64_t iw0 = q * sw - pw;
          yoff[jj] = ys0 + p * ys2 + q * ys3;
          ihb[jj] = ih0;
          iwb[jj] = iw0;
          // Row merge: the pixel's S*Cg run of filter row 0 when it lies inside the input columns
          // (rows are checked per tap below); null for border pixels, whose groups take per-tap segments.
          rbase[jj] = (rowmerge && iw0 >= 0 && iw0 + S <= W) ? xn + ih0 * xs2 + iw0 * xs3 : nullptr;
        }
      };
      const auto row_runs = [&](auto&& f) {  // f(p, qa, qb) for the task's pixels j0 .. j0 + mc
        for (int64_t j = j0; j < j0 + mc;) {
          const int64_t p = j / Q, qa = j - p * Q, qb = std::min(Q, qa + (j0 + mc - j));
          f(p, qa, qb);
          j += qb - qa;
        }
      };
      int64_t nwhole = 0;
      int64_t seg_stride = g.dh * x.s2;  // whole windows: from one filter row's run to the next
      if (pad_copy) {
        // Input rows ih_a .. ih_a + nrow - 1 (padding rows included) into Xp = Ab, row stride Wp * Cg.
        const int64_t p_a = j0 / Q, p_b = (j0 + mc - 1) / Q;
        const int64_t ih_a = p_a * sh - ph, nrow = (p_b - p_a) * sh + ih_last + 1;
        const int64_t xps2 = Wp * g.Cg;
        for (int64_t r = 0; r < nrow; ++r) {
          T* dst = Ab + r * xps2;
          const int64_t ih = ih_a + r;
          const int64_t lo = std::min(Wp, pw), hi = std::max(lo, std::min(Wp, W + pw));  // columns in [0, W)
          if (ih < 0 || ih >= H || hi == lo) {
            zero_n(dst, Wp * g.Cg);
            continue;
          }
          zero_n(dst, lo * g.Cg);
          copy_n(dst + lo * g.Cg, xn + ih * xs2 + (lo - pw) * xs3, (hi - lo) * g.Cg);  // dense pixels (rowmerge)
          zero_n(dst + hi * g.Cg, (Wp - hi) * g.Cg);
        }
        row_runs([&](int64_t p, int64_t qa, int64_t qb) {
          const T* xr = Ab + (p * sh - ph - ih_a) * xps2;
          for (int64_t q = qa; q < qb; ++q, ++jj) {
            yoff[jj] = ys0 + p * ys2 + q * ys3;
            rbase[jj] = xr + q * sw * g.Cg;
          }
        });
        for (int64_t k = jj; k < nir * MR; ++k) rbase[k] = rbase[0];  // lanes past mc: read, never stored
        nwhole = nir * MR;
        seg_stride = g.dh * xps2;
      } else if (whole_windows) {
        const int64_t qlo = std::min(Q, cdiv(pw, sw)), qhi = std::max(qlo, std::min(Q, (W - S + pw) / sw + 1));
        const auto h_whole = [&](int64_t p) { return p * sh - ph >= 0 && p * sh - ph + ih_last < H; };
        row_runs([&](int64_t p, int64_t qa, int64_t qb) {
          if (h_whole(p)) emit(p, std::max(qa, qlo), std::max(std::max(qa, qlo), std::min(qb, qhi)));
        });
        nwhole = jj;
        row_runs([&](int64_t p, int64_t qa, int64_t qb) {
          if (!h_whole(p)) return emit(p, qa, qb);
          emit(p, qa, std::max(qa, std::min(qb, qlo)));
          emit(p, std::max(qa, std::min(qb, qhi)), qb);
        });
      } else {
        row_runs(emit);
      }
      const int64_t nir_whole = nwhole / MR;  // groups of MR whole-window pixels
      const T* mn = m.p ? m.p + n * m.s0 + gi * g.Cg * m.s1 : nullptr;
      int64_t k0 = 0;
      for (int64_t b = 0; b < nblk; ++b) {
        const int64_t nseg = bstart[b + 1] - bstart[b];
        const Seg* bs = segs.data() + bstart[b];
        int64_t kl = 0;
        for (int64_t si = 0; si < nseg; ++si) kl += bs[si].len;
        if (indirect) {
          // Each group of MR pixels gets the block's segments whose rows are not all padding (those
          // would only multiply zeros), each with its B rows' offset in the block. Row-merged blocks:
          // a group whose pixels all have their filter rows as whole runs (rbase) takes the rows as
          // segments; a group with a border pixel takes the S taps of every filter row as segments,
          // which point into x or at the zeros, so a window's padding costs neither a copy nor
          // multiply-adds (the stride-2 128->128 layer: 31 of a 16x16 output's 256 pixels, a third of
          // each one's taps).
          const T* const z = zeros.data();
          for (int64_t ir = nir_whole; ir < nir; ++ir) {
            const T** rg = rows + ir * gsegs * MR;
            int64_t* lg = lens + ir * gsegs;
            int64_t* og = boffs + ir * gsegs;
            bool runs = rowmerge;
            for (int i = 0; i < MR; ++i)
              if (ir * MR + i < mc && rbase[ir * MR + i] == nullptr) runs = false;
            const int64_t npiece = rowmerge && !runs ? g.S : 1;
            int64_t ns = 0, koff = 0;
            for (int64_t si = 0; si < nseg; ++si) {
              const int64_t tap = bs[si].t, plen = npiece > 1 ? g.Cg : bs[si].len;
              for (int64_t s = 0; s < npiece; ++s) {
                const T** rp = rg + ns * MR;
                bool any = false;
                for (int i = 0; i < MR; ++i) {
                  const int64_t jj = ir * MR + i;
                  const T* pt = z;
                  if (jj < mc && rowmerge) {
                    const int64_t ih = ihb[jj] + tap * g.dh, iw = iwb[jj] + s;  // dw == 1
                    if (ih >= 0 && ih < g.H) {
                      if (runs)
                        pt = rbase[jj] + tap * g.dh * x.s2;
                      else if (iw >= 0 && iw < g.W)
                        pt = xn + ih * x.s2 + iw * x.s3;
                    }
                  } else if (jj < mc) {
                    const int64_t r = tap / g.S, st = tap - r * g.S;
                    const int64_t ih = ihb[jj] + r * g.dh, iw = iwb[jj] + st * g.dw;
                    if (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W) pt = xn + ih * x.s2 + iw * x.s3 + bs[si].c0 * x.s1;
                  }
                  rp[i] = pt;
                  any = any || pt != z;
                }
                if (any) {
                  lg[ns] = plen;
                  og[ns] = koff + s * plen;
                  ++ns;
                }
              }
              koff += bs[si].len;
            }
            nsg[ir] = ns;
          }
        } else {
          for (int64_t ir = 0; ir < nir; ++ir) {
            nsg[ir] = 1;
            lens[ir * gsegs] = kl;
            boffs[ir * gsegs] = 0;
          }
          for (int64_t jj = 0; jj < nir * MR; ++jj) {
            T* dst = Ab + jj * kl;
            rows[(jj / MR) * gsegs * MR + jj % MR] = dst;
            if (jj >= mc) {
              for (int64_t t = 0; t < kl; ++t) dst[t] = T(0);
              continue;
            }
            for (int64_t si = 0; si < nseg; ++si) {
              const int64_t tap = bs[si].t, r = tap / g.S, s = tap % g.S, len = bs[si].len;
              const int64_t ih = ihb[jj] + r * g.dh, iw = iwb[jj] + s * g.dw;
              if (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W) {
                const T* src = xn + ih * x.s2 + iw * x.s3 + bs[si].c0 * x.s1;
                if (mn) {
                  const T* ms = mn + ih * m.s2 + iw * m.s3 + bs[si].c0 * m.s1;
                  for (int64_t c = 0; c < len; ++c) dst[c] = masked(src[c * x.s1], ms[c * m.s1]);
                } else if (x.s1 == 1) {
                  for (int64_t c = 0; c < len; ++c) dst[c] = src[c];
                } else {
                  for (int64_t c = 0; c < len; ++c) dst[c] = src[c * x.s1];
                }
              } else {
                for (int64_t c = 0; c < len; ++c) dst[c] = T(0);
              }
              dst += len;
            }
          }
        }
        const bool first = b == 0, last = b == nblk - 1;
        for (int64_t ir = 0; ir < nir; ++ir) {
          for (int64_t jr = 0; jr < nJr; ++jr) {
            const T* bp = Bp + ((gi * nJr + jr) * CRS + k0) * NR;
            const int64_t kb = jr * NR;
            const bool full = out_vec && kb + NR <= g.Kg;
            const auto epilogue = [&](V(&acc)[MR][NV]) {
              T* ct = Cb + ir * MR * ldc + kb;
              if (!first) add_tile<T, MR, NV>(acc, ct, ldc);
              if (!last) return store_tile<T, MR, NV>(acc, ct, ldc);  // partial sum of a kc block
              // Everything the stores below need is read into locals first: they are captured by
              // reference, and a store through yp may alias them as far as the compiler knows, so it
              // had reloaded every flag and the bias from memory per vector (RGB stem: ~20% of the
              // kernel's samples in this epilogue).
              const bool relu_out = relu, stream = stream_out, whole = full;
              const int64_t nst = std::min<int64_t>(MR, mc - ir * MR), ys1 = y.s1;
              const int64_t* const yo = yoff + ir * MR;
              T* const yb = y.p + (gi * g.Kg + kb) * ys1;
              V bv[NV];
              FC_UNROLL for (int v = 0; v < NV; ++v)
                  bv[v] = bias ? Sd::load(biasp.data() + gi * Npad + kb + v * L) : Sd::zero();
              const bool add_bias = bias != nullptr;
              FC_UNROLL for (int i = 0; i < MR; ++i) {
                if (i >= nst) break;
                T* yp = yb + yo[i];
                FC_UNROLL for (int v = 0; v < NV; ++v) {
                  V val = acc[i][v];
                  if (add_bias) val = Sd::add(val, bv[v]);
                  if (relu_out) val = Sd::relu(val);
                  if (whole) {
                    store_maybe_stream<T>(yp + v * L, val, stream);
                  } else {
                    alignas(64) T tmp[L];
                    Sd::store(tmp, val);
                    for (int l = 0; l < L; ++l)
                      if (kb + v * L + l < g.Kg) yp[(v * L + l) * ys1] = tmp[l];
                  }
                }
              }
            };
            if (ir < nir_whole && prefetch_b)
              ukr_rows_strided<T, MR, NV, true>(g.R, seg_stride, SC, rbase + ir * MR, bp, epilogue);
            else if (ir < nir_whole)
              ukr_rows_strided<T, MR, NV>(g.R, seg_stride, SC, rbase + ir * MR, bp, epilogue);
            else if (prefetch_b)
              ukr_rows<T, MR, NV, true>(nsg[ir], rows + ir * gsegs * MR, lens + ir * gsegs, bp, epilogue,
                                        boffs + ir * gsegs);
            else
              ukr_rows<T, MR, NV>(nsg[ir], rows + ir * gsegs * MR, lens + ir * gsegs, bp, epilogue, boffs + ir * gsegs);
          }
        }
        k0 += kl;
      }
#if defined(__AVX512F__)
      if (stream_out) _mm_sfence();  // order this task's streamed stores before the loop's barrier
#endif
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Cg == 1 (depthwise and depthwise-multiplier, also single-channel inputs): direct loops.

// dst[t] = x~[iw0 + t*sw] for t in [lo, hi): the valid part of one padded-window row (phase).
template <typename T>
FC_INLINE void dw_copy_seg(T* __restrict dst, int64_t lo, int64_t hi, const T* row, int64_t sx, const T* mrow,
                           int64_t smx, int64_t iw0, int64_t sw) {
  using Sd = Simd<T>;
  constexpr int L = Sd::L;
  if (hi <= lo) return;
  const int64_t i0 = iw0 + lo * sw, n = hi - lo;
  const T* src = row + i0 * sx;
  T* d = dst + lo;
  const int64_t st = sw * sx;
  if (mrow != nullptr) {
    const T* mk = mrow + i0 * smx;
    const int64_t sm = sw * smx;
    int64_t t = 0;
    if (st == 1 && sm == 1) {
      for (; t + L <= n; t += L) Sd::store(d + t, Sd::mask_le0(Sd::load(src + t), Sd::load(mk + t)));
    }
    for (; t < n; ++t) d[t] = masked(src[t * st], mk[t * sm]);
  } else if (st == 1) {
    // Runs are short (one row): keep GCC from turning the loop into a memmove call (the asm hides
    // the induction variable from the loop-distribution pattern matcher).
    int64_t t = 0;
    for (; t + L <= n; t += L) {
      Sd::store(d + t, Sd::load(src + t));
      __asm__("" : "+r"(t));
    }
    if (t < n) Sd::store_n(d + t, Sd::load_n(src + t, (int)(n - t)), (int)(n - t));
  } else {
    for (int64_t t = 0; t < n; ++t) d[t] = src[t * st];
  }
}

// NRW output rows x NV vectors (the last vector holds nlast valid lanes) for conv_direct_plane:
// row i: acc = sum_{r,s} wv[r*S+s] * (rb + i*pstep + r*rstep + soff[s])[0..NV*L), then bias, ReLU and
// the store at out + i*ys2 (column stride so). Several rows keep independent FMA chains in flight.
// RT/ST > 0: compile-time tap counts (fully unrolled, weights stay in registers).
template <typename T, int RT, int ST, int NRW, int NV>
FC_INLINE void dw_plane_chunk(const T* rb, int64_t pstep, int64_t rstep, int64_t Rn, int64_t Sn, const int64_t* soff,
                              const typename Simd<T>::V* wv, typename Simd<T>::V bv, bool has_bias, bool relu,
                              T* out, int64_t ys2, int64_t so, int nlast) {
  using Sd = Simd<T>;
  using V = typename Sd::V;
  constexpr int L = Sd::L;
  const int64_t R = RT > 0 ? RT : Rn, S = ST > 0 ? ST : Sn;
  V acc[NRW][NV];
  FC_UNROLL for (int i = 0; i < NRW; ++i) FC_UNROLL for (int v = 0; v < NV; ++v) acc[i][v] = Sd::zero();
  FC_UNROLL for (int64_t r = 0; r < R; ++r) {
    const T* rr = rb + r * rstep;
    FC_UNROLL for (int64_t s = 0; s < S; ++s) {
      const V w = wv[r * S + s];
      const T* src = rr + soff[s];
      FC_UNROLL for (int i = 0; i < NRW; ++i)
        FC_UNROLL for (int v = 0; v < NV; ++v) acc[i][v] = Sd::fma(w, Sd::load(src + i * pstep + v * L), acc[i][v]);
    }
  }
  FC_UNROLL for (int i = 0; i < NRW; ++i) {
    FC_UNROLL for (int v = 0; v < NV; ++v) {
      if (has_bias) acc[i][v] = Sd::add(acc[i][v], bv);
      if (relu) acc[i][v] = Sd::relu(acc[i][v]);
    }
    T* o = out + i * ys2;
    if (so == 1) {
      FC_UNROLL for (int v = 0; v + 1 < NV; ++v) Sd::store(o + v * L, acc[i][v]);
      if (nlast == L)
        Sd::store(o + (NV - 1) * L, acc[i][NV - 1]);
      else
        Sd::store_n(o + (NV - 1) * L, acc[i][NV - 1], nlast);
    } else {
      alignas(64) T tmp[NV * L];
      FC_UNROLL for (int v = 0; v < NV; ++v) Sd::store(tmp + v * L, acc[i][v]);
      const int n = (NV - 1) * L + nlast;
      for (int e = 0; e < n; ++e) o[e * so] = tmp[e];
    }
  }
}

// Output rows [p0, p1) of one output channel from the padded window buf (row of output row p0 at
// tap r: buf + (r*dh - rlo)*LD; output row p starts (p - p0)*sh*LD further), one column chunk of NV
// vectors at q0: 8 / NV rows at a time (at least 2).
template <typename T, int RT, int ST, int NV>
FC_INLINE void dw_plane_col(const T* buf, int64_t LD, int64_t sh, int64_t rstep, int64_t rlo, int64_t np,
                            int64_t Rn, int64_t Sn, const int64_t* soff, const typename Simd<T>::V* wv,
                            typename Simd<T>::V bv, bool hb, bool relu, T* out, int64_t ys2, int64_t ys3, int nl) {
  constexpr int NRW = NV <= 2 ? 4 : 2;
  const int64_t pstep = sh * LD;
  const T* rb = buf - rlo * LD;
  int64_t p = 0;
  for (; p + NRW <= np; p += NRW)
    dw_plane_chunk<T, RT, ST, NRW, NV>(rb + p * pstep, pstep, rstep, Rn, Sn, soff, wv, bv, hb, relu, out + p * ys2,
                                       ys2, ys3, nl);
  for (; p < np; ++p)
    dw_plane_chunk<T, RT, ST, 1, NV>(rb + p * pstep, pstep, rstep, Rn, Sn, soff, wv, bv, hb, relu, out + p * ys2, ys2,
                                     ys3, nl);
}

template <typename T, int RT, int ST>
void dw_plane_rows(const Geo& g, const T* buf, int64_t LD, int64_t rlo, int64_t p0, int64_t p1,
                   const int64_t* soff_in, const T* wt, typename Simd<T>::V* wscratch, T bias_v, bool hb, bool relu,
                   T* out0, int64_t ys2, int64_t ys3) {
  using Sd = Simd<T>;
  using V = typename Sd::V;
  constexpr int L = Sd::L;
  const int64_t R = RT > 0 ? RT : g.R, S = ST > 0 ? ST : g.S;
  V wl[RT > 0 && ST > 0 ? RT * ST : 1];
  V* wv = (RT > 0 && ST > 0) ? wl : wscratch;
  FC_UNROLL for (int64_t i = 0; i < R * S; ++i) wv[i] = Sd::set1(wt[i]);
  int64_t sl[ST > 0 ? ST : 1];
  const int64_t* soff = soff_in;
  if (ST > 0) {
    FC_UNROLL for (int64_t s = 0; s < S; ++s) sl[s] = soff_in[s];
    soff = sl;
  }
  const V bv = Sd::set1(bias_v);
  const int64_t rstep = g.dh * LD, np = p1 - p0;
  const int64_t nfull = g.Q / (4 * L);
  const int64_t rem = g.Q - nfull * 4 * L;
  const int nv = (int)cdiv(rem, L);
  const int nl = (int)(rem - (nv - 1) * L);
  int64_t q0 = 0;
  for (int64_t c = 0; c < nfull; ++c, q0 += 4 * L)
    dw_plane_col<T, RT, ST, 4>(buf + q0, LD, g.sh, rstep, rlo, np, R, S, soff, wv, bv, hb, relu, out0 + q0 * ys3, ys2,
                               ys3, L);
  if (rem > 0) {
    const T* b = buf + q0;
    T* o = out0 + q0 * ys3;
    if (nv == 1)
      dw_plane_col<T, RT, ST, 1>(b, LD, g.sh, rstep, rlo, np, R, S, soff, wv, bv, hb, relu, o, ys2, ys3, nl);
    else if (nv == 2)
      dw_plane_col<T, RT, ST, 2>(b, LD, g.sh, rstep, rlo, np, R, S, soff, wv, bv, hb, relu, o, ys2, ys3, nl);
    else if (nv == 3)
      dw_plane_col<T, RT, ST, 3>(b, LD, g.sh, rstep, rlo, np, R, S, soff, wv, bv, hb, relu, o, ys2, ys3, nl);
    else
      dw_plane_col<T, RT, ST, 4>(b, LD, g.sh, rstep, rlo, np, R, S, soff, wv, bv, hb, relu, o, ys2, ys3, nl);
  }
}

// Prefetches the input rows of conv_direct_plane's task (rows with unit column stride).
template <typename T>
FC_INLINE void dw_prefetch_task(const Geo& g, const In4<T>& x, int64_t task, int64_t nPB, int64_t PB, int64_t rlo,
                                int64_t rhi, int64_t Wp, int64_t wlo) {
  const int64_t pbi = task % nPB, ng = task / nPB;
  const int64_t n = ng / g.G, gi = ng % g.G;
  const int64_t p0 = pbi * PB, p1 = std::min(g.P, p0 + PB);
  const int64_t h0 = std::max<int64_t>(0, p0 * g.sh - g.ph + rlo);
  const int64_t h1 = std::min(g.H, (p1 - 1) * g.sh - g.ph + rhi + 1);
  const int64_t w0 = std::max<int64_t>(0, wlo), w1 = std::min(g.W, wlo + Wp);
  if (w1 <= w0) return;
  const char* base = reinterpret_cast<const char*>(x.p + n * x.s0 + gi * x.s1);
  constexpr int64_t kLine = 64;
  for (int64_t h = h0; h < h1; ++h) {
    const char* a = base + (h * x.s2 + w0) * (int64_t)sizeof(T);
    const char* e = base + (h * x.s2 + w1) * (int64_t)sizeof(T);
    for (const char* pf = a; pf < e + kLine; pf += kLine) __builtin_prefetch(pf < e ? pf : e - 1, 0, 3);
  }
}

// Any layout: tasks are (n, g, block of output rows). The block's input rows are copied into a
// zero-padded window (L1/L2 sized; mask applied there) with the columns split by phase modulo the
// stride (phase ph holds padded columns ph, ph+sw, ...), so every tap (r, s) reads a contiguous run
// for a run of output columns. The window is zeroed once per thread: the padding columns sit at the
// same places for every task, so a task only writes the valid columns (and zeroes padding rows).
// Each output row of each of the group's Kg channels is computed in vector registers (vectors along
// Q, up to 4 per chunk; 3x3 and 5x5 taps unrolled with the weights in registers) and stored with
// bias/ReLU.
template <typename T>
void conv_direct_plane(const Geo& g, In4<T> x, In4<T> m, WV<T> w, const T* bias, Out4<T> y, bool relu, int nth) {
  using V = typename Simd<T>::V;
  constexpr int L = Simd<T>::L;
  const int64_t rlo = std::min<int64_t>(0, (g.R - 1) * g.dh), rhi = std::max<int64_t>(0, (g.R - 1) * g.dh);
  const int64_t clo = std::min<int64_t>(0, (g.S - 1) * g.dw), chi = std::max<int64_t>(0, (g.S - 1) * g.dw);
  const int64_t wlo = -g.pw + clo;
  const int64_t Wp = (g.Q - 1) * g.sw + chi - clo + 1;  // padded window width
  const int64_t Wph = cdiv(Wp, g.sw);                    // padded columns per phase
  // Phase row length: chunks read whole vectors, up to L - 1 lanes past Q (computed, never stored);
  // those lanes stay inside the row and are zero.
  const int64_t PH = cdiv(std::max(Wph, cdiv(g.Q, L) * L + (chi - clo) / g.sw), L) * L;
  const int64_t LD = g.sw * PH;  // one padded input row
  auto nrows = [&](int64_t pb) { return (pb - 1) * g.sh + rhi - rlo + 1; };
  int64_t PB = g.P;
  while (PB > 1 && nrows(PB) * LD * (int64_t)sizeof(T) > 64 * 1024) PB = cdiv(PB, 2);
  while (PB > 1 && g.N * g.G * cdiv(g.P, PB) < 8 * nth) PB = cdiv(PB, 2);
  const int64_t nPB = cdiv(g.P, PB);
  const int64_t RS = g.R * g.S;
  const int64_t per = cdiv(nrows(PB) * LD + RS, 64) * 64;
  std::vector<int64_t> soff(g.S);
  for (int64_t s = 0; s < g.S; ++s) {
    const int64_t o = s * g.dw - g.pw - wlo;  // >= 0
    soff[s] = (o % g.sw) * PH + o / g.sw;
  }
  std::vector<QRange> ranges(g.sw);
  for (int64_t ph = 0; ph < g.sw; ++ph) ranges[ph] = valid_cols(wlo + ph, g.sw, g.W, Wph);
  Buf<T> scratch(nth * per);
  Buf<V> wscr(nth * (RS + 8));
  const int64_t ntask = g.N * g.G * nPB;
  const bool hb = bias != nullptr;
  const int64_t sz3 = g.R == 3 && g.S == 3 ? 3 : g.R == 5 && g.S == 5 ? 5 : 0;
#pragma omp parallel num_threads(nth)
  {
    T* buf = scratch.p + thread_id() * per;
    T* wt = buf + nrows(PB) * LD;
    V* wsv = wscr.p + thread_id() * (RS + 8);
    zero_n(buf, nrows(PB) * LD);
    // Static contiguous chunks: a thread knows its next task and prefetches that task's input rows
    // (a plane is often one 4 KiB page, where the hardware prefetchers stop).
#pragma omp for schedule(static)
    for (int64_t task = 0; task < ntask; ++task) {
      if (x.s3 == 1 && task + 1 < ntask) dw_prefetch_task(g, x, task + 1, nPB, PB, rlo, rhi, Wp, wlo);
      const int64_t pbi = task % nPB, ng = task / nPB;
      const int64_t n = ng / g.G, gi = ng % g.G;
      const int64_t p0 = pbi * PB, p1 = std::min(g.P, p0 + PB);
      const int64_t hbase = p0 * g.sh - g.ph + rlo;
      const int64_t nr = nrows(p1 - p0);
      const T* xc = x.p + n * x.s0 + gi * x.s1;
      const T* mc = m.p ? m.p + n * m.s0 + gi * m.s1 : nullptr;
      for (int64_t hh = 0; hh < nr; ++hh) {
        const int64_t ih = hbase + hh;
        T* row = buf + hh * LD;
        if (ih < 0 || ih >= g.H) {
          for (int64_t t = 0; t < LD; t += L) {  // LD is a multiple of L
            Simd<T>::store(row + t, Simd<T>::zero());
            __asm__("" : "+r"(t));
          }
          continue;
        }
        for (int64_t ph = 0; ph < g.sw; ++ph)
          dw_copy_seg(row + ph * PH, ranges[ph].lo, ranges[ph].hi, xc + ih * x.s2, x.s3,
                      mc ? mc + ih * m.s2 : nullptr, m.s3, wlo + ph, g.sw);
      }
      for (int64_t j = 0; j < g.Kg; ++j) {
        const int64_t kabs = gi * g.Kg + j;
        for (int64_t r = 0; r < g.R; ++r)
          for (int64_t s = 0; s < g.S; ++s) wt[r * g.S + s] = w.at(gi, j, 0, r, s);
        const T bv = hb ? bias[kabs] : T(0);
        T* out0 = y.p + n * y.s0 + kabs * y.s1 + p0 * y.s2;
        if (sz3 == 3)
          dw_plane_rows<T, 3, 3>(g, buf, LD, rlo, p0, p1, soff.data(), wt, wsv, bv, hb, relu, out0, y.s2, y.s3);
        else if (sz3 == 5)
          dw_plane_rows<T, 5, 5>(g, buf, LD, rlo, p0, p1, soff.data(), wt, wsv, bv, hb, relu, out0, y.s2, y.s3);
        else
          dw_plane_rows<T, 0, 0>(g, buf, LD, rlo, p0, p1, soff.data(), wt, wsv, bv, hb, relu, out0, y.s2, y.s3);
      }
    }
  }
}

// QB output pixels x one channel vector (nl valid lanes when TAIL) for conv_direct_cl. xr[k]/mr[k]:
// the k-th valid tap row (tap row rid[k]) at the first pixel's first tap (s0) and the vector's
// channels; pixel i, tap s (relative to s0) at + i*si + s*ss. wT at tap row 0, tap s0, same channels.
template <typename T, int QB, bool TAIL, bool MASK>
FC_INLINE void dw_cl_block(const T* const* xr, const T* const* mr, const int64_t* rid, int64_t nrv, int64_t ns,
                           int64_t si, int64_t ss, int64_t msi, int64_t mss, const T* wT, int64_t wrs, int64_t Cp,
                           const T* bp, bool relu, T* yo, int64_t ysi, int nl) {
  using Sd = Simd<T>;
  using V = typename Sd::V;
  V acc[QB];
  FC_UNROLL for (int i = 0; i < QB; ++i) acc[i] = Sd::zero();
  for (int64_t k = 0; k < nrv; ++k) {
    const T* xb = xr[k];
    const T* mb = MASK ? mr[k] : nullptr;
    const T* wr = wT + rid[k] * wrs;
    for (int64_t s = 0; s < ns; ++s) {
      const V wv = Sd::load(wr + s * Cp);
      const T* xs = xb + s * ss;
      FC_UNROLL for (int i = 0; i < QB; ++i) {
        V xv = TAIL ? Sd::load_n(xs + i * si, nl) : Sd::load(xs + i * si);
        if (MASK) {
          const T* ms = mb + s * mss + i * msi;
          xv = Sd::mask_le0(xv, TAIL ? Sd::load_n(ms, nl) : Sd::load(ms));
        }
        acc[i] = Sd::fma(wv, xv, acc[i]);
      }
    }
  }
  if (bp != nullptr) {
    const V b = Sd::load(bp);
    FC_UNROLL for (int i = 0; i < QB; ++i) acc[i] = Sd::add(acc[i], b);
  }
  if (relu) FC_UNROLL for (int i = 0; i < QB; ++i) acc[i] = Sd::relu(acc[i]);
  FC_UNROLL for (int i = 0; i < QB; ++i) {
    if (TAIL)
      Sd::store_n(yo + i * ysi, acc[i], nl);
    else
      Sd::store(yo + i * ysi, acc[i]);
  }
}

// channels_last input and output, Kg == 1: vectors along C, taps as FMAs over channel vectors read
// in place (no padded copy). Tasks are (n, output row, column chunk); within a task, pixels whose
// taps are all inside the input run in blocks of QB = 4 (one weight load per tap and block), border
// pixels clamp their tap column range.
template <typename T, bool MASK>
void conv_direct_cl_impl(const Geo& g, In4<T> x, In4<T> m, WV<T> w, const T* bias, Out4<T> y, bool relu, int nth) {
  using Sd = Simd<T>;
  constexpr int L = Sd::L;
  constexpr int QB = 4;
  const int64_t RS = g.R * g.S, C = g.G;
  const int64_t nCV = cdiv(C, L), Cp = nCV * L;
  const int tail = (int)(C - (nCV - 1) * L);  // lanes of the last channel vector
  std::vector<T> wT(RS * Cp, T(0)), bp(bias ? Cp : 0, T(0));
  for (int64_t c = 0; c < C; ++c)
    for (int64_t r = 0; r < g.R; ++r)
      for (int64_t s = 0; s < g.S; ++s) wT[(r * g.S + s) * Cp + c] = w.at(c, 0, 0, r, s);
  for (int64_t c = 0; bias && c < C; ++c) bp[c] = bias[c];
  // Interior columns: every tap s reads a valid input column.
  int64_t qlo = 0, qhi = g.Q;
  for (int64_t s = 0; s < g.S; ++s) {
    const QRange qr = valid_cols(s * g.dw - g.pw, g.sw, g.W, g.Q);
    qlo = std::max(qlo, qr.lo);
    qhi = std::min(qhi, qr.hi);
  }
  if (qhi < qlo) qhi = qlo;
  int64_t nQC = 1;
  if (g.N * g.P < 8 * nth) nQC = std::min(cdiv(8 * nth, g.N * g.P), cdiv(g.Q, 4 * QB));
  const int64_t QC = cdiv(g.Q, nQC);
  nQC = cdiv(g.Q, QC);
  const int64_t ntask = g.N * g.P * nQC;
  const int64_t RP = cdiv(g.R, 8) * 8 + 8;  // per-thread slots, padded apart (no false sharing)
  std::vector<const T*> ptr_all(nth * 4 * RP);
  std::vector<int64_t> rid_all(nth * RP);
  const int64_t si = g.sw * x.s3, ss = g.dw * x.s3, msi = g.sw * m.s3, mss = g.dw * m.s3;
  const int64_t ysi = y.s3;
  const T* bpp = bias ? bp.data() : nullptr;
#pragma omp parallel num_threads(nth)
  {
    const int tid = thread_id();
    const T** xr = ptr_all.data() + tid * 4 * RP;
    const T** mr = xr + RP;
    const T** xq = mr + RP;
    const T** mq = xq + RP;
    int64_t* rid = rid_all.data() + tid * RP;
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < ntask; ++task) {
      const int64_t qc = task % nQC, np = task / nQC;
      const int64_t n = np / g.P, p = np % g.P;
      const int64_t qa = qc * QC, qb = std::min(g.Q, qa + QC);
      int64_t nrv = 0;
      for (int64_t r = 0; r < g.R; ++r) {
        const int64_t ih = p * g.sh - g.ph + r * g.dh;
        if (ih < 0 || ih >= g.H) continue;
        rid[nrv] = r;
        xr[nrv] = x.p + n * x.s0 + ih * x.s2;
        mr[nrv] = MASK ? m.p + n * m.s0 + ih * m.s2 : nullptr;
        ++nrv;
      }
      T* yrow = y.p + n * y.s0 + p * y.s2;
      // Pixels [q, q + QB') with taps [s0, s0 + ns): channel vectors in turn.
      auto run = [&](auto qb_tag, int64_t q, int64_t s0, int64_t ns) {
        constexpr int B = decltype(qb_tag)::value;
        const int64_t iw = q * g.sw - g.pw + s0 * g.dw;
        for (int64_t k = 0; k < nrv; ++k) {
          xq[k] = xr[k] + iw * x.s3;
          if (MASK) mq[k] = mr[k] + iw * m.s3;
        }
        T* yo = yrow + q * ysi;
        const T* wq = wT.data() + s0 * Cp;
        for (int64_t cv = 0; cv + 1 < nCV; ++cv) {
          const int64_t c0 = cv * L;
          dw_cl_block<T, B, false, MASK>(xq, mq, rid, nrv, ns, si, ss, msi, mss, wq + c0, g.S * Cp, Cp,
                                         bpp ? bpp + c0 : nullptr, relu, yo + c0, ysi, L);
          for (int64_t k = 0; k < nrv; ++k) {
            xq[k] += L;
            if (MASK) mq[k] += L;
          }
        }
        const int64_t c0 = (nCV - 1) * L;
        if (tail == L)
          dw_cl_block<T, B, false, MASK>(xq, mq, rid, nrv, ns, si, ss, msi, mss, wq + c0, g.S * Cp, Cp,
                                         bpp ? bpp + c0 : nullptr, relu, yo + c0, ysi, L);
        else
          dw_cl_block<T, B, true, MASK>(xq, mq, rid, nrv, ns, si, ss, msi, mss, wq + c0, g.S * Cp, Cp,
                                        bpp ? bpp + c0 : nullptr, relu, yo + c0, ysi, tail);
      };
      using One = std::integral_constant<int, 1>;
      using Blk = std::integral_constant<int, QB>;
      auto border = [&](int64_t q) {
        int64_t s0 = g.S, s1 = -1;
        for (int64_t s = 0; s < g.S; ++s) {
          const int64_t iw = q * g.sw - g.pw + s * g.dw;
          if (iw >= 0 && iw < g.W) {
            s0 = std::min(s0, s);
            s1 = std::max(s1, s);
          }
        }
        if (s1 < s0) s0 = 0, s1 = -1;  // no valid tap: bias/ReLU only
        run(One{}, q, s0, s1 - s0 + 1);
      };
      const int64_t ilo = std::max(qa, qlo), ihi = std::min(qb, qhi);
      int64_t q = qa;
      for (; q < std::min(qb, ilo); ++q) border(q);
      for (; q + QB <= ihi; q += QB) run(Blk{}, q, 0, g.S);
      for (; q < ihi; ++q) run(One{}, q, 0, g.S);
      for (; q < qb; ++q) border(q);
    }
  }
}

// conv_direct_cl fast path: S in {3, 5} taps per row, column stride sw in {1, 2}, |dw| == 1 (dgrad's
// mirrored taps, dw = -1, are flipped to dw = +1 by the caller). Output pixels [q0, q0 + QB) of one
// row and CVB consecutive channel vectors: for each valid tap row, the (QB-1)*SW + S input columns are
// loaded once each (zero outside [0, W)) and every loaded vector feeds all the taps that read it, so a
// pixel costs ~1 + (S-1)/QB vector loads per tap row instead of S; the row's S x CVB weights sit in
// registers. Every pixel's sum runs over tap rows, then taps s in order (a zero column adds a signed
// zero), whatever block the pixel falls in: results do not depend on the task split.
// xr[k]: valid tap row k at column 0 and the block's first channel; wr[k]: its S weight rows (stride Cp).
template <typename T, int S, int SW, int QB, int CVB, bool TAIL, bool MASK, bool EDGE>
FC_INLINE void dwcl_block(const T* const* xr, const T* const* mr, const T* const* wr, int64_t nrv, int64_t iw0,
                          int64_t sx, int64_t smx, int64_t Cp, int jlo, int jhi, const T* bp, bool relu, T* yo,
                          int64_t ysi, int nq, int nl) {
  using Sd = Simd<T>;
  using V = typename Sd::V;
  constexpr int L = Sd::L;
  constexpr int NC = (QB - 1) * SW + S;  // input columns of the block
  static_assert(!TAIL || CVB == 1, "a channel tail is computed one vector at a time");
  V acc[QB][CVB];
  FC_UNROLL for (int i = 0; i < QB; ++i) FC_UNROLL for (int v = 0; v < CVB; ++v) acc[i][v] = Sd::zero();
  for (int64_t k = 0; k < nrv; ++k) {
    const T* xb = xr[k] + iw0 * sx;
    const T* mb = MASK ? mr[k] + iw0 * smx : nullptr;
    V wv[S][CVB];
    FC_UNROLL for (int s = 0; s < S; ++s) FC_UNROLL for (int v = 0; v < CVB; ++v)
        wv[s][v] = TAIL ? Sd::load_n(wr[k] + s * Cp, nl) : Sd::load(wr[k] + s * Cp + v * L);
    FC_UNROLL for (int j = 0; j < NC; ++j) {
      V col[CVB];
      FC_UNROLL for (int v = 0; v < CVB; ++v) col[v] = Sd::zero();
      if (!EDGE || (j >= jlo && j < jhi)) {
        FC_UNROLL for (int v = 0; v < CVB; ++v) {
          col[v] = TAIL ? Sd::load_n(xb + j * sx, nl) : Sd::load(xb + j * sx + v * L);
          if (MASK)
            col[v] = Sd::mask_le0(col[v], TAIL ? Sd::load_n(mb + j * smx, nl) : Sd::load(mb + j * smx + v * L));
        }
      }
      FC_UNROLL for (int s = 0; s < S; ++s) {
        const int d = j - s;
        if (d >= 0 && d % SW == 0 && d / SW < QB)
          FC_UNROLL for (int v = 0; v < CVB; ++v) acc[d / SW][v] = Sd::fma(wv[s][v], col[v], acc[d / SW][v]);
      }
    }
  }
  if (bp != nullptr) {
    FC_UNROLL for (int v = 0; v < CVB; ++v) {
      const V b = TAIL ? Sd::load_n(bp, nl) : Sd::load(bp + v * L);
      FC_UNROLL for (int i = 0; i < QB; ++i) acc[i][v] = Sd::add(acc[i][v], b);
    }
  }
  if (relu) FC_UNROLL for (int i = 0; i < QB; ++i) FC_UNROLL for (int v = 0; v < CVB; ++v) acc[i][v] = Sd::relu(acc[i][v]);
  FC_UNROLL for (int i = 0; i < QB; ++i) {
    if (QB > 4 && i >= nq) break;  // blocks of 4 are only used whole (see conv_dwcl_rows)
    FC_UNROLL for (int v = 0; v < CVB; ++v) {
      if (TAIL)
        Sd::store_n(yo + i * ysi, acc[i][v], nl);
      else
        Sd::store(yo + i * ysi + v * L, acc[i][v]);
    }
  }
}

// Two output rows (p, p+1) of a 3x3, stride-1 (sh = sw = dh = dw = 1) problem at once: the four input
// rows p-ph .. p-ph+3 are each read once for both rows, so every loaded column vector feeds up to 6
// taps and the L1 traffic per output row drops from 3 input rows to 2. Each output pixel's sum has
// the same order as in dwcl_block (tap rows, then taps), so pairing never changes a result bit.
// xu[u]: input row u at column 0 and the block's channels, null for a padding row; w: the 9 weight
// vectors ([r][s], stride Cp) at the block's channels.
template <typename T, int QB, bool TAIL, bool MASK, bool EDGE>
FC_INLINE void dwcl_block_r2(const T* const* xu, const T* const* mu, const T* w, int64_t iw0, int64_t sx,
                             int64_t smx, int64_t Cp, int jlo, int jhi, const T* bp, bool relu, T* yo, int64_t yrs,
                             int64_t ysi, int nq, int nl) {
  using Sd = Simd<T>;
  using V = typename Sd::V;
  constexpr int NC = QB + 2;
  V acc[2][QB];
  FC_UNROLL for (int o = 0; o < 2; ++o) FC_UNROLL for (int i = 0; i < QB; ++i) acc[o][i] = Sd::zero();
  V wv[3][3];
  FC_UNROLL for (int r = 0; r < 3; ++r) FC_UNROLL for (int s = 0; s < 3; ++s)
      wv[r][s] = TAIL ? Sd::load_n(w + (r * 3 + s) * Cp, nl) : Sd::load(w + (r * 3 + s) * Cp);
  FC_UNROLL for (int u = 0; u < 4; ++u) {
    if (xu[u] == nullptr) continue;
    const T* xb = xu[u] + iw0 * sx;
    const T* mb = MASK ? mu[u] + iw0 * smx : nullptr;
    FC_UNROLL for (int j = 0; j < NC; ++j) {
      V col = Sd::zero();
      if (!EDGE || (j >= jlo && j < jhi)) {
        col = TAIL ? Sd::load_n(xb + j * sx, nl) : Sd::load(xb + j * sx);
        if (MASK) col = Sd::mask_le0(col, TAIL ? Sd::load_n(mb + j * smx, nl) : Sd::load(mb + j * smx));
      }
      FC_UNROLL for (int o = 0; o < 2; ++o) {
        const int r = u - o;
        if (r < 0 || r > 2) continue;
        FC_UNROLL for (int s = 0; s < 3; ++s) {
          const int d = j - s;
          if (d >= 0 && d < QB) acc[o][d] = Sd::fma(wv[r][s], col, acc[o][d]);
        }
      }
    }
  }
  FC_UNROLL for (int o = 0; o < 2; ++o) {
    if (bp != nullptr) {
      const V b = TAIL ? Sd::load_n(bp, nl) : Sd::load(bp);
      FC_UNROLL for (int i = 0; i < QB; ++i) acc[o][i] = Sd::add(acc[o][i], b);
    }
    if (relu) FC_UNROLL for (int i = 0; i < QB; ++i) acc[o][i] = Sd::relu(acc[o][i]);
    FC_UNROLL for (int i = 0; i < QB; ++i) {
      if (QB > 4 && i >= nq) break;
      if (TAIL)
        Sd::store_n(yo + o * yrs + i * ysi, acc[o][i], nl);
      else
        Sd::store(yo + o * yrs + i * ysi, acc[o][i]);
    }
  }
}

#if defined(__AVX512F__)
constexpr int kDwClQB = 8, kDwClCVB = 2;  // 16 accumulators + 6 weights + 2 columns of the 32 zmm
constexpr bool kDwClPairs = true;         // dwcl_block_r2 at QB = 8: 16 accumulators + 9 weights + 1
#else
constexpr int kDwClQB = 8, kDwClCVB = 1;  // 16 ymm / xmm registers
constexpr bool kDwClPairs = false;
#endif

// Output stores and 4K aliasing. A store to a line that is not in the cache waits in the store buffer
// for the line (read-for-ownership from L3 or memory) for many cycles, and until then every later load
// whose address equals a waiting store's in the low 12 bits is held back as a possible overlap (4K
// aliasing). In channels_last a pixel is C*4 bytes, so (y - x) mod 4096 decides which of the next
// input columns alias pending outputs: a block storing straight into cold output lines took 0.69-1.03
// ms over the 4 KiB offsets (128 channels, N=32, 32x32, 2 threads). Two ways out, both at every offset:
// - plain stores: while a block computes, prefetch (for writing) the output lines of the block after
//   it, so by the time that block stores, its lines are in L1 and the stores leave the buffer at once
//   (dwcl_prefetch_next); 0.75-0.80 ms, torch 0.75-0.86 in the same runs;
// - streamed stores: the blocks compute into an L1 scratch block first, which sits at the output
//   block's own 4 KiB offset, so the copy's loads (a scratch vector equals its output's low 12 bits)
//   never alias a waiting store of an earlier vector; the copy streams to y (0.85-0.87 ms at the same
//   offsets: bound by the two cores' memory write bandwidth, where plain stores stay in the L3).
// Returns the position in buf (at least 4 KiB + the block) with the same address mod 4 KiB as yo.
template <typename T>
FC_INLINE T* dwcl_scratch_at(T* buf, const T* yo) {
  const uintptr_t shift = ((uintptr_t)yo - (uintptr_t)buf) & 4095;  // a multiple of sizeof(T): both T-aligned
  return reinterpret_cast<T*>(reinterpret_cast<char*>(buf) + shift);
}

// Copies nrow rows x nq pixels of channel vectors [cv0, cv1) from a scratch block (row stride srs,
// pixel stride Cp) to the output (row stride yrs, pixel stride ysi) with non-temporal stores for the
// whole vectors (store_maybe_stream); vector nfull is the tail.
template <typename T>
FC_INLINE void dwcl_stream_out(const T* sc, int64_t srs, int64_t Cp, T* yo, int64_t yrs, int64_t ysi, int nrow, int nq,
                               int64_t cv0, int64_t cv1, int64_t nfull, int tail) {
  using Sd = Simd<T>;
  constexpr int L = Sd::L;
  for (int o = 0; o < nrow; ++o)
    for (int i = 0; i < nq; ++i) {
      const T* sp = sc + o * srs + i * Cp;
      T* yp = yo + o * yrs + i * ysi;
      for (int64_t cv = cv0; cv < cv1; ++cv) {
        if (cv < nfull)
          store_maybe_stream<T>(yp + cv * L, Sd::load(sp + cv * L), true);
        else
          Sd::store_n(yp + cv * L, Sd::load_n(sp + cv * L, tail), tail);
      }
    }
}

// The output lines the task's next pixel block will store, for dwcl_prefetch_next: nrow rows (stride
// yrs) x npix pixels (stride ysi) from p, or none (p null) after the task's last block.
template <typename T>
struct DwClNext {
  T* p = nullptr;
  int64_t nrow = 0, npix = 0;
};

// The block after pixels [q0, q0 + nq) of output rows [row, row + nrow) in a task whose rows end at
// pend: the next pixels of the same rows, else the first block (<= kDwClQB pixels) of the next rows.
template <typename T>
FC_INLINE DwClNext<T> dwcl_next_block(T* yrow, int64_t yrs, int64_t ysi, int64_t row, int64_t nrow, int64_t pend,
                                      int64_t q0, int64_t nq, int64_t Q, int64_t QB) {
  if (q0 + nq < Q) return {yrow + (q0 + nq) * ysi, nrow, std::min(nq, Q - q0 - nq)};
  if (row + nrow < pend) return {yrow + nrow * yrs, std::min(nrow, pend - row - nrow), std::min(QB, Q)};
  return {};
}

// Prefetches for writing the next block's vectors at channel offset c (one line each when y is
// 64-byte aligned and C*sizeof(T) a multiple of 64): called once per channel vector of a block, so
// the prefetches spread over the block's work instead of queueing behind each other.
template <typename T>
FC_INLINE void dwcl_prefetch_next(const DwClNext<T>& nb, int64_t yrs, int64_t ysi, int64_t c) {
  for (int64_t o = 0; o < nb.nrow; ++o)
    for (int64_t i = 0; i < nb.npix; ++i) __builtin_prefetch(nb.p + o * yrs + i * ysi + c, 1, 3);
}

// Pixel blocks of one output row (or row pair): whole blocks of kDwClQB, then whole blocks of 4, then
// one partial block; f(qb_tag, edge_tag, q0, nq, iw0, jlo, jhi) with input columns [jlo, jhi) of the
// block's (QB-1)*SW + S valid (EDGE when some are padding).
template <int S, int SW, typename F>
FC_INLINE void dwcl_pixel_blocks(int64_t Q, int64_t W, int64_t pw, F&& f) {
  auto one = [&](auto qb_tag, int64_t q0, int nq) {
    constexpr int QB = decltype(qb_tag)::value;
    constexpr int NC = (QB - 1) * SW + S;
    const int64_t iw0 = q0 * SW - pw;
    const int jlo = (int)std::min<int64_t>(NC, std::max<int64_t>(0, -iw0));
    const int jhi = (int)std::max<int64_t>(jlo, std::min<int64_t>(NC, W - iw0));
    if (jlo == 0 && jhi == NC)
      f(qb_tag, std::false_type{}, q0, nq, iw0, jlo, jhi);
    else
      f(qb_tag, std::true_type{}, q0, nq, iw0, jlo, jhi);
  };
  int64_t q0 = 0;
  for (; q0 + kDwClQB <= Q; q0 += kDwClQB) one(std::integral_constant<int, kDwClQB>{}, q0, kDwClQB);
  int rem = (int)(Q - q0);
  for (; rem >= 4 && kDwClQB > 4; rem -= 4, q0 += 4) one(std::integral_constant<int, 4>{}, q0, 4);
  if (rem > 0) one(std::integral_constant<int, kDwClQB>{}, q0, rem);
}

// Tasks are (n, block of output rows, block of channel vectors), rows in order inside a task so the
// input rows shared by consecutive output rows are still in L1/L2 (3x3 stride 1: rows in pairs, see
// dwcl_block_r2). Per row: pixel blocks, channel vectors innermost (kDwClCVB at a time), so a block
// streams through contiguous runs of the input rows and of the output row. A pixel block stores into
// y while prefetching the next block's output lines, or, when the output streams, into a per-thread
// scratch block that is then copied to y (see dwcl_scratch_at).
// ph/dh: the row padding and dilation with mirrored rows already flipped (dh > 0).
template <typename T, int S, int SW, bool MASK>
void conv_dwcl_rows(const Geo& g, In4<T> x, In4<T> m, const T* wT, int64_t Cp, int64_t ph, int64_t dh, int64_t pw,
                    const T* bpp, Out4<T> y, bool relu, int nth) {
  constexpr int L = Simd<T>::L;
  const int64_t C = g.G, nCV = cdiv(C, L);
  const int tail = (int)(C - (nCV - 1) * L);
  const int64_t nfull = tail == L ? nCV : nCV - 1;  // whole channel vectors
  const bool pairs = kDwClPairs && S == 3 && SW == 1 && g.R == 3 && g.sh == 1 && dh == 1;
  // Work units: runs of output rows as long as 8 units per thread allow, up to a whole image (each unit
  // reads 2 - 3 input rows beyond its own: 128 channels, 2 threads, 8-row units 0.77 ms, 32-row units
  // 0.745); channel blocks only when rows alone leave cores idle.
  const int64_t RB = std::max<int64_t>(1, std::min<int64_t>(g.P, cdiv(g.N * g.P, 8 * nth)));
  const int64_t nRB = cdiv(g.P, RB);
  int64_t nCB = 1;
  if (g.N * nRB < 8 * nth) nCB = std::min(nCV, cdiv(8 * nth, g.N * nRB));
  const int64_t CB = cdiv(nCV, nCB);
  nCB = cdiv(nCV, CB);
  const int64_t ntask = g.N * nRB * nCB;
  const int64_t RP = cdiv(std::max<int64_t>(g.R, 4), 8) * 8 + 8;  // per-thread pointer slots, padded apart
  std::vector<const T*> ptr_all(nth * 6 * RP);
  // Scratch per thread: a block of up to 2 rows x kDwClQB pixels x Cp, shifted by up to 4 KiB, and one
  // more cache line, so the blocks of two threads are always more than a line apart (no false sharing).
  const int64_t scr_stride = cdiv(2 * kDwClQB * Cp * (int64_t)sizeof(T) + 4096 + 64, 64) * 64 / (int64_t)sizeof(T);
  std::vector<T> scr_all(nth * scr_stride + 64 / sizeof(T));
  // Non-temporal output stores only for an output that would not stay in the L3 anyway: the prefetched
  // plain stores beat streaming for the few-multiply-add layers that stream_output streams otherwise
  // (see dwcl_scratch_at; 128 channels, N=32, 32x32, 2 threads, Xeon: 0.75-0.80 ms against 0.85-0.87).
  const bool stream_out = stream_output<T>(g, /*few_macs_stream=*/false);
#pragma omp parallel num_threads(nth)
  {
    T* const scr0 = scr_all.data() + thread_id() * scr_stride;
    const T** xr0 = ptr_all.data() + thread_id() * 6 * RP;
    const T** mr0 = xr0 + RP;
    const T** wr0 = mr0 + RP;
    const T** xr = wr0 + RP;
    const T** mr = xr + RP;
    const T** wr = mr + RP;
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < ntask; ++task) {
      const int64_t cb = task % nCB, t2 = task / nCB, rb = t2 % nRB, n = t2 / nRB;
      const int64_t cv0 = cb * CB, cv1 = std::min(nCV, cv0 + CB);
      const int64_t pend = std::min(g.P, (rb + 1) * RB);
      for (int64_t p = rb * RB; p < pend;) {
        T* yrow = y.p + n * y.s0 + p * y.s2;
        if (pairs && p + 1 < pend) {
          // input rows p - ph + u, u < 4 (null: padding)
          for (int u = 0; u < 4; ++u) {
            const int64_t ih = p - ph + u;
            const bool ok = ih >= 0 && ih < g.H;
            xr0[u] = ok ? x.p + n * x.s0 + ih * x.s2 : nullptr;
            mr0[u] = ok && MASK ? m.p + n * m.s0 + ih * m.s2 : nullptr;
          }
          dwcl_pixel_blocks<S, SW>(g.Q, g.W, pw, [&](auto qb_tag, auto edge_tag, int64_t q0, int nq, int64_t iw0,
                                                    int jlo, int jhi) {
            constexpr int QB = decltype(qb_tag)::value;
            constexpr bool EDGE = decltype(edge_tag)::value;
            T* yo = yrow + q0 * y.s3;
            // Destination: y itself, or a scratch block whose rows are QB * Cp apart.
            T* const dst = stream_out ? dwcl_scratch_at(scr0, yo) : yo;
            const int64_t drs = stream_out ? QB * Cp : y.s2, dps = stream_out ? Cp : y.s3;
            const DwClNext<T> nb =
                stream_out ? DwClNext<T>{} : dwcl_next_block(yrow, y.s2, y.s3, p, 2, pend, q0, nq, g.Q, kDwClQB);
            for (int64_t cv = cv0; cv < cv1; ++cv) {
              dwcl_prefetch_next(nb, y.s2, y.s3, cv * L);
              for (int u = 0; u < 4; ++u) {
                xr[u] = xr0[u] ? xr0[u] + cv * L : nullptr;
                if (MASK) mr[u] = mr0[u] ? mr0[u] + cv * L : nullptr;
              }
              const T* bc = bpp ? bpp + cv * L : nullptr;
              if (cv < nfull)
                dwcl_block_r2<T, QB, false, MASK, EDGE>(xr, mr, wT + cv * L, iw0, x.s3, m.s3, Cp, jlo, jhi, bc, relu,
                                                        dst + cv * L, drs, dps, nq, L);
              else
                dwcl_block_r2<T, QB, true, MASK, EDGE>(xr, mr, wT + cv * L, iw0, x.s3, m.s3, Cp, jlo, jhi, bc, relu,
                                                       dst + cv * L, drs, dps, nq, tail);
            }
            if (stream_out) dwcl_stream_out(dst, drs, Cp, yo, y.s2, y.s3, 2, nq, cv0, cv1, nfull, tail);
          });
          p += 2;
          continue;
        }
        int64_t nrv = 0;
        for (int64_t r = 0; r < g.R; ++r) {
          const int64_t ih = p * g.sh - ph + r * dh;
          if (ih < 0 || ih >= g.H) continue;
          xr0[nrv] = x.p + n * x.s0 + ih * x.s2;
          mr0[nrv] = MASK ? m.p + n * m.s0 + ih * m.s2 : nullptr;
          wr0[nrv] = wT + r * S * Cp;
          ++nrv;
        }
        dwcl_pixel_blocks<S, SW>(g.Q, g.W, pw, [&](auto qb_tag, auto edge_tag, int64_t q0, int nq, int64_t iw0,
                                                  int jlo, int jhi) {
          constexpr int QB = decltype(qb_tag)::value;
          constexpr bool EDGE = decltype(edge_tag)::value;
          T* yo = yrow + q0 * y.s3;
          T* const dst = stream_out ? dwcl_scratch_at(scr0, yo) : yo;  // y, or a scratch block (one row)
          const int64_t dps = stream_out ? Cp : y.s3;
          const DwClNext<T> nb =
              stream_out ? DwClNext<T>{} : dwcl_next_block(yrow, y.s2, y.s3, p, 1, pend, q0, nq, g.Q, kDwClQB);
          auto at = [&](int64_t cv, int ncv) {  // pointers at channel vector cv; prefetches ncv vectors
            for (int v = 0; v < ncv; ++v) dwcl_prefetch_next(nb, y.s2, y.s3, (cv + v) * L);
            for (int64_t k = 0; k < nrv; ++k) {
              xr[k] = xr0[k] + cv * L;
              if (MASK) mr[k] = mr0[k] + cv * L;
              wr[k] = wr0[k] + cv * L;
            }
          };
          int64_t cv = cv0;
          for (; cv + kDwClCVB <= std::min(cv1, nfull); cv += kDwClCVB) {
            at(cv, kDwClCVB);
            dwcl_block<T, S, SW, QB, kDwClCVB, false, MASK, EDGE>(xr, mr, wr, nrv, iw0, x.s3, m.s3, Cp, jlo, jhi,
                                                                  bpp ? bpp + cv * L : nullptr, relu, dst + cv * L,
                                                                  dps, nq, L);
          }
          for (; cv < cv1; ++cv) {
            at(cv, 1);
            if (cv < nfull)
              dwcl_block<T, S, SW, QB, 1, false, MASK, EDGE>(xr, mr, wr, nrv, iw0, x.s3, m.s3, Cp, jlo, jhi,
                                                             bpp ? bpp + cv * L : nullptr, relu, dst + cv * L, dps,
                                                             nq, L);
            else
              dwcl_block<T, S, SW, QB, 1, true, MASK, EDGE>(xr, mr, wr, nrv, iw0, x.s3, m.s3, Cp, jlo, jhi,
                                                            bpp ? bpp + cv * L : nullptr, relu, dst + cv * L, dps,
                                                            nq, tail);
          }
          if (stream_out) dwcl_stream_out(dst, 0, Cp, yo, 0, y.s3, 1, nq, cv0, cv1, nfull, tail);
        });
        ++p;
      }
#if defined(__AVX512F__)
      if (stream_out) _mm_sfence();  // order this task's streamed stores before the loop's barrier
#endif
    }
  }
}

template <typename T>
void conv_direct_cl(const Geo& g, In4<T> x, In4<T> m, WV<T> w, const T* bias, Out4<T> y, bool relu, int nth) {
  if ((g.S == 3 || g.S == 5) && (g.sw == 1 || g.sw == 2) && (g.dw == 1 || g.dw == -1) && (m.p == nullptr || g.sw == 1)) {
    // Weights [R][S][Cp] with the taps of a mirrored row (dw = -1, dgrad) reversed, so that tap s reads
    // column q*sw - pw + s: iw = q*sw - pw + s*dw = q*sw - (pw - (S-1)*dw) + (S-1-s)*(-dw).
    constexpr int L = Simd<T>::L;
    const int64_t C = g.G, Cp = cdiv(C, L) * L;
    const bool flip = g.dw < 0, flipr = g.dh < 0;
    const int64_t pw = flip ? g.pw - (g.S - 1) * g.dw : g.pw;
    const int64_t ph = flipr ? g.ph - (g.R - 1) * g.dh : g.ph, dh = flipr ? -g.dh : g.dh;
    std::vector<T> wT(g.R * g.S * Cp, T(0)), bp(bias ? Cp : 0, T(0));
    for (int64_t c = 0; c < C; ++c)
      for (int64_t r = 0; r < g.R; ++r)
        for (int64_t s = 0; s < g.S; ++s)
          wT[(r * g.S + s) * Cp + c] = w.at(c, 0, 0, flipr ? g.R - 1 - r : r, flip ? g.S - 1 - s : s);
    for (int64_t c = 0; bias && c < C; ++c) bp[c] = bias[c];
    const T* bpp = bias ? bp.data() : nullptr;
    if (m.p) {
      if (g.S == 3)
        conv_dwcl_rows<T, 3, 1, true>(g, x, m, wT.data(), Cp, ph, dh, pw, bpp, y, relu, nth);
      else
        conv_dwcl_rows<T, 5, 1, true>(g, x, m, wT.data(), Cp, ph, dh, pw, bpp, y, relu, nth);
    } else if (g.S == 3) {
      if (g.sw == 1)
        conv_dwcl_rows<T, 3, 1, false>(g, x, m, wT.data(), Cp, ph, dh, pw, bpp, y, relu, nth);
      else
        conv_dwcl_rows<T, 3, 2, false>(g, x, m, wT.data(), Cp, ph, dh, pw, bpp, y, relu, nth);
    } else {
      if (g.sw == 1)
        conv_dwcl_rows<T, 5, 1, false>(g, x, m, wT.data(), Cp, ph, dh, pw, bpp, y, relu, nth);
      else
        conv_dwcl_rows<T, 5, 2, false>(g, x, m, wT.data(), Cp, ph, dh, pw, bpp, y, relu, nth);
    }
    return;
  }
  if (m.p)
    conv_direct_cl_impl<T, true>(g, x, m, w, bias, y, relu, nth);
  else
    conv_direct_cl_impl<T, false>(g, x, m, w, bias, y, relu, nth);
}

// ---------------------------------------------------------------------------------------------
// Microkernel shapes per ISA level (accumulators + B vectors + one broadcast fit the register file).
#if defined(__AVX512F__)
constexpr int kPixMR = 8, kPixNV = 3;  // 24 zmm accumulators, NR = 48 floats
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int kPixMR = 6, kPixNV = 2;  // 12 ymm accumulators
#else
constexpr int kPixMR = 4, kPixNV = 2;  // 8 xmm accumulators (no FMA: one temporary per product)
#endif

// Calls f.template operator()<MR, NV>() with the row-kernel shape for Kg output columns.
template <typename T, typename F>
void with_rows_shape(int64_t Kg, F&& f) {
  constexpr int L = Simd<T>::L;
#if defined(__AVX512F__)
  if (Kg % (4 * L) == 0)
    f.template operator()<6, 4>();
  else if (Kg > L && Kg <= 2 * L)
    f.template operator()<12, 2>();  // e.g. K = 32 fp32: 24 accumulators, as 6x4 for K = 64
  else if (Kg > L)
    f.template operator()<8, 2>();
  else
    f.template operator()<8, 1>();
#elif defined(__AVX2__) && defined(__FMA__)
  if (Kg > L)
    f.template operator()<6, 2>();
  else
    f.template operator()<8, 1>();
#else
  if (Kg > L)
    f.template operator()<4, 2>();
  else
    f.template operator()<6, 1>();
#endif
}

// The caller's WeightPack as this kernel's packed weight of `count` T elements, filled by fill(p) the
// first time; null when there is no pack (or one too small), and the kernel packs into its own buffer.
template <typename T, typename F>
const T* cached_pack(WeightPack* pack, int64_t count, F&& fill) {
  if (pack == nullptr || pack->data == nullptr || pack->floats * (int64_t)sizeof(float) < count * (int64_t)sizeof(T))
    return nullptr;
  T* p = reinterpret_cast<T*>(pack->data);  // Python allocates float32 buffers 64-byte aligned
  if (!pack->ready) {
    fill(p);
    pack->ready = true;
  }
  return p;
}

template <typename T>
struct ClRunner {
  const Geo& g;
  In4<T> x, m;
  WV<T> w;
  const T* bias;
  Out4<T> y;
  bool relu;
  int nth;
  WeightPack* pack;
  template <int MR, int NV>
  void operator()() const {
    const T* B = cached_pack<T>(pack, cl_weight_floats<T, NV>(g), [&](T* p) { pack_cl_weights<T, NV>(g, w, p, nth); });
    conv_cl<T, MR, NV>(g, x, m, w, bias, y, relu, nth, B);
  }
};

// The kernel family conv_run takes. One function, so that conv_run and the pack query
// (conv2d_fwd_pack_info) cannot disagree about which packed weight a problem uses.
enum class Route { kDirectCl, kDirectPlane, kCl, kPixDirect, kPix };

// 1x1, stride 1, no padding, dense planes: one flat row of H*W pixels (longer packing runs). Only the
// pixel geometry changes, never what the weights pack into.
template <typename T>
void flatten_pointwise(Geo& g, In4<T>& x, In4<T>& m, Out4<T>& y) {
  if (g.R == 1 && g.S == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0 && g.P == g.H && g.Q == g.W &&
      x.s2 == g.W * x.s3 && y.s2 == g.Q * y.s3 && (m.p == nullptr || m.s2 == g.W * m.s3)) {
    g.W = g.Q = g.H * g.W;
    g.H = g.P = 1;
    x.s2 = g.W * x.s3;
    y.s2 = g.Q * y.s3;
    m.s2 = g.W * m.s3;
  }
}

template <typename T>
Route conv_route(const Geo& g, const In4<T>& x, const In4<T>& m, const Out4<T>& y) {
  const bool y_cl = (y.s1 == 1 && g.Kout > 1);
  if (g.Cg == 1)
    return g.Kg == 1 && g.G > 1 && y_cl && x.s1 == 1 && (m.p == nullptr || m.s1 == 1) ? Route::kDirectCl
                                                                                      : Route::kDirectPlane;
  if (y_cl) return Route::kCl;
  const int64_t Wp = g.Q + cdiv(std::abs((g.S - 1) * g.dw), g.sw);  // upper bound of the plane width
  return g.sh <= 2 && g.sw <= 2 && Wp <= 1024 && g.Q * 8 >= Wp * 7 ? Route::kPixDirect : Route::kPix;
}

// pack: the forward's cached weight pack (conv2d_fwd_pack_info says which), or null.
template <typename T>
void conv_run(const Geo& g0, In4<T> x, In4<T> m, WV<T> w, const T* bias, Out4<T> y, bool relu, int nth,
              WeightPack* pack = nullptr) {
  if (g0.N == 0 || g0.P <= 0 || g0.Q <= 0 || g0.Kout == 0) return;
  Geo g = g0;
  flatten_pointwise(g, x, m, y);
  const Route route = conv_route(g, x, m, y);
  if (route == Route::kDirectCl) return conv_direct_cl(g, x, m, w, bias, y, relu, nth);
  if (route == Route::kDirectPlane) return conv_direct_plane(g, x, m, w, bias, y, relu, nth);
  if (route == Route::kCl) return with_rows_shape<T>(g.Kg, ClRunner<T>{g, x, m, w, bias, y, relu, nth, pack});
  const T* A = cached_pack<T>(pack, pix_weight_floats<kPixMR>(g),
                              [&](T* p) { pack_weight_panels<T, kPixMR>(g, w, p, nth); });
  if (route == Route::kPixDirect)
    conv_pix_direct<T, kPixMR, kPixNV>(g, x, m, w, bias, y, relu, nth, A);
  else
    conv_pix<T, kPixMR, kPixNV>(g, x, m, w, bias, y, relu, nth, A);
}

// ---------------------------------------------------------------------------------------------
// wgrad: C[CgRS x Kg] = col[CgRS x NPQ] * dy^T[NPQ x Kg] per group, rows (c, r, s), ukr_rows.
struct WRun {
  int64_t off, n, p, q, len;
};

template <typename T, int MR, int NV>
void wgrad_gemm(const ConvDesc& d, In4<T> x, In4<T> dy, In4<T> m, Out4<T> dw, int nth) {
  using Sd = Simd<T>;
  using V = typename Sd::V;
  constexpr int L = Sd::L;
  constexpr int NR = NV * L;
  const int64_t G = d.groups, Cg = d.C / G, Kg = d.K / G, RS = d.R * d.S, CRS = Cg * RS;
  const int64_t PQ = d.P * d.Q, NPQ = d.N * PQ;
  const int64_t nJr = cdiv(Kg, NR), Npad = nJr * NR;
  const int64_t MCw = MR * std::min(cdiv(CRS, MR), cdiv(96, MR));
  const int64_t nRb = cdiv(CRS, MCw), CRSpad = nRb * MCw;
  const int64_t KCP = std::max<int64_t>(64, std::min<int64_t>(512, (24 * 1024) / (NR * (int64_t)sizeof(T))));
  // Fixed reduction chunks (a function of the problem only) so that small dW still feeds every core.
  const int64_t rowtasks = G * nRb;
  int64_t nz = std::min<int64_t>(cdiv(32, rowtasks), std::max<int64_t>(1, NPQ / 2048));
  const int64_t zlen = cdiv(NPQ, std::max<int64_t>(nz, 1));
  nz = std::max<int64_t>(1, cdiv(NPQ, zlen));
  Buf<T> part(nz * G * CRSpad * Npad);
  const int64_t ntask = nz * rowtasks;
  const int64_t asz = MCw * KCP, bsz = Npad * KCP;
  Buf<T> scratch(nth * (asz + bsz));
  std::vector<WRun> runs_all(nth * (KCP + 2));
  std::vector<const T*> rows_all(nth * MCw);
  std::vector<QRange> qrange(d.S);
  for (int64_t s = 0; s < d.S; ++s) qrange[s] = valid_cols(s * d.dil_w - d.pad_w, d.stride_w, d.W, d.Q);

#pragma omp parallel num_threads(nth)
  {
    const int tid = thread_id();
    T* Ab = scratch.p + tid * (asz + bsz);
    T* Bb = Ab + asz;
    WRun* runs = runs_all.data() + tid * (KCP + 2);
    const T** rows = rows_all.data() + tid * MCw;
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < ntask; ++task) {
      const int64_t rb = task % nRb, t2 = task / nRb, gi = t2 % G, z = t2 / G;
      const int64_t pix0 = z * zlen, pix1 = std::min(NPQ, pix0 + zlen);
      const int64_t row0 = rb * MCw, mr = std::min(MCw, CRS - row0), nir = cdiv(mr, MR);
      T* Cz = part.p + ((z * G + gi) * CRSpad + row0) * Npad;
      if (pix1 <= pix0) {
        for (int64_t i = 0; i < MCw * Npad; ++i) Cz[i] = T(0);
        continue;
      }
      const int64_t nblk = cdiv(pix1 - pix0, KCP);
      for (int64_t bi = 0; bi < nblk; ++bi) {
        const int64_t a0 = pix0 + bi * KCP, kl = std::min(KCP, pix1 - a0);
        int64_t nruns = 0;
        for (int64_t kk = 0; kk < kl;) {
          const int64_t j = a0 + kk, n = j / PQ, pq = j % PQ, p = pq / d.Q, q = pq % d.Q;
          const int64_t len = std::min(d.Q - q, kl - kk);
          runs[nruns++] = {kk, n, p, q, len};
          kk += len;
        }
        // B = masked dy^T: [nJr][kl][NR]
        for (int64_t jr = 0; jr < nJr; ++jr) {
          T* bj = Bb + jr * kl * NR;
          for (int l = 0; l < NR; ++l) {
            const int64_t k = jr * NR + l;
            if (k >= Kg) {
              for (int64_t kk = 0; kk < kl; ++kk) bj[kk * NR + l] = T(0);
              continue;
            }
            const int64_t kabs = gi * Kg + k;
            for (int64_t ri = 0; ri < nruns; ++ri) {
              const WRun& ru = runs[ri];
              const T* src = dy.p + ru.n * dy.s0 + kabs * dy.s1 + ru.p * dy.s2 + ru.q * dy.s3;
              T* dst = bj + ru.off * NR + l;
              if (m.p) {
                const T* ms = m.p + ru.n * m.s0 + kabs * m.s1 + ru.p * m.s2 + ru.q * m.s3;
                for (int64_t t = 0; t < ru.len; ++t) dst[t * NR] = masked(src[t * dy.s3], ms[t * m.s3]);
              } else {
                for (int64_t t = 0; t < ru.len; ++t) dst[t * NR] = src[t * dy.s3];
              }
            }
          }
        }
        // A = im2col rows: [nir*MR][kl]
        for (int64_t ri = 0; ri < nir * MR; ++ri) {
          T* dst = Ab + ri * kl;
          rows[ri] = dst;
          const int64_t row = row0 + ri;
          if (ri >= mr) {
            for (int64_t kk = 0; kk < kl; ++kk) dst[kk] = T(0);
            continue;
          }
          const int64_t c = row / RS, rs = row % RS, r = rs / d.S, s = rs % d.S;
          for (int64_t u = 0; u < nruns; ++u) {
            const WRun& ru = runs[u];
            const int64_t ih = ru.p * d.stride_h - d.pad_h + r * d.dil_h;
            if (ih < 0 || ih >= d.H) {
              for (int64_t t = 0; t < ru.len; ++t) dst[ru.off + t] = T(0);
              continue;
            }
            const QRange qr = qrange[s];
            const int64_t tlo = std::min(ru.len, std::max<int64_t>(0, qr.lo - ru.q));
            const int64_t thi = std::min(ru.len, std::max(tlo, qr.hi - ru.q));
            copy_run(dst + ru.off, ru.len, tlo, thi, x.p + ru.n * x.s0 + (gi * Cg + c) * x.s1 + ih * x.s2, x.s3,
                     (const T*)nullptr, 0, ru.q * d.stride_w - d.pad_w + s * d.dil_w, d.stride_w);
          }
        }
        const bool first = bi == 0;
        for (int64_t jr = 0; jr < nJr; ++jr) {
          const T* bp = Bb + jr * kl * NR;
          for (int64_t ir = 0; ir < nir; ++ir) {
            ukr_rows<T, MR, NV>(1, rows + ir * MR, &kl, bp, [&](V(&acc)[MR][NV]) {
              store_or_accumulate<T, MR, NV>(acc, Cz + ir * MR * Npad + jr * NR, Npad, first);
            });
          }
        }
      }
    }
  }
  // dw[g*Kg + k][c][r][s] = sum_z part[z][g][crs][k], z ascending.
#pragma omp parallel for num_threads(nth) schedule(static)
  for (int64_t t = 0; t < G * CRS; ++t) {
    const int64_t gi = t / CRS, row = t % CRS, c = row / RS, rs = row % RS, r = rs / d.S, s = rs % d.S;
    for (int64_t k = 0; k < Kg; ++k) {
      T acc = part.p[((0 * G + gi) * CRSpad + row) * Npad + k];
      for (int64_t z = 1; z < nz; ++z) acc += part.p[((z * G + gi) * CRSpad + row) * Npad + k];
      dw.p[(gi * Kg + k) * dw.s0 + c * dw.s1 + r * dw.s2 + s * dw.s3] = acc;
    }
  }
}

// wgrad for a channels_last input: C[Kg x RS*Cg] = dy^T[Kg x NPQ] * col[NPQ x RS*Cg] per group,
// columns in (tap, c) order so B rows are contiguous channel runs of x; ukr_panel (vectors along
// the columns). Tasks own (group, column block, fixed reduction chunk); chunks summed in order.
template <typename T, int MR, int NV>
void wgrad_gemm_cl(const ConvDesc& d, In4<T> x, In4<T> dy, In4<T> m, Out4<T> dw, int nth) {
  using Sd = Simd<T>;
  using V = typename Sd::V;
  constexpr int L = Sd::L;
  constexpr int NR = NV * L;
  const int64_t G = d.groups, Cg = d.C / G, Kg = d.K / G, RS = d.R * d.S, NCOL = RS * Cg;
  const int64_t PQ = d.P * d.Q, NPQ = d.N * PQ;
  const int64_t nIr = cdiv(Kg, MR), Mpad = nIr * MR;
  const int64_t npt = std::min<int64_t>(cdiv(NCOL, NR), 4), NCw = npt * NR;
  const int64_t nCb = cdiv(NCOL, NCw), NCOLpad = nCb * NCw;
  const int64_t KCP = std::max<int64_t>(64, (24 * 1024) / (NR * (int64_t)sizeof(T)));
  const int64_t coltasks = G * nCb;
  int64_t nz = std::min<int64_t>(cdiv(32, coltasks), std::max<int64_t>(1, NPQ / 2048));
  const int64_t zlen = cdiv(NPQ, std::max<int64_t>(nz, 1));
  nz = std::max<int64_t>(1, cdiv(NPQ, zlen));
  Buf<T> part(nz * G * Mpad * NCOLpad);  // [z][g][k][col]
  const int64_t ntask = nz * coltasks;
  const int64_t asz = Mpad * KCP, bsz = NCw * KCP;
  Buf<T> scratch(nth * (asz + bsz));
#pragma omp parallel num_threads(nth)
  {
    T* Ab = scratch.p + thread_id() * (asz + bsz);
    T* Bb = Ab + asz;
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < ntask; ++task) {
      const int64_t cb = task % nCb, t2 = task / nCb, gi = t2 % G, z = t2 / G;
      const int64_t pix0 = z * zlen, pix1 = std::min(NPQ, pix0 + zlen);
      const int64_t col0 = cb * NCw, ncol = std::min(NCw, NCOL - col0), npan = cdiv(ncol, NR);
      T* Cz = part.p + (z * G + gi) * Mpad * NCOLpad + col0;  // ldc = NCOLpad
      if (pix1 <= pix0) {
        for (int64_t k = 0; k < Mpad; ++k) zero_n(Cz + k * NCOLpad, NCw);
        continue;
      }
      const int64_t nblk = cdiv(pix1 - pix0, KCP);
      for (int64_t bi = 0; bi < nblk; ++bi) {
        const int64_t a0 = pix0 + bi * KCP, kl = std::min(KCP, pix1 - a0);
        int64_t n = a0 / PQ, p = (a0 % PQ) / d.Q, q = a0 % d.Q;
        for (int64_t kk = 0; kk < kl; ++kk) {
          // A: masked dy, [ir][kk][MR]
          const T* dp = dy.p + n * dy.s0 + gi * Kg * dy.s1 + p * dy.s2 + q * dy.s3;
          const T* mp = m.p ? m.p + n * m.s0 + gi * Kg * m.s1 + p * m.s2 + q * m.s3 : nullptr;
          for (int64_t k = 0; k < Mpad; ++k) {
            T v = T(0);
            if (k < Kg) v = mp ? masked(dp[k * dy.s1], mp[k * m.s1]) : dp[k * dy.s1];
            Ab[((k / MR) * kl + kk) * MR + k % MR] = v;
          }
          // B: im2col row of this pixel, columns [col0, col0 + npan*NR) in (tap, c) order
          const T* xn = x.p + n * x.s0 + gi * Cg * x.s1;
          for (int64_t jp = 0; jp < npan; ++jp) {
            T* dst = Bb + (jp * kl + kk) * NR;
            int64_t col = col0 + jp * NR;
            const int64_t cend = std::min(col + NR, NCOL);
            while (col < cend) {
              const int64_t tap = col / Cg, c = col - tap * Cg, len = std::min(Cg - c, cend - col);
              const int64_t r = tap / d.S, s = tap - r * d.S;
              const int64_t ih = p * d.stride_h - d.pad_h + r * d.dil_h, iw = q * d.stride_w - d.pad_w + s * d.dil_w;
              if (ih >= 0 && ih < d.H && iw >= 0 && iw < d.W)
                copy_n(dst, xn + ih * x.s2 + iw * x.s3 + c, len);
              else
                zero_n(dst, len);
              dst += len;
              col += len;
            }
            if (col < col0 + (jp + 1) * NR) zero_n(dst, col0 + (jp + 1) * NR - col);
          }
          if (++q == d.Q) {
            q = 0;
            if (++p == d.P) {
              p = 0;
              ++n;
            }
          }
        }
        const bool first = bi == 0;
        for (int64_t jr = 0; jr < npan; ++jr)
          for (int64_t ir = 0; ir < nIr; ++ir)
            ukr_panel<T, MR, NV>(kl, Ab + ir * kl * MR, Bb + jr * kl * NR, [&](V(&acc)[MR][NV]) {
              store_or_accumulate<T, MR, NV>(acc, Cz + ir * MR * NCOLpad + jr * NR, NCOLpad, first);
            });
      }
      // panels past ncol inside this block stay unwritten; they are never read
    }
  }
#pragma omp parallel for num_threads(nth) schedule(static)
  for (int64_t t = 0; t < G * Kg; ++t) {
    const int64_t gi = t / Kg, k = t % Kg;
    for (int64_t col = 0; col < NCOL; ++col) {
      T acc = part.p[(gi * Mpad + k) * NCOLpad + col];
      for (int64_t z = 1; z < nz; ++z) acc += part.p[((z * G + gi) * Mpad + k) * NCOLpad + col];
      const int64_t tap = col / Cg, c = col % Cg;
      dw.p[(gi * Kg + k) * dw.s0 + c * dw.s1 + (tap / d.S) * dw.s2 + (tap % d.S) * dw.s3] = acc;
    }
  }
}

template <typename T>
struct WgradRunner {
  const ConvDesc& d;
  In4<T> x, dy, m;
  Out4<T> dw;
  int nth;
  template <int MR, int NV>
  void operator()() const {
    wgrad_gemm<T, MR, NV>(d, x, dy, m, dw, nth);
  }
};

// One output row p of one image for the channels_last depthwise wgrad, R x S taps (compile-time) of
// CVB channel vectors from channel c0: the R*S*CVB tap sums stay in registers over the row's pixels
// (acc[(r*S + s)*C + c], read before and written after), so a pixel costs one dy load per vector and
// one x load per tap instead of the generic loop's load-add-store of every tap's sum. Each tap's sum
// still adds its pixels in (p, q) order with one fused multiply-add each, like the generic loop: the
// bits do not change. qr[s]: the columns q whose tap s reads a valid input column. BIAS: the bias
// gradient's sums (bacc[c]) ride along on the dy vectors already loaded, in bias_grad's order (a plain
// add per pixel, (p, q) order), which saves bias_grad's own pass over dy.
template <typename T, int R, int S, int CVB, bool TAIL, bool MASK, bool BIAS>
FC_INLINE void wgrad_dwcl_row(const ConvDesc& d, const In4<T>& x, const In4<T>& dy, const In4<T>& m, int64_t n, int64_t p,
                              int64_t c0, int nl, const QRange* qr, T* acc, T* bacc) {
  using Sd = Simd<T>;
  using V = typename Sd::V;
  constexpr int L = Sd::L;
  static_assert(!TAIL || CVB == 1, "a channel tail is one vector");
  const int64_t C = d.C;
  const T* xr[R];
  bool rok[R];
  FC_UNROLL for (int r = 0; r < R; ++r) {
    const int64_t ih = p * d.stride_h - d.pad_h + r * d.dil_h;
    rok[r] = ih >= 0 && ih < d.H;
    xr[r] = rok[r] ? x.p + n * x.s0 + ih * x.s2 + c0 : nullptr;
  }
  V a[R * S][CVB], ab[CVB];
  FC_UNROLL for (int t = 0; t < R * S; ++t) FC_UNROLL for (int v = 0; v < CVB; ++v)
      a[t][v] = TAIL ? Sd::load_n(acc + t * C + c0, nl) : Sd::load(acc + t * C + c0 + v * L);
  if (BIAS) FC_UNROLL for (int v = 0; v < CVB; ++v) ab[v] = TAIL ? Sd::load_n(bacc + c0, nl) : Sd::load(bacc + c0 + v * L);
  const T* dp = dy.p + n * dy.s0 + p * dy.s2 + c0;
  const T* mp = MASK ? m.p + n * m.s0 + p * m.s2 + c0 : nullptr;
  int64_t qlo = 0, qhi = d.Q;  // columns where every tap is valid
  for (int s = 0; s < S; ++s) qlo = std::max(qlo, qr[s].lo), qhi = std::min(qhi, qr[s].hi);
  qhi = std::max(qlo, qhi);
  const auto pixel = [&](int64_t q, auto all_taps) {
    V dv[CVB];
    FC_UNROLL for (int v = 0; v < CVB; ++v) {
      dv[v] = TAIL ? Sd::load_n(dp + q * dy.s3, nl) : Sd::load(dp + q * dy.s3 + v * L);
      if (MASK) dv[v] = Sd::mask_le0(dv[v], TAIL ? Sd::load_n(mp + q * m.s3, nl) : Sd::load(mp + q * m.s3 + v * L));
      if (BIAS) ab[v] = Sd::add(ab[v], dv[v]);
    }
    FC_UNROLL for (int r = 0; r < R; ++r) {
      if (!rok[r]) continue;
      FC_UNROLL for (int s = 0; s < S; ++s) {
        if (!decltype(all_taps)::value && (q < qr[s].lo || q >= qr[s].hi)) continue;
        const T* xp = xr[r] + (q * d.stride_w - d.pad_w + s * d.dil_w) * x.s3;
        FC_UNROLL for (int v = 0; v < CVB; ++v)
            a[r * S + s][v] = Sd::fma(dv[v], TAIL ? Sd::load_n(xp, nl) : Sd::load(xp + v * L), a[r * S + s][v]);
      }
    }
  };
  int64_t q = 0;
  for (; q < qlo; ++q) pixel(q, std::false_type{});
  for (; q < qhi; ++q) pixel(q, std::true_type{});
  for (; q < d.Q; ++q) pixel(q, std::false_type{});
  FC_UNROLL for (int t = 0; t < R * S; ++t) FC_UNROLL for (int v = 0; v < CVB; ++v) {
      if (TAIL)
        Sd::store_n(acc + t * C + c0, a[t][v], nl);
      else
        Sd::store(acc + t * C + c0 + v * L, a[t][v]);
    }
  if (BIAS) FC_UNROLL for (int v = 0; v < CVB; ++v) {
      if (TAIL)
        Sd::store_n(bacc + c0, ab[v], nl);
      else
        Sd::store(bacc + c0 + v * L, ab[v]);
    }
}

// The rows of image n for wgrad_dwcl_row, channel vectors in blocks of CVB, then one at a time, then
// the tail; acc (R*S x C) and bacc (C, with BIAS) start zeroed.
template <typename T, int R, int S, int CVB, bool MASK, bool BIAS>
void wgrad_dwcl_image(const ConvDesc& d, const In4<T>& x, const In4<T>& dy, const In4<T>& m, int64_t n,
                      const QRange* qr, T* acc, T* bacc) {
  constexpr int L = Simd<T>::L;
  const int64_t nfull = d.C / L;
  const int tail = (int)(d.C % L);
  for (int64_t p = 0; p < d.P; ++p) {
    int64_t cv = 0;
    for (; cv + CVB <= nfull; cv += CVB)
      wgrad_dwcl_row<T, R, S, CVB, false, MASK, BIAS>(d, x, dy, m, n, p, cv * L, L, qr, acc, bacc);
    for (; cv < nfull; ++cv) wgrad_dwcl_row<T, R, S, 1, false, MASK, BIAS>(d, x, dy, m, n, p, cv * L, L, qr, acc, bacc);
    if (tail) wgrad_dwcl_row<T, R, S, 1, true, MASK, BIAS>(d, x, dy, m, n, p, nfull * L, tail, qr, acc, bacc);
  }
}

// The bias gradient from per-image partial sums part[n][K]: db[k] = sum over n in order (from +0).
template <typename T>
void bias_grad_sum_images(const T* part, int64_t N, int64_t K, T* db) {
  for (int64_t k = 0; k < K; ++k) {
    T acc = T(0);
    for (int64_t n = 0; n < N; ++n) acc += part[n * K + k];
    db[k] = acc;
  }
}

// Depthwise wgrad (Cg == 1): dw[k][0][r][s] = sum_{n,p,q} dy[n,k,p,q] * x[n, k/Kg, ih, iw].
// channels_last (Kg == 1): tasks own L-channel slices, vectors along C. Otherwise tasks own one
// output channel k, vectors along Q when rows are contiguous. Fixed order either way.
// db (may be null): the bias gradient, computed on the way where the kernel can (3x3 channels_last,
// see wgrad_dwcl_row) with the same bits as bias_grad. Returns whether it wrote db.
template <typename T>
bool wgrad_depthwise(const ConvDesc& d, In4<T> x, In4<T> dy, In4<T> m, Out4<T> dw, T* db, int nth) {
  using Sd = Simd<T>;
  using V = typename Sd::V;
  constexpr int L = Sd::L;
  const int64_t G = d.groups, Kg = d.K / G, RS = d.R * d.S;
  const bool clv = Kg == 1 && d.C > 1 && x.s1 == 1 && dy.s1 == 1 && (m.p == nullptr || m.s1 == 1);
  std::vector<QRange> qrange(d.S);
  for (int64_t s = 0; s < d.S; ++s) qrange[s] = valid_cols(s * d.dil_w - d.pad_w, d.stride_w, d.W, d.Q);
  if (clv) {
    // per-image partials part[n][RS][C] (vectors along C), then summed over n in order
    const int64_t C = d.C, nfull = C / L, tail = C % L;
    Buf<T> part(d.N * RS * C);
#if defined(__AVX512F__)
    constexpr int kCVB = 2;  // 18 accumulators + 2 dy vectors + an x vector of the 32 zmm
#else
    constexpr int kCVB = 1;  // 9 + 1 + 1 of 16
#endif
    // 3x3 filters (all but a few depthwise layers): the register-blocked rows (wgrad_dwcl_row), with
    // the bias gradient's per-image partials bpart[n][C] when db is wanted.
    const bool blocked3 = d.R == 3 && d.S == 3;
    const bool with_bias = blocked3 && db != nullptr;
    std::vector<T> bpart(with_bias ? d.N * C : 0, T(0));
#pragma omp parallel for num_threads(nth) schedule(dynamic, 1)
    for (int64_t n = 0; n < d.N; ++n) {
      T* acc = part.p + n * RS * C;
      for (int64_t i = 0; i < RS * C; ++i) acc[i] = T(0);
      if (blocked3) {
        T* bacc = with_bias ? bpart.data() + n * C : nullptr;
        if (m.p && with_bias)
          wgrad_dwcl_image<T, 3, 3, kCVB, true, true>(d, x, dy, m, n, qrange.data(), acc, bacc);
        else if (m.p)
          wgrad_dwcl_image<T, 3, 3, kCVB, true, false>(d, x, dy, m, n, qrange.data(), acc, bacc);
        else if (with_bias)
          wgrad_dwcl_image<T, 3, 3, kCVB, false, true>(d, x, dy, m, n, qrange.data(), acc, bacc);
        else
          wgrad_dwcl_image<T, 3, 3, kCVB, false, false>(d, x, dy, m, n, qrange.data(), acc, bacc);
        continue;
      }
      for (int64_t p = 0; p < d.P; ++p)
        for (int64_t q = 0; q < d.Q; ++q) {
          const T* dp = dy.p + n * dy.s0 + p * dy.s2 + q * dy.s3;
          const T* mp = m.p ? m.p + n * m.s0 + p * m.s2 + q * m.s3 : nullptr;
          for (int64_t r = 0; r < d.R; ++r) {
            const int64_t ih = p * d.stride_h - d.pad_h + r * d.dil_h;
            if (ih < 0 || ih >= d.H) continue;
            for (int64_t s = 0; s < d.S; ++s) {
              if (q < qrange[s].lo || q >= qrange[s].hi) continue;
              const int64_t iw = q * d.stride_w - d.pad_w + s * d.dil_w;
              const T* xp = x.p + n * x.s0 + ih * x.s2 + iw * x.s3;
              T* at = acc + (r * d.S + s) * C;
              for (int64_t cv = 0; cv < nfull; ++cv) {
                V dv = Sd::load(dp + cv * L);
                if (mp) dv = Sd::mask_le0(dv, Sd::load(mp + cv * L));
                Sd::store(at + cv * L, Sd::fma(dv, Sd::load(xp + cv * L), Sd::load(at + cv * L)));
              }
              if (tail) {
                const int64_t o = nfull * L;
                V dv = Sd::load_n(dp + o, (int)tail);
                if (mp) dv = Sd::mask_le0(dv, Sd::load_n(mp + o, (int)tail));
                Sd::store_n(at + o, Sd::fma(dv, Sd::load_n(xp + o, (int)tail), Sd::load_n(at + o, (int)tail)),
                            (int)tail);
              }
            }
          }
        }
    }
#pragma omp parallel for num_threads(nth) schedule(static)
    for (int64_t i = 0; i < RS * C; ++i) {
      T tot = part.p[i];
      for (int64_t n = 1; n < d.N; ++n) tot += part.p[n * RS * C + i];
      const int64_t rs = i / C, c = i % C;
      dw.p[c * dw.s0 + (rs / d.S) * dw.s2 + (rs % d.S) * dw.s3] = tot;
    }
    if (with_bias) bias_grad_sum_images(bpart.data(), d.N, C, db);
    return with_bias;
  }
  // Vectors along q when the rows are contiguous, the ReLU mask's too (a fused layer's backward: the
  // scalar loop took 9.6 of the 20.6 ms of a 128-channel N=32 32x32 NCHW conv2d_relu backward).
  const bool qvec = x.s3 == 1 && dy.s3 == 1 && d.stride_w == 1 && (m.p == nullptr || m.s3 == 1);
  // Adds row p of image n's tap (r, s) for output channel k into av (vector lanes) and as (scalars).
  const auto row_tap = [&](V& av, T& as, int64_t k, int64_t n, int64_t p, int64_t r, int64_t s) {
    const int64_t qlo = qrange[s].lo, qhi = qrange[s].hi;
    const int64_t ih = p * d.stride_h - d.pad_h + r * d.dil_h;
    if (ih < 0 || ih >= d.H || qhi <= qlo) return;
    const T* dp = dy.p + n * dy.s0 + k * dy.s1 + p * dy.s2;
    const T* xr = x.p + n * x.s0 + (k / Kg) * x.s1 + ih * x.s2;
    const int64_t off = s * d.dil_w - d.pad_w;
    if (qvec && m.p) {
      const T* xq = xr + off;
      const T* mq = m.p + n * m.s0 + k * m.s1 + p * m.s2;
      int64_t q = qlo;
      for (; q + L <= qhi; q += L)
        av = Sd::fma(Sd::mask_le0(Sd::load(dp + q), Sd::load(mq + q)), Sd::load(xq + q), av);
      if (q < qhi) {  // the row's last columns as one partial vector (zeros in the other lanes)
        const int nl = (int)(qhi - q);
        av = Sd::fma(Sd::mask_le0(Sd::load_n(dp + q, nl), Sd::load_n(mq + q, nl)), Sd::load_n(xq + q, nl), av);
      }
    } else if (qvec) {
      const T* xq = xr + off;
      int64_t q = qlo;
      for (; q + L <= qhi; q += L) av = Sd::fma(Sd::load(dp + q), Sd::load(xq + q), av);
      if (q < qhi) {
        const int nl = (int)(qhi - q);
        av = Sd::fma(Sd::load_n(dp + q, nl), Sd::load_n(xq + q, nl), av);
      }
    } else {
      const T* mp = m.p ? m.p + n * m.s0 + k * m.s1 + p * m.s2 : nullptr;
      for (int64_t q = qlo; q < qhi; ++q) {
        T dv = dp[q * dy.s3];
        if (mp) dv = masked(dv, mp[q * m.s3]);
        as += dv * xr[(q * d.stride_w + off) * x.s3];
      }
    }
  };
  const auto store_tap = [&](const V& av, T as, int64_t k, int64_t r, int64_t s) {
    dw.p[k * dw.s0 + r * dw.s2 + s * dw.s3] = sum_lanes_in_order<T>(av) + as;
  };
#pragma omp parallel for num_threads(nth) schedule(dynamic, 1)
  for (int64_t k = 0; k < d.K; ++k) {
    for (int64_t r = 0; r < d.R; ++r)
      for (int64_t s = 0; s < d.S; ++s) {
        V av = Sd::zero();
        T as = T(0);
        for (int64_t n = 0; n < d.N; ++n)
          for (int64_t p = 0; p < d.P; ++p) row_tap(av, as, k, n, p, r, s);
        store_tap(av, as, k, r, s);
      }
  }
  return false;
}

// dbias[k] = sum_n (sum_{p,q} masked dy[n,k,p,q]): per-image partials, then summed over n in order.
template <typename T>
void bias_grad(const ConvDesc& d, In4<T> dy, In4<T> m, T* db, int nth) {
  const int64_t K = d.K;
  std::vector<T> part(d.N * K);
  const bool kvec = dy.s1 == 1 && (m.p == nullptr || m.s1 == 1);
#pragma omp parallel for num_threads(nth) schedule(dynamic, 1)
  for (int64_t n = 0; n < d.N; ++n) {
    T* __restrict pn = part.data() + n * K;
    if (kvec) {
      for (int64_t k = 0; k < K; ++k) pn[k] = T(0);
      for (int64_t p = 0; p < d.P; ++p)
        for (int64_t q = 0; q < d.Q; ++q) {
          const T* __restrict src = dy.p + n * dy.s0 + p * dy.s2 + q * dy.s3;
          if (m.p) {
            const T* __restrict ms = m.p + n * m.s0 + p * m.s2 + q * m.s3;
            for (int64_t k = 0; k < K; ++k) pn[k] += masked(src[k], ms[k]);
          } else {
            for (int64_t k = 0; k < K; ++k) pn[k] += src[k];
          }
        }
    } else {
      // Contiguous rows (NCHW): vectors along q, lanes summed in order at the end; the scalar loop
      // (no reassociation without -ffast-math) took 2 of the 20.6 ms of a 128-channel N=32 32x32
      // NCHW conv2d_relu backward.
      using Sd = Simd<T>;
      using V = typename Sd::V;
      constexpr int L = Sd::L;
      const bool qvec = dy.s3 == 1 && (m.p == nullptr || m.s3 == 1);
      for (int64_t k = 0; k < K; ++k) {
        V av = Sd::zero();
        T acc = T(0);
        for (int64_t p = 0; p < d.P; ++p) {
          const T* src = dy.p + n * dy.s0 + k * dy.s1 + p * dy.s2;
          const T* ms = m.p ? m.p + n * m.s0 + k * m.s1 + p * m.s2 : nullptr;
          int64_t q = 0;
          for (; qvec && q + L <= d.Q; q += L) {
            V v = Sd::load(src + q);
            if (ms) v = Sd::mask_le0(v, Sd::load(ms + q));
            av = Sd::add(av, v);
          }
          if (ms)
            for (; q < d.Q; ++q) acc += masked(src[q * dy.s3], ms[q * m.s3]);
          else
            for (; q < d.Q; ++q) acc += src[q * dy.s3];
        }
        pn[k] = sum_lanes_in_order<T>(av) + acc;
      }
    }
  }
  bias_grad_sum_images(part.data(), d.N, K, db);
}

// ---------------------------------------------------------------------------------------------
template <typename T>
In4<T> in_view(const Tensor4& t) {
  return {static_cast<const T*>(t.data), t.stride[0], t.stride[1], t.stride[2], t.stride[3]};
}
template <typename T>
Out4<T> out_view(const Tensor4& t) {
  return {static_cast<T*>(t.data), t.stride[0], t.stride[1], t.stride[2], t.stride[3]};
}

// NCHW float32 layers that run faster through the channels_last engine (conv_cl, whole filter rows
// per reduction block) than through conv_pix_direct, counting a channels_last copy of the input and
// the transpose of the output back to NCHW: strided spatial filters on wide channels, where the input
// is 4x the output and conv_cl's long register-resident sums win. Measured (2 threads, ms, ours
// without -> with staging): 32x128x32x32 -> 128 3x3 s2 10.3 -> 8.4-9.2; 8x256x28x28 -> 256 3x3 s2
// 7.2 -> 6.6; 8x64x56x56 -> 64 3x3 s2 2.18 -> 2.14 (left out: no gain); 1x1 stride 2 0.68 -> 1.29
// and the 7x7 s2 RGB stem 7.8 -> 12.5 are slower (left out).
inline bool stage_nchw_forward(const Geo& g, const Tensor4& x, const Tensor4& y) {
  return g.N > 0 && g.P > 0 && g.Q > 0 && x.stride[1] != 1 && y.stride[1] != 1 && g.G == 1 && g.Cg >= 128 &&
         g.R * g.S > 1 && g.sh >= 2 && g.sw >= 2 && g.dh == 1 && g.dw == 1;
}

#if defined(__AVX512F__)
// The staged NCHW forward: a few images at a time are copied to channels_last, convolved by conv_cl
// into a channels_last buffer and transposed into y. Batches of half an L2 of input per thread keep
// both copies in the L2 caches, where staging the whole batch at once made two extra passes over
// memory (32x128x32x32 -> 128 3x3 s2, 2 threads: 9.5-10.2 -> 8.5-8.9 ms, against 7.4-8.0 for the same
// layer on channels_last input); the weights are packed once for all batches.
struct StagedClRunner {
  const Geo& g;
  const Tensor4& x;
  WV<float> w;
  const float* bias;
  const Tensor4& y;
  bool relu;
  int nth;
  WeightPack* pack;
  template <int MR, int NV>
  void operator()() const {
    const auto fill = [&](float* p) { pack_cl_weights<float, NV>(g, w, p, nth); };
    const float* B = cached_pack<float>(pack, cl_weight_floats<float, NV>(g), fill);
    Buf<float> Bown(B ? 0 : cl_weight_floats<float, NV>(g));
    if (!B) {
      fill(Bown.p);
      B = Bown.p;
    }
    const int64_t image_bytes = g.Cin * g.H * g.W * (int64_t)sizeof(float);
    // Images per batch: half an L2 of input per thread, and at least 4 conv_cl tasks (of <= 192
    // pixels) per thread so that the batch keeps every thread busy (1 image of the layer above:
    // 13.8 ms; 2, 4, 8: 8.5-9.0 ms; all 32: 10.3 ms).
    const int64_t by_cache = nth * (l2_cache_bytes() / 2) / image_bytes;
    const int64_t by_tasks = cdiv(4 * nth, cdiv(g.P * g.Q, 192));
    const int64_t NB = std::max<int64_t>({int64_t(1), by_cache, by_tasks});
    for (int64_t n0 = 0; n0 < g.N; n0 += NB) {
      const int64_t nb = std::min(NB, g.N - n0);
      Tensor4 xc = x, yc = y;
      xc.data = static_cast<float*>(x.data) + n0 * x.stride[0];
      yc.data = static_cast<float*>(y.data) + n0 * y.stride[0];
      xc.size[0] = yc.size[0] = nb;
      Geo gc = g;
      gc.N = nb;
      with_channels_last_copy(xc, nth, [&](const float* xs) {
        const In4<float> xcl{xs, g.H * g.W * g.Cin, 1, g.W * g.Cin, g.Cin};
        with_channels_last_output(yc, nth, [&](float* ys) {
          const Out4<float> ycl{ys, g.P * g.Q * g.Kout, 1, g.Q * g.Kout, g.Kout};
          conv_cl<float, MR, NV>(gc, xcl, In4<float>{}, w, bias, ycl, relu, nth, B);
        });
      });
    }
  }
};
#endif

inline Geo geo_of(const ConvDesc& d) {
  const int64_t G = d.groups;
  return Geo{d.N, d.C, d.H, d.W, d.K, d.P, d.Q, d.R, d.S, G, d.C / G, d.K / G,
             d.stride_h, d.stride_w, d.pad_h, d.pad_w, d.dil_h, d.dil_w};
}

template <typename T>
void fwd_impl(const ConvDesc& d, const Tensor4& x, const Tensor4& w, const void* bias, const Tensor4& y, bool relu,
              WeightPack* pack, int nth) {
  const Geo g = geo_of(d);
  const WV<T> wv{static_cast<const T*>(w.data), g.Kg * w.stride[0], w.stride[0], w.stride[1], w.stride[2],
                 w.stride[3]};
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    if (stage_nchw_forward(g, x, y)) {
      with_rows_shape<float>(g.Kg, StagedClRunner{g, x, wv, static_cast<const float*>(bias), y, relu, nth, pack});
      return;
    }
  }
#endif
  conv_run<T>(g, in_view<T>(x), In4<T>{}, wv, static_cast<const T*>(bias), out_view<T>(y), relu, nth, pack);
}

// ISA level of this translation unit, part of a pack's kind: the microkernel shapes differ per level,
// and tests switch levels at run time (set_cpu_isa).
#if defined(__AVX512F__)
constexpr int64_t kIsaLevel = 2;
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int64_t kIsaLevel = 1;
#else
constexpr int64_t kIsaLevel = 0;
#endif

enum PackFamily : int64_t { kPackWinograd = 1, kPackClPanels = 2, kPackPixPanels = 3 };

// PackInfo::kind: family, microkernel width (NR columns or MR rows), dtype, ISA level and groups (the
// same weight tensor used with another groups count packs differently), each in its own digits.
inline int64_t pack_kind(PackFamily family, int64_t width, DType dt, int64_t groups) {
  return family + 4 * (width + 256 * (dt + 2 * (kIsaLevel + 4 * groups)));
}

// conv_cl's pack for a problem: its size and width NR (the microkernel shape with_rows_shape picks).
template <typename T>
struct ClPackSize {
  const Geo& g;
  int64_t &count, &nr;
  template <int MR, int NV>
  void operator()() const {
    count = cl_weight_floats<T, NV>(g);
    nr = NV * Simd<T>::L;
  }
};

template <typename T>
PackInfo fwd_pack_info(const ConvDesc& d, DType dt, const Tensor4& x, const Tensor4& y) {
  Geo g = geo_of(d);
  if (g.N == 0 || g.P <= 0 || g.Q <= 0 || g.Kout == 0) return {};
  In4<T> xv = in_view<T>(x), mv{};
  Out4<T> yv = out_view<T>(y);
  constexpr int64_t floats_per = sizeof(T) / sizeof(float);
  const auto cl_pack = [&]() {
    int64_t count = 0, nr = 0;
    with_rows_shape<T>(g.Kg, ClPackSize<T>{g, count, nr});
    return PackInfo{count * floats_per, pack_kind(kPackClPanels, nr, dt, g.G)};
  };
#if defined(__AVX512F__)
  if (std::is_same_v<T, float> && stage_nchw_forward(g, x, y)) return cl_pack();
#endif
  flatten_pointwise(g, xv, mv, yv);
  const Route route = conv_route(g, xv, mv, yv);
  if (route == Route::kCl) return cl_pack();
  if (route == Route::kPixDirect || route == Route::kPix)
    return PackInfo{pix_weight_floats<kPixMR>(g) * floats_per, pack_kind(kPackPixPanels, kPixMR, dt, g.G)};
  return {};
}

// Taps r in [0, R) with (a + pad - r*dil) % stride == 0: r0 + j*step, count.
inline void residue_taps(int64_t a, int64_t pad, int64_t dil, int64_t stride, int64_t R, int64_t& r0, int64_t& step,
                         int64_t& count) {
  r0 = -1;
  count = 0;
  step = 1;
  for (int64_t r = 0; r < R; ++r) {
    if (((a + pad - r * dil) % stride + stride) % stride != 0) continue;
    if (r0 < 0)
      r0 = r;
    else if (count == 1)
      step = r - r0;
    ++count;
  }
}

// dy (any strides) copied into buf as a dense NCHW tensor (N*K*P*Q elements), with the ReLU mask of
// relu_y applied when it is given; returns the copy's Tensor4. The parallel units are rows (n, p): a
// channels_last dy row (Q*K elements) stays in L1 while its K output rows are written.
template <typename T>
Tensor4 dense_nchw_grad(const ConvDesc& d, const Tensor4& dy, const Tensor4* relu_y, T* buf, int nth) {
  const int64_t K = d.K, P = d.P, Q = d.Q;
  const In4<T> g = in_view<T>(dy), mk = relu_y ? in_view<T>(*relu_y) : In4<T>{};
#pragma omp parallel for num_threads(nth) schedule(static)
  for (int64_t np = 0; np < d.N * P; ++np) {
    const int64_t n = np / P, p = np % P;
    for (int64_t k = 0; k < K; ++k) {
      T* out = buf + ((n * K + k) * P + p) * Q;
      const T* gr = g.p + n * g.s0 + k * g.s1 + p * g.s2;
      if (relu_y) {
        const T* mr = mk.p + n * mk.s0 + k * mk.s1 + p * mk.s2;
        for (int64_t q = 0; q < Q; ++q) out[q] = masked(gr[q * g.s3], mr[q * mk.s3]);
      } else {
        for (int64_t q = 0; q < Q; ++q) out[q] = gr[q * g.s3];
      }
    }
  }
  Tensor4 t = dy;
  t.data = buf;
  t.stride = {K * P * Q, P * Q, Q, 1};
  return t;
}

template <typename T>
void dgrad_impl(const ConvDesc& d, const Tensor4& dy, const Tensor4& w, const Tensor4* relu_y, const Tensor4& dx,
                int nth) {
  if (d.N == 0) return;
  if (relu_y != nullptr && dy.stride[1] != 1) {
    // NCHW dy of the fused op: mask it in one streaming pass first. The NCHW paths would apply the
    // mask element by element while filling their windows: 13.4 ms against 3.9 ms unmasked for the
    // 1x1 64-channel bench layer (N=32, 32x32, 1 thread), 8.6 against 1.6 for the RGB stem.
    Buf<T> dy_masked(d.N * d.K * d.P * d.Q);
    dgrad_impl<T>(d, dense_nchw_grad<T>(d, dy, relu_y, dy_masked.p, nth), w, nullptr, dx, nth);
    return;
  }
  if (dx.stride[1] == 1 && d.C > 1 && 4 * d.C <= Simd<T>::L && d.groups == 1 && d.H * d.W > 1) {
    // Channels_last input gradient with few channels (C <= L/4: the gradient of an RGB input). Its
    // kernels vectorize over the C output channels, so 3 of 16 float lanes would work: RGB stem
    // (N=32, 32->3, 32x32, 2 threads) 1.8-2.1 ms against 0.84 for the NCHW kernels, which vectorize
    // over pixels. So dy is copied to NCHW (with the ReLU mask applied on the way), the NCHW kernels
    // run, and dx is copied back: two passes over dy's and dx's bytes. (A one-pixel dx is the same in
    // both layouts; excluding it also keeps the NCHW call below from coming back here.)
    const int64_t C = d.C, H = d.H, W = d.W;
    Buf<T> dy_nchw(d.N * d.K * d.P * d.Q), dx_nchw(d.N * C * H * W);
    Tensor4 dxn = dx;
    dxn.data = dx_nchw.p;
    dxn.stride = {C * H * W, H * W, W, 1};
    dgrad_impl<T>(d, dense_nchw_grad<T>(d, dy, relu_y, dy_nchw.p, nth), w, nullptr, dxn, nth);
    const Out4<T> o = out_view<T>(dx);
#pragma omp parallel for num_threads(nth) schedule(static)
    for (int64_t nh = 0; nh < d.N * H; ++nh) {
      const int64_t n = nh / H, h = nh % H;
      for (int64_t iw = 0; iw < W; ++iw)
        for (int64_t c = 0; c < C; ++c)
          o.p[n * o.s0 + c * o.s1 + h * o.s2 + iw * o.s3] = dx_nchw.p[((n * C + c) * H + h) * W + iw];
    }
    return;
  }
  const int64_t G = d.groups, Cg = d.C / G, Kg = d.K / G;
  const In4<T> dyv = in_view<T>(dy);
  const In4<T> mv = relu_y ? in_view<T>(*relu_y) : In4<T>{};
  const Out4<T> dxv = out_view<T>(dx);
  const T* wp = static_cast<const T*>(w.data);
  for (int64_t a = 0; a < std::min(d.stride_h, d.H); ++a)
    for (int64_t b = 0; b < std::min(d.stride_w, d.W); ++b) {
      const int64_t Hs = cdiv(d.H - a, d.stride_h), Ws = cdiv(d.W - b, d.stride_w);
      Out4<T> ys{dxv.p + a * dxv.s2 + b * dxv.s3, dxv.s0, dxv.s1, d.stride_h * dxv.s2, d.stride_w * dxv.s3};
      int64_t r0, rstep, Rn, s0, sstep, Sn;
      residue_taps(a, d.pad_h, d.dil_h, d.stride_h, d.R, r0, rstep, Rn);
      residue_taps(b, d.pad_w, d.dil_w, d.stride_w, d.S, s0, sstep, Sn);
      if (Rn == 0 || Sn == 0) {  // no tap reaches this sub-grid
#pragma omp parallel for num_threads(nth) schedule(static)
        for (int64_t nc = 0; nc < d.N * d.C; ++nc) {
          T* base = ys.p + (nc / d.C) * ys.s0 + (nc % d.C) * ys.s1;
          for (int64_t i = 0; i < Hs; ++i)
            for (int64_t j = 0; j < Ws; ++j) base[i * ys.s2 + j * ys.s3] = T(0);
        }
        continue;
      }
      // dx[n, c, a + sh*i, b + sw*j] = sum_{k, jr, js} w[k][c][r0 + jr*rstep][s0 + js*sstep]
      //                                 * dy[n, k, i + (a+ph-r0*dh)/sh - jr*(rstep*dh/sh), ...]
      Geo g{d.N, d.K, d.P, d.Q, d.C, Hs, Ws, Rn, Sn, G, Kg, Cg, 1, 1,
            -((a + d.pad_h - r0 * d.dil_h) / d.stride_h), -((b + d.pad_w - s0 * d.dil_w) / d.stride_w),
            -(rstep * d.dil_h / d.stride_h), -(sstep * d.dil_w / d.stride_w)};
      const WV<T> wv{wp + r0 * w.stride[2] + s0 * w.stride[3], Kg * w.stride[0], w.stride[1], w.stride[0],
                     rstep * w.stride[2], sstep * w.stride[3]};
      conv_run<T>(g, dyv, mv, wv, nullptr, ys, false, nth);
    }
}

template <typename T>
void wgrad_impl(const ConvDesc& d, const Tensor4& dy, const Tensor4& x, const Tensor4* relu_y, const Tensor4* dw,
                void* dbias, int nth) {
  const In4<T> mv = relu_y ? in_view<T>(*relu_y) : In4<T>{};
  if (d.N == 0) {
    if (dw) {
      const Out4<T> o = out_view<T>(*dw);
      for (int64_t k = 0; k < d.K; ++k)
        for (int64_t c = 0; c < d.C / d.groups; ++c)
          for (int64_t r = 0; r < d.R; ++r)
            for (int64_t s = 0; s < d.S; ++s) o.p[k * o.s0 + c * o.s1 + r * o.s2 + s * o.s3] = T(0);
    }
    if (dbias)
      for (int64_t k = 0; k < d.K; ++k) static_cast<T*>(dbias)[k] = T(0);
    return;
  }
  bool bias_done = false;
  if (dw && d.C == d.groups)
    bias_done = wgrad_depthwise<T>(d, in_view<T>(x), in_view<T>(dy), mv, out_view<T>(*dw), static_cast<T*>(dbias), nth);
  else if (dw && x.stride[1] == 1)
    wgrad_gemm_cl<T, kPixMR, kPixNV>(d, in_view<T>(x), in_view<T>(dy), mv, out_view<T>(*dw), nth);
  else if (dw)
    with_rows_shape<T>(d.K / d.groups, WgradRunner<T>{d, in_view<T>(x), in_view<T>(dy), mv, out_view<T>(*dw), nth});
  if (dbias && !bias_done) bias_grad<T>(d, in_view<T>(dy), mv, static_cast<T*>(dbias), nth);
}

}  // namespace

// 3x3 stride-1 float32 layers take the Winograd path (winograd_isa.cpp) when winograd_usable().
void conv2d_fwd(const ConvDesc& d, DType dt, const Tensor4& x, const Tensor4& w, const void* bias, const Tensor4& y,
                bool relu, WeightPack* pack, int nthreads) {
  const int nth = std::max(1, nthreads);
  if (winograd_usable(d, dt))
    winograd_fwd(d, x, w, static_cast<const float*>(bias), y, relu, pack, nth);
  else if (dt == kFloat32)
    fwd_impl<float>(d, x, w, bias, y, relu, pack, nth);
  else if (dt == kFloat64)
    fwd_impl<double>(d, x, w, bias, y, relu, pack, nth);
  else
    throw std::invalid_argument("conv2d_fwd: unsupported dtype");
}

void conv2d_dgrad(const ConvDesc& d, DType dt, const Tensor4& dy, const Tensor4& w, const Tensor4* relu_y,
                  const Tensor4& dx, WeightPack* pack, int nthreads) {
  const int nth = std::max(1, nthreads);
  if (winograd_usable(d, dt))
    winograd_dgrad(d, dy, w, relu_y, dx, pack, nth);
  else if (dt == kFloat32)
    dgrad_impl<float>(d, dy, w, relu_y, dx, nth);
  else if (dt == kFloat64)
    dgrad_impl<double>(d, dy, w, relu_y, dx, nth);
  else
    throw std::invalid_argument("conv2d_dgrad: unsupported dtype");
}

void conv2d_wgrad(const ConvDesc& d, DType dt, const Tensor4& dy, const Tensor4& x, const Tensor4* relu_y,
                  const Tensor4* dw, void* dbias, int nthreads) {
  const int nth = std::max(1, nthreads);
  if (dw != nullptr && (winograd_usable(d, dt) || wgrad_blocked_usable(d, dt))) {
    if (winograd_usable(d, dt)) {
      winograd_wgrad(d, dy, x, relu_y, *dw, nth);
    } else {
      wgrad_blocked(d, dy, x, relu_y, *dw, static_cast<float*>(dbias), nth);
      dbias = nullptr;  // summed on the way
    }
    dw = nullptr;  // the bias gradient (if still asked) comes from wgrad_impl
    if (dbias == nullptr) return;
  }
  if (dt == kFloat32)
    wgrad_impl<float>(d, dy, x, relu_y, dw, dbias, nth);
  else if (dt == kFloat64)
    wgrad_impl<double>(d, dy, x, relu_y, dw, dbias, nth);
  else
    throw std::invalid_argument("conv2d_wgrad: unsupported dtype");
}

int64_t conv2d_weight_pack_floats(const ConvDesc& d, DType dt, int pass) {
  return winograd_pack_floats(d, dt, pass == 0 ? WinogradPass::kForward : WinogradPass::kInputGrad);
}

PackInfo conv2d_fwd_pack_info(const ConvDesc& d, DType dt, const Tensor4& x, const Tensor4& y) {
  if (winograd_usable(d, dt))
    return PackInfo{winograd_pack_floats(d, dt, WinogradPass::kForward), pack_kind(kPackWinograd, 0, dt, d.groups)};
  if (dt == kFloat32) return fwd_pack_info<float>(d, dt, x, y);
  if (dt == kFloat64) return fwd_pack_info<double>(d, dt, x, y);
  throw std::invalid_argument("conv2d_fwd_pack_info: unsupported dtype");
}

}  // namespace FC_ISA
}  // namespace cpu
}  // namespace fastconv

// Shared pieces of the CPU convolution kernels (the conv2d_*_isa.cpp files): the generalized problem
// (Geo) and strided views the engines take, scratch buffers, cache sizes, the output-store rule
// (stream_output), the ReLU-mask select, tile and copy helpers, and the microkernel shapes per ISA level.
//
// Included by every conv2d_*_isa.cpp, which are compiled once per ISA level (setup.py), so everything
// lives in namespace fastconv::cpu::FC_ISA: a named namespace, because the kernels of one file are
// called from another (conv2d_paths.h) with these types in their signatures.
#pragma once

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

#include "cpu/epilogue.h"
#include "cpu/gemm_microkernel.h"
#include "cpu/kernels.h"

namespace fastconv {
namespace cpu {
namespace FC_ISA {

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
// next layer then reads the output from memory instead of the L3 cache. Rules, from the bench's layers
// (2 threads, fp32, N=32; ratios to torch in the bench harness, where each call's output lives until the
// next call returns):
// - an output within the L2 caches (< 2 MiB) is written plainly: it is read back from cache;
// - a layer with few multiply-adds per output element (C/groups*R*S < 64) streams: it is bound by
//   moving data, and its plain stores wait on the read-for-ownership with little work to overlap.
//   Intel Xeon (L3 480 MiB): RGB stem channels_last (27 per output) 0.25-0.26 ms streamed, against
//   0.30-0.32 plain.
//   A kernel that prefetches its output lines for writing a block ahead of the stores passes
//   few_macs_stream = false: the read-for-ownership then overlaps the work of the block before, and
//   plain stores win (the channels_last depthwise kernel, 9 per output: see dwcl_scratch_at);
// - other layers stream only an output of at least half the L3 cache, which would not stay cached for
//   the next layer anyway. On the Xeon, plain stores win for the 1x1 64->64 (8 MiB out; ratio 1.00-1.07
//   against 0.92-1.03 streamed).
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

// The GEMM kernels' weight panels: panel t of group gi holds output channels k0 = jr * width .. + width
// as the columns of a (reduction row) x width matrix, rows in (r, s, c) order (channels_last kernels) or
// (c, r, s) order (NCHW kernels), zeros past Kg. In training every step changes the weights, so a
// layer repacks them in each forward and input-gradient pass. Read in the weight's own order: element
// by element in panel order, a 160->960 1x1 channels_last weight (a column of w per panel row, one
// cache line per element) took 0.20 ms to pack, a third of the layer's forward at batch 8, 7x7.
// PanelRows holds each reduction row's offset in w; pack_columns walks one output channel's rows at a
// time (ordered rows read consecutive elements of its weight row).
template <typename T>
struct PanelRows {
  std::vector<int64_t> off;  // off[row]: c*sc + r*sr + s*ss of reduction row `row`
  PanelRows(const WV<T>& w, int64_t Cg, int64_t R, int64_t S, bool taps_outer) : off(Cg * R * S) {
    int64_t row = 0;
    if (taps_outer) {
      for (int64_t r = 0; r < R; ++r)
        for (int64_t s = 0; s < S; ++s)
          for (int64_t c = 0; c < Cg; ++c) off[row++] = c * w.sc + r * w.sr + s * w.ss;
    } else {
      for (int64_t c = 0; c < Cg; ++c)
        for (int64_t r = 0; r < R; ++r)
          for (int64_t s = 0; s < S; ++s) off[row++] = c * w.sc + r * w.sr + s * w.ss;
    }
  }
};

// panel[row * width + l] = col[l][off[row]] (0 where col[l] is null), a column at a time over blocks of
// rows that keep the panel's block in L1 (16 KiB at width 64, float) while every column writes it.
template <typename T>
void pack_columns(const T* const* col, int64_t width, const PanelRows<T>& rows, T* panel) {
  const int64_t nrow = (int64_t)rows.off.size();
  const int64_t* off = rows.off.data();
  const int64_t block = std::max<int64_t>(1, 16384 / (width * (int64_t)sizeof(T)));
  for (int64_t row0 = 0; row0 < nrow; row0 += block) {
    const int64_t row1 = std::min(nrow, row0 + block);
    for (int64_t l = 0; l < width; ++l) {
      T* dst = panel + l;
      if (const T* src = col[l])
        for (int64_t row = row0; row < row1; ++row) dst[row * width] = src[off[row]];
      else
        for (int64_t row = row0; row < row1; ++row) dst[row * width] = T(0);
    }
  }
}

// Output channels k0 .. k0 + nk of group gi as the panel's first nk columns (zeros up to width). When
// consecutive output channels are the closer ones in memory (the input gradient's transposed view of a
// channels_last or 1x1 weight: a panel row is a run of one weight row), a panel row at a time, copied
// as a run (a pointer per column cost ~1 ns per element: 0.4 ms for ShuffleNetV2's 464->1024 layer).
template <typename T>
void pack_panel(const WV<T>& w, const PanelRows<T>& rows, int64_t gi, int64_t k0, int64_t nk, int64_t width,
                T* panel) {
  const int64_t nrow = (int64_t)rows.off.size();
  const T* base = w.p + gi * w.sg + k0 * w.sk;
  if (w.sk <= std::min(std::min(w.sc, w.sr), w.ss) || nrow == 1) {
    for (int64_t row = 0; row < nrow; ++row) {
      const T* src = base + rows.off[row];
      T* dst = panel + row * width;
      if (w.sk == 1)
        std::memcpy(dst, src, nk * sizeof(T));
      else
        for (int64_t l = 0; l < nk; ++l) dst[l] = src[l * w.sk];
      for (int64_t l = nk; l < width; ++l) dst[l] = T(0);
    }
    return;
  }
  constexpr int64_t kMaxWidth = 128;
  if (width > kMaxWidth) throw std::logic_error("pack_panel: panel wider than 128 columns");
  const T* col[kMaxWidth];
  for (int64_t l = 0; l < width; ++l) col[l] = l < nk ? base + l * w.sk : nullptr;
  pack_columns<T>(col, width, rows, panel);
}

// torch's threshold_backward(grad, relu_out, 0): relu_out <= 0 ? 0 : grad (a NaN relu_out keeps grad).
// Written as a bit mask, not a select: about half of a ReLU mask is zeros in no pattern, and gcc
// compiles a select in the scalar layout-copy loops to a branch that mispredicts on every other
// element (RGB stem channels_last input gradient with ReLU, 2 threads, with a select: 3.55 ms against
// 1.50 without the mask).
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
// Microkernel shapes per ISA level (accumulators + B vectors + one broadcast fit the register file).
#if defined(__AVX512F__)
constexpr int kPixMR = 8, kPixNV = 3;  // 24 zmm accumulators, NR = 48 floats
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int kPixMR = 6, kPixNV = 2;  // 12 ymm accumulators
#else
constexpr int kPixMR = 4, kPixNV = 2;  // 8 xmm accumulators (no FMA: one temporary per product)
#endif

// ISA level of this translation unit (a weight pack's kind includes it: the microkernel shapes differ
// per level, and tests switch levels at run time with set_cpu_isa).
#if defined(__AVX512F__)
constexpr int64_t kIsaLevel = 2;
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int64_t kIsaLevel = 1;
#else
constexpr int64_t kIsaLevel = 0;
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
  // 17-24 channels (MobileNet's and EfficientNet's 24-channel layers) as one 3-vector panel instead of
  // two 2-vector ones (a quarter of the lanes idle). AMD EPYC Zen 3, 2 threads, channels_last, ms 6x2 ->
  // 4x3: 8x24x56x56 3x3 -> 24 forward 2.30-2.60 -> 1.57-1.62 (torch 1.45-1.8), 8x3x224x224 3x3 s2 -> 24
  // 1.73-2.25 -> 1.31-1.41, input gradient of 8x24x56x56 1x1 -> 144 1.66-2.45 -> 1.30-1.71; the 1x1
  // forwards to 24 channels within noise (8x144x56x56: 1.82-2.00 -> 1.74-2.00).
  if (Kg > 2 * L && Kg <= 3 * L)
    f.template operator()<4, 3>();
  else if (Kg > L)
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

// The bias gradient from per-image partial sums part[n][K]: db[k] = sum over n in order (from +0).
template <typename T>
void bias_grad_sum_images(const T* part, int64_t N, int64_t K, T* db) {
  for (int64_t k = 0; k < K; ++k) {
    T acc = T(0);
    for (int64_t n = 0; n < N; ++n) acc += part[n * K + k];
    db[k] = acc;
  }
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


inline Geo geo_of(const ConvDesc& d) {
  const int64_t G = d.groups;
  return Geo{d.N, d.C, d.H, d.W, d.K, d.P, d.Q, d.R, d.S, G, d.C / G, d.K / G,
             d.stride_h, d.stride_w, d.pad_h, d.pad_w, d.dil_h, d.dil_w};
}

}  // namespace FC_ISA
}  // namespace cpu
}  // namespace fastconv

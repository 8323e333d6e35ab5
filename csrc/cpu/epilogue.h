// The convolution kernels' epilogue after the bias: an activation and a residual input,
//     y = act(v [+ r]) [+ r]      (r added before the activation, or after it)
// applied to the output tile while it is in registers or L1 (epi_store_value, epi_fixup below).
// act is torch's definition of relu, relu6 (hardtanh 0..6), silu, hardswish, hardsigmoid, gelu (erf
// form) and sigmoid. r is the residual element at the output element's own position: the residual
// tensor has the output's strides (Python makes it so), so it sits `res` elements from y.
//
// The math is written with GCC vector extensions, which every ISA level's vector type (SSE2, AVX2,
// AVX-512) is, so one definition serves the three builds. float32 exp uses a degree-6 polynomial on
// [-ln2/2, ln2/2] after range reduction (relative error ~2e-7), gelu's erfc the Abramowitz-Stegun 7.1.26
// form (absolute error 1.5e-7); float64, for tests and gradcheck, calls the C library per lane.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "cpu/gemm_microkernel.h"

namespace fastconv {
namespace cpu {
namespace FC_ISA {

// Activation codes: the same numbers in fastconv/backends/cpu.py (_ACT_CODE).
enum Act : int {
  kActNone = 0,
  kActRelu = 1,
  kActRelu6 = 2,
  kActSilu = 3,
  kActHardswish = 4,
  kActHardsigmoid = 5,
  kActGelu = 6,
  kActSigmoid = 7,
};

struct Epi {
  Act act = kActNone;
  bool has_res = false;    // a residual input
  bool res_after = false;  // added after the activation (else before)
  int64_t res = 0;         // residual element - output element, in elements
  static Epi relu_only(bool relu) {
    Epi e;
    e.act = relu ? kActRelu : kActNone;
    return e;
  }
};

template <typename T>
struct ActMath {
  using V = typename Simd<T>::V;
  static constexpr int L = Simd<T>::L;
  static FC_INLINE V splat(T a) { return Simd<T>::set1(a); }
  // NaN passes through (a comparison with NaN is false), as torch's clamp.
  static FC_INLINE V clamp(V v, T lo, T hi) {
    v = v < splat(lo) ? splat(lo) : v;
    return v > splat(hi) ? splat(hi) : v;
  }
  static FC_INLINE V exp(V x) {
    if constexpr (sizeof(T) == 8) {
      for (int i = 0; i < L; ++i) x[i] = std::exp(x[i]);
      return x;
    } else {
      // Outside [-87, 88] the result is subnormal, or above 2^127, or overflows: exp(x/2)^2 rounds to it.
      const auto big = (x < -87.0f) | (x > 88.0f);
      V y = exp_normal(big ? x * 0.5f : x);
      y = big ? y * y : y;
      return x != x ? x : y;  // NaN stays NaN
    }
  }
  // exp on [-87, 88] (clamped there): 2^n * p(r), r = x - n ln2 in [-ln2/2, ln2/2].
  static FC_INLINE V exp_normal(V x) {
    typedef int32_t IV __attribute__((vector_size(sizeof(V))));
    const V xc = clamp(x, -87.0f, 88.0f);  // 2^n stays a normal float
    const V n = __builtin_convertvector(__builtin_convertvector(xc * 1.44269504f + (xc < 0 ? -0.5f : 0.5f), IV), V);
    const V r = xc - n * 0.693359375f + n * 2.12194440e-4f;  // xc - n*ln2 in two parts (Cody-Waite)
    V p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const IV bits = (__builtin_convertvector(n, IV) + 127) << 23;  // 2^n
    V two_n;
    __builtin_memcpy(&two_n, &bits, sizeof(V));
    return p * two_n;
  }
  // 1 / (1 + e^-v), as e^v / (1 + e^v) for v < 0 so that the subnormal tail survives; one division.
  static FC_INLINE V sigmoid(V v) {
    const V e = exp(v < 0 ? v : -v);
    const V d = splat(1) / (splat(1) + e);
    return v < 0 ? e * d : d;
  }
  // gelu(x) = x * Phi(x), Phi(x) = erfc(-x / sqrt 2) / 2: for x < 0 from erfc's tail directly (no
  // cancellation in 1 + erf), erfc(z) ~ t * p(t) * exp(-z^2) (Abramowitz-Stegun 7.1.26, z >= 0).
  static FC_INLINE V gelu(V x) {
    if constexpr (sizeof(T) == 8) {
      for (int i = 0; i < L; ++i) x[i] = x[i] * 0.5 * std::erfc(-x[i] * 0.70710678118654752440);
      return x;
    } else {
      const V z = (x < 0 ? -x : x) * 0.70710678118654752f;
      const V t = splat(1) / (splat(1) + z * 0.3275911f);
      V p = splat(1.061405429f);
      p = p * t - 1.453152027f;
      p = p * t + 1.421413741f;
      p = p * t - 0.284496736f;
      p = p * t + 0.254829592f;
      const V tail = p * t * exp(-z * z);  // erfc(z)
      return x * (x < 0 ? tail : splat(2) - tail) * 0.5f;
    }
  }
  template <Act A>
  static FC_INLINE V apply(V v) {
    if constexpr (A == kActRelu) return Simd<T>::relu(v);
    if constexpr (A == kActRelu6) return clamp(v, T(0), T(6));
    if constexpr (A == kActSilu) return v * sigmoid(v);
    if constexpr (A == kActHardswish) return v * clamp(v + T(3), T(0), T(6)) / T(6);
    if constexpr (A == kActHardsigmoid) return clamp(v + T(3), T(0), T(6)) / T(6);
    if constexpr (A == kActGelu) return gelu(v);
    if constexpr (A == kActSigmoid) return sigmoid(v);
    return v;
  }
};

// n lanes of p with lane stride ls (zeros past n).
template <typename T>
FC_INLINE typename Simd<T>::V load_lanes(const T* p, int64_t ls, int n) {
  using Sd = Simd<T>;
  if (ls == 1) return n == Sd::L ? Sd::load(p) : Sd::load_n(p, n);
  alignas(64) T tmp[Sd::L] = {};
  for (int l = 0; l < n; ++l) tmp[l] = p[l * ls];
  return Sd::load(tmp);
}

// How the kernels apply it. Their store loops store act(v) when the epilogue is plain (none, or ReLU
// without a residual: the code they always had, the same bits); otherwise they store v and, once a tile
// or a task is stored, call epi_fixup over what they stored, an out-of-line function on lines still in
// L1 / L2, with as long a run per call as the kernel's output block allows. A call inside the store loops
// would have the compiler keep the tile's accumulators around it: an inline general epilogue made the
// module 3.7x larger, an out-of-line one called per vector made the NCHW 1x1 64->256 layer (N=8, 56x56)
// 20% slower, and a call per depthwise output row of 7 values made SiLU cost 10x torch's silu_ pass.
FC_INLINE bool epi_plain(const Epi& e) { return !e.has_res && (e.act == kActNone || e.act == kActRelu); }

template <typename T>
FC_INLINE typename Simd<T>::V epi_store_value(const Epi& e, typename Simd<T>::V v) {
  return e.act == kActRelu && !e.has_res ? Simd<T>::relu(v) : v;
}

// y = act(y [+ r]) [+ r] on n <= L values at p, p + ls, ...
template <typename T, Act A>
FC_INLINE void epi_vector(const Epi& e, T* p, int64_t ls, int n) {
  using Sd = Simd<T>;
  typename Sd::V v = load_lanes<T>(p, ls, n);
  const typename Sd::V r = e.has_res ? load_lanes<T>(p + e.res, ls, n) : v;
  if (e.has_res && !e.res_after) v = Sd::add(v, r);
  v = ActMath<T>::template apply<A>(v);
  if (e.has_res && e.res_after) v = Sd::add(v, r);
  if (ls == 1 && n == Sd::L) return Sd::store(p, v);
  if (ls == 1) return Sd::store_n(p, v, n);
  alignas(64) T tmp[Sd::L];
  Sd::store(tmp, v);
  for (int l = 0; l < n; ++l) p[l * ls] = tmp[l];
}

template <typename T, Act A>
FC_INLINE void epi_block(const Epi& e, T* p, int64_t ls, int64_t n, int64_t rows, int64_t rs) {
  constexpr int L = Simd<T>::L;
  for (int64_t r = 0; r < rows; ++r, p += rs)
    for (int64_t j = 0; j < n; j += L) epi_vector<T, A>(e, p + j * ls, ls, (int)std::min<int64_t>(L, n - j));
}

// The general epilogue in place on `rows` runs of n values: value j of run r at p + r*rs + j*ls.
template <typename T>
__attribute__((noinline)) void epi_fixup(Epi e, T* p, int64_t ls, int64_t n, int64_t rows = 1, int64_t rs = 0) {
  if (rows > 1 && ls == 1 && rs == n) {  // adjacent runs: one run
    n *= rows;
    rows = 1;
  }
  switch (e.act) {
    case kActRelu: return epi_block<T, kActRelu>(e, p, ls, n, rows, rs);
    case kActRelu6: return epi_block<T, kActRelu6>(e, p, ls, n, rows, rs);
    case kActSilu: return epi_block<T, kActSilu>(e, p, ls, n, rows, rs);
    case kActHardswish: return epi_block<T, kActHardswish>(e, p, ls, n, rows, rs);
    case kActHardsigmoid: return epi_block<T, kActHardsigmoid>(e, p, ls, n, rows, rs);
    case kActGelu: return epi_block<T, kActGelu>(e, p, ls, n, rows, rs);
    case kActSigmoid: return epi_block<T, kActSigmoid>(e, p, ls, n, rows, rs);
    default: return epi_block<T, kActNone>(e, p, ls, n, rows, rs);
  }
}

}  // namespace FC_ISA
}  // namespace cpu
}  // namespace fastconv

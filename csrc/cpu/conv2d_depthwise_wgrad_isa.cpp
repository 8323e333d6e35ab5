// Weight gradient of depthwise layers (Cg == 1):
//     dw[k][0][r][s] = sum_{n,p,q} dy[n,k,p,q] * x[n, k/Kg, ih, iw],
// with the fused ReLU's mask on dy; channels_last 3x3 layers carry the bias gradient along.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/conv2d_paths.h"

namespace fastconv {
namespace cpu {
namespace FC_ISA {
namespace {

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

}  // namespace

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
  // scalar loop takes 9.6 of the 20.6 ms of a 128-channel N=32 32x32 NCHW conv2d_relu backward).
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

#define FC_INSTANTIATE(T) \
  template bool wgrad_depthwise<T>(const ConvDesc&, In4<T>, In4<T>, In4<T>, Out4<T>, T*, int);
FC_FOR_FLOAT_TYPES(FC_INSTANTIATE)
#undef FC_INSTANTIATE

}  // namespace FC_ISA
}  // namespace cpu
}  // namespace fastconv

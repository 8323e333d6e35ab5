// conv2d forward of depthwise layers (one input channel per group: Cg == 1, any multiplier Kg) in
// any layout that is not channels_last depthwise (conv2d_depthwise_nhwc_isa.cpp takes that): direct
// loops over a zero-padded window of input rows, vectors along the output columns. Also runs dgrad's
// stride-1 correlations of such layers (conv2d_isa.cpp: conv_run).
#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/conv2d_paths.h"

namespace fastconv {
namespace cpu {
namespace FC_ISA {
namespace {

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
                              const typename Simd<T>::V* wv, typename Simd<T>::V bv, bool has_bias, const Epi& ep,
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
    T* o = out + i * ys2;
    FC_UNROLL for (int v = 0; v < NV; ++v) {
      if (has_bias) acc[i][v] = Sd::add(acc[i][v], bv);
      acc[i][v] = epi_store_value<T>(ep, acc[i][v]);
    }
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
                            typename Simd<T>::V bv, bool hb, const Epi& ep, T* out, int64_t ys2, int64_t ys3, int nl) {
  constexpr int NRW = NV <= 2 ? 4 : 2;
  const int64_t pstep = sh * LD;
  const T* rb = buf - rlo * LD;
  int64_t p = 0;
  for (; p + NRW <= np; p += NRW)
    dw_plane_chunk<T, RT, ST, NRW, NV>(rb + p * pstep, pstep, rstep, Rn, Sn, soff, wv, bv, hb, ep, out + p * ys2,
                                       ys2, ys3, nl);
  for (; p < np; ++p)
    dw_plane_chunk<T, RT, ST, 1, NV>(rb + p * pstep, pstep, rstep, Rn, Sn, soff, wv, bv, hb, ep, out + p * ys2, ys2,
                                     ys3, nl);
}

template <typename T, int RT, int ST>
void dw_plane_rows(const Geo& g, const T* buf, int64_t LD, int64_t rlo, int64_t p0, int64_t p1,
                   const int64_t* soff_in, const T* wt, typename Simd<T>::V* wscratch, T bias_v, bool hb, const Epi& ep,
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
    dw_plane_col<T, RT, ST, 4>(buf + q0, LD, g.sh, rstep, rlo, np, R, S, soff, wv, bv, hb, ep, out0 + q0 * ys3, ys2,
                               ys3, L);
  if (rem > 0) {
    const T* b = buf + q0;
    T* o = out0 + q0 * ys3;
    if (nv == 1)
      dw_plane_col<T, RT, ST, 1>(b, LD, g.sh, rstep, rlo, np, R, S, soff, wv, bv, hb, ep, o, ys2, ys3, nl);
    else if (nv == 2)
      dw_plane_col<T, RT, ST, 2>(b, LD, g.sh, rstep, rlo, np, R, S, soff, wv, bv, hb, ep, o, ys2, ys3, nl);
    else if (nv == 3)
      dw_plane_col<T, RT, ST, 3>(b, LD, g.sh, rstep, rlo, np, R, S, soff, wv, bv, hb, ep, o, ys2, ys3, nl);
    else
      dw_plane_col<T, RT, ST, 4>(b, LD, g.sh, rstep, rlo, np, R, S, soff, wv, bv, hb, ep, o, ys2, ys3, nl);
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


}  // namespace

// Any layout: tasks are (n, g, block of output rows). The block's input rows are copied into a
// zero-padded window (L1/L2 sized; mask applied there) with the columns split by phase modulo the
// stride (phase ph holds padded columns ph, ph+sw, ...), so every tap (r, s) reads a contiguous run
// for a run of output columns. The window is zeroed once per thread: the padding columns sit at the
// same places for every task, so a task only writes the valid columns (and zeroes padding rows).
// Each output row of each of the group's Kg channels is computed in vector registers (vectors along
// Q, up to 4 per chunk; 3x3 and 5x5 taps unrolled with the weights in registers) and stored with
// bias/ReLU.
template <typename T>
void conv_direct_plane(const Geo& g, In4<T> x, In4<T> m, WV<T> w, const T* bias, Out4<T> y, const Epi& ep, int nth) {
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
          dw_plane_rows<T, 3, 3>(g, buf, LD, rlo, p0, p1, soff.data(), wt, wsv, bv, hb, ep, out0, y.s2, y.s3);
        else if (sz3 == 5)
          dw_plane_rows<T, 5, 5>(g, buf, LD, rlo, p0, p1, soff.data(), wt, wsv, bv, hb, ep, out0, y.s2, y.s3);
        else
          dw_plane_rows<T, 0, 0>(g, buf, LD, rlo, p0, p1, soff.data(), wt, wsv, bv, hb, ep, out0, y.s2, y.s3);
        if (!epi_plain(ep)) epi_fixup<T>(ep, out0, y.s3, g.Q, p1 - p0, y.s2);  // the task's rows of this channel
      }
    }
  }
}

#define FC_INSTANTIATE(T) \
  template void conv_direct_plane<T>(const Geo&, In4<T>, In4<T>, WV<T>, const T*, Out4<T>, const Epi&, int);
FC_FOR_FLOAT_TYPES(FC_INSTANTIATE)
#undef FC_INSTANTIATE

}  // namespace FC_ISA
}  // namespace cpu
}  // namespace fastconv

// conv2d input gradient (dgrad) as its own implicit GEMM, in gather form (no atomics):
//
//   dx[n][g*Cg + c][h][w] = sum_{k, r, s} dy'[n][g*Kg + k][p][q] * w[g*Kg + k][c][r][s]
//       over the taps with  h + ph - r*dh = p*sh,  w + pw - s*dw = q*sw,  0 <= p < P, 0 <= q < Q,
//   dy' = (relu_y <= 0 ? 0 : dy) for the fused conv+ReLU, torch's threshold_backward (a NaN output
//   passes its gradient), applied as dy is gathered.
//
// (The forward output y[p][q] reads x[p*sh - ph + r*dh][...]; dx is therefore the transposed
// convolution of dy'. Each input pixel gathers from exactly the outputs that read it, so every dx
// element is written once by one thread, deterministically.)
//
// Stride phases (one launch each). With stride > 1, whether a tap r reaches pixel h depends only on
// h mod sh: the taps with r*dh = h + ph (mod sh). So the pixels are split into sh*sw phases
// (h = ph_h + hh*sh, w = ph_w + ww*sw); within a phase the valid taps are r = r0 + jr*rstep
// (rstep = sh / gcd(sh, dh)), and p = hh + base_p - jr*dp with dp = rstep*dh/sh (an integer). Each
// phase is a dense implicit GEMM with no wasted (always-zero) taps: M = N * Hp * Wp (pixels of the
// phase), N-dim = Cg (input channels), reduction = Kg * nR * nS. A phase with no valid tap (possible
// with dilation, or stride > R) has an empty reduction and writes zeros. For stride 1 there is one
// phase and all R*S taps. The launcher computes the phase constants (kernel parameters: no
// registers spent on them in the main loop).
//
// Tiling as in conv2d_igemm.cuh (128x128x8 / 128x64x8 with 8x8 micro-tiles, fp64 64x64x8 with 4x4).
// Layout (CL = channels-last dy): reduction ordered (k, jr, js) for NCHW (js fastest: consecutive s of
// a KCRS weight row) and (jr, js, k) for NHWC (k fastest: 4 consecutive channels of dy per thread).
// dy is gathered with consecutive threads on consecutive pixels of the phase; w with consecutive
// threads on consecutive reduction indices (NCHW) or on consecutive c (NHWC, KRSC weights); the
// epilogue stores along w (NCHW) or along c (NHWC).
#pragma once

#include "common.cuh"
#include "conv2d_fwd.cuh"
#include "conv2d_igemm.cuh"

namespace fc {

template <class T>
struct Conv2dDgradParams {
  ConvGeom g;
  Tensor4 dy, w, dx, ry;   // ry: the fused op's output relu(y), same sizes as dy (only read when MASK)
  const T* dyp;
  const T* wp;
  const T* ryp;
  T* dxp;
  index_t m_tiles;         // blocks along this phase's M = N * Hp * Wp
  int n_tiles;             // blocks along Cg
  index_t Mp;
  int ph_h, ph_w, Hp, Wp;  // the phase and its pixel counts
  int r0, s0;              // first taps reaching the phase (any value when ktiles == 0)
  int rstep_h, rstep_w;    // tap steps within a phase: sh / gcd(sh, dh), sw / gcd(sw, dw)
  int dp_h, dp_w;          // output steps per tap step: rstep * dil / stride
  int base_p, base_q;      // output coordinate of tap (r0, s0) for the phase's first pixel
  int ktiles;              // ceil(Kg * nR * nS / BK); 0: no tap reaches the phase (dx = 0 there)
  igemm::Radix3 kr;        // reduction digits (k, jr, js) or (jr, js, k), step BK
};

// A operand: dy' at the output pixel that tap (jr, js) of input pixel m (outer) reads, channel k.
template <class T, bool CL, bool MASK>
struct DgradDyGather {
  using AccT = typename Acc<T>::type;
  static constexpr bool kAffineOuter = false;
  struct Outer {
    index_t base, mbase;   // n * dy.sn + g*Kg * dy.sc, and the same in relu_y
    int p0, q0;            // output coordinate of tap (0, 0) (kOutside: m out of range)
  };
  const T* dy;
  const T* ry;
  Tensor4 t, tr;
  igemm::Radix3 kr;
  index_t Mp, kbase;
  int P, Q, Hp, Wp, base_p, base_q, dp, dq;

  __device__ __forceinline__ Outer outer(index_t m) const {
    Outer o;
    if (m < Mp) {
      const igemm::Coord3 px = igemm::coord3(m, Hp, Wp);   // (n, hh, ww)
      o.base = px.n * t.sn + kbase * t.sc;
      o.mbase = MASK ? px.n * tr.sn + kbase * tr.sc : 0;
      o.p0 = px.y + base_p;
      o.q0 = px.x + base_q;
    } else {
      o.base = o.mbase = 0;
      o.p0 = o.q0 = igemm::kOutside;
    }
    return o;
  }
  __device__ __forceinline__ AccT load(const Outer& o, const igemm::Digits3& d) const {
    const int k = CL ? d.d2 : d.d0, jr = CL ? d.d0 : d.d1, js = CL ? d.d1 : d.d2;
    const int pp = o.p0 - jr * dp, qq = o.q0 - js * dq;
    const bool ok = d.d0 < kr.d0_end && static_cast<unsigned>(pp) < static_cast<unsigned>(P) &&
                    static_cast<unsigned>(qq) < static_cast<unsigned>(Q);
    const index_t off = ok ? o.base + k * t.sc + pp * t.sh + qq * t.sw : 0;
    AccT v = AccT(0);
    if (ok) {
      v = to_acc(__ldg(dy + off));
      if (MASK && to_acc(__ldg(ry + o.mbase + k * tr.sc + pp * tr.sh + qq * tr.sw)) <= AccT(0)) v = AccT(0);
    }
    return v;
  }
};

// B operand: w[g*Kg + k][c][r0 + jr*rstep_h][s0 + js*rstep_w] for input channel c (outer).
template <class T, bool CL>
struct DgradWeightGather {
  using AccT = typename Acc<T>::type;
  static constexpr bool kAffineOuter = true;
  struct Outer {
    index_t base;   // c * w.sc
    int c;
  };
  const T* w;
  Tensor4 t;
  igemm::Radix3 kr;
  index_t kbase;
  int Cg, r0, s0, rstep_h, rstep_w;

  __device__ __forceinline__ Outer outer(index_t c) const {
    Outer o;
    o.c = static_cast<int>(c < Cg ? c : Cg);
    o.base = o.c * t.sc;
    return o;
  }
  __device__ __forceinline__ Outer outer_plus(const Outer& o, int j) const {
    return Outer{o.base + j * t.sc, o.c + j};
  }
  __device__ __forceinline__ AccT load(const Outer& o, const igemm::Digits3& d) const {
    const int k = CL ? d.d2 : d.d0, jr = CL ? d.d0 : d.d1, js = CL ? d.d1 : d.d2;
    const bool ok = o.c < Cg && d.d0 < kr.d0_end;
    const index_t off = ok ? (kbase + k) * t.sn + o.base + (r0 + jr * rstep_h) * t.sh + (s0 + js * rstep_w) * t.sw : 0;
    AccT v = AccT(0);
    if (ok) v = to_acc(__ldg(w + off));
    return v;
  }
};

// One block per (m tile, c tile, group) of one phase, m tile fastest.
template <class T, int TILE, bool CL, bool MASK>
__global__ void __launch_bounds__(igemm::TileOf<TILE>::type::NT, igemm::TileOf<TILE>::type::MIN_BLOCKS)
conv2d_dgrad_kernel(const Conv2dDgradParams<T> p) {
  using Cfg = typename igemm::TileOf<TILE>::type;
  using AccT = typename Acc<T>::type;
  constexpr bool MFAST = !CL;
  __align__(16) __shared__ AccT smA[2 * Cfg::BK * Cfg::LDA];
  __align__(16) __shared__ AccT smB[2 * Cfg::BK * Cfg::LDB];
  const ConvGeom& g = p.g;

  const unsigned bid = blockIdx.x;   // < 2^31: 32-bit block decode
  const index_t mt = bid % static_cast<unsigned>(p.m_tiles);
  const unsigned rest = bid / static_cast<unsigned>(p.m_tiles);
  const int nt = static_cast<int>(rest % static_cast<unsigned>(p.n_tiles));
  const int grp = static_cast<int>(rest / static_cast<unsigned>(p.n_tiles));
  const index_t m0 = mt * Cfg::BM;

  DgradDyGather<T, CL, MASK> ga;
  ga.dy = p.dyp; ga.ry = p.ryp; ga.t = p.dy; ga.tr = p.ry; ga.kr = p.kr; ga.Mp = p.Mp;
  ga.kbase = static_cast<index_t>(grp) * g.Kg; ga.P = g.P; ga.Q = g.Q; ga.Hp = p.Hp; ga.Wp = p.Wp;
  ga.base_p = p.base_p; ga.base_q = p.base_q; ga.dp = p.dp_h; ga.dq = p.dp_w;
  DgradWeightGather<T, CL> gw;
  gw.w = p.wp; gw.t = p.w; gw.kr = p.kr; gw.kbase = static_cast<index_t>(grp) * g.Kg; gw.Cg = g.Cg;
  gw.r0 = p.r0; gw.s0 = p.s0; gw.rstep_h = p.rstep_h; gw.rstep_w = p.rstep_w;

  const index_t n0 = static_cast<index_t>(nt) * Cfg::BN;
  AccT acc[Cfg::TM][Cfg::TN];
  igemm::mainloop<Cfg, /*A_KFAST=*/false, /*B_KFAST=*/!CL, MFAST>(ga, gw, m0, n0, 0, p.ktiles, acc, smA, smB);

  const igemm::ThreadPos<Cfg, MFAST> pos(threadIdx.x);
  index_t xbase[Cfg::TM];   // dx offset of each row (pixel of the phase), -1 past Mp
#pragma unroll
  for (int c = 0; c < Cfg::TM; c += 4) {   // 4 consecutive pixels per chunk: one decode each
    const index_t m = m0 + pos.row(c);
    igemm::Coord3 px = igemm::coord3(m, p.Hp, p.Wp);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      xbase[c + i] = m + i < p.Mp ? px.n * p.dx.sn + static_cast<index_t>(p.ph_h + px.y * g.stride_h) * p.dx.sh +
                                       static_cast<index_t>(p.ph_w + px.x * g.stride_w) * p.dx.sw
                                 : -1;
      igemm::coord3_next(px, p.Hp, p.Wp);
    }
  }
#pragma unroll
  for (int j = 0; j < Cfg::TN; ++j) {
    const index_t cc = n0 + pos.col(j);
    if (cc >= g.Cg) continue;
    const index_t c = static_cast<index_t>(grp) * g.Cg + cc;
#pragma unroll
    for (int i = 0; i < Cfg::TM; ++i) {
      if (xbase[i] < 0) continue;
      p.dxp[xbase[i] + c * p.dx.sc] = from_acc<T>(acc[i][j]);
    }
  }
}

}  // namespace fc

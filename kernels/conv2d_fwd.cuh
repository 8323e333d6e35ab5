// conv2d forward as an implicit GEMM, bias and ReLU fused in the epilogue.
//
//   y[n][k][p][q] = act( bias[k] + sum_{c, r, s} x[n][g*Cg + c][p*sh - ph + r*dh][q*sw - pw + s*dw]
//                                               * w[k][c][r][s] ),      g = k / Kg,  act = ReLU or identity
//
// Per group g: GEMM with M = N*P*Q (output pixels), N-dim = Kg = K/groups (output channels),
// reduction = Cg*R*S (input channel x filter tap). A[m][kk] is gathered from x (zero outside the
// image: padding), B[kk][k] from w; the engine in conv2d_igemm.cuh does the tiling (128x128x8 or
// 128x64x8 blocks with 8x8 micro-tiles for fp32/fp16/bf16, 64x64x8 with 4x4 for fp64; the launcher
// picks 128x64 when Kg <= 64; see conv2d_igemm.cuh for the numbers). Accumulation in fp32 (fp64 for
// fp64); fp16/bf16 are widened when they are staged in shared memory and rounded once at the store.
//
// Layout (CL = channels-last input): the reduction index is ordered (c, r, s) for NCHW and (r, s, c)
// for NHWC, so that a thread's run of consecutive reduction indices is adjacent in memory where it can
// be (s along a row of x; c in NHWC, 4 channels = 16 bytes per thread). x is gathered with consecutive
// threads on consecutive output pixels (contiguous along q for NCHW), w with consecutive threads on
// consecutive reduction indices (contiguous for KCRS weights with NCHW, KRSC with NHWC); the epilogue
// stores along q (NCHW: threads on consecutive pixels) or along k (NHWC: threads on consecutive
// channels). Every address goes through the tensors' strides, so both paths are correct for any
// layout; CL only decides which is coalesced.
// Offsets are int64 (fc::index_t); per-dimension coordinates are int (the launcher checks the sizes).
#pragma once

#include "common.cuh"
#include "conv2d_igemm.cuh"

namespace fc {

// Geometry of one convolution, as the kernels read it (int: the launcher checks every size < 2^28).
struct ConvGeom {
  int N, C, H, W, K, R, S, P, Q;
  int stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups;
  int Cg, Kg;   // C / groups, K / groups
};

template <class T>
struct Conv2dFwdParams {
  ConvGeom g;
  Tensor4 x, w, y;         // w as (K, Cg, R, S)
  const T* xp;
  const T* wp;
  const T* bias;           // K values, or null
  T* yp;
  index_t M;               // N * P * Q
  index_t m_tiles;         // blocks along M
  int n_tiles;             // blocks along Kg
  igemm::Radix3 kr;        // reduction (c, r, s) or (r, s, c), step BK
};

// A operand: the input patch of output pixel m (outer) at reduction index (c, r, s).
template <class T, bool CL>
struct FwdInputGather {
  using AccT = typename Acc<T>::type;
  static constexpr bool kAffineOuter = false;
  struct Outer {
    index_t base;   // n * x.sn + g * Cg * x.sc
    int h0, w0;     // top-left input coordinate of the receptive field (kOutside: m out of range)
  };
  const T* x;
  Tensor4 t;
  igemm::Radix3 kr;
  index_t M, cbase;
  int H, W, P, Q, sh, sw, ph, pw, dh, dw;

  __device__ __forceinline__ Outer outer(index_t m) const {
    Outer o;
    if (m < M) {
      const igemm::Coord3 npq = igemm::coord3(m, P, Q);
      o.base = npq.n * t.sn + cbase;
      o.h0 = npq.y * sh - ph;
      o.w0 = npq.x * sw - pw;
    } else {
      o.base = 0;
      o.h0 = igemm::kOutside;
      o.w0 = igemm::kOutside;
    }
    return o;
  }
  __device__ __forceinline__ AccT load(const Outer& o, const igemm::Digits3& d) const {
    const int c = CL ? d.d2 : d.d0, r = CL ? d.d0 : d.d1, s = CL ? d.d1 : d.d2;
    const int h = o.h0 + r * dh, w = o.w0 + s * dw;
    const bool ok = d.d0 < kr.d0_end && static_cast<unsigned>(h) < static_cast<unsigned>(H) &&
                    static_cast<unsigned>(w) < static_cast<unsigned>(W);
    const index_t off = ok ? o.base + c * t.sc + h * t.sh + w * t.sw : 0;   // masked: a safe address
    AccT v = AccT(0);
    if (ok) v = to_acc(__ldg(x + off));
    return v;
  }
};

// B operand: weight w[g*Kg + k][c][r][s] of output channel k (outer) at reduction index (c, r, s).
template <class T, bool CL>
struct FwdWeightGather {
  using AccT = typename Acc<T>::type;
  static constexpr bool kAffineOuter = true;
  struct Outer {
    index_t base;   // (g*Kg + k) * w.sn
    int k;
  };
  const T* w;
  Tensor4 t;
  igemm::Radix3 kr;
  index_t kbase;
  int Kg;

  __device__ __forceinline__ Outer outer(index_t k) const {
    Outer o;
    o.k = static_cast<int>(k < Kg ? k : Kg);
    o.base = (kbase + o.k) * t.sn;
    return o;
  }
  __device__ __forceinline__ Outer outer_plus(const Outer& o, int j) const {
    return Outer{o.base + j * t.sn, o.k + j};
  }
  __device__ __forceinline__ AccT load(const Outer& o, const igemm::Digits3& d) const {
    const int c = CL ? d.d2 : d.d0, r = CL ? d.d0 : d.d1, s = CL ? d.d1 : d.d2;
    const bool ok = o.k < Kg && d.d0 < kr.d0_end;
    const index_t off = ok ? o.base + c * t.sc + r * t.sh + s * t.sw : 0;
    AccT v = AccT(0);
    if (ok) v = to_acc(__ldg(w + off));
    return v;
  }
};

// One block per (m tile, k tile, group), m tile fastest: the blocks that run together share the
// weight tile. 1-D grid (x allows 2^31 - 1 blocks; y and z only 65535).
template <class T, int TILE, bool CL, bool HAS_BIAS, bool FUSE_RELU>
__global__ void __launch_bounds__(igemm::TileOf<TILE>::type::NT, igemm::TileOf<TILE>::type::MIN_BLOCKS)
conv2d_fwd_kernel(const Conv2dFwdParams<T> p) {
  using Cfg = typename igemm::TileOf<TILE>::type;
  using AccT = typename Acc<T>::type;
  constexpr bool MFAST = !CL;
  __align__(16) __shared__ AccT smA[2 * Cfg::BK * Cfg::LDA];
  __align__(16) __shared__ AccT smB[2 * Cfg::BK * Cfg::LDB];

  const unsigned bid = blockIdx.x;   // < 2^31: 32-bit block decode
  const index_t mt = bid % static_cast<unsigned>(p.m_tiles);
  const unsigned rest = bid / static_cast<unsigned>(p.m_tiles);
  const int nt = static_cast<int>(rest % static_cast<unsigned>(p.n_tiles));
  const int grp = static_cast<int>(rest / static_cast<unsigned>(p.n_tiles));
  const ConvGeom& g = p.g;

  FwdInputGather<T, CL> ga;
  ga.x = p.xp; ga.t = p.x; ga.kr = p.kr; ga.M = p.M; ga.cbase = static_cast<index_t>(grp) * g.Cg * p.x.sc;
  ga.H = g.H; ga.W = g.W; ga.P = g.P; ga.Q = g.Q; ga.sh = g.stride_h; ga.sw = g.stride_w;
  ga.ph = g.pad_h; ga.pw = g.pad_w; ga.dh = g.dil_h; ga.dw = g.dil_w;
  FwdWeightGather<T, CL> gw;
  gw.w = p.wp; gw.t = p.w; gw.kr = p.kr; gw.kbase = static_cast<index_t>(grp) * g.Kg; gw.Kg = g.Kg;

  const index_t m0 = mt * Cfg::BM;
  const index_t n0 = static_cast<index_t>(nt) * Cfg::BN;
  const index_t red = static_cast<index_t>(g.Cg) * g.R * g.S;
  const int ktiles = static_cast<int>((red + Cfg::BK - 1) / Cfg::BK);

  AccT acc[Cfg::TM][Cfg::TN];
  igemm::mainloop<Cfg, /*A_KFAST=*/false, /*B_KFAST=*/true, MFAST>(ga, gw, m0, n0, 0, ktiles, acc, smA, smB);

  // Epilogue: + bias, ReLU, one rounding to T, strided store.
  const igemm::ThreadPos<Cfg, MFAST> pos(threadIdx.x);
  index_t ybase[Cfg::TM];   // output offset of each row (pixel), -1 past M
#pragma unroll
  for (int c = 0; c < Cfg::TM; c += 4) {   // 4 consecutive pixels per chunk: one decode each
    const index_t m = m0 + pos.row(c);
    igemm::Coord3 npq = igemm::coord3(m, g.P, g.Q);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      ybase[c + i] = m + i < p.M ? npq.n * p.y.sn + npq.y * p.y.sh + npq.x * p.y.sw : -1;
      igemm::coord3_next(npq, g.P, g.Q);
    }
  }
#pragma unroll
  for (int j = 0; j < Cfg::TN; ++j) {
    const index_t kk = n0 + pos.col(j);
    if (kk >= g.Kg) continue;
    const index_t k = static_cast<index_t>(grp) * g.Kg + kk;
    AccT b = AccT(0);
    if (HAS_BIAS) b = to_acc(__ldg(p.bias + k));
#pragma unroll
    for (int i = 0; i < Cfg::TM; ++i) {
      if (ybase[i] < 0) continue;
      AccT v = acc[i][j] + b;
      if (FUSE_RELU) v = v < AccT(0) ? AccT(0) : v;   // NaN stays NaN, as torch.relu
      p.yp[ybase[i] + k * p.y.sc] = from_acc<T>(v);
    }
  }
}

}  // namespace fc

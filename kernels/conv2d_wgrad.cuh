// conv2d weight gradient (wgrad) and bias gradient, deterministic (no floating-point atomics):
//
//   dw[g*Kg + k][c][r][s] = sum_{n, p, q} dy'[n][g*Kg + k][p][q] * x[n][g*Cg + c][p*sh - ph + r*dh][q*sw - pw + s*dw]
//   db[k]                 = sum_{n, p, q} dy'[n][k][p][q],
//   dy' = (relu_y <= 0 ? 0 : dy) for conv+ReLU (torch's threshold_backward: a NaN output passes its gradient)
//
// dw as an implicit GEMM per group, written transposed: M = Cg*R*S (filter position (c, r, s)),
// N-dim = Kg (output channels), reduction = N*P*Q (output pixels). So the tile choice follows Kg as in
// the forward pass (128x128x8 when Kg > 64, else 128x64x8; fp64 64x64x8), and the long reduction is
// what gets split: the N*P*Q range is cut into `splits` chunks of whole k-tiles; block (tile, split)
// writes its partial sums to workspace[split][k][crs] (fp32, fp64 for fp64) and
// conv2d_wgrad_reduce_kernel adds the splits in a fixed order (split 0, 1, ...) and rounds once into
// dw. Every sum has a fixed shape and order, so dw is bitwise identical run to run. With one split the
// GEMM stores straight into dw.
//
// Filter positions are ordered (c, r, s) for NCHW x and (r, s, c) for NHWC, the order of the natural
// weight layout (KCRS / KRSC), so the epilogue's rows (consecutive threads on consecutive filter
// positions) are contiguous in dw and in the workspace. x is gathered with consecutive threads on
// consecutive filter positions, each taking a run of 4 consecutive output pixels (16 contiguous bytes
// along q for NCHW, stride 1); dy with consecutive threads on consecutive pixels (NCHW) or channels
// (NHWC).
//
// db: conv2d_channel_reduce_kernel (also the depthwise wgrad, conv2d_depthwise.cuh): a block of
// CB x PY threads (CB = 32 channels x PY = 8 pixel lanes for NHWC: a warp reads 32 adjacent channels;
// CB = 1 x 256 pixel lanes for NCHW: a warp reads 32 adjacent pixels of one channel) where each
// thread sums a fixed strided subset of the pixels, then a fixed-shape tree in shared memory.
#pragma once

#include "common.cuh"
#include "conv2d_fwd.cuh"
#include "conv2d_igemm.cuh"

namespace fc {

template <class T>
struct Conv2dWgradParams {
  using AccT = typename Acc<T>::type;
  ConvGeom g;
  Tensor4 dy, x, ry, dw;    // dw as (K, Cg, R, S)
  const T* dyp;
  const T* xp;
  const T* ryp;
  T* dwp;
  AccT* ws;                 // [splits][K][Cg*R*S] partial sums, or null (splits == 1: store into dw)
  index_t m_tiles;          // blocks along Cg*R*S
  int n_tiles;              // blocks along Kg
  int splits, kt_per_split;
  index_t ktiles;           // k-tiles of the whole reduction N*P*Q
  igemm::Radix3 kr;         // reduction digits (n, p, q), step BK
};

// Filter position (c, r, s) of row index crs in the layout's order.
template <bool CL>
__device__ __forceinline__ void wgrad_decode_crs(index_t crs, int Cg, int R, int S, int& c, int& r, int& s) {
  if (CL) {   // (r, s, c)
    r = static_cast<int>(igemm::div_mod(igemm::div_mod(crs, Cg, c), S, s));
  } else {    // (c, r, s)
    c = static_cast<int>(igemm::div_mod(igemm::div_mod(crs, S, s), R, r));
  }
}

// A operand: x at filter position crs (outer) for output pixel (n, p, q) (reduction).
template <class T, bool CL>
struct WgradInputGather {
  using AccT = typename Acc<T>::type;
  static constexpr bool kAffineOuter = false;
  struct Outer {
    index_t base;   // (g*Cg + c) * x.sc
    int hoff, woff; // r*dh - ph, s*dw - pw (kOutside: crs out of range)
  };
  const T* x;
  Tensor4 t;
  igemm::Radix3 kr;
  index_t CRS, cbase;
  int Cg, R, S, H, W, sh, sw, ph, pw, dh, dw;

  __device__ __forceinline__ Outer outer(index_t crs) const {
    Outer o;
    if (crs < CRS) {
      int c, r, s;
      wgrad_decode_crs<CL>(crs, Cg, R, S, c, r, s);
      o.base = (cbase + c) * t.sc;
      o.hoff = r * dh - ph;
      o.woff = s * dw - pw;
    } else {
      o.base = 0;
      o.hoff = o.woff = igemm::kOutside;
    }
    return o;
  }
  __device__ __forceinline__ AccT load(const Outer& o, const igemm::Digits3& d) const {
    const int h = d.d1 * sh + o.hoff, w = d.d2 * sw + o.woff;
    const bool ok = d.d0 < kr.d0_end && static_cast<unsigned>(h) < static_cast<unsigned>(H) &&
                    static_cast<unsigned>(w) < static_cast<unsigned>(W);
    const index_t off = ok ? o.base + d.d0 * t.sn + h * t.sh + w * t.sw : 0;
    AccT v = AccT(0);
    if (ok) v = to_acc(__ldg(x + off));
    return v;
  }
};

// B operand: dy' of output channel k (outer) at output pixel (n, p, q) (reduction).
template <class T, bool MASK>
struct WgradDyGather {
  using AccT = typename Acc<T>::type;
  static constexpr bool kAffineOuter = true;
  struct Outer {
    index_t base, mbase;   // (g*Kg + k) * dy.sc, the same in relu_y
    int k;
  };
  const T* dy;
  const T* ry;
  Tensor4 t, tr;
  igemm::Radix3 kr;
  index_t kbase;
  int Kg;

  __device__ __forceinline__ Outer outer(index_t k) const {
    Outer o;
    o.k = static_cast<int>(k < Kg ? k : Kg);
    o.base = (kbase + o.k) * t.sc;
    o.mbase = MASK ? (kbase + o.k) * tr.sc : 0;
    return o;
  }
  __device__ __forceinline__ Outer outer_plus(const Outer& o, int j) const {
    return Outer{o.base + j * t.sc, MASK ? o.mbase + j * tr.sc : 0, o.k + j};
  }
  __device__ __forceinline__ AccT load(const Outer& o, const igemm::Digits3& d) const {
    const bool ok = o.k < Kg && d.d0 < kr.d0_end;
    AccT v = AccT(0);
    if (ok) {
      v = to_acc(__ldg(dy + o.base + d.d0 * t.sn + d.d1 * t.sh + d.d2 * t.sw));
      if (MASK && to_acc(__ldg(ry + o.mbase + d.d0 * tr.sn + d.d1 * tr.sh + d.d2 * tr.sw)) <= AccT(0)) v = AccT(0);
    }
    return v;
  }
};

// One block per (crs tile, k tile, group, split), crs tile fastest.
template <class T, int TILE, bool CL, bool MASK>
__global__ void __launch_bounds__(igemm::TileOf<TILE>::type::NT, igemm::TileOf<TILE>::type::MIN_BLOCKS)
conv2d_wgrad_kernel(const Conv2dWgradParams<T> p) {
  using Cfg = typename igemm::TileOf<TILE>::type;
  using AccT = typename Acc<T>::type;
  __align__(16) __shared__ AccT smA[2 * Cfg::BK * Cfg::LDA];
  __align__(16) __shared__ AccT smB[2 * Cfg::BK * Cfg::LDB];
  const ConvGeom& g = p.g;

  const unsigned bid = blockIdx.x;   // < 2^31: 32-bit block decode
  const index_t mt = bid % static_cast<unsigned>(p.m_tiles);
  unsigned rest = bid / static_cast<unsigned>(p.m_tiles);
  const int nt = static_cast<int>(rest % static_cast<unsigned>(p.n_tiles));
  rest /= static_cast<unsigned>(p.n_tiles);
  const int grp = static_cast<int>(rest % static_cast<unsigned>(g.groups));
  const int split = static_cast<int>(rest / static_cast<unsigned>(g.groups));

  const index_t kt_begin = static_cast<index_t>(split) * p.kt_per_split;
  const index_t kt_left = p.ktiles - kt_begin;
  const int ktiles = static_cast<int>(kt_left < p.kt_per_split ? kt_left : p.kt_per_split);
  const index_t CRS = static_cast<index_t>(g.Cg) * g.R * g.S;

  WgradInputGather<T, CL> ga;
  ga.x = p.xp; ga.t = p.x; ga.kr = p.kr; ga.CRS = CRS; ga.cbase = static_cast<index_t>(grp) * g.Cg;
  ga.Cg = g.Cg; ga.R = g.R; ga.S = g.S; ga.H = g.H; ga.W = g.W; ga.sh = g.stride_h; ga.sw = g.stride_w;
  ga.ph = g.pad_h; ga.pw = g.pad_w; ga.dh = g.dil_h; ga.dw = g.dil_w;
  WgradDyGather<T, MASK> gd;
  gd.dy = p.dyp; gd.ry = p.ryp; gd.t = p.dy; gd.tr = p.ry; gd.kr = p.kr;
  gd.kbase = static_cast<index_t>(grp) * g.Kg; gd.Kg = g.Kg;

  const index_t m0 = mt * Cfg::BM;
  const index_t n0 = static_cast<index_t>(nt) * Cfg::BN;
  AccT acc[Cfg::TM][Cfg::TN];
  // Rows (crs) fastest across threads: the epilogue's stores run along crs, contiguous in the
  // workspace and in dw for its natural layout.
  igemm::mainloop<Cfg, /*A_KFAST=*/false, /*B_KFAST=*/!CL, /*MFAST=*/true>(ga, gd, m0, n0, kt_begin * Cfg::BK,
                                                                        ktiles, acc, smA, smB);

  // Epilogue: rows are filter positions crs, columns output channels k.
  const igemm::ThreadPos<Cfg, true> pos(threadIdx.x);
  index_t rowoff[Cfg::TM];   // crs's offset in dw, or in the workspace row; -1 past CRS
#pragma unroll
  for (int i = 0; i < Cfg::TM; ++i) {
    const index_t crs = m0 + pos.row(i);
    rowoff[i] = -1;
    if (crs < CRS) {
      if (p.ws != nullptr) {
        rowoff[i] = crs;
      } else {
        int c, r, s;
        wgrad_decode_crs<CL>(crs, g.Cg, g.R, g.S, c, r, s);
        rowoff[i] = c * p.dw.sc + r * p.dw.sh + s * p.dw.sw;
      }
    }
  }
#pragma unroll
  for (int j = 0; j < Cfg::TN; ++j) {
    const index_t kk = n0 + pos.col(j);
    if (kk >= g.Kg) continue;
    const index_t k = static_cast<index_t>(grp) * g.Kg + kk;
    const index_t colbase = p.ws != nullptr ? (static_cast<index_t>(split) * g.K + k) * CRS : k * p.dw.sn;
#pragma unroll
    for (int i = 0; i < Cfg::TM; ++i) {
      if (rowoff[i] < 0) continue;
      if (p.ws != nullptr) p.ws[colbase + rowoff[i]] = acc[i][j];
      else p.dwp[colbase + rowoff[i]] = from_acc<T>(acc[i][j]);
    }
  }
}

// dw[k][crs] = sum over split = 0, 1, ..., splits-1 of ws[split][k][crs], in that order.
template <class T>
__global__ void conv2d_wgrad_reduce_kernel(const typename Acc<T>::type* ws, int splits, int K, int Cg, int R,
                                           int S, bool cl, Tensor4 dw, T* dwp) {
  using AccT = typename Acc<T>::type;
  const index_t CRS = static_cast<index_t>(Cg) * R * S;
  const index_t total = static_cast<index_t>(K) * CRS;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    AccT sum = AccT(0);
    for (int sp = 0; sp < splits; ++sp) sum += ws[sp * total + i];
    int c, r, s;
    // (Cg*R*S fits an int: the launcher keeps the weight per output channel below 2^31 elements.)
    int crs;
    const index_t k = igemm::div_mod(i, static_cast<int>(CRS), crs);
    if (cl) wgrad_decode_crs<true>(crs, Cg, R, S, c, r, s);
    else wgrad_decode_crs<false>(crs, Cg, R, S, c, r, s);
    dwp[k * dw.sn + c * dw.sc + r * dw.sh + s * dw.sw] = from_acc<T>(sum);
  }
}

template <class T>
struct ChannelReduceParams {
  int N, P, Q, K;                 // dy sizes
  int H, W, R, S, sh, sw, ph, pw, dh, dw, mult;   // depthwise taps (WITH_X): x channel = k / mult
  Tensor4 dy, ry, x, out;         // out: dw as (K, 1, R, S) (WITH_X)
  const T* dyp;
  const T* ryp;
  const T* xp;
  T* outp;                        // db (K contiguous values) or dw
  int k_chunks;                   // ceil(K / blockDim.x)
  igemm::Radix3 pix;              // pixel digits (n, p, q), step blockDim.y
};

// out[k] (or out[k][0][r][s], tap = blockIdx.x / k_chunks) = sum over (n, p, q) of dy'[n][k][p][q]
// (times x[n][k / mult][p*sh - ph + r*dh][q*sw - pw + s*dw] when WITH_X). blockDim = (CB, PY),
// CB * PY <= 256, PY a power of two.
template <class T, bool MASK, bool WITH_X>
__global__ void __launch_bounds__(256, 4) conv2d_channel_reduce_kernel(const ChannelReduceParams<T> p) {
  using AccT = typename Acc<T>::type;
  __shared__ AccT red[256];
  const int tx = threadIdx.x, ty = threadIdx.y, CB = blockDim.x, PY = blockDim.y;
  const int kc = static_cast<int>(blockIdx.x % p.k_chunks);
  const int tap = static_cast<int>(blockIdx.x / p.k_chunks);
  const int k = kc * CB + tx;
  const int r = WITH_X ? tap / p.S : 0, s = WITH_X ? tap % p.S : 0;
  const int hoff = r * p.dh - p.ph, woff = s * p.dw - p.pw;

  AccT acc = AccT(0);
  if (k < p.K) {
    const index_t kdy = k * p.dy.sc, kry = MASK ? k * p.ry.sc : 0, kx = WITH_X ? (k / p.mult) * p.x.sc : 0;
    for (igemm::Digits3 d = igemm::radix_decode(p.pix, ty); d.d0 < p.N; igemm::radix_advance(d, p.pix)) {
      AccT v = to_acc(__ldg(p.dyp + kdy + d.d0 * p.dy.sn + d.d1 * p.dy.sh + d.d2 * p.dy.sw));
      if (MASK && to_acc(__ldg(p.ryp + kry + d.d0 * p.ry.sn + d.d1 * p.ry.sh + d.d2 * p.ry.sw)) <= AccT(0))
        v = AccT(0);
      if (WITH_X) {
        const int h = d.d1 * p.sh + hoff, w = d.d2 * p.sw + woff;
        const bool ok = static_cast<unsigned>(h) < static_cast<unsigned>(p.H) &&
                        static_cast<unsigned>(w) < static_cast<unsigned>(p.W);
        const index_t off = ok ? kx + d.d0 * p.x.sn + h * p.x.sh + w * p.x.sw : 0;
        v = ok ? v * to_acc(__ldg(p.xp + off)) : AccT(0);
      }
      acc += v;
    }
  }
  red[ty * CB + tx] = acc;
  __syncthreads();
  for (int half = PY / 2; half > 0; half /= 2) {   // fixed-shape tree: deterministic
    if (ty < half) red[ty * CB + tx] += red[(ty + half) * CB + tx];
    __syncthreads();
  }
  if (ty == 0 && k < p.K) {
    if (WITH_X) p.outp[k * p.out.sn + r * p.out.sh + s * p.out.sw] = from_acc<T>(red[tx]);
    else p.outp[k] = from_acc<T>(red[tx]);
  }
}

}  // namespace fc

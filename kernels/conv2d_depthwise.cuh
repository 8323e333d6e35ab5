// Depthwise conv2d (groups == C, channel multiplier mult = K / C >= 1): direct kernels.
//
//   forward: y[n][k][p][q] = act(bias[k] + sum_{r,s} x[n][k/mult][p*sh - ph + r*dh][q*sw - pw + s*dw] * w[k][0][r][s])
//   dgrad:   dx[n][c][h][w] = sum_{j < mult, r, s} dy'[n][c*mult + j][p][q] * w[c*mult + j][0][r][s]
//            over the taps with h + ph - r*dh = p*sh, w + pw - s*dw = q*sw inside the output (gather form),
//            dy' = (relu_y <= 0 ? 0 : dy) for conv+ReLU (torch's threshold_backward)
//   wgrad:   conv2d_channel_reduce_kernel<.., WITH_X = true> (conv2d_wgrad.cuh), one block per
//            (32 channels or 1 channel, tap), deterministic tree reduction; db the same without x.
//
// An implicit GEMM would have a reduction of only R*S per output and an N-dimension of `mult`, so
// these are plain one-output-per-thread kernels: the work is R*S FMAs per output and memory bound;
// the input rows that neighbouring threads share are served by L1. Thread order follows the layout so
// that a warp's loads and stores are contiguous: for NCHW consecutive threads take consecutive q of one
// (n, k) plane, for NHWC consecutive channels of one pixel. Blocks cover one image's K*P*Q (or C*H*W)
// outputs, 256 per block; within an image the index math is 32-bit (the launcher checks that one
// image's count fits), across images int64.
#pragma once

#include "common.cuh"
#include "conv2d_fwd.cuh"

namespace fc {

template <class T>
struct DepthwiseParams {
  ConvGeom g;               // Cg == 1, Kg == mult
  Tensor4 x, w, y, ry;      // forward: x -> y; dgrad: dy is `y`, dx is `x`, relu_y is `ry`
  const T* xp;              // forward input, or dgrad's dy
  const T* wp;
  const T* bias;
  const T* ryp;
  T* outp;                  // forward y, or dgrad's dx
  int chunks;               // blocks per image: ceil(per-image outputs / 256)
  bool cl;                  // channels fastest (NHWC order of threads)
};

// 256 threads, at least 4 blocks per SM (a 64-register cap): with the thread count alone, ptxas 13
// targets full occupancy (32 registers) for these small kernels and spills a few bytes.
constexpr int kDepthwiseThreads = 256;

template <class T, bool HAS_BIAS, bool FUSE_RELU>
__global__ void __launch_bounds__(kDepthwiseThreads, 4) conv2d_depthwise_fwd_kernel(const DepthwiseParams<T> p) {
  using AccT = typename Acc<T>::type;
  const ConvGeom& g = p.g;
  const unsigned bx = blockIdx.x, chunks = static_cast<unsigned>(p.chunks);   // 32-bit division
  const index_t n = bx / chunks;
  const int i = static_cast<int>(bx % chunks) * kDepthwiseThreads + static_cast<int>(threadIdx.x);
  if (i >= g.K * g.P * g.Q) return;   // no barriers in this kernel
  int k, pp, q;
  if (p.cl) {
    k = i % g.K;
    const int pq = i / g.K;
    q = pq % g.Q;
    pp = pq / g.Q;
  } else {
    q = i % g.Q;
    const int kp = i / g.Q;
    pp = kp % g.P;
    k = kp / g.P;
  }
  const int c = k / g.Kg;
  const T* xc = p.xp + n * p.x.sn + c * p.x.sc;
  const T* wk = p.wp + k * p.w.sn;
  const int h0 = pp * g.stride_h - g.pad_h, w0 = q * g.stride_w - g.pad_w;
  AccT acc = HAS_BIAS ? to_acc(__ldg(p.bias + k)) : AccT(0);
  for (int r = 0; r < g.R; ++r) {
    const int h = h0 + r * g.dil_h;
    if (static_cast<unsigned>(h) >= static_cast<unsigned>(g.H)) continue;
    for (int s = 0; s < g.S; ++s) {
      const int w = w0 + s * g.dil_w;
      if (static_cast<unsigned>(w) >= static_cast<unsigned>(g.W)) continue;
      acc += to_acc(__ldg(xc + h * p.x.sh + w * p.x.sw)) * to_acc(__ldg(wk + r * p.w.sh + s * p.w.sw));
    }
  }
  if (FUSE_RELU) acc = acc < AccT(0) ? AccT(0) : acc;   // NaN stays NaN, as torch.relu
  p.outp[n * p.y.sn + k * p.y.sc + pp * p.y.sh + q * p.y.sw] = from_acc<T>(acc);
}

// Output coordinate o of tap t for input coordinate i: (i + pad - t*dil) / stride when exact and in
// [0, O), else -1.
__device__ __forceinline__ int depthwise_tap_out(int i, int pad, int t, int dil, int stride, int O) {
  const int num = i + pad - t * dil;
  if (num < 0) return -1;
  const int o = num / stride;
  return (o * stride == num && o < O) ? o : -1;
}

template <class T, bool MASK>
__global__ void __launch_bounds__(kDepthwiseThreads, 4) conv2d_depthwise_dgrad_kernel(const DepthwiseParams<T> p) {
  using AccT = typename Acc<T>::type;
  const ConvGeom& g = p.g;
  const unsigned bx = blockIdx.x, chunks = static_cast<unsigned>(p.chunks);   // 32-bit division
  const index_t n = bx / chunks;
  const int i = static_cast<int>(bx % chunks) * kDepthwiseThreads + static_cast<int>(threadIdx.x);
  if (i >= g.C * g.H * g.W) return;
  int c, h, w;
  if (p.cl) {
    c = i % g.C;
    const int hw = i / g.C;
    w = hw % g.W;
    h = hw / g.W;
  } else {
    w = i % g.W;
    const int ch = i / g.W;
    h = ch % g.H;
    c = ch / g.H;
  }
  const T* dyn = p.xp + n * p.y.sn;
  const T* ryn = MASK ? p.ryp + n * p.ry.sn : nullptr;
  AccT acc = AccT(0);
  for (int r = 0; r < g.R; ++r) {
    const int pp = depthwise_tap_out(h, g.pad_h, r, g.dil_h, g.stride_h, g.P);
    if (pp < 0) continue;
    for (int s = 0; s < g.S; ++s) {
      const int q = depthwise_tap_out(w, g.pad_w, s, g.dil_w, g.stride_w, g.Q);
      if (q < 0) continue;
      for (int j = 0; j < g.Kg; ++j) {
        const int k = c * g.Kg + j;
        AccT v = to_acc(__ldg(dyn + k * p.y.sc + pp * p.y.sh + q * p.y.sw));
        if (MASK && to_acc(__ldg(ryn + k * p.ry.sc + pp * p.ry.sh + q * p.ry.sw)) <= AccT(0)) v = AccT(0);
        acc += v * to_acc(__ldg(p.wp + k * p.w.sn + r * p.w.sh + s * p.w.sw));
      }
    }
  }
  p.outp[n * p.x.sn + c * p.x.sc + h * p.x.sh + w * p.x.sw] = from_acc<T>(acc);
}

}  // namespace fc

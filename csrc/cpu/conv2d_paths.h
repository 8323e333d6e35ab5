// The CPU convolution algorithms, one file each, as the router (conv2d_isa.cpp) calls them.
//
//   file                             algorithm                                  passes
//   conv2d_igemm_nhwc_isa.cpp        implicit GEMM, channels_last output         fwd, dgrad's correlations
//   conv2d_igemm_nchw_isa.cpp        implicit GEMM, NCHW output                  fwd, dgrad's correlations
//   conv2d_depthwise_nhwc_isa.cpp    direct depthwise loops, channels_last       fwd, dgrad's correlations
//   conv2d_depthwise_nchw_isa.cpp    direct depthwise loops, NCHW                fwd, dgrad's correlations
//   conv2d_grouped_nhwc_isa.cpp      narrow groups, channels_last (lane permutes) fwd, dgrad's correlations, wgrad
//   conv2d_winograd_isa.cpp          Winograd F(4x4, 3x3) (conv2d_winograd.h)   fwd, dgrad, wgrad
//   conv2d_wgrad_gemm_isa.cpp        GEMM weight gradient, bias gradient         wgrad
//   conv2d_wgrad_blocked_isa.cpp     blocked rank-update weight gradient         wgrad
//   conv2d_depthwise_wgrad_isa.cpp   depthwise weight gradient                   wgrad
//
// Which one runs is decided in one place, conv2d_isa.cpp's path chooser (ConvAlgo below), which the
// dispatch calls and Python can ask (fastconv._C.conv2d_path).
#pragma once

#include "cpu/cl_staging.h"
#include "cpu/conv2d_common.h"

namespace fastconv {
namespace cpu {
namespace FC_ISA {

// Explicit instantiation of the exported kernel templates for both dtypes: each file defines
// `#define FC_INSTANTIATE(T) template ...;`, then FC_FOR_FLOAT_TYPES(FC_INSTANTIATE).
#define FC_FOR_FLOAT_TYPES(M) M(float) M(double)

// Every algorithm the chooser can name (conv2d_isa.cpp: algo_name gives the names).
enum class ConvAlgo : int {
  kNone,             // an empty problem: nothing to compute (or only zeros to write)
  kWinograd,         // conv2d_winograd_isa.cpp
  kIgemmNhwc,        // conv_cl; its mode is a ClMode
  kIgemmNhwcStaged,  // NCHW tensors through conv_cl on channels_last copies (float32, AVX2 and AVX-512)
  kIgemmNchwDirect,  // conv_pix_direct: zero-padded input window, phase planes for stride 2
  kIgemmNchwPacked,  // conv_pix: im2col panels packed per block
  kDepthwiseNhwc,    // conv_direct_cl
  kDepthwiseNchw,    // conv_direct_plane
  kGroupedNhwc,      // grouped_nhwc_fwd
  kGroupedNhwcStaged,  // NCHW tensors through grouped_nhwc_fwd on channels_last copies (AVX-512 float32)
  kWgradBlocked,     // conv2d_wgrad_blocked_isa.cpp
  kWgradRows,        // conv2d_wgrad_rows_isa.cpp
  kWgradPointwise,   // conv2d_wgrad_pointwise_isa.cpp
  kWgradDepthwise,   // conv2d_depthwise_wgrad_isa.cpp
  kWgradGemmNhwc,    // wgrad_gemm_cl
  kWgradGemmNchw,    // wgrad_gemm
  kWgradGroupedNhwc, // wgrad_grouped_nhwc
};

// conv_cl's modes (conv2d_igemm_nhwc_isa.cpp: cl_plan).
enum class ClMode : int { kPointwise, kRowsPaddedCopy, kRowsWholeWindows, kRowBlocks, kTaps, kPacked };

// ---- conv2d_igemm_nhwc_isa.cpp
// y (channels_last) = conv(x masked by m, w) [+ bias] [ReLU]; pack: the cached K-column panels or null.
template <typename T>
void igemm_nhwc_fwd(const Geo& g, In4<T> x, In4<T> m, WV<T> w, const T* bias, Out4<T> y, const Epi& ep, int nth,
                    WeightPack* pack);
// Size (T elements) and panel width NR of igemm_nhwc_fwd's packed weight.
template <typename T>
void igemm_nhwc_pack_size(const Geo& g, int64_t& count, int64_t& nr);
template <typename T>
ClMode igemm_nhwc_mode(const Geo& g, const In4<T>& x, const In4<T>& m, const Out4<T>& y);
// NCHW x and y (any strides) through igemm_nhwc_fwd on channels_last copies, a few images at a time.
void igemm_nhwc_staged_nchw_fwd(const Geo& g, const Tensor4& x, WV<float> w, const float* bias, const Tensor4& y,
                                const Epi& ep, int nth, WeightPack* pack);

// The NCHW (any strides) problem g on x and y in batches of NB images: f(gc, xcl, ycl) with gc the
// batch's problem and xcl / ycl dense channels_last copies (ycl is copied into y after f returns).
template <typename F>
void for_staged_image_batches(const Geo& g, const Tensor4& x, const Tensor4& y, int64_t NB, int nth, F&& f) {
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
        f(gc, xcl, Out4<float>{ys, g.P * g.Q * g.Kout, 1, g.Q * g.Kout, g.Kout});
      });
    });
  }
}

// ---- conv2d_igemm_nchw_isa.cpp
// T elements of the NCHW kernels' packed weight A[G][ceil(Kg/MR)][CRS][MR] (MR = kPixMR).
template <int MR>
int64_t pix_weight_floats(const Geo& g) {
  return g.G * cdiv(g.Kg, MR) * g.Cg * g.R * g.S * MR;
}
// y (NCHW-like: vectors along output pixels) = conv(x masked by m, w) [+ bias] [ReLU]; direct picks
// conv_pix_direct over conv_pix.
template <typename T>
void igemm_nchw_fwd(const Geo& g, In4<T> x, In4<T> m, WV<T> w, const T* bias, Out4<T> y, const Epi& ep, int nth,
                    WeightPack* pack, bool direct);

// ---- conv2d_depthwise_nhwc_isa.cpp / conv2d_depthwise_nchw_isa.cpp (Cg == 1)
template <typename T>
void conv_direct_cl(const Geo& g, In4<T> x, In4<T> m, WV<T> w, const T* bias, Out4<T> y, const Epi& ep, int nth);
template <typename T>
void conv_direct_plane(const Geo& g, In4<T> x, In4<T> m, WV<T> w, const T* bias, Out4<T> y, const Epi& ep, int nth);

// ---- conv2d_grouped_nhwc_isa.cpp (channels_last, G > 1, 2 <= Cg <= Kg, Kg divides the vector length)
// Whether the narrow-group kernels take the layer: a vector then holds the output channels of L / Kg
// whole groups, whose L / Kg * Cg input channels one vector load brings in.
template <typename T>
bool grouped_nhwc_usable(const Geo& g) {
  return g.G > 1 && g.Cg > 1 && g.Kg <= Simd<T>::L && Simd<T>::L % g.Kg == 0 && g.Cg <= g.Kg;
}
// T elements of grouped_nhwc_fwd's packed weight.
template <typename T>
int64_t grouped_nhwc_pack_size(const Geo& g);
template <typename T>
void grouped_nhwc_fwd(const Geo& g, In4<T> x, In4<T> m, WV<T> w, const T* bias, Out4<T> y, const Epi& ep, int nth,
                      WeightPack* pack);
// NCHW x and y (any strides) through grouped_nhwc_fwd on channels_last copies, a few images at a time.
void grouped_nhwc_staged_nchw_fwd(const Geo& g, const Tensor4& x, WV<float> w, const float* bias, const Tensor4& y,
                                  const Epi& ep, int nth, WeightPack* pack);
// dw of such a layer (x, dy and the mask m of dy channels_last); Cg in {2, 4, 8, 16}.
template <typename T>
bool wgrad_grouped_nhwc_usable(const Geo& g) {
  return grouped_nhwc_usable<T>(g) && (g.Cg == 2 || g.Cg == 4 || g.Cg == 8 || g.Cg == 16);
}
template <typename T>
void wgrad_grouped_nhwc(const ConvDesc& d, In4<T> x, In4<T> dy, In4<T> m, Out4<T> dw, int nth);

// ---- conv2d_depthwise_wgrad_isa.cpp
// dw of a depthwise layer (dy masked by m); db (may be null) too where the kernel can carry it along.
// Returns whether it wrote db.
template <typename T>
bool wgrad_depthwise(const ConvDesc& d, In4<T> x, In4<T> dy, In4<T> m, Out4<T> dw, T* db, int nth);

// ---- conv2d_wgrad_gemm_isa.cpp
// dw = col(x) * dy^T per group, NCHW-style rows (wgrad_gemm) or channels_last pixels (wgrad_gemm_cl).
template <typename T>
void wgrad_gemm_nchw(const ConvDesc& d, In4<T> x, In4<T> dy, In4<T> m, Out4<T> dw, int nth);
template <typename T>
void wgrad_gemm_nhwc(const ConvDesc& d, In4<T> x, In4<T> dy, In4<T> m, Out4<T> dw, int nth);
// db[k] = sum over n, p, q of dy (masked by m), per-image partials summed in image order.
template <typename T>
void bias_grad(const ConvDesc& d, In4<T> dy, In4<T> m, T* db, int nth);

}  // namespace FC_ISA
}  // namespace cpu
}  // namespace fastconv

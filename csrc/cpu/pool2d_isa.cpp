// max_pool2d / avg_pool2d, forward and backward, float32 and float64, any input strides: the four entry
// points of kernels.h and the path choice behind them. The kernels are in pool2d_fwd_nchw_isa.cpp,
// pool2d_fwd_nhwc_isa.cpp (with the scalar path for any strides) and pool2d_bwd_isa.cpp, their shared
// helpers in pool2d_common.h.
//
// Semantics are ATen's CPU kernels (MaxPoolKernel.cpp, AvgPoolKernel.cpp), bit for bit:
//  - max: the window is scanned row-major (i, then j), starting from -inf and the index of the first
//    in-bounds tap; a tap is taken when `v > best || isnan(v)`, so ties keep the first maximum and the
//    last NaN wins. The index is h * W + w within the (n, c) plane. An all-padding window (possible only
//    with dilation in ceil mode) gives -inf and torch's index of its first dilated position.
//  - avg: hstart = p*sH - pH, hend = min(hstart + kH, H + pH), pool_size = (hend-hstart)*(wend-wstart),
//    then the window is clipped to the input; divisor = divisor_override, else pool_size when
//    count_include_pad, else the clipped area. The sum runs over the clipped window row-major from 0 in
//    the input dtype and is divided (not multiplied by a reciprocal) by the divisor, as torch does.
//  - backward: dx is zeroed, then every output adds its gradient (max: dy at its index; avg: dy/divisor
//    over its clipped window) in (p, q) order, so each dx element sums its terms in torch's order.
//
// Paths, chosen from the strides of the input (forward) or of dx (backward):
//  - channels_last (stride[1] == 1): max_fwd_nhwc / avg_fwd_nhwc, an output pixel's window of
//    C-vectors; the flattened (n, p, q) pixels split evenly.
//  - NCHW (stride[3] == 1): without indices, stride-2 2x2 and 3x3 windows (VGG's, ResNet's) run
//    pool_s2_nchw (a plane per task in column strips) and the other max windows taller than their
//    stride max_fwd_nchw_separable; everything else max_fwd_nchw / avg_fwd_nchw, one output row at a
//    time vectorized along q, borders by masked loads.
//  - anything else: the scalar window per output (max_fwd_generic / avg_fwd_generic).
//  Backward: max is a gather of C-vectors for channels_last tensors without dilation
//  (max_bwd_gather_nhwc_rows, checked to have matched every index, else redone as the scatter), else a
//  scatter into the slice of dx a task owns (max_bwd_scatter); avg is a scatter of C-vectors for
//  channels_last dx (avg_bwd_nhwc), else a gather along w (avg_bwd_nchw).
// Results do not depend on the work split: bitwise identical for any thread count, and equal to torch's
// on every path.
// Measured (bench/results/cpu-2026-12-05-xeon-vm.txt: Intel Xeon AVX-512 VM, 2 threads, N=32, C=64,
// 56x56, fp32, 2x2 and 3x3/pad 1 windows of stride 2): forward 0.70-0.85 ms on both layouts, 38-46 GB/s
// of minimum traffic, 7.4-27x torch's speed NCHW and 1.1-2.5x channels_last; backward 1.3-2.1 ms,
// 0.93-3.6x torch's.
#include <cstdint>

#include "cpu/kernels.h"
#include "cpu/pool2d_common.h"

namespace fastconv {
namespace cpu {
namespace FC_ISA {
namespace {

// True when the vector paths may blend fp32 indices as int32 (every index value < 2^31).
inline bool int32_indices_ok(const PoolDesc& d) {
  return (d.H + d.kernel_h * d.dil_h) * (d.W + d.kernel_w * d.dil_w) < (int64_t(1) << 31);
}

// The separable max serves planes with rows shared by output rows (kernel_h > stride_h; otherwise the
// row scan does the same loads with less bookkeeping), enough planes for the threads and a row-maxima
// buffer within 256 KiB.
template <typename T>
bool separable_ok(const PoolDesc& d, int nthreads) {
  const int64_t L = Vec<T>::L;
  return d.kernel_h > d.stride_h && d.N * d.C >= 2 * nthreads &&
         d.H * separable_row_floats(d, L) * (int64_t)sizeof(T) <= 256 * 1024;
}

// When pool_s2_nchw (pool2d_fwd_nchw_isa.cpp) serves d with x and y: also enough planes for the threads
// (a plane is a task). K is then d.kernel_h.
inline bool pool_s2_ok(const PoolDesc& d, const Tensor4& x, const Tensor4& y, int nthreads) {
  const int64_t K = d.kernel_h;
  return d.N * d.C >= 2 * nthreads && x.stride[3] == 1 && y.stride[3] == 1 && d.stride_h == 2 &&
         d.stride_w == 2 && d.dil_h == 1 && d.dil_w == 1 && (K == 2 || K == 3) && d.kernel_w == K &&
         d.pad_h <= K / 2 && d.pad_w <= K / 2 && (d.P - 1) * 2 - d.pad_h < d.H && (d.Q - 1) * 2 - d.pad_w < d.W;
}

template <typename T, bool kIdx>
void max_fwd(const PoolDesc& d, const Tensor4& x, const Tensor4& y, const Tensor4* ind, int nthreads) {
  const bool idx_ok = sizeof(T) == 8 || !kIdx || int32_indices_ok(d);
  if (idx_ok && x.stride[1] == 1 && d.C > 1)
    max_fwd_nhwc<T, kIdx>(d, x, y, ind, nthreads);
  else if (!kIdx && pool_s2_ok(d, x, y, nthreads))
    d.kernel_h == 2 ? pool_s2_nchw<T, true, 2>(d, x, y, nthreads) : pool_s2_nchw<T, true, 3>(d, x, y, nthreads);
  else if (!kIdx && x.stride[3] == 1 && d.stride_w == 1 && separable_ok<T>(d, nthreads))
    max_fwd_nchw_separable<T, 1>(d, x, y, nthreads);
  else if (!kIdx && x.stride[3] == 1 && d.stride_w == 2 && separable_ok<T>(d, nthreads))
    max_fwd_nchw_separable<T, 2>(d, x, y, nthreads);
  else if (idx_ok && x.stride[3] == 1 && d.stride_w == 1)
    max_fwd_nchw<T, kIdx, 1>(d, x, y, ind, nthreads);
  else if (idx_ok && x.stride[3] == 1 && d.stride_w == 2)
    max_fwd_nchw<T, kIdx, 2>(d, x, y, ind, nthreads);
  else if (idx_ok && x.stride[3] == 1)
    max_fwd_nchw<T, kIdx, 0>(d, x, y, ind, nthreads);
  else
    max_fwd_generic<T, kIdx>(d, x, y, ind, nthreads);
}

template <typename T>
void avg_fwd(const PoolDesc& d, const Tensor4& x, const Tensor4& y, int nthreads) {
  if (x.stride[1] == 1 && d.C > 1)
    avg_fwd_nhwc<T>(d, x, y, nthreads);
  else if (pool_s2_ok(d, x, y, nthreads))
    d.kernel_h == 2 ? pool_s2_nchw<T, false, 2>(d, x, y, nthreads) : pool_s2_nchw<T, false, 3>(d, x, y, nthreads);
  else if (x.stride[3] == 1 && d.stride_w == 1)
    avg_fwd_nchw<T, 1>(d, x, y, nthreads);
  else if (x.stride[3] == 1 && d.stride_w == 2)
    avg_fwd_nchw<T, 2>(d, x, y, nthreads);
  else if (x.stride[3] == 1)
    avg_fwd_nchw<T, 0>(d, x, y, nthreads);
  else
    avg_fwd_generic<T>(d, x, y, nthreads);
}

template <typename T>
void avg_bwd(const PoolDesc& d, const Tensor4& dy, const Tensor4& dx, int nthreads) {
  if (dx.stride[1] == 1 && d.C > 1)
    avg_bwd_nhwc<T>(d, dy, dx, nthreads);
  else
    avg_bwd_nchw<T>(d, dy, dx, nthreads);
}

}  // namespace

void max_pool2d_fwd(const PoolDesc& d, DType dt, const Tensor4& x, const Tensor4& y, const Tensor4* indices,
                    int nthreads) {
  if (d.N == 0) return;
  if (dt == kFloat32)
    indices ? max_fwd<float, true>(d, x, y, indices, nthreads) : max_fwd<float, false>(d, x, y, nullptr, nthreads);
  else
    indices ? max_fwd<double, true>(d, x, y, indices, nthreads) : max_fwd<double, false>(d, x, y, nullptr, nthreads);
}

void max_pool2d_bwd(const PoolDesc& d, DType dt, const Tensor4& dy, const Tensor4& indices, const Tensor4& dx,
                    int nthreads) {
  if (d.N == 0) return;
  if (dt == kFloat32)
    max_bwd<float>(d, dy, indices, dx, nthreads);
  else
    max_bwd<double>(d, dy, indices, dx, nthreads);
}

void avg_pool2d_fwd(const PoolDesc& d, DType dt, const Tensor4& x, const Tensor4& y, int nthreads) {
  if (d.N == 0) return;
  if (dt == kFloat32)
    avg_fwd<float>(d, x, y, nthreads);
  else
    avg_fwd<double>(d, x, y, nthreads);
}

void avg_pool2d_bwd(const PoolDesc& d, DType dt, const Tensor4& dy, const Tensor4& dx, int nthreads) {
  if (d.N == 0) return;
  if (dt == kFloat32)
    avg_bwd<float>(d, dy, dx, nthreads);
  else
    avg_bwd<double>(d, dy, dx, nthreads);
}

}  // namespace FC_ISA
}  // namespace cpu
}  // namespace fastconv

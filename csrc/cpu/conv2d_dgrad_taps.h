// The input gradient's decompositions into engine correlations (conv2d_isa.cpp's dgrad routes): the
// residue-class taps of a stride phase, and the taps-as-channels route of transposed convolutions whose
// taps tile the output.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

#include "cpu/conv2d_common.h"

namespace fastconv {
namespace cpu {
namespace FC_ISA {

// Taps r in [0, R) with (a + pad - r*dil) % stride == 0: r0 + j*step, count.
inline void residue_taps(int64_t a, int64_t pad, int64_t dil, int64_t stride, int64_t R, int64_t& r0, int64_t& step,
                         int64_t& count) {
  r0 = -1;
  count = 0;
  step = 1;
  for (int64_t r = 0; r < R; ++r) {
    if (((a + pad - r * dil) % stride + stride) % stride != 0) continue;
    if (r0 < 0)
      r0 = r;
    else if (count == 1)
      step = r - r0;
    ++count;
  }
}

// Taps as channels: when every dx pixel of a row receives its term from one dy pixel and one column tap
// (the taps tile dx's columns: no two terms of a dx element come from different columns), the S column
// taps are S*C output channels of one correlation that writes S adjacent dx pixels as one run, instead
// of S residue classes of C channels each reading dy again. Groups 1 only.
// - kAll: dy is one pixel per image and dx exactly one R x S window (a generator's latent layer,
//   1x1 -> 4x4): dx[n] = dy[n] . W, one GEMM whose C*R*S output channels are dx's elements in dx's
//   memory order (dense NCHW or channels_last images).
// - kColumns: a channels_last dx (pixels adjacent, C channels each) whose columns the S taps tile: no
//   column padding or dilation, W = Q*S, and stride S or a single dy column (U-Net's 2x2 stride-2
//   up-convolutions). The rows stay residue classes: one correlation per row phase, with that phase's
//   row taps.
// DCGAN's latent layer (batch 64, 100 -> 512 channels, 1x1 -> 4x4), 2 threads at the AVX2 level: 0.89 ms
// NCHW and 1.06 ms channels_last, against 14.8 and 5.6 as 16 residue classes (torch 6.2 and 5.2).
enum class TapsMerge { kNone, kAll, kColumns };

inline TapsMerge taps_merge(const ConvDesc& d, const Tensor4& dx) {
  if (d.groups != 1 || d.N == 0 || d.K == 0 || d.C == 0) return TapsMerge::kNone;
  const auto& xs = dx.stride;
  const bool cl = xs[1] == 1 && xs[3] == d.C;
  const bool nchw = xs[3] == 1 && xs[2] == d.W && xs[1] == d.H * d.W;
  if (d.P == 1 && d.Q == 1 && d.pad_h == 0 && d.pad_w == 0 && d.H == d.R && d.W == d.S && d.R * d.S > 1 &&
      (d.R == 1 || d.dil_h == 1) && (d.S == 1 || d.dil_w == 1) && (nchw || (cl && xs[2] == d.W * d.C)))
    return TapsMerge::kAll;
  if (cl && d.S > 1 && d.pad_w == 0 && d.dil_w == 1 && d.W == d.Q * d.S && (d.stride_w == d.S || d.Q == 1))
    return TapsMerge::kColumns;
  return TapsMerge::kNone;
}

// One correlation of the taps-as-channels route: dx's row phase a (kColumns; 0 for kAll), its row taps
// r0 + j*rstep (taps == false: no tap reaches the phase, its rows are zeros), and the geometry with the
// merged output channels.
struct TapsPart {
  int64_t a = 0;
  bool taps = false;
  Geo g{};
  int64_t r0 = 0, rstep = 1;
};

inline std::vector<TapsPart> taps_parts(const ConvDesc& d, TapsMerge m) {
  std::vector<TapsPart> parts;
  if (m == TapsMerge::kAll) {
    const int64_t J = d.C * d.R * d.S;
    parts.push_back(TapsPart{0, true, Geo{d.N, d.K, 1, 1, J, 1, 1, 1, 1, 1, d.K, J, 1, 1, 0, 0, 1, 1}, 0, 1});
    return parts;
  }
  const int64_t J = d.S * d.C;
  for (int64_t a = 0; a < std::min(d.stride_h, d.H); ++a) {
    TapsPart t;
    t.a = a;
    int64_t Rn;
    residue_taps(a, d.pad_h, d.dil_h, d.stride_h, d.R, t.r0, t.rstep, Rn);
    t.taps = Rn > 0;
    const int64_t Hs = cdiv(d.H - a, d.stride_h);
    t.g = t.taps ? Geo{d.N, d.K, d.P, d.Q, J, Hs, d.Q, Rn, 1, 1, d.K, J, 1, 1,
                       -((a + d.pad_h - t.r0 * d.dil_h) / d.stride_h), 0, -(t.rstep * d.dil_h / d.stride_h), 1}
                 : Geo{d.N, d.K, d.P, d.Q, J, Hs, d.Q, 0, 0, 1, d.K, J, 1, 1, 0, 0, 1, 1};
    parts.push_back(t);
  }
  return parts;
}

// dx's view of a part: the merged channels j = (s, c) of S adjacent pixels (kColumns; rows a + sh*i,
// pixel q = columns q*S .. q*S + S-1), or an image's C*R*S elements as channels (kAll).
template <typename T>
Out4<T> taps_part_view(const ConvDesc& d, TapsMerge m, const Out4<T>& dxv, const TapsPart& t) {
  if (m == TapsMerge::kAll) return {dxv.p, dxv.s0, 1, t.g.Kout, t.g.Kout};
  return {dxv.p + t.a * dxv.s2, dxv.s0, 1, d.stride_h * dxv.s2, d.S * dxv.s3};
}

// The merged channels' order: dx's memory order of an image's (c, r, s) (kAll of a dense NCHW dx), else
// channels_last order j = (r, s, c) (kAll) or (s, c) (kColumns).
inline bool taps_nchw_order(const ConvDesc& d, TapsMerge m, const Tensor4& dx) {
  const auto& xs = dx.stride;
  return m == TapsMerge::kAll && xs[3] == 1 && xs[2] == d.W && xs[1] == d.H * d.W;
}

// Whether w's strides put a part's output channel j at offset j; else the route reads taps_weight_copy.
inline bool taps_weight_in_order(const ConvDesc& d, TapsMerge m, const Tensor4& dx, const Tensor4& w) {
  const auto& ws = w.stride;
  if (taps_nchw_order(d, m, dx))
    return (d.S == 1 || ws[3] == 1) && (d.R == 1 || ws[2] == d.S) && (d.C == 1 || ws[1] == d.R * d.S);
  return (d.C == 1 || ws[1] == 1) && ws[3] == d.C && (m == TapsMerge::kColumns || d.R == 1 || ws[2] == d.S * d.C);
}

// w copied into buf (K*C*R*S elements) in the order taps_weight_in_order wants; returns the copy's view.
template <typename T>
Tensor4 taps_weight_copy(const ConvDesc& d, TapsMerge m, const Tensor4& dx, const Tensor4& w, T* buf) {
  const int64_t C = d.C, R = d.R, S = d.S;
  const std::array<int64_t, 4> st = taps_nchw_order(d, m, dx) ? std::array<int64_t, 4>{C * R * S, R * S, S, 1}
                                                              : std::array<int64_t, 4>{R * S * C, 1, S * C, C};
  const T* src = static_cast<const T*>(w.data);
  for (int64_t k = 0; k < d.K; ++k)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t r = 0; r < R; ++r)
        for (int64_t s = 0; s < S; ++s)
          buf[k * st[0] + c * st[1] + r * st[2] + s * st[3]] =
              src[k * w.stride[0] + c * w.stride[1] + r * w.stride[2] + s * w.stride[3]];
  Tensor4 t = w;
  t.data = buf;
  t.stride = st;
  return t;
}

// A part's weights: output channel j (the merged (s, c) or (c, r, s)) at offset j, input channel k at
// w's K stride, the part's row taps (kColumns).
template <typename T>
WV<T> taps_part_weights(const Tensor4& w, const TapsPart& t) {
  const T* wp = static_cast<const T*>(w.data);
  return WV<T>{wp + t.r0 * w.stride[2], 0, 1, w.stride[0], t.rstep * w.stride[2], 0};
}

}  // namespace FC_ISA
}  // namespace cpu
}  // namespace fastconv

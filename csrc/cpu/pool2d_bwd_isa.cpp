// max_pool2d / avg_pool2d backward, float32 and float64, any strides. dx[n, c] = sum over outputs (p, q)
// in row-major order of their contribution (max: dy at its index; avg: dy/divisor over its clipped
// window), so each dx element sums its terms in torch's order; each task owns a disjoint slice of dx
// and zeroes it first. Which kernel serves a call is pool2d_isa.cpp's choice (from dx's strides).
//
//  - max_bwd_scatter: a scatter into a zeroed slice of dx owned by one task ((n, c) plane, or (n,
//    channel block) for channels_last dx); on these shapes it beats a gather form, whose work grows
//    with the window overlap.
//  - avg_bwd_nchw: a gather along w: dy/divisor rows are spread with zeros to the input columns they
//    cover, and each dx element sums its terms in the scatter's (p, q) order (bitwise torch's) with
//    contiguous vector loads; a plane per task.
//  - avg_bwd_nhwc (channels_last dx): scatters C-vectors, an (n, channel block) per task.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/pool2d_common.h"

namespace fastconv {
namespace cpu {
namespace FC_ISA {
namespace {

template <typename T>
inline void zero_plane(const Tensor4& dx, int64_t n, int64_t c) {
  T* D = static_cast<T*>(dx.data) + n * dx.stride[0] + c * dx.stride[1];
  const int64_t sh = dx.stride[2], sw = dx.stride[3];
  if (sw == 1 && sh == dx.size[3]) {
    std::memset(static_cast<void*>(D), 0, sizeof(T) * dx.size[2] * dx.size[3]);
    return;
  }
  for (int64_t h = 0; h < dx.size[2]; ++h) {
    T* row = D + h * sh;
    if (sw == 1)
      std::memset(static_cast<void*>(row), 0, sizeof(T) * dx.size[3]);
    else
      for (int64_t w = 0; w < dx.size[3]; ++w) row[w * sw] = T(0);
  }
}

// Zero dx[n, c0:c1, :, :].
template <typename T>
inline void zero_slice(const Tensor4& dx, int64_t n, int64_t c0, int64_t c1) {
  if (c1 == c0 + 1 && dx.stride[1] != 1) return zero_plane<T>(dx, n, c0);
  T* D = static_cast<T*>(dx.data) + n * dx.stride[0];
  const int64_t sc = dx.stride[1], sh = dx.stride[2], sw = dx.stride[3];
  if (sc == 1 && c0 == 0 && c1 == dx.size[1] && sw == c1 && sh == dx.size[3] * sw) {  // one dense image
    std::memset(static_cast<void*>(D), 0, sizeof(T) * dx.size[2] * sh);
    return;
  }
  for (int64_t h = 0; h < dx.size[2]; ++h)
    for (int64_t w = 0; w < dx.size[3]; ++w) {
      T* p = D + h * sh + w * sw;
      if (sc == 1)
        std::memset(static_cast<void*>(p + c0), 0, sizeof(T) * (c1 - c0));
      else
        for (int64_t c = c0; c < c1; ++c) p[c * sc] = T(0);
    }
}
// Channel blocks for channels_last backward: enough (n, block) tasks to balance the threads.
inline int64_t channel_block(const PoolDesc& d, int nthreads, int L) {
  int64_t want = 4 * std::max(nthreads, 1);
  if (d.N >= want || d.C <= L) return d.C;
  int64_t per_n = (want + d.N - 1) / d.N;
  int64_t cb = (d.C + per_n - 1) / per_n;
  cb = (cb + L - 1) / L * L;
  return std::max<int64_t>(cb, L);
}

// Outputs whose window covers input row (or column) h: p in [lo, hi] with (h + pad - p*stride) a
// multiple of dil (always true for dil == 1); empty when lo > hi.
struct Cover {
  int64_t lo, hi;
};
inline Cover cover(int64_t h, int64_t pad, int64_t stride, int64_t k, int64_t dil, int64_t P) {
  const int64_t a = h + pad, first = a - (k - 1) * dil;  // a = p*stride + i*dil, 0 <= i < k
  return {first <= 0 ? 0 : (first + stride - 1) / stride, std::min(a / stride, P - 1)};
}
// max backward, scatter form: any indices (those outside the plane are skipped).
template <typename T>
void max_bwd_scatter_slice(const PoolDesc& d, const Tensor4& dy, const Tensor4& ind, const Tensor4& dx, int64_t n,
                           int64_t c0, int64_t c1) {
  const int64_t plane = d.H * d.W;
  const bool flat = dx.stride[2] == d.W * dx.stride[3] || d.H == 1;  // offset of h*W+w is one multiply
  zero_slice<T>(dx, n, c0, c1);
  T* dxn = static_cast<T*>(dx.data) + n * dx.stride[0];
  const T* DY = static_cast<const T*>(dy.data) + n * dy.stride[0];
  const int64_t* IND = static_cast<const int64_t*>(ind.data) + n * ind.stride[0];
  if (c1 == c0 + 1 && flat && dx.stride[3] == 1 && dy.stride[3] == 1 && ind.stride[3] == 1) {  // NCHW rows
    T* dxp = dxn + c0 * dx.stride[1];
    for (int64_t p = 0; p < d.P; ++p) {
      const T* g = DY + c0 * dy.stride[1] + p * dy.stride[2];
      const int64_t* ix = IND + c0 * ind.stride[1] + p * ind.stride[2];
      for (int64_t q = 0; q < d.Q; ++q) {
        const int64_t i = ix[q];
        if ((uint64_t)i < (uint64_t)plane) dxp[i] += g[q];
      }
    }
    return;
  }
  if (flat && dx.stride[1] == 1 && dy.stride[1] == 1 && ind.stride[1] == 1) {  // channels_last
    const int64_t sdw = dx.stride[3];
    for (int64_t p = 0; p < d.P; ++p)
      for (int64_t q = 0; q < d.Q; ++q) {
        const T* g = DY + p * dy.stride[2] + q * dy.stride[3];
        const int64_t* ix = IND + p * ind.stride[2] + q * ind.stride[3];
        for (int64_t c = c0; c < c1; ++c) {
          const int64_t i = ix[c];
          if ((uint64_t)i < (uint64_t)plane) dxn[i * sdw + c] += g[c];
        }
      }
    return;
  }
  for (int64_t p = 0; p < d.P; ++p)
    for (int64_t q = 0; q < d.Q; ++q) {
      const T* g = DY + p * dy.stride[2] + q * dy.stride[3];
      const int64_t* ix = IND + p * ind.stride[2] + q * ind.stride[3];
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t i = ix[c * ind.stride[1]];
        if ((uint64_t)i >= (uint64_t)plane) continue;
        const int64_t off = flat ? i * dx.stride[3] : (i / d.W) * dx.stride[2] + (i % d.W) * dx.stride[3];
        dxn[off + c * dx.stride[1]] += g[c * dy.stride[1]];
      }
    }
}

}  // namespace

template <typename T>
void max_bwd_scatter(const PoolDesc& d, const Tensor4& dy, const Tensor4& ind, const Tensor4& dx, int nthreads) {
  const int64_t cost = (d.H * d.W + 2 * d.P * d.Q) * d.N * d.C;
  const int64_t cb = dx.stride[1] == 1 && d.C > 1 ? channel_block(d, nthreads, Vec<T>::L) : 1;
  const int64_t nblk = (d.C + cb - 1) / cb;
  parallel_ranges(d.N * nblk, cost, nthreads, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / nblk, c0 = (t % nblk) * cb;
      max_bwd_scatter_slice<T>(d, dy, ind, dx, n, c0, std::min(c0 + cb, d.C));
    }
  });
}

// avg backward, channels_last dx: scatter of dy/divisor over each window, vectorized along c.
template <typename T>
void avg_bwd_nhwc(const PoolDesc& d, const Tensor4& dy, const Tensor4& dx, int nthreads) {
  using V = typename Vec<T>::v;
  constexpr int L = Vec<T>::L;
  const T* DY = static_cast<const T*>(dy.data);
  T* DX = static_cast<T*>(dx.data);
  const int64_t cb = channel_block(d, nthreads, L), nblk = (d.C + cb - 1) / cb;
  const int64_t sdc = dy.stride[1];
  parallel_ranges(d.N * nblk, (d.H * d.W + d.P * d.Q) * d.N * d.C, nthreads, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / nblk, c0 = (t % nblk) * cb, c1 = std::min(c0 + cb, d.C);
      zero_slice<T>(dx, n, c0, c1);
      T* dxn = DX + n * dx.stride[0];
      for (int64_t p = 0; p < d.P; ++p)
        for (int64_t q = 0; q < d.Q; ++q) {
          const AvgRange ar = avg_range(d, p, q);
          if (ar.h0 >= ar.h1 || ar.w0 >= ar.w1) continue;
          const T* g = DY + n * dy.stride[0] + p * dy.stride[2] + q * dy.stride[3];
          int64_t c = c0;
          for (; c + L <= c1; c += L) {
            V gv;
            if (sdc == 1)
              gv = loadu<V>(g + c);
            else
              for (int l = 0; l < L; ++l) gv[l] = g[(c + l) * sdc];
            gv = divide(gv, T(ar.divisor));
            for (int64_t h = ar.h0; h < ar.h1; ++h)
              for (int64_t w = ar.w0; w < ar.w1; ++w) {
                T* px = dxn + h * dx.stride[2] + w * dx.stride[3] + c;
                storeu(px, loadu<V>(px) + gv);
              }
          }
          for (; c < c1; ++c) {
            const T gs = g[c * sdc] / T(ar.divisor);
            for (int64_t h = ar.h0; h < ar.h1; ++h)
              for (int64_t w = ar.w0; w < ar.w1; ++w) dxn[h * dx.stride[2] + w * dx.stride[3] + c] += gs;
          }
        }
    }
  });
}

// avg backward, one (n, c) plane at a time, gather form vectorized along w. With G[p, q] = dy / divisor
// (0 for an empty window) and U_p the row G[p, :] spread to columns t = q*stride_w (zeros between and
// around), dx[h, w] = sum over p covering h, ascending, of sum_{t = w+pad-k+1 .. w+pad} U_p[t]: the terms
// come in torch's (p, q) scatter order and the zeros add +0 to a sum that started at +0, so the result is
// bitwise the scatter's, every dx element is written once and all loads are contiguous.
template <typename T>
void avg_bwd_nchw(const PoolDesc& d, const Tensor4& dy, const Tensor4& dx, int nthreads) {
  using V = typename Vec<T>::v;
  constexpr int L = Vec<T>::L;
  const T* DY = static_cast<const T*>(dy.data);
  T* DX = static_cast<T*>(dx.data);
  const int64_t kw = d.kernel_w, ulen = d.W + d.pad_w + kw - 1;  // U_p[t] at u[p*ulen + t + kw - 1]
  const int64_t sdh = dx.stride[2], sdw = dx.stride[3], sw = d.stride_w;
  std::vector<T> divs(d.P * d.Q);  // divisor of each window, 0 for an empty one (no contribution)
  for (int64_t p = 0; p < d.P; ++p)
    for (int64_t q = 0; q < d.Q; ++q) {
      const AvgRange ar = avg_range(d, p, q);
      divs[p * d.Q + q] = (ar.h0 >= ar.h1 || ar.w0 >= ar.w1) ? T(0) : T(ar.divisor);
    }
  parallel_ranges(d.N * d.C, (d.H * d.W + d.P * d.Q) * d.N * d.C, nthreads, [&](int64_t t0, int64_t t1) {
    std::vector<T> u(d.P * ulen);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / d.C, c = t % d.C;
      const T* g = DY + n * dy.stride[0] + c * dy.stride[1];
      T* dxp = DX + n * dx.stride[0] + c * dx.stride[1];
      std::fill(u.begin(), u.end(), T(0));
      for (int64_t p = 0; p < d.P; ++p) {
        const T* gr = g + p * dy.stride[2];
        const T* dr = divs.data() + p * d.Q;
        T* ur = u.data() + p * ulen + kw - 1;
        int64_t q = 0;
        if (dy.stride[3] == 1)
          for (; q + L <= d.Q; q += L) {
            const V dv = loadu<V>(dr + q);
            const V gv = dv != 0 ? loadu<V>(gr + q) / dv : V{};
            if (sw == 1)
              storeu(ur + q, gv);
            else
              for (int l = 0; l < L; ++l) ur[(q + l) * sw] = gv[l];
          }
        for (; q < d.Q; ++q)
          if (dr[q] != 0) ur[q * sw] = gr[q * dy.stride[3]] / dr[q];
      }
      for (int64_t h = 0; h < d.H; ++h) {
        const Cover cp = cover(h, d.pad_h, d.stride_h, d.kernel_h, 1, d.P);
        T* row = dxp + h * sdh;
        int64_t w = 0;
        if (sdw == 1 && d.W >= L) {
          for (int64_t wc = 0;; wc += L) {  // last chunk overlaps: each element is computed, not added
            w = std::min(wc, d.W - L);
            V acc = V{};
            for (int64_t p = cp.lo; p <= cp.hi; ++p) {
              const T* up = u.data() + p * ulen + w + d.pad_w;
              for (int64_t j = 0; j < kw; ++j) acc += loadu<V>(up + j);
            }
            storeu(row + w, acc);
            if (w + L >= d.W) break;
          }
          w = d.W;
        }
        for (; w < d.W; ++w) {
          T acc = 0;
          for (int64_t p = cp.lo; p <= cp.hi; ++p) {
            const T* up = u.data() + p * ulen + w + d.pad_w;
            for (int64_t j = 0; j < kw; ++j) acc += up[j];
          }
          row[w * sdw] = acc;
        }
      }
    }
  });
}

// The instances pool2d_isa.cpp's path choice calls.
#define FC_POOL_BWD_INSTANCES(T)                                                                          \
  template void max_bwd_scatter<T>(const PoolDesc&, const Tensor4&, const Tensor4&, const Tensor4&, int); \
  template void avg_bwd_nhwc<T>(const PoolDesc&, const Tensor4&, const Tensor4&, int);                    \
  template void avg_bwd_nchw<T>(const PoolDesc&, const Tensor4&, const Tensor4&, int);
FC_POOL_BWD_INSTANCES(float)
FC_POOL_BWD_INSTANCES(double)
#undef FC_POOL_BWD_INSTANCES

}  // namespace FC_ISA
}  // namespace cpu
}  // namespace fastconv

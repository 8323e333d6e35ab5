// Weight gradient of grouped / dense convolutions as a GEMM per group,
//     dw[CgRS x Kg] = col[CgRS x NPQ] * dy^T[NPQ x Kg],
// rows (c, r, s) (wgrad_gemm: row kernels over packed col rows; wgrad_gemm_cl: channels_last x and dy),
// tasks owning disjoint (group, row block, fixed reduction chunk) tiles, chunks summed in chunk order:
// deterministic for any thread count. Also the bias gradient's own pass over dy (bias_grad), for the
// layers whose weight-gradient kernel does not carry it along.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/conv2d_paths.h"

namespace fastconv {
namespace cpu {
namespace FC_ISA {
namespace {

// ---------------------------------------------------------------------------------------------
// wgrad: C[CgRS x Kg] = col[CgRS x NPQ] * dy^T[NPQ x Kg] per group, rows (c, r, s), ukr_rows.
struct WRun {
  int64_t off, n, p, q, len;
};

template <typename T, int MR, int NV>
void wgrad_gemm(const ConvDesc& d, In4<T> x, In4<T> dy, In4<T> m, Out4<T> dw, int nth) {
  using Sd = Simd<T>;
  using V = typename Sd::V;
  constexpr int L = Sd::L;
  constexpr int NR = NV * L;
  const int64_t G = d.groups, Cg = d.C / G, Kg = d.K / G, RS = d.R * d.S, CRS = Cg * RS;
  const int64_t PQ = d.P * d.Q, NPQ = d.N * PQ;
  const int64_t nJr = cdiv(Kg, NR), Npad = nJr * NR;
  const int64_t MCw = MR * std::min(cdiv(CRS, MR), cdiv(96, MR));
  const int64_t nRb = cdiv(CRS, MCw), CRSpad = nRb * MCw;
  const int64_t KCP = std::max<int64_t>(64, std::min<int64_t>(512, (24 * 1024) / (NR * (int64_t)sizeof(T))));
  // Fixed reduction chunks (a function of the problem only) so that small dW still feeds every core.
  const int64_t rowtasks = G * nRb;
  int64_t nz = std::min<int64_t>(cdiv(32, rowtasks), std::max<int64_t>(1, NPQ / 2048));
  const int64_t zlen = cdiv(NPQ, std::max<int64_t>(nz, 1));
  nz = std::max<int64_t>(1, cdiv(NPQ, zlen));
  Buf<T> part(nz * G * CRSpad * Npad);
  const int64_t ntask = nz * rowtasks;
  const int64_t asz = MCw * KCP, bsz = Npad * KCP;
  Buf<T> scratch(nth * (asz + bsz));
  std::vector<WRun> runs_all(nth * (KCP + 2));
  std::vector<const T*> rows_all(nth * MCw);
  std::vector<QRange> qrange(d.S);
  for (int64_t s = 0; s < d.S; ++s) qrange[s] = valid_cols(s * d.dil_w - d.pad_w, d.stride_w, d.W, d.Q);

#pragma omp parallel num_threads(nth)
  {
    const int tid = thread_id();
    T* Ab = scratch.p + tid * (asz + bsz);
    T* Bb = Ab + asz;
    WRun* runs = runs_all.data() + tid * (KCP + 2);
    const T** rows = rows_all.data() + tid * MCw;
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < ntask; ++task) {
      const int64_t rb = task % nRb, t2 = task / nRb, gi = t2 % G, z = t2 / G;
      const int64_t pix0 = z * zlen, pix1 = std::min(NPQ, pix0 + zlen);
      const int64_t row0 = rb * MCw, mr = std::min(MCw, CRS - row0), nir = cdiv(mr, MR);
      T* Cz = part.p + ((z * G + gi) * CRSpad + row0) * Npad;
      if (pix1 <= pix0) {
        for (int64_t i = 0; i < MCw * Npad; ++i) Cz[i] = T(0);
        continue;
      }
      const int64_t nblk = cdiv(pix1 - pix0, KCP);
      for (int64_t bi = 0; bi < nblk; ++bi) {
        const int64_t a0 = pix0 + bi * KCP, kl = std::min(KCP, pix1 - a0);
        int64_t nruns = 0;
        for (int64_t kk = 0; kk < kl;) {
          const int64_t j = a0 + kk, n = j / PQ, pq = j % PQ, p = pq / d.Q, q = pq % d.Q;
          const int64_t len = std::min(d.Q - q, kl - kk);
          runs[nruns++] = {kk, n, p, q, len};
          kk += len;
        }
        // B = masked dy^T: [nJr][kl][NR]
        for (int64_t jr = 0; jr < nJr; ++jr) {
          T* bj = Bb + jr * kl * NR;
          for (int l = 0; l < NR; ++l) {
            const int64_t k = jr * NR + l;
            if (k >= Kg) {
              for (int64_t kk = 0; kk < kl; ++kk) bj[kk * NR + l] = T(0);
              continue;
            }
            const int64_t kabs = gi * Kg + k;
            for (int64_t ri = 0; ri < nruns; ++ri) {
              const WRun& ru = runs[ri];
              const T* src = dy.p + ru.n * dy.s0 + kabs * dy.s1 + ru.p * dy.s2 + ru.q * dy.s3;
              T* dst = bj + ru.off * NR + l;
              if (m.p) {
                const T* ms = m.p + ru.n * m.s0 + kabs * m.s1 + ru.p * m.s2 + ru.q * m.s3;
                for (int64_t t = 0; t < ru.len; ++t) dst[t * NR] = masked(src[t * dy.s3], ms[t * m.s3]);
              } else {
                for (int64_t t = 0; t < ru.len; ++t) dst[t * NR] = src[t * dy.s3];
              }
            }
          }
        }
        // A = im2col rows: [nir*MR][kl]
        for (int64_t ri = 0; ri < nir * MR; ++ri) {
          T* dst = Ab + ri * kl;
          rows[ri] = dst;
          const int64_t row = row0 + ri;
          if (ri >= mr) {
            for (int64_t kk = 0; kk < kl; ++kk) dst[kk] = T(0);
            continue;
          }
          const int64_t c = row / RS, rs = row % RS, r = rs / d.S, s = rs % d.S;
          for (int64_t u = 0; u < nruns; ++u) {
            const WRun& ru = runs[u];
            const int64_t ih = ru.p * d.stride_h - d.pad_h + r * d.dil_h;
            if (ih < 0 || ih >= d.H) {
              for (int64_t t = 0; t < ru.len; ++t) dst[ru.off + t] = T(0);
              continue;
            }
            const QRange qr = qrange[s];
            const int64_t tlo = std::min(ru.len, std::max<int64_t>(0, qr.lo - ru.q));
            const int64_t thi = std::min(ru.len, std::max(tlo, qr.hi - ru.q));
            copy_run(dst + ru.off, ru.len, tlo, thi, x.p + ru.n * x.s0 + (gi * Cg + c) * x.s1 + ih * x.s2, x.s3,
                     (const T*)nullptr, 0, ru.q * d.stride_w - d.pad_w + s * d.dil_w, d.stride_w);
          }
        }
        const bool first = bi == 0;
        for (int64_t jr = 0; jr < nJr; ++jr) {
          const T* bp = Bb + jr * kl * NR;
          for (int64_t ir = 0; ir < nir; ++ir) {
            ukr_rows<T, MR, NV>(1, rows + ir * MR, &kl, bp, [&](V(&acc)[MR][NV]) {
              store_or_accumulate<T, MR, NV>(acc, Cz + ir * MR * Npad + jr * NR, Npad, first);
            });
          }
        }
      }
    }
  }
  // dw[g*Kg + k][c][r][s] = sum_z part[z][g][crs][k], z ascending.
#pragma omp parallel for num_threads(nth) schedule(static)
  for (int64_t t = 0; t < G * CRS; ++t) {
    const int64_t gi = t / CRS, row = t % CRS, c = row / RS, rs = row % RS, r = rs / d.S, s = rs % d.S;
    for (int64_t k = 0; k < Kg; ++k) {
      T acc = part.p[((0 * G + gi) * CRSpad + row) * Npad + k];
      for (int64_t z = 1; z < nz; ++z) acc += part.p[((z * G + gi) * CRSpad + row) * Npad + k];
      dw.p[(gi * Kg + k) * dw.s0 + c * dw.s1 + r * dw.s2 + s * dw.s3] = acc;
    }
  }
}

// wgrad for a channels_last input: C[Kg x RS*Cg] = dy^T[Kg x NPQ] * col[NPQ x RS*Cg] per group,
// columns in (tap, c) order so B rows are contiguous channel runs of x; ukr_panel (vectors along
// the columns). Tasks own (group, column block, fixed reduction chunk); chunks summed in order.
template <typename T, int MR, int NV>
void wgrad_gemm_cl(const ConvDesc& d, In4<T> x, In4<T> dy, In4<T> m, Out4<T> dw, int nth) {
  using Sd = Simd<T>;
  using V = typename Sd::V;
  constexpr int L = Sd::L;
  constexpr int NR = NV * L;
  const int64_t G = d.groups, Cg = d.C / G, Kg = d.K / G, RS = d.R * d.S, NCOL = RS * Cg;
  const int64_t PQ = d.P * d.Q, NPQ = d.N * PQ;
  const int64_t nIr = cdiv(Kg, MR), Mpad = nIr * MR;
  const int64_t npt = std::min<int64_t>(cdiv(NCOL, NR), 4), NCw = npt * NR;
  const int64_t nCb = cdiv(NCOL, NCw), NCOLpad = nCb * NCw;
  const int64_t KCP = std::max<int64_t>(64, (24 * 1024) / (NR * (int64_t)sizeof(T)));
  const int64_t coltasks = G * nCb;
  int64_t nz = std::min<int64_t>(cdiv(32, coltasks), std::max<int64_t>(1, NPQ / 2048));
  const int64_t zlen = cdiv(NPQ, std::max<int64_t>(nz, 1));
  nz = std::max<int64_t>(1, cdiv(NPQ, zlen));
  Buf<T> part(nz * G * Mpad * NCOLpad);  // [z][g][k][col]
  const int64_t ntask = nz * coltasks;
  const int64_t asz = Mpad * KCP, bsz = NCw * KCP;
  Buf<T> scratch(nth * (asz + bsz));
#pragma omp parallel num_threads(nth)
  {
    T* Ab = scratch.p + thread_id() * (asz + bsz);
    T* Bb = Ab + asz;
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < ntask; ++task) {
      const int64_t cb = task % nCb, t2 = task / nCb, gi = t2 % G, z = t2 / G;
      const int64_t pix0 = z * zlen, pix1 = std::min(NPQ, pix0 + zlen);
      const int64_t col0 = cb * NCw, ncol = std::min(NCw, NCOL - col0), npan = cdiv(ncol, NR);
      T* Cz = part.p + (z * G + gi) * Mpad * NCOLpad + col0;  // ldc = NCOLpad
      if (pix1 <= pix0) {
        for (int64_t k = 0; k < Mpad; ++k) zero_n(Cz + k * NCOLpad, NCw);
        continue;
      }
      const int64_t nblk = cdiv(pix1 - pix0, KCP);
      for (int64_t bi = 0; bi < nblk; ++bi) {
        const int64_t a0 = pix0 + bi * KCP, kl = std::min(KCP, pix1 - a0);
        int64_t n = a0 / PQ, p = (a0 % PQ) / d.Q, q = a0 % d.Q;
        for (int64_t kk = 0; kk < kl; ++kk) {
          // A: masked dy, [ir][kk][MR]
          const T* dp = dy.p + n * dy.s0 + gi * Kg * dy.s1 + p * dy.s2 + q * dy.s3;
          const T* mp = m.p ? m.p + n * m.s0 + gi * Kg * m.s1 + p * m.s2 + q * m.s3 : nullptr;
          for (int64_t k = 0; k < Mpad; ++k) {
            T v = T(0);
            if (k < Kg) v = mp ? masked(dp[k * dy.s1], mp[k * m.s1]) : dp[k * dy.s1];
            Ab[((k / MR) * kl + kk) * MR + k % MR] = v;
          }
          // B: im2col row of this pixel, columns [col0, col0 + npan*NR) in (tap, c) order
          const T* xn = x.p + n * x.s0 + gi * Cg * x.s1;
          for (int64_t jp = 0; jp < npan; ++jp) {
            T* dst = Bb + (jp * kl + kk) * NR;
            int64_t col = col0 + jp * NR;
            const int64_t cend = std::min(col + NR, NCOL);
            while (col < cend) {
              const int64_t tap = col / Cg, c = col - tap * Cg, len = std::min(Cg - c, cend - col);
              const int64_t r = tap / d.S, s = tap - r * d.S;
              const int64_t ih = p * d.stride_h - d.pad_h + r * d.dil_h, iw = q * d.stride_w - d.pad_w + s * d.dil_w;
              if (ih >= 0 && ih < d.H && iw >= 0 && iw < d.W)
                copy_n(dst, xn + ih * x.s2 + iw * x.s3 + c, len);
              else
                zero_n(dst, len);
              dst += len;
              col += len;
            }
            if (col < col0 + (jp + 1) * NR) zero_n(dst, col0 + (jp + 1) * NR - col);
          }
          if (++q == d.Q) {
            q = 0;
            if (++p == d.P) {
              p = 0;
              ++n;
            }
          }
        }
        const bool first = bi == 0;
        for (int64_t jr = 0; jr < npan; ++jr)
          for (int64_t ir = 0; ir < nIr; ++ir)
            ukr_panel<T, MR, NV>(kl, Ab + ir * kl * MR, Bb + jr * kl * NR, [&](V(&acc)[MR][NV]) {
              store_or_accumulate<T, MR, NV>(acc, Cz + ir * MR * NCOLpad + jr * NR, NCOLpad, first);
            });
      }
      // panels past ncol inside this block stay unwritten; they are never read
    }
  }
#pragma omp parallel for num_threads(nth) schedule(static)
  for (int64_t t = 0; t < G * Kg; ++t) {
    const int64_t gi = t / Kg, k = t % Kg;
    for (int64_t col = 0; col < NCOL; ++col) {
      T acc = part.p[(gi * Mpad + k) * NCOLpad + col];
      for (int64_t z = 1; z < nz; ++z) acc += part.p[((z * G + gi) * Mpad + k) * NCOLpad + col];
      const int64_t tap = col / Cg, c = col % Cg;
      dw.p[(gi * Kg + k) * dw.s0 + c * dw.s1 + (tap / d.S) * dw.s2 + (tap % d.S) * dw.s3] = acc;
    }
  }
}

template <typename T>
struct WgradRunner {
  const ConvDesc& d;
  In4<T> x, dy, m;
  Out4<T> dw;
  int nth;
  template <int MR, int NV>
  void operator()() const {
    wgrad_gemm<T, MR, NV>(d, x, dy, m, dw, nth);
  }
};

}  // namespace

template <typename T>
void wgrad_gemm_nchw(const ConvDesc& d, In4<T> x, In4<T> dy, In4<T> m, Out4<T> dw, int nth) {
  with_rows_shape<T>(d.K / d.groups, WgradRunner<T>{d, x, dy, m, dw, nth});
}

template <typename T>
void wgrad_gemm_nhwc(const ConvDesc& d, In4<T> x, In4<T> dy, In4<T> m, Out4<T> dw, int nth) {
  wgrad_gemm_cl<T, kPixMR, kPixNV>(d, x, dy, m, dw, nth);
}

// dbias[k] = sum_n (sum_{p,q} masked dy[n,k,p,q]): per-image partials, then summed over n in order.
template <typename T>
void bias_grad(const ConvDesc& d, In4<T> dy, In4<T> m, T* db, int nth) {
  const int64_t K = d.K;
  std::vector<T> part(d.N * K);
  const bool kvec = dy.s1 == 1 && (m.p == nullptr || m.s1 == 1);
#pragma omp parallel for num_threads(nth) schedule(dynamic, 1)
  for (int64_t n = 0; n < d.N; ++n) {
    T* __restrict pn = part.data() + n * K;
    if (kvec) {
      for (int64_t k = 0; k < K; ++k) pn[k] = T(0);
      for (int64_t p = 0; p < d.P; ++p)
        for (int64_t q = 0; q < d.Q; ++q) {
          const T* __restrict src = dy.p + n * dy.s0 + p * dy.s2 + q * dy.s3;
          if (m.p) {
            const T* __restrict ms = m.p + n * m.s0 + p * m.s2 + q * m.s3;
            for (int64_t k = 0; k < K; ++k) pn[k] += masked(src[k], ms[k]);
          } else {
            for (int64_t k = 0; k < K; ++k) pn[k] += src[k];
          }
        }
    } else {
      // Contiguous rows (NCHW): vectors along q, lanes summed in order at the end; a scalar loop
      // (no reassociation without -ffast-math) takes 2 of the 20.6 ms of a 128-channel N=32 32x32
      // NCHW conv2d_relu backward.
      using Sd = Simd<T>;
      using V = typename Sd::V;
      constexpr int L = Sd::L;
      const bool qvec = dy.s3 == 1 && (m.p == nullptr || m.s3 == 1);
      for (int64_t k = 0; k < K; ++k) {
        V av = Sd::zero();
        T acc = T(0);
        for (int64_t p = 0; p < d.P; ++p) {
          const T* src = dy.p + n * dy.s0 + k * dy.s1 + p * dy.s2;
          const T* ms = m.p ? m.p + n * m.s0 + k * m.s1 + p * m.s2 : nullptr;
          int64_t q = 0;
          for (; qvec && q + L <= d.Q; q += L) {
            V v = Sd::load(src + q);
            if (ms) v = Sd::mask_le0(v, Sd::load(ms + q));
            av = Sd::add(av, v);
          }
          if (ms)
            for (; q < d.Q; ++q) acc += masked(src[q * dy.s3], ms[q * m.s3]);
          else
            for (; q < d.Q; ++q) acc += src[q * dy.s3];
        }
        pn[k] = sum_lanes_in_order<T>(av) + acc;
      }
    }
  }
  bias_grad_sum_images(part.data(), d.N, K, db);
}

#define FC_INSTANTIATE(T) \
  template void wgrad_gemm_nchw<T>(const ConvDesc&, In4<T>, In4<T>, In4<T>, Out4<T>, int); \
  template void wgrad_gemm_nhwc<T>(const ConvDesc&, In4<T>, In4<T>, In4<T>, Out4<T>, int); \
  template void bias_grad<T>(const ConvDesc&, In4<T>, In4<T>, T*, int);
FC_FOR_FLOAT_TYPES(FC_INSTANTIATE)
#undef FC_INSTANTIATE

}  // namespace FC_ISA
}  // namespace cpu
}  // namespace fastconv

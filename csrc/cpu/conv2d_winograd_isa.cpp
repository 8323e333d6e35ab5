// Winograd F(4x4, 3x3) convolution for float32 3x3 stride-1 layers: forward (bias + ReLU fused in
// the output transform), input gradient (a forward pass over dy with the flipped, transposed weight;
// the fused op's ReLU mask applied while dy is staged) and weight gradient.
//
// Math (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016; interpolation points
// 0, +-1, +-2, inf). A 4x4 output tile Y comes from a 6x6 input patch d and the 3x3 filter g:
//     Y = A^T [ (G g G^T) . (B^T d B) ] A        (. = elementwise over the 36 positions)
// so with V_i[tile][c] = (B^T d B)_i and U_i[c][k] = (G g G^T)_i the 144 multiplies per output pixel
// and channel pair of direct convolution become 36 per 16 pixels: 36 independent GEMMs
// M_i[tile][k] = sum_c V_i[tile][c] U_i[c][k], 4x fewer FLOPs than direct convolution, plus the
// transforms (O(C + K) work per tile, against O(C*K) in the GEMMs).
// The weight gradient is the transpose of the same bilinear map:
//     dW = G^T [ sum_tiles (B^T d B) . (A dY A^T) ] G,
// again 36 GEMMs, S_i[c][k] = sum_tiles V_i[tile][c] E_i[tile][k] with E = A dY A^T, then one
// output transform per weight. All three are exact in real arithmetic; in float32 the transforms
// add rounding (measured relative error ~1e-6..4e-6 against float64 on 64..256-channel layers,
// direct convolution ~2e-7), the price every Winograd library pays. FASTCONV_CPU_WINOGRAD=0 turns
// the path off.
//
// Forward schedule (per OpenMP task = a block of T consecutive tiles, (n, tile row, tile col) order):
//   1. input transform of the block into V[36][T][Cp] (vectors of L channels, L = 16 at AVX-512, 8 at
//      AVX2; the source is read in place when channels_last, else from a channels_last staging copy of
//      the whole input),
//   2. for each kChunk-wide chunk of K (64 at AVX-512, 16 at AVX2: cl_blocks.h): 36 GEMMs
//      [T x C] x [C x kChunk] with the 6 x kChunk register-blocked microkernel (ukr_rows: A rows are the
//      tiles' V rows, B = U_i's K chunk packed [C][kChunk]) into M[36][T][kChunk], then the output
//      transform of the chunk (+ bias, the epilogue) straight into y.
//   T tiles per block (the choice in forward_engine); U (36*C*K*4 bytes) streams from L3 once per
//   task, reused T times per element.
// Weight packing: U is computed L output channels per vector; fastconv/backends/cpu.py caches it per
// weight tensor, version and ISA level (WeightPack), so repeated calls with unchanged weights skip it.
// Weight gradient: S_i[c][k] = sum over tiles of V_i[tile][c] E_i[tile][k] (6 x kChunk register tiles,
// blocks of 64 tiles accumulated into S), then dW = G^T S G per weight (phase 3). Layers with
// C x K <= 128 x 128 and enough tiles split the tiles into at most 8 fixed groups; a task transforms
// its group 64 tiles at a time into L2/L1-resident V, E blocks and accumulates its own S_g; the S_g
// are summed in group order. Wider layers (few tiles, S too big to keep per group) transform every
// tile into V[36][tiles][Cp], E[36][tiles][Kp] first, then run (i, kChunk-wide k chunk) tasks.
//
// Determinism: every output element is produced by one task with a reduction order fixed by the
// problem (tile blocks, chunk boundaries), never by the thread count; no atomics.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu/cl_blocks.h"
#include "cpu/gemm_microkernel.h"
#include "cpu/kernels.h"
#include "cpu/conv2d_winograd.h"

namespace fastconv {
namespace cpu {
namespace FC_ISA {


#if FC_CL_BLOCKS
namespace {
bool env_disabled() {
  const char* e = std::getenv("FASTCONV_CPU_WINOGRAD");
  return e != nullptr && (std::strcmp(e, "0") == 0 || std::strcmp(e, "off") == 0 || std::strcmp(e, "false") == 0);
}
// Geometry of a Winograd forward-style problem: input Cin x H x W, output Kout x P x Q, pads ph/pw.
bool geometry_ok(int64_t Cin, int64_t Kout, int64_t P, int64_t Q, int64_t ph, int64_t pw) {
  if (Cin < 16 || Kout < 16 || ph < 0 || ph > 2 || pw < 0 || pw > 2) return false;
  // At least half of each computed 4x4 tile is real output (14x14 layers: 196 of 256).
  return 2 * P * Q >= cdiv(P, 4) * cdiv(Q, 4) * 16;
}
}  // namespace
#endif

namespace {
// winograd_usable with a lower bound on the batch's 4x4 output tiles.
bool usable_with_tiles(const ConvDesc& d, DType dt, int64_t min_tiles) {
#if FC_CL_BLOCKS
  if (dt != kFloat32 || d.R != 3 || d.S != 3 || d.stride_h != 1 || d.stride_w != 1 || d.dil_h != 1 ||
      d.dil_w != 1 || d.groups != 1 || d.N == 0)
    return false;
  if (!geometry_ok(d.C, d.K, d.P, d.Q, d.pad_h, d.pad_w)) return false;
  if (d.N * cdiv(d.P, 4) * cdiv(d.Q, 4) < min_tiles) return false;
  return !env_disabled();
#else
  (void)d;
  (void)dt;
  (void)min_tiles;
  return false;
#endif
}
}  // namespace

// At least 32 tiles: the transformed weight U (and the weight gradient's S) is 36 x C x K floats,
// 4x the weight, re-made every training step; with few tiles that traffic outweighs the saved
// FLOPs. ResNet-18 at batch 4, 512 channels at 4x4 (4 tiles): the weight gradient is 4x slower than
// direct; at 32 tiles 13 ms against 33 ms direct (AVX-512). At AVX2, 16 tiles (ResNet's 14x14 layers
// at batch 1) lost in a network for the forward (ResNet-18 b1 inference 1.74 -> 1.43x torch): U
// streams from memory on every call.
bool winograd_usable(const ConvDesc& d, DType dt) { return usable_with_tiles(d, dt, 32); }

// The weight gradient reads no U, and at the AVX2 level the direct weight gradients of small maps are
// slow: 2 threads, AMD EPYC Zen 3, ms Winograd against direct at 16 tiles: 1x256x14x14 3x3 1.54 vs 2.76
// (NCHW), 1.77 vs 3.15 (channels_last), 4x512x7x7 13.5 vs 20.9, 1x64x16x16 0.22 vs 0.41; below 16 tiles
// it can lose (1x128x8x8, 4 tiles: 0.64 vs 0.42). AVX-512 keeps the forward's bound (not measured there).
#if defined(__AVX512F__)
constexpr int64_t kWgradMinTiles = 32;
#else
constexpr int64_t kWgradMinTiles = 16;
#endif
bool winograd_wgrad_usable(const ConvDesc& d, DType dt) { return usable_with_tiles(d, dt, kWgradMinTiles); }

int64_t winograd_pack_floats(const ConvDesc& d, DType dt, WinogradPass pass) {
  if (!winograd_usable(d, dt)) return 0;
#if FC_CL_BLOCKS
  return pass == WinogradPass::kForward ? 36 * d.C * round_up(d.K, L) : 36 * d.K * round_up(d.C, L);
#else
  return 0;  // unreachable: winograd_usable is false without the vector builds
#endif
}

#if FC_CL_BLOCKS
namespace {

#if defined(__AVX512F__)
FC_INLINE V mul(V a, float s) { return _mm512_mul_ps(a, _mm512_set1_ps(s)); }
FC_INLINE V sub(V a, V b) { return _mm512_sub_ps(a, b); }
#else
FC_INLINE V mul(V a, float s) { return _mm256_mul_ps(a, _mm256_set1_ps(s)); }
FC_INLINE V sub(V a, V b) { return _mm256_sub_ps(a, b); }
#endif
FC_INLINE V fmadd(V a, float s, V c) { return Sf::fma(a, Sf::set1(s), c); }
FC_INLINE V add(V a, V b) { return Sf::add(a, b); }

// out = B^T in (6 -> 6):
//   r0 = 4 d0 - 5 d2 + d4          r3 = -2 d1 - d2 + 2 d3 + d4
//   r1 = -4 (d1 + d2) + d3 + d4    r4 =  2 d1 - d2 - 2 d3 + d4
//   r2 =  4 (d1 - d2) - d3 + d4    r5 = 4 d1 - 5 d3 + d5
FC_INLINE void bt6(const V* in, int is, V* out, int os) {
  const V d0 = in[0], d1 = in[is], d2 = in[2 * is], d3 = in[3 * is], d4 = in[4 * is], d5 = in[5 * is];
  const V t34 = add(d3, d4), t4m2 = sub(d4, d2);
  out[0] = fmadd(d2, -5.f, fmadd(d0, 4.f, d4));
  out[os] = fmadd(add(d1, d2), -4.f, t34);
  out[2 * os] = fmadd(sub(d1, d2), 4.f, sub(d4, d3));
  out[3 * os] = fmadd(sub(d3, d1), 2.f, t4m2);
  out[4 * os] = fmadd(sub(d1, d3), 2.f, t4m2);
  out[5 * os] = fmadd(d3, -5.f, fmadd(d1, 4.f, d5));
}

// out = A^T in (6 -> 4):
//   o0 = m0 + m1 + m2 + m3 + m4    o2 = m1 + m2 + 4 (m3 + m4)
//   o1 = m1 - m2 + 2 (m3 - m4)     o3 = m1 - m2 + 8 (m3 - m4) + m5
FC_INLINE void at4(const V* in, int is, V* out, int os) {
  const V m0 = in[0], m1 = in[is], m2 = in[2 * is], m3 = in[3 * is], m4 = in[4 * is], m5 = in[5 * is];
  const V s12 = add(m1, m2), d12 = sub(m1, m2), s34 = add(m3, m4), d34 = sub(m3, m4);
  out[0] = add(add(m0, s12), s34);
  out[os] = fmadd(d34, 2.f, d12);
  out[2 * os] = fmadd(s34, 4.f, s12);
  out[3 * os] = add(fmadd(d34, 8.f, d12), m5);
}

// out = A in (4 -> 6), the weight gradient's transform of a 4x4 dy tile:
//   e0 = d0, e1 = d0 + d1 + d2 + d3, e2 = d0 - d1 + d2 - d3,
//   e3 = d0 + 2 d1 + 4 d2 + 8 d3, e4 = d0 - 2 d1 + 4 d2 - 8 d3, e5 = d3
FC_INLINE void a6(const V* in, int is, V* out, int os) {
  const V d0 = in[0], d1 = in[is], d2 = in[2 * is], d3 = in[3 * is];
  const V s02 = add(d0, d2), s13 = add(d1, d3), e02 = fmadd(d2, 4.f, d0), e13 = fmadd(d3, 4.f, d1);
  out[0] = d0;
  out[os] = add(s02, s13);
  out[2 * os] = sub(s02, s13);
  out[3 * os] = fmadd(e13, 2.f, e02);
  out[4 * os] = fmadd(e13, -2.f, e02);
  out[5 * os] = d3;
}

// Tiles of the output grid (4x4 each), in (n, tile row, tile col) order.
struct TileGrid {
  int64_t N, P, Q, TP, TQ, count;
  TileGrid(int64_t n, int64_t p, int64_t q) : N(n), P(p), Q(q), TP(cdiv(p, 4)), TQ(cdiv(q, 4)), count(n * TP * TQ) {}
  void at(int64_t t, int64_t& n, int64_t& p0, int64_t& q0) const {
    n = t / (TP * TQ);
    const int64_t r = t % (TP * TQ);
    p0 = 4 * (r / TQ);
    q0 = 4 * (r % TQ);
  }
};

// V for one tile and one vector of channels [c0, c0 + nl): the 36 transformed vectors at
// out[i * ostride] (i = 6*row + col of the 6x6 patch whose corner is input (h0, w0)).
FC_INLINE void input_tile(const Src& s, int64_t n, int64_t h0, int64_t w0, int64_t c0, int nl, float* out,
                          int64_t ostride) {
  V d[36];
  const float* base = s.p + n * s.s0 + c0;
  if (h0 >= 0 && w0 >= 0 && h0 + 6 <= s.H && w0 + 6 <= s.W && nl == L) {
    FC_UNROLL for (int a = 0; a < 6; ++a) FC_UNROLL for (int b = 0; b < 6; ++b)
        d[6 * a + b] = Sf::load(base + (h0 + a) * s.s2 + (w0 + b) * s.s3);
  } else {
    for (int a = 0; a < 6; ++a)
      for (int b = 0; b < 6; ++b) {
        const int64_t h = h0 + a, w = w0 + b;
        d[6 * a + b] = (h >= 0 && h < s.H && w >= 0 && w < s.W) ? Sf::load_n(base + h * s.s2 + w * s.s3, nl)
                                                                 : Sf::zero();
      }
  }
  V t[36];
  FC_UNROLL for (int b = 0; b < 6; ++b) bt6(d + b, 6, t + b, 6);  // columns: t = B^T d
  FC_UNROLL for (int a = 0; a < 6; ++a) bt6(t + 6 * a, 1, d + 6 * a, 1);  // rows: (B^T d) B
  FC_UNROLL for (int i = 0; i < 36; ++i) Sf::store(out + i * ostride, d[i]);
}

// E = A dy A^T for one 4x4 dy tile (zeros past P, Q) and one channel vector, to out[i * ostride].
FC_INLINE void grad_tile(const Src& s, int64_t n, int64_t p0, int64_t q0, int64_t k0, int nl, float* out,
                         int64_t ostride) {
  V d[16];
  const float* base = s.p + n * s.s0 + k0;
  for (int a = 0; a < 4; ++a)
    for (int b = 0; b < 4; ++b) {
      const int64_t p = p0 + a, q = q0 + b;
      d[4 * a + b] = (p < s.H && q < s.W) ? Sf::load_n(base + p * s.s2 + q * s.s3, nl) : Sf::zero();
    }
  V t[24], e[36];
  FC_UNROLL for (int b = 0; b < 4; ++b) a6(d + b, 4, t + b, 4);    // columns: 6 x 4
  FC_UNROLL for (int a = 0; a < 6; ++a) a6(t + 4 * a, 1, e + 6 * a, 1);  // rows: 6 x 6
  FC_UNROLL for (int i = 0; i < 36; ++i) Sf::store(out + i * ostride, e[i]);
}

// Weight accessor of the forward-style problem: g(ko, ci, r, s) = p[ko*sk + ci*sc + r*sr + s*ss].
struct WAcc {
  const float* p;
  int64_t sk, sc, sr, ss;
};

// U[i][chunk][c][k in chunk] = (G g G^T)_i, chunk = kChunk output channels (the last one Kp - kChunk*j
// wide), L output channels per vector. Columns k in [Kout, Kp) are zero. In training the weights change
// every step, so this runs twice per layer and step (forward and input-gradient packs), vectorized:
// ~1 ms for a 512x512 layer, against ~30 ms in scalar double precision (a ResNet-18 step 4x slower
// than torch's). float32 with FMAs adds ~1e-7 relative error to U, far below the transforms' own ~1e-6.
void pack_weights(const WAcc& w, int64_t Cin, int64_t Kout, float* U, int nth) {
  const int64_t Kp = round_up(Kout, L), nkv = Kp / L;
#pragma omp parallel for num_threads(nth) schedule(static)
  for (int64_t task = 0; task < nkv * Cin; ++task) {
    const int64_t k0 = (task / Cin) * L, c = task % Cin;
    const int64_t j0 = (k0 / kChunk) * kChunk, nr = std::min<int64_t>(kChunk, Kp - j0), kk = k0 - j0;
    alignas(64) float g[9][L];
    for (int l = 0; l < L; ++l) {
      const int64_t k = k0 + l;
      for (int rs = 0; rs < 9; ++rs)
        g[rs][l] = k < Kout ? w.p[k * w.sk + c * w.sc + (rs / 3) * w.sr + (rs % 3) * w.ss] : 0.f;
    }
    // t = G g (6 x 3 per lane), then u = t G^T (6 x 6): rows of G are
    // (1/4, 0, 0), (-1/6, -1/6, -1/6), (-1/6, 1/6, -1/6), (1/24, 1/12, 1/6), (1/24, -1/12, 1/6), (0, 0, 1).
    const auto gmul = [](V a, V b, V c, V* out, int os) {
      const V ac = add(a, c);
      out[0] = mul(a, 0.25f);
      out[os] = mul(add(ac, b), -1.f / 6);
      out[2 * os] = mul(sub(ac, b), -1.f / 6);
      const V e = fmadd(a, 1.f / 24, mul(c, 1.f / 6));
      out[3 * os] = fmadd(b, 1.f / 12, e);
      out[4 * os] = fmadd(b, -1.f / 12, e);
      out[5 * os] = c;
    };
    V t[18], u[36];
    FC_UNROLL for (int s3 = 0; s3 < 3; ++s3)
      gmul(Sf::load(g[s3]), Sf::load(g[3 + s3]), Sf::load(g[6 + s3]), t + s3, 3);  // t[a][s] = (G g)[a][s]
    FC_UNROLL for (int a = 0; a < 6; ++a) gmul(t[3 * a], t[3 * a + 1], t[3 * a + 2], u + 6 * a, 1);
    float* base = U + j0 * Cin + c * nr + kk;
    FC_UNROLL for (int i = 0; i < 36; ++i) Sf::store(base + i * Cin * Kp, u[i]);
  }
}

// Output view: element (n, k, p, q) at p[n*s0 + k*s1 + p*s2 + q*s3].
struct Dst {
  float* p;
  int64_t s0, s1, s2, s3;
};

// 36 GEMMs of one tile block and one K chunk of NV vectors: M[i][t][0..NV*L) = V_i[t][0..C) U_i.
template <int NV>
void block_gemms(const float* Vb, int64_t T, int64_t nt, int64_t Cp, int64_t Cin, const float* Uc,
                 int64_t u_istride, const float* zero_row, float* M) {
  for (int i = 0; i < 36; ++i) {
    const float* Vi = Vb + i * T * Cp;
    const float* Ui = Uc + i * u_istride;
    float* Mi = M + i * T * kChunk;
    for (int64_t m0 = 0; m0 < nt; m0 += kMR) {
      const int rows_valid = static_cast<int>(std::min<int64_t>(kMR, nt - m0));
      const float* rows[kMR];
      for (int m = 0; m < kMR; ++m) rows[m] = m < rows_valid ? Vi + (m0 + m) * Cp : zero_row;
      ukr_rows<float, kMR, NV>(1, rows, &Cin, Ui, [&](V (&acc)[kMR][NV]) {
        for (int m = 0; m < rows_valid; ++m)
          FC_UNROLL for (int v = 0; v < NV; ++v) Sf::store(Mi + (m0 + m) * kChunk + v * L, acc[m][v]);
      });
    }
  }
}

// Output transform of one tile for the chunk's vectors: y tile = A^T M A (+ bias, the epilogue), stores
// only the pixels inside P x Q and the channels below Kout.
void output_tile(const float* M, int64_t T, int64_t tt, int nv, int64_t k0, int64_t Kout, const float* bias,
                 const Epi& ep, const Dst& y, int64_t n, int64_t p0, int64_t q0, int64_t P, int64_t Q) {
  const int pn = static_cast<int>(std::min<int64_t>(4, P - p0)), qn = static_cast<int>(std::min<int64_t>(4, Q - q0));
  const bool cl = y.s1 == 1;
  for (int v = 0; v < nv; ++v) {
    const int64_t kv = k0 + v * L;
    if (kv >= Kout) break;
    const int nl = static_cast<int>(std::min<int64_t>(L, Kout - kv));
    V m[36], t[24], o[16];
    FC_UNROLL for (int i = 0; i < 36; ++i) m[i] = Sf::load(M + (i * T + tt) * kChunk + v * L);
    FC_UNROLL for (int b = 0; b < 6; ++b) at4(m + b, 6, t + b, 6);       // columns: 4 x 6
    FC_UNROLL for (int a = 0; a < 4; ++a) at4(t + 6 * a, 1, o + 4 * a, 1);  // rows: 4 x 4
    const V bv = bias ? Sf::load_n(bias + kv, nl) : Sf::zero();
    FC_UNROLL for (int i = 0; i < 16; ++i) o[i] = epi_store_value<float>(ep, Sf::add(o[i], bv));
    float* yb = y.p + n * y.s0 + kv * y.s1 + p0 * y.s2 + q0 * y.s3;
    if (cl) {
      for (int a = 0; a < pn; ++a)
        for (int b = 0; b < qn; ++b) {
          if (nl == L)
            Sf::store(yb + a * y.s2 + b * y.s3, o[4 * a + b]);
          else
            Sf::store_n(yb + a * y.s2 + b * y.s3, o[4 * a + b], nl);
        }
    } else if (y.s3 == 1) {
      // Channel-major output: transpose so that o[l] holds channel kv+l's 4x4 tile (row a in lanes
      // 4a..4a+3), then one masked store per tile row (lanes 4a.. land at the row's start).
#if defined(__AVX512F__)
      transpose16(o);
      const __mmask16 row_lanes = static_cast<__mmask16>((1u << qn) - 1);
      for (int l = 0; l < nl; ++l)
        for (int a = 0; a < pn; ++a)
          _mm512_mask_storeu_ps(yb + l * y.s1 + a * y.s2 - 4 * a, static_cast<__mmask16>(row_lanes << (4 * a)), o[l]);
#else
      // 8 lanes: o[l] then holds channel kv+l's tile rows 0-1 (lanes 0-3, 4-7), o[8 + l] rows 2-3;
      // each row is one 128-bit half, stored whole or masked to its qn columns.
      transpose_block(o);
      transpose_block(o + 8);
      const __m128i cols = _mm_cmpgt_epi32(_mm_set1_epi32(qn), _mm_setr_epi32(0, 1, 2, 3));
      for (int l = 0; l < nl; ++l)
        for (int a = 0; a < pn; ++a) {
          const V rows = o[8 * (a / 2) + l];
          const __m128 row = (a % 2) ? _mm256_extractf128_ps(rows, 1) : _mm256_castps256_ps128(rows);
          float* dst = yb + l * y.s1 + a * y.s2;
          if (qn == 4)
            _mm_storeu_ps(dst, row);
          else
            _mm_maskstore_ps(dst, cols, row);
        }
#endif
    } else {
      alignas(64) float tmp[16][L];
      FC_UNROLL for (int i = 0; i < 16; ++i) Sf::store(tmp[i], o[i]);
      for (int l = 0; l < nl; ++l)
        for (int a = 0; a < pn; ++a)
          for (int b = 0; b < qn; ++b) yb[l * y.s1 + a * y.s2 + b * y.s3] = tmp[4 * a + b][l];
    }
    if (!epi_plain(ep))
      for (int a = 0; a < pn; ++a)
        for (int b = 0; b < qn; ++b) epi_fixup<float>(ep, yb + a * y.s2 + b * y.s3, y.s1, nl);
  }
}

// Forward-style Winograd convolution: y[n, k, p, q] = act(bias[k] + sum_{c,r,s} g(k,c,r,s) *
// src[n, c, p - ph + r, q - pw + s]) with U = pack_weights(g).
void forward_engine(const Src& src, int64_t Kout, int64_t P, int64_t Q, int64_t ph, int64_t pw, const float* U,
                    const float* bias, const Epi& ep, const Dst& y, int64_t N, int nth) {
  const int64_t Cin = src.C, Cp = round_up(Cin, L), Kp = round_up(Kout, L);
  const TileGrid grid(N, P, Q);
  // T = 60 tiles up to 256 channels (V block 0.55 MiB at 64, 2.2 MiB at 256 channels); wider
  // inputs keep V near 2.2 MiB. U is re-read from L3 once per block, so small blocks pay in U traffic,
  // big ones in L2 misses (64-channel bench layer, 1 thread, CPU time: 6.3 ms at T = 60, against 6.5
  // at T = 30 and 7.2 at T = 120). At AVX2 (AMD Zen 3, 2 threads, the layer table's four 3x3 layers,
  // channels_last) T = 12..60 all came within run-to-run noise (+-10%) of one another.
  int64_t T = std::min<int64_t>(60, std::max<int64_t>(kMR, (600000 / (36 * Cp)) / kMR * kMR));
  // Enough blocks for the threads (at least 4 per thread when the grid allows).
  while (T > kMR && cdiv(grid.count, T) < 4 * nth) T -= kMR;
  const int64_t ntask = cdiv(grid.count, T);
  FBuf vbuf(kBlockV, nth * 36 * T * Cp), mbuf(kBlockM, nth * 36 * T * kChunk), zero_row(kZeroRow, Cp);
  std::memset(zero_row.p, 0, sizeof(float) * Cp);
#pragma omp parallel for num_threads(nth) schedule(dynamic, 1)
  for (int64_t task = 0; task < ntask; ++task) {
    const int tid = thread_id();
    float* Vb = vbuf.p + tid * 36 * T * Cp;
    float* M = mbuf.p + tid * 36 * T * kChunk;
    const int64_t t0 = task * T, nt = std::min(T, grid.count - t0);
    for (int64_t tt = 0; tt < nt; ++tt) {
      int64_t n, p0, q0;
      grid.at(t0 + tt, n, p0, q0);
      for (int64_t c0 = 0; c0 < Cin; c0 += L)
        input_tile(src, n, p0 - ph, q0 - pw, c0, static_cast<int>(std::min<int64_t>(L, Cin - c0)),
                   Vb + tt * Cp + c0, T * Cp);
    }
    for (int64_t k0 = 0; k0 < Kp; k0 += kChunk) {
      const int nv = static_cast<int>(std::min<int64_t>(kChunk, Kp - k0) / L);
      const float* Uc = U + k0 * Cin;
      const int64_t us = Cin * Kp;
      switch (nv) {  // at most kChunk / L vectors: 4 at AVX-512, 2 at AVX2
#if defined(__AVX512F__)
        case 4: block_gemms<4>(Vb, T, nt, Cp, Cin, Uc, us, zero_row.p, M); break;
        case 3: block_gemms<3>(Vb, T, nt, Cp, Cin, Uc, us, zero_row.p, M); break;
#endif
        case 2: block_gemms<2>(Vb, T, nt, Cp, Cin, Uc, us, zero_row.p, M); break;
        default: block_gemms<1>(Vb, T, nt, Cp, Cin, Uc, us, zero_row.p, M); break;
      }
      for (int64_t tt = 0; tt < nt; ++tt) {
        int64_t n, p0, q0;
        grid.at(t0 + tt, n, p0, q0);
        output_tile(M, T, tt, nv, k0, Kout, bias, ep, y, n, p0, q0, P, Q);
      }
    }
  }
}

// The transformed weight: the caller's pack when given (filled on first use), else a temporary.
struct PackedWeight {
  const float* U = nullptr;
  FBuf* owned = nullptr;
  PackedWeight(WeightPack* pack, int64_t floats, const WAcc& w, int64_t Cin, int64_t Kout, int nth) {
    if (pack != nullptr && pack->data != nullptr && pack->floats >= floats) {
      if (!pack->ready) {
        pack_weights(w, Cin, Kout, pack->data, nth);
        pack->ready = true;
      }
      U = pack->data;
      return;
    }
    owned = new FBuf(kPackTemp, floats);
    pack_weights(w, Cin, Kout, owned->p, nth);
    U = owned->p;
  }
  ~PackedWeight() { delete owned; }
  PackedWeight(const PackedWeight&) = delete;
  PackedWeight& operator=(const PackedWeight&) = delete;
};

Dst dst_of(const Tensor4& t) { return Dst{static_cast<float*>(t.data), t.stride[0], t.stride[1], t.stride[2], t.stride[3]}; }

}  // namespace

void winograd_fwd(const ConvDesc& d, const Tensor4& x, const Tensor4& w, const float* bias, const Tensor4& y,
                  const Epi& ep, WeightPack* pack, int nth) {
  const WAcc wa{static_cast<const float*>(w.data), w.stride[0], w.stride[1], w.stride[2], w.stride[3]};
  PackedWeight U(pack, winograd_pack_floats(d, kFloat32, WinogradPass::kForward), wa, d.C, d.K, nth);
  StagedSrc s(x, nullptr, kStageA, nth);
  forward_engine(s.src, d.K, d.P, d.Q, d.pad_h, d.pad_w, U.U, bias, ep, dst_of(y), d.N, nth);
}

void winograd_dgrad(const ConvDesc& d, const Tensor4& dy, const Tensor4& w, const Tensor4* relu_y,
                    const Tensor4& dx, WeightPack* pack, int nth) {
  // dx[n, c, h, w'] = sum_{k, r, s} w[k, c, r, s] dy[n, k, h + ph - r, w' + pw - s]: a correlation of
  // dy with g(c, k, r', s') = w[k, c, 2 - r', 2 - s'] and pads 2 - ph, 2 - pw.
  const float* wp = static_cast<const float*>(w.data);
  const WAcc wa{wp + 2 * w.stride[2] + 2 * w.stride[3], w.stride[1], w.stride[0], -w.stride[2], -w.stride[3]};
  PackedWeight U(pack, winograd_pack_floats(d, kFloat32, WinogradPass::kInputGrad), wa, d.K, d.C, nth);
  StagedSrc s(dy, relu_y, kStageA, nth);
  forward_engine(s.src, d.C, d.H, d.W, 2 - d.pad_h, 2 - d.pad_w, U.U, nullptr, Epi{}, dst_of(dx), d.N, nth);
}

void winograd_wgrad(const ConvDesc& d, const Tensor4& dy, const Tensor4& x, const Tensor4* relu_y,
                    const Tensor4& dw, int nth) {
  const int64_t C = d.C, K = d.K, Cp = round_up(C, L), Kp = round_up(K, L);
  StagedSrc xs(x, nullptr, kStageA, nth), gs(dy, relu_y, kStageB, nth);
  const TileGrid grid(d.N, d.P, d.Q);
  const int64_t tiles = grid.count;
  const int64_t s_floats = 36 * C * Kp;
  // Transforms of tile t into V (channel stride 1, position stride vs) and E (position stride es).
  const auto transform = [&](int64_t t, float* V, int64_t vs, float* E, int64_t es) {
    int64_t n, p0, q0;
    grid.at(t, n, p0, q0);
    for (int64_t c0 = 0; c0 < C; c0 += L)
      input_tile(xs.src, n, p0 - d.pad_h, q0 - d.pad_w, c0, static_cast<int>(std::min<int64_t>(L, C - c0)),
                 V + c0, vs);
    for (int64_t k0 = 0; k0 < K; k0 += L)
      grad_tile(gs.src, n, p0, q0, k0, static_cast<int>(std::min<int64_t>(L, K - k0)), E + k0, es);
  };
  // S (36 x C x Kp) for small layers: tile groups fixed by the problem (not the thread count), each
  // accumulated chunk by chunk from transforms that stay in L2, then the groups summed in order.
  // Materializing every tile's transforms instead (the path for wide layers, whose S would not fit
  // in L2) writes and re-reads 36 x tiles x (Cp + Kp) floats: 38 MiB at 64 channels and 2048 tiles,
  // where the transforms then take 6 of the 12 ms (1 thread) of that layer's weight gradient.
  const bool grouped = C * Kp <= 128 * 128 && tiles >= 2 * kTileBlock;
  const int64_t per_group = grouped ? round_up(cdiv(tiles, std::min<int64_t>(8, tiles / kTileBlock)), kTileBlock) : tiles;
  const int64_t groups = cdiv(tiles, per_group);  // every group non-empty (its S_g is written)
  FBuf Sb(kSums, groups * s_floats);
  if (grouped) {
    // +L: the last c block's rows past C read (and discard) up to kMR-1 floats past a block's end.
    FBuf Vb(kTileV, nth * 36 * kTileBlock * Cp + L), Eb(kTileE, nth * 36 * kTileBlock * Kp + L);
#pragma omp parallel for num_threads(nth) schedule(dynamic, 1)
    for (int64_t g = 0; g < groups; ++g) {
      const int tid = thread_id();
      float* V = Vb.p + tid * 36 * kTileBlock * Cp;
      float* E = Eb.p + tid * 36 * kTileBlock * Kp;
      const int64_t begin = std::min(tiles, g * per_group), end = std::min(tiles, begin + per_group);
      for (int64_t t0 = begin; t0 < end; t0 += kTileBlock) {
        const int64_t nt = std::min<int64_t>(kTileBlock, end - t0);
        for (int64_t tt = 0; tt < nt; ++tt) transform(t0 + tt, V + tt * Cp, kTileBlock * Cp, E + tt * Kp, kTileBlock * Kp);
        for (int i = 0; i < 36; ++i)
          accumulate_positions(V + i * kTileBlock * Cp, Cp, C, E + i * kTileBlock * Kp, Kp, nt, 0, Kp,
                               Sb.p + g * s_floats + i * C * Kp, t0 == begin);
      }
    }
    // S = S_0 + S_1 + ... in group order.
#pragma omp parallel for num_threads(nth) schedule(static)
    for (int64_t row = 0; row < 36 * C; ++row) sum_groups_row(Sb.p, row, Kp, groups, s_floats);
  } else {
    FBuf Vb(kTileV, 36 * tiles * Cp + L), Eb(kTileE, 36 * tiles * Kp + L);
#pragma omp parallel for num_threads(nth) schedule(static)
    for (int64_t t = 0; t < tiles; ++t) transform(t, Vb.p + t * Cp, tiles * Cp, Eb.p + t * Kp, tiles * Kp);
    // S_i[c][k0..k0+64) = sum_t V_i[t][c] E_i[t][k0..], tasks = (i, k chunk), blocks of kTileBlock tiles.
    const int64_t nkc = cdiv(Kp, kChunk);
#pragma omp parallel for num_threads(nth) schedule(dynamic, 1)
    for (int64_t task = 0; task < 36 * nkc; ++task) {
      const int64_t i = task / nkc, k0 = (task % nkc) * kChunk;
      const float* Vi = Vb.p + i * tiles * Cp;
      const float* Ei = Eb.p + i * tiles * Kp;
      for (int64_t t0 = 0; t0 < tiles; t0 += kTileBlock)
        accumulate_positions(Vi + t0 * Cp, Cp, C, Ei + t0 * Kp, Kp, std::min<int64_t>(kTileBlock, tiles - t0), k0,
                             std::min<int64_t>(Kp, k0 + kChunk), Sb.p + i * C * Kp, t0 == 0);
    }
  }
  // Phase 3: dw[k][c] = G^T S(c, k) G (3 x 3 from 6 x 6), vectors along k.
  const Dst o = dst_of(dw);
#pragma omp parallel for num_threads(nth) schedule(static)
  for (int64_t c = 0; c < C; ++c)
    for (int64_t k0 = 0; k0 < K; k0 += L) {
      const int nl = static_cast<int>(std::min<int64_t>(L, K - k0));
      V s[36], t[18], g[9];
      FC_UNROLL for (int i = 0; i < 36; ++i) s[i] = Sf::load(Sb.p + (i * C + c) * Kp + k0);
      // G^T columns: w0 = s0/4 - (s1 + s2)/6 + (s3 + s4)/24; w1 = (s2 - s1)/6 + (s3 - s4)/12;
      //              w2 = -(s1 + s2)/6 + (s3 + s4)/6 + s5.
      auto gt = [](const V* in, int is, V* out, int os) {
        const V s0 = in[0], s1 = in[is], s2 = in[2 * is], s3 = in[3 * is], s4 = in[4 * is], s5 = in[5 * is];
        const V p12 = add(s1, s2), p34 = add(s3, s4);
        out[0] = fmadd(p34, 1.f / 24, fmadd(p12, -1.f / 6, mul(s0, 0.25f)));
        out[os] = fmadd(sub(s3, s4), 1.f / 12, mul(sub(s2, s1), 1.f / 6));
        out[2 * os] = add(fmadd(p34, 1.f / 6, mul(p12, -1.f / 6)), s5);
      };
      FC_UNROLL for (int b = 0; b < 6; ++b) gt(s + b, 6, t + b, 6);      // 3 x 6
      FC_UNROLL for (int a = 0; a < 3; ++a) gt(t + 6 * a, 1, g + 3 * a, 1);  // 3 x 3
      alignas(64) float tmp[9][L];
      FC_UNROLL for (int i = 0; i < 9; ++i) Sf::store(tmp[i], g[i]);
      for (int l = 0; l < nl; ++l)
        for (int r = 0; r < 3; ++r)
          for (int s2 = 0; s2 < 3; ++s2) o.p[(k0 + l) * o.s0 + c * o.s1 + r * o.s2 + s2 * o.s3] = tmp[3 * r + s2][l];
    }
}

#else  // baseline build: winograd_usable() is false, so the callers never get here.

namespace {
[[noreturn]] void unusable() { throw std::logic_error("fastconv: Winograd convolution needs the avx2 or avx512 build"); }
}  // namespace
void winograd_fwd(const ConvDesc&, const Tensor4&, const Tensor4&, const float*, const Tensor4&, const Epi&, WeightPack*,
                  int) {
  unusable();
}
void winograd_dgrad(const ConvDesc&, const Tensor4&, const Tensor4&, const Tensor4*, const Tensor4&, WeightPack*,
                    int) {
  unusable();
}
void winograd_wgrad(const ConvDesc&, const Tensor4&, const Tensor4&, const Tensor4*, const Tensor4&, int) {
  unusable();
}

#endif

}  // namespace FC_ISA
}  // namespace cpu
}  // namespace fastconv

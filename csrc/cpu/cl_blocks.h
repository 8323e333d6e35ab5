// Shared pieces of the float32 kernels that work on channels_last blocks (conv2d_winograd_isa.cpp,
// conv2d_wgrad_blocked_isa.cpp, ...): a per-thread scratch arena (every ISA level), and, at the AVX2 and
// AVX-512 levels (FC_CL_BLOCKS), the channels_last staging copy (with the fused ReLU's mask) and its
// inverse, an L x L register transpose, the ordered sum of per-group partial sums, and the rank-update
// microkernel that accumulates S[c][k] += sum_t A[t][c] B[t][k] over blocks of rows.
//
// Included inside namespace fastconv::cpu::FC_ISA of the *_isa.cpp files; everything is in an
// anonymous namespace, so each translation unit (and ISA level) has its own copy.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu/gemm_microkernel.h"
#include "cpu/kernels.h"

// The block kernels below exist where Simd<float> has FMA: AVX2 (8 lanes) and AVX-512 (16).
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#define FC_CL_BLOCKS 1
#else
#define FC_CL_BLOCKS 0
#endif

namespace fastconv {
namespace cpu {
namespace FC_ISA {
namespace {

// Scratch memory, 64-byte aligned, taken outside parallel regions (bad_alloc reaches the caller).
// Fresh multi-MiB allocations come from mmap and pay a page fault per 4 KiB on first touch: staging an
// 8 MiB input into a new buffer takes 3.5 ms against 1.7 ms into a reused one (1 thread). So each
// calling thread keeps its buffers per slot (`Arena`) and reuses them; a request beyond kArenaCap
// bytes in total is allocated for the call only, so one huge layer does not pin its memory forever.
constexpr size_t kArenaCap = size_t(256) << 20;

struct Arena {
  struct Slot {
    float* p = nullptr;
    size_t bytes = 0;
  };
  Slot slots[9];
  size_t total = 0;
  ~Arena() {
    for (Slot& s : slots) std::free(s.p);
  }
};

thread_local Arena t_arena;

// The weight-gradient kernels' on/off variables (docs/configuration.md): on unless the variable is "0".
// Read at every call: tests and users switch them at run time.
inline bool algorithm_switch_on(const char* var) {
  const char* e = std::getenv(var);
  return e == nullptr || std::strcmp(e, "0") != 0;
}

// FASTCONV_POISON_SCRATCH=1 (the test suite sets it) fills every buffer handed out with NaN, so a
// kernel that reads scratch it did not write (stale data of an earlier call, in a reused slot)
// produces NaN instead of plausible numbers.
inline bool poison_scratch() {
  const char* e = std::getenv("FASTCONV_POISON_SCRATCH");
  return e != nullptr && e[0] == '1';
}

struct FBuf {
  float* p = nullptr;
  bool owned = false;  // allocated for this call only
  FBuf(int slot, int64_t n) {
    const size_t bytes = (static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(float) + 63) & ~size_t(63);
    acquire(slot, bytes);
    if (poison_scratch()) std::fill(p, p + bytes / sizeof(float), std::numeric_limits<float>::quiet_NaN());
  }
  void acquire(int slot, size_t bytes) {
    Arena::Slot& s = t_arena.slots[slot];
    if (s.bytes >= bytes) {
      p = s.p;
      return;
    }
    if (t_arena.total - s.bytes + bytes <= kArenaCap) {
      std::free(s.p);
      t_arena.total -= s.bytes;
      s.p = nullptr;
      s.bytes = 0;
      s.p = static_cast<float*>(std::aligned_alloc(64, bytes));
      if (s.p == nullptr) throw std::bad_alloc();
      s.bytes = bytes;
      t_arena.total += bytes;
      p = s.p;
      return;
    }
    p = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (p == nullptr) throw std::bad_alloc();
    owned = true;
  }
  ~FBuf() {
    if (owned) std::free(p);
  }
  FBuf(const FBuf&) = delete;
  FBuf& operator=(const FBuf&) = delete;
};

// Arena slots: every buffer alive at the same time in one call has its own slot.
enum Slot : int { kStageA = 0, kStageB, kTileV, kTileE, kSums, kBlockV, kBlockM, kZeroRow, kPackTemp };

#if FC_CL_BLOCKS
inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return cdiv(a, b) * b; }

using Sf = Simd<float>;
using V = Sf::V;
constexpr int L = Sf::L;       // floats per vector: 16 (zmm), 8 (ymm)
constexpr int kMR = 6;         // microkernel rows (tiles in the forward, c in the weight gradient)
#if defined(__AVX512F__)
constexpr int kChunk = 64;     // K chunk = 4 vectors: 6 x 4 = 24 of the 32 zmm accumulate
#else
constexpr int kChunk = 16;     // K chunk = 2 vectors: 6 x 2 = 12 of the 16 ymm accumulate
#endif
constexpr int kTileBlock = 64;   // weight gradients: rows (tiles, pixels) summed in registers before adding into S
constexpr int kTileBlockLong = 256;  // the same for a sum matrix that does not stay in L2 (wgrad_blocked)

#if defined(__AVX512F__)

// In-register 16 x 16 transpose: r[i][j] -> r[j][i] (unpack lo/hi at 32 and 64 bits, then two
// rounds of 128-bit lane shuffles). Turns 16 pixel vectors of 16 channels into 16 channel vectors of
// 16 pixels for the NCHW staging copy and the NCHW output stores.
FC_INLINE void transpose16(V* r) {
  V t[16];
  FC_UNROLL for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  const auto lo = [](V a, V b) { return _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b))); };
  const auto hi = [](V a, V b) { return _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b))); };
  FC_UNROLL for (int i = 0; i < 4; ++i) {
    r[4 * i + 0] = lo(t[4 * i], t[4 * i + 2]);
    r[4 * i + 1] = hi(t[4 * i], t[4 * i + 2]);
    r[4 * i + 2] = lo(t[4 * i + 1], t[4 * i + 3]);
    r[4 * i + 3] = hi(t[4 * i + 1], t[4 * i + 3]);
  }
  FC_UNROLL for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[4 + i], 0x88);
    t[4 + i] = _mm512_shuffle_f32x4(r[i], r[4 + i], 0xdd);
    t[8 + i] = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0x88);
    t[12 + i] = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0xdd);
  }
  FC_UNROLL for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0x88);
    r[8 + i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0xdd);
    r[4 + i] = _mm512_shuffle_f32x4(t[4 + i], t[12 + i], 0x88);
    r[12 + i] = _mm512_shuffle_f32x4(t[4 + i], t[12 + i], 0xdd);
  }
}
FC_INLINE void transpose_block(V* r) { transpose16(r); }
#else
// In-register 8 x 8 transpose of ymm vectors: unpack lo/hi at 32 and 64 bits, then the 128-bit halves.
FC_INLINE void transpose_block(V* r) {
  V t[8], u[8];
  FC_UNROLL for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  FC_UNROLL for (int i = 0; i < 2; ++i) {
    u[4 * i + 0] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xee);
    u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xee);
  }
  FC_UNROLL for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(u[i], u[4 + i], 0x20);
    r[4 + i] = _mm256_permute2f128_ps(u[i], u[4 + i], 0x31);
  }
}
#endif

// A channels_last-addressable float source: element (n, c, h, w) at p[n*s0 + h*s2 + w*s3 + c].
struct Src {
  const float* p;
  int64_t s0, s2, s3;
  int64_t C, H, W;
};

// dw[k][c][r][s] = the groups' S[(r*S + s)*C + c][k] summed in group order (as sum_groups_row), S_g
// starting s_floats after S_{g-1}, rows Kp floats. Per block of L columns k (a thread's), the rows in
// dw's (c, r, s) order: a row's L sums are one vector, written to L dw rows that each fill in sequence.
// (Element by element along each S row instead, each store C*R*S floats from the last: 51 -> 42 ms of
// DCGAN's 64x256x8x8 4x4 s2 -> 512 weight gradient, 2M floats, 2 threads, AMD EPYC Zen 4.)
inline void write_dw_from_sums(const ConvDesc& d, const float* S, int64_t Kp, int64_t groups, int64_t s_floats,
                               const Tensor4& dw, int nth) {
  const int64_t C = d.C, K = d.K, taps = d.R * d.S;
  float* dwp = static_cast<float*>(dw.data);
#pragma omp parallel for num_threads(nth) schedule(static)
  for (int64_t k0 = 0; k0 < K; k0 += L) {
    const int nk = static_cast<int>(std::min<int64_t>(L, K - k0));
    alignas(64) float sums[L];
    for (int64_t c = 0; c < C; ++c)
      for (int64_t tap = 0; tap < taps; ++tap) {
        const float* s0 = S + (tap * C + c) * Kp + k0;
        V v = Sf::load(s0);
        for (int64_t g = 1; g < groups; ++g) v = Sf::add(v, Sf::load(s0 + g * s_floats));
        Sf::store(sums, v);
        float* o = dwp + k0 * dw.stride[0] + c * dw.stride[1] + (tap / d.S) * dw.stride[2] + (tap % d.S) * dw.stride[3];
        for (int i = 0; i < nk; ++i) o[i * dw.stride[0]] = sums[i];
      }
  }
}

// f(w0, nw, c0, nc) for the blocks of L columns x L channels of a W x C plane (nw, nc < L at the edges).
template <typename F>
FC_INLINE void for_lane_blocks(int64_t W, int64_t C, F&& f) {
  for (int64_t w0 = 0; w0 < W; w0 += L)
    for (int64_t c0 = 0; c0 < C; c0 += L)
      f(w0, static_cast<int>(std::min<int64_t>(L, W - w0)), c0, static_cast<int>(std::min<int64_t>(L, C - c0)));
}

// Row `row` of the per-group partial sums: S_0 += S_1 + ... + S_{groups-1}, in group order (bitwise the
// same for any thread count). S_g starts s_floats after S_{g-1}; rows are Kp floats (Kp % L == 0).
FC_INLINE void sum_groups_row(float* S, int64_t row, int64_t Kp, int64_t groups, int64_t s_floats) {
  float* s0 = S + row * Kp;
  for (int64_t g = 1; g < groups; ++g) {
    const float* sg = S + g * s_floats + row * Kp;
    for (int64_t k = 0; k < Kp; k += L) Sf::store(s0 + k, Sf::add(Sf::load(s0 + k), Sf::load(sg + k)));
  }
}

// The parallel units of a staging copy between t and a channels_last buffer: rows (n, h) of W pixels,
// or, where t's planes are dense (pixel h*W + w of an image at that offset, and the mask's too), chunks
// of up to 64 pixels of an image's flattened plane, so that 7x7 and 14x14 maps fill whole L x L
// transpose blocks instead of taking the element-by-element edge path (staged NCHW 1x1 convs, 2 threads:
// 1x512x7x7 -> 2048 646 us against 1065 with row units, conv_cl alone 615).
struct PixelUnits {
  int64_t N, H, W, per_image, len;
  bool flat;
  PixelUnits(const Tensor4& t, const Tensor4* m) : N(t.size[0]), H(t.size[2]), W(t.size[3]) {
    const auto dense = [&](const Tensor4& a) { return a.stride[3] == 1 && a.stride[2] == W; };
    flat = dense(t) && (!m || dense(*m));
    len = flat ? 64 : W;
    per_image = flat ? cdiv(H * W, len) : H;
  }
  int64_t count() const { return N * per_image; }
  // Unit u: image n, its first pixel p0 (h*W + w), its pixel count, and its first pixel's offset in a
  // tensor of t's layout with strides st.
  void unit(int64_t u, int64_t& n, int64_t& p0, int& np) const {
    n = u / per_image;
    p0 = (u % per_image) * len;
    np = static_cast<int>(std::min(len, H * W - p0));
  }
  template <typename S>
  int64_t offset(const S& st, int64_t n, int64_t p0) const {
    return n * st[0] + (flat ? p0 : (p0 / W) * st[2]);
  }
};

// Channels_last staging copy of a 4-d tensor (masked by m > 0 when m is given): dst[(n*H+h)*W+w][c].
// Used when the source is not channel-contiguous or a ReLU mask has to be applied.
void stage_channels_last(const Tensor4& t, const Tensor4* m, float* dst, int nth) {
  const int64_t C = t.size[1];
  const float* tp = static_cast<const float*>(t.data);
  const float* mp = m ? static_cast<const float*>(m->data) : nullptr;
  const PixelUnits pu(t, m);
#pragma omp parallel for num_threads(nth) schedule(static)
  for (int64_t u = 0; u < pu.count(); ++u) {
    int64_t n, p0;
    int np;
    pu.unit(u, n, p0, np);
    float* drow = dst + (n * pu.H * pu.W + p0) * C;
    const float* trow = tp + pu.offset(t.stride, n, p0);
    const float* mrow = mp ? mp + pu.offset(m->stride, n, p0) : nullptr;
    if (t.stride[1] == 1 && (!m || m->stride[1] == 1)) {
      for (int64_t w = 0; w < np; ++w) {
        const float* tv = trow + w * t.stride[3];
        const float* mv = mrow ? mrow + w * m->stride[3] : nullptr;
        float* dv = drow + w * C;
        int64_t c = 0;
        for (; c + L <= C; c += L) {
          V v = Sf::load(tv + c);
          if (mv) v = Sf::mask_le0(v, Sf::load(mv + c));
          Sf::store(dv + c, v);
        }
        if (c < C) {
          const int nl = static_cast<int>(C - c);
          V v = Sf::load_n(tv + c, nl);
          if (mv) v = Sf::mask_le0(v, Sf::load_n(mv + c, nl));
          Sf::store_n(dv + c, v, nl);
        }
      }
    } else {
      // Blocks of L pixels x L channels: full blocks with unit pixel strides through the register
      // transpose, edge blocks (and strided pixels) element by element.
      alignas(64) float blk[L][L];
      const bool unit = t.stride[3] == 1 && (!m || m->stride[3] == 1);
      for_lane_blocks(np, C, [&](int64_t w0, int nw, int64_t c0, int nc) {
        if (unit && nw == L && nc == L) {
          V r[L];
          FC_UNROLL for (int cc = 0; cc < L; ++cc) {
            r[cc] = Sf::load(trow + (c0 + cc) * t.stride[1] + w0);
            if (mrow) r[cc] = Sf::mask_le0(r[cc], Sf::load(mrow + (c0 + cc) * m->stride[1] + w0));
          }
          transpose_block(r);
          FC_UNROLL for (int ww = 0; ww < L; ++ww) Sf::store(drow + (w0 + ww) * C + c0, r[ww]);
          return;
        }
        for (int cc = 0; cc < nc; ++cc) {
          const float* src = trow + (c0 + cc) * t.stride[1] + w0 * t.stride[3];
          const float* msrc = mrow ? mrow + (c0 + cc) * m->stride[1] + w0 * m->stride[3] : nullptr;
          if (unit) {
            V v = Sf::load_n(src, nw);
            if (msrc) v = Sf::mask_le0(v, Sf::load_n(msrc, nw));
            Sf::store(blk[cc], v);
          } else {
            for (int ww = 0; ww < nw; ++ww) {
              float v = src[ww * t.stride[3]];
              if (msrc && msrc[ww * m->stride[3]] <= 0.f) v = 0.f;
              blk[cc][ww] = v;
            }
          }
        }
        for (int ww = 0; ww < nw; ++ww) {
          float* dv = drow + (w0 + ww) * C + c0;
          for (int cc = 0; cc < nc; ++cc) dv[cc] = blk[cc][ww];
        }
      });
    }
  }
}

// The inverse copy: channels_last src[((n*H + h)*W + w)*C + c] into t (any strides), through the
// register transpose where t's pixels are unit-stride, the edges element by element. inline: unused in
// conv2d_winograd_isa.cpp.
inline void unstage_channels_last(const float* src, const Tensor4& t, int nth) {
  const int64_t C = t.size[1];
  float* tp = static_cast<float*>(t.data);
  const bool unit = t.stride[3] == 1;
  const PixelUnits pu(t, nullptr);
#pragma omp parallel for num_threads(nth) schedule(static)
  for (int64_t u = 0; u < pu.count(); ++u) {
    int64_t n, p0;
    int np;
    pu.unit(u, n, p0, np);
    const float* srow = src + (n * pu.H * pu.W + p0) * C;
    float* trow = tp + pu.offset(t.stride, n, p0);
    for_lane_blocks(np, C, [&](int64_t w0, int nw, int64_t c0, int nc) {
      if (unit && nw == L && nc == L) {
        V r[L];
        FC_UNROLL for (int ww = 0; ww < L; ++ww) r[ww] = Sf::load(srow + (w0 + ww) * C + c0);
        transpose_block(r);
        FC_UNROLL for (int cc = 0; cc < L; ++cc) Sf::store(trow + (c0 + cc) * t.stride[1] + w0, r[cc]);
        return;
      }
      for (int ww = 0; ww < nw; ++ww)
        for (int cc = 0; cc < nc; ++cc)
          trow[(c0 + cc) * t.stride[1] + (w0 + ww) * t.stride[3]] = srow[(w0 + ww) * C + c0 + cc];
    });
  }
}

// The forward engine's view of its input: in place when channels_last and unmasked, else staged.
struct StagedSrc {
  Src src;
  FBuf* buf = nullptr;  // the staging copy, when one is needed
  StagedSrc(const Tensor4& t, const Tensor4* mask, int slot, int nth) {
    const int64_t N = t.size[0], C = t.size[1], H = t.size[2], W = t.size[3];
    if (t.stride[1] == 1 && mask == nullptr) {
      src = Src{static_cast<const float*>(t.data), t.stride[0], t.stride[2], t.stride[3], C, H, W};
      return;
    }
    buf = new FBuf(slot, N * H * W * C + L);
    stage_channels_last(t, mask, buf->p, nth);
    src = Src{buf->p, H * W * C, W * C, C, C, H, W};
  }
  ~StagedSrc() { delete buf; }
  StagedSrc(const StagedSrc&) = delete;
  StagedSrc& operator=(const StagedSrc&) = delete;
};

// S tile (MR rows of c, NV vectors of k) += sum over tiles [t0, t1) of V_i[t][c0..c0+MR) x E_i[t][k0..].
template <int NV>
FC_INLINE void wgrad_ukr(const float* __restrict a, int64_t lda, const float* __restrict b, int64_t ldb,
                         int64_t kc, float* s, int64_t lds, int rows_valid, bool first) {
  V acc[kMR][NV];
  FC_UNROLL for (int m = 0; m < kMR; ++m) FC_UNROLL for (int v = 0; v < NV; ++v) acc[m][v] = Sf::zero();
  for (int64_t t = 0; t < kc; ++t) {
    V bv[NV];
    FC_UNROLL for (int v = 0; v < NV; ++v) bv[v] = Sf::load(b + v * L);
    FC_UNROLL for (int m = 0; m < kMR; ++m) {
      const V av = Sf::set1(a[m]);
      FC_UNROLL for (int v = 0; v < NV; ++v) acc[m][v] = Sf::fma(av, bv[v], acc[m][v]);
    }
    a += lda;
    b += ldb;
  }
  for (int m = 0; m < rows_valid; ++m)
    FC_UNROLL for (int v = 0; v < NV; ++v) {
      float* p = s + m * lds + v * L;
      Sf::store(p, first ? acc[m][v] : Sf::add(acc[m][v], Sf::load(p)));
    }
}

// One 6 x kChunk register tile: S rows [c0, c0 + 6) x columns [k0, k0 + nv vectors) (+)= the nt tiles'
// V[t][c0..] x E[t][k0..].
FC_INLINE void accumulate_tile(const float* Vi, int64_t Cp, int64_t C, const float* Ei, int64_t Kp, int64_t nt,
                               int64_t c0, int64_t k0, int nv, float* Si, bool first) {
  const int rows = static_cast<int>(std::min<int64_t>(kMR, C - c0));
  const float* a = Vi + c0;
  const float* b = Ei + k0;
  float* s = Si + c0 * Kp + k0;
  switch (nv) {  // at most kChunk / L vectors: 4 at AVX-512, 2 at AVX2
#if defined(__AVX512F__)
    case 4: wgrad_ukr<4>(a, Cp, b, Kp, nt, s, Kp, rows, first); break;
    case 3: wgrad_ukr<3>(a, Cp, b, Kp, nt, s, Kp, rows, first); break;
#endif
    case 2: wgrad_ukr<2>(a, Cp, b, Kp, nt, s, Kp, rows, first); break;
    default: wgrad_ukr<1>(a, Cp, b, Kp, nt, s, Kp, rows, first); break;
  }
}

// S_i[c][k] (+)= sum over nt tiles of V_i[t][c] E_i[t][k] for every c < C and k in [k_begin, k_end)
// (a multiple of 16 wide): one 6 x 64 register tile at a time. k chunks outer (c_outer false): a
// chunk's nt-tile panel of E stays in L1 while every c block uses it (nt <= kTileBlock). c blocks outer
// (c_outer true, for long blocks of nt > kTileBlock tiles whose V rows are too long to sweep per chunk):
// a c block's 6 columns of V stay in L1 while every k chunk uses them, E coming from L2.
inline void accumulate_positions(const float* Vi, int64_t Cp, int64_t C, const float* Ei, int64_t Kp, int64_t nt,
                                 int64_t k_begin, int64_t k_end, float* Si, bool first, bool c_outer = false) {
  auto nv = [&](int64_t k0) { return static_cast<int>(std::min<int64_t>(kChunk, k_end - k0) / L); };
  if (c_outer) {
    for (int64_t c0 = 0; c0 < C; c0 += kMR)
      for (int64_t k0 = k_begin; k0 < k_end; k0 += kChunk)
        accumulate_tile(Vi, Cp, C, Ei, Kp, nt, c0, k0, nv(k0), Si, first);
    return;
  }
  for (int64_t k0 = k_begin; k0 < k_end; k0 += kChunk)
    for (int64_t c0 = 0; c0 < C; c0 += kMR) accumulate_tile(Vi, Cp, C, Ei, Kp, nt, c0, k0, nv(k0), Si, first);
}

// Row (n, p, q) of the im2col matrix of a channels_last source: the R*S*C inputs output pixel
// (p, q) reads, tap-major (r, s, c), zeros in the padding. The S taps of a filter row are S*C
// contiguous floats of a channels_last row when they are all inside it and undilated: one copy
// (9 floats for a 3-channel 3x3 stem instead of 3 x 3).
FC_INLINE void gather_im2col_row(const ConvDesc& d, const Src& xv, int64_t n, int64_t p, int64_t q, float* xx) {
  const int64_t C = d.C, w0 = q * d.stride_w - d.pad_w;
  const bool row_run = d.dil_w == 1 && xv.s3 == C && w0 >= 0 && w0 + d.S <= d.W;
  for (int64_t r = 0; r < d.R; ++r) {
    const int64_t h = p * d.stride_h - d.pad_h + r * d.dil_h;
    if (h < 0 || h >= d.H) {
      zero_n(xx, d.S * C);
      xx += d.S * C;
      continue;
    }
    const float* xrow = xv.p + n * xv.s0 + h * xv.s2;
    if (row_run) {
      copy_n(xx, xrow + w0 * C, d.S * C);
      xx += d.S * C;
      continue;
    }
    for (int64_t s = 0; s < d.S; ++s, xx += C) {
      const int64_t w = w0 + s * d.dil_w;
      if (w < 0 || w >= d.W)
        zero_n(xx, C);
      else
        copy_n(xx, xrow + w * xv.s3, C);
    }
  }
}

#endif  // FC_CL_BLOCKS
}  // namespace
}  // namespace FC_ISA
}  // namespace cpu
}  // namespace fastconv

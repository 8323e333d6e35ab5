// The implicit-GEMM engine shared by the convolution kernels (conv2d_fwd.cuh, conv2d_dgrad.cuh,
// conv2d_wgrad.cuh): a block-tiled SIMT GEMM  C[BM x BN] = sum_k A[m][k] * B[k][n]  whose operands are
// never materialized. Each operand is a small "gather" policy that maps (outer index, reduction index)
// to a global element (or to 0 outside the tensor: padding, edge tiles); the engine owns the tiling,
// the shared-memory staging and the register micro-tiles.
//
// Tiling (Tile<BM, BN, BK, TM, TN>):
//   - a block of NT = (BM/TM)*(BN/TN) threads computes a BM x BN tile of C, marching over the reduction
//     in steps of BK = 8;
//   - per step, A's BM x BK slice and B's BK x BN slice are gathered from global memory into registers
//     (BM*BK/NT and BK*BN/NT values per thread), then stored k-major into shared memory
//     (sA[k][m], sB[k][n], rows padded by 4 elements);
//   - double buffering: while the FMAs of step t read buffer t&1, the gathers of step t+1 are already
//     in flight into registers; they land in buffer (t+1)&1 after the FMAs, and one __syncthreads per
//     step separates the phases (the buffer written in step t was last read in step t-1, before the
//     previous barrier);
//   - each thread owns a TM x TN micro-tile made of 4-wide chunks spaced BM*4/TM rows (BN*4/TN columns)
//     apart: a warp's 16 (or 8) distinct 4-element reads of a k-row are contiguous (float4 loads, no
//     bank conflicts), the other operand's reads are broadcasts. With 8x8 micro-tiles each k step does
//     64 FMAs for 16 shared-memory loads.
// Why these numbers: 128x128x8 with 256 threads and 8x8 micro-tiles is the classic SIMT SGEMM point
// (2 x 8.4 KiB of fp32 staging; 64 accumulators + 16 fragment values per thread, and BK = 8 keeps the
// per-step staging at 4 + 4 registers). 128x64 with 128 threads serves the many convolutions with
// <= 64 output channels per group without wasting half the tile, and at <= 168 registers runs 3
// blocks per SM. fp64 uses 64x64 with 4x4 micro-tiles (256 threads) to stay far from register spills.
// The k-major store layout with a row pad of 4 keeps every 16-byte read aligned and spreads the
// stores of a warp over distinct banks in both gather orders (below).
//
// Gathers choose per operand which tile axis consecutive threads walk, so that a warp's loads are
// contiguous (or land in the same L1 lines) for the layout at hand:
//   - operands whose outer state is expensive (an output pixel's (n, p, q) and receptive-field
//     origin, a filter position's (c, r, s)) walk the outer axis: one outer state per thread and a run
//     of L consecutive reduction positions, stepped with carries (e.g. NCHW: 32 consecutive output
//     pixels per warp; NHWC: 4 consecutive channels per thread, the other 4 of the sector in the
//     neighbouring warp, served by L1);
//   - "affine" operands (weights, dy rows: the outer state of o + j is that of o plus j strides) may
//     walk the reduction axis (KFAST): one set of reduction digits and one outer state per thread.
// All per-position state is computed once per block; a step only adds carries and strides.
#pragma once

#include "common.cuh"

namespace fc {
namespace igemm {

template <int BM_, int BN_, int BK_, int TM_, int TN_, int MIN_BLOCKS_ = 1>
struct Tile {
  static constexpr int BM = BM_, BN = BN_, BK = BK_, TM = TM_, TN = TN_;
  static constexpr int MIN_BLOCKS = MIN_BLOCKS_;   // __launch_bounds__ occupancy target (register cap)
  static constexpr int THREADS_M = BM / TM, THREADS_N = BN / TN;
  static constexpr int NT = THREADS_M * THREADS_N;
  static constexpr int PAD = 4;
  static constexpr int LDA = BM + PAD, LDB = BN + PAD;   // shared-memory row lengths (elements)
  static constexpr int RM = BM * 4 / TM, RN = BN * 4 / TN; // distance between a thread's 4-wide chunks
  static_assert(TM % 4 == 0 && TN % 4 == 0, "micro-tiles are made of 4-wide chunks");
  static_assert(BM % TM == 0 && BN % TN == 0, "tile must split into micro-tiles");
};

// The tilings the launchers choose from. Kernels take the id (an int) as template argument rather
// than the Tile type: a class-type template argument would make the emulator build's kernel
// instantiations hidden symbols, which its launch recorder (the NVRTC path) cannot name.
// Registers (ptxas, sm_80/sm_90, no spills): kTileLarge ~150-210 with no cap (1 block of 8 warps per
// SM; a 128-register cap for 2 blocks spills in some variants), kTileNarrow capped at 168 by
// __launch_bounds__(128, 3) for 3 blocks = 12 warps per SM (~155 used), kTileF64 ~125 (2 blocks).
enum TileId : int {
  kTileLarge = 0,    // 128x128x8, 8x8 micro-tiles, 256 threads: fp32/fp16/bf16, > 64 GEMM columns
  kTileNarrow = 1,   // 128x64x8, 8x8, 128 threads: fp32/fp16/bf16, <= 64 columns
  kTileF64 = 2,      // 64x64x8, 4x4, 256 threads: fp64
};
template <int ID> struct TileOf;
template <> struct TileOf<kTileLarge> { using type = Tile<128, 128, 8, 8, 8, 1>; };
template <> struct TileOf<kTileNarrow> { using type = Tile<128, 64, 8, 8, 8, 3>; };
template <> struct TileOf<kTileF64> { using type = Tile<64, 64, 8, 4, 4, 1>; };

// Coordinates used as "outside the tensor" for a masked-off row: any tap added to it stays negative,
// so the bounds test fails without a separate valid flag (launchers keep every size below 2^28).
constexpr int kOutside = -(1 << 29);

// n / d and n % d (n >= 0, d >= 1) in 32-bit arithmetic when n fits, as it almost always does: a 64-bit
// division is a long subroutine on the GPU, and the gathers and epilogues decode flat indices.
__device__ __forceinline__ index_t div_mod(index_t n, int d, int& r) {
  if (n <= 0x7fffffff) {
    const unsigned un = static_cast<unsigned>(n), ud = static_cast<unsigned>(d), q = un / ud;
    r = static_cast<int>(un - q * ud);
    return q;
  }
  const index_t q = n / d;
  r = static_cast<int>(n - q * d);
  return q;
}

// A reduction index kk in mixed radix: kk = (d0 * r1 + d1) * r2 + d2 (d2 fastest). The engine visits
// kk, kk + step, kk + 2 step, ... and advances the digits with two carries instead of dividing
// (the step is BK, or a thread stride; its digits s0..s2 are precomputed).
struct Radix3 {
  int r1, r2;       // radices of d1 and d2 (>= 1)
  int d0_end;       // kk is in range while d0 < d0_end
  int s0, s1, s2;   // the step in the same radix
};
struct Digits3 {
  int d0, d1, d2;
};

__host__ __device__ __forceinline__ Radix3 make_radix(int d0_end, int r1, int r2, long long step) {
  Radix3 x;
  x.r1 = r1;
  x.r2 = r2;
  x.d0_end = d0_end;
  x.s2 = static_cast<int>(step % r2);
  x.s1 = static_cast<int>((step / r2) % r1);
  x.s0 = static_cast<int>(step / (static_cast<long long>(r2) * r1));
  return x;
}

__device__ __forceinline__ Digits3 radix_decode(const Radix3& x, index_t kk) {
  Digits3 d;
  d.d0 = static_cast<int>(div_mod(div_mod(kk, x.r2, d.d2), x.r1, d.d1));
  return d;
}

__device__ __forceinline__ void radix_advance(Digits3& d, const Radix3& x) {
  d.d2 += x.s2;
  int carry = d.d2 >= x.r2;
  if (carry) d.d2 -= x.r2;
  d.d1 += x.s1 + carry;
  carry = d.d1 >= x.r1;
  if (carry) d.d1 -= x.r1;
  d.d0 += x.s0 + carry;
}

// kk + 1.
__device__ __forceinline__ void radix_increment(Digits3& d, const Radix3& x) {
  if (++d.d2 == x.r2) {
    d.d2 = 0;
    if (++d.d1 == x.r1) {
      d.d1 = 0;
      ++d.d0;
    }
  }
}

// A flat index over [n][Y][X] as coordinates (e.g. output pixel m = (n, p, q)), and its successor.
struct Coord3 {
  index_t n;
  int y, x;
};
__device__ __forceinline__ Coord3 coord3(index_t m, int Y, int X) {
  Coord3 c;
  const index_t t = div_mod(m, X, c.x);
  c.n = div_mod(t, Y, c.y);
  return c;
}
__device__ __forceinline__ void coord3_next(Coord3& c, int Y, int X) {
  if (++c.x == X) {
    c.x = 0;
    if (++c.y == Y) {
      c.y = 0;
      ++c.n;
    }
  }
}

// Which element of the C tile a thread owns: MFAST puts consecutive threads on consecutive rows
// (epilogue stores contiguous along m, e.g. output pixels of NCHW), else on consecutive columns.
template <class Cfg, bool MFAST>
struct ThreadPos {
  int tm, tn;
  __device__ __forceinline__ explicit ThreadPos(int t)
      : tm(MFAST ? t % Cfg::THREADS_M : t / Cfg::THREADS_N), tn(MFAST ? t / Cfg::THREADS_M : t % Cfg::THREADS_N) {}
  __device__ __forceinline__ int row(int i) const { return (i / 4) * Cfg::RM + tm * 4 + (i % 4); }
  __device__ __forceinline__ int col(int j) const { return (j / 4) * Cfg::RN + tn * 4 + (j % 4); }
};

// Gathers one operand's BO x BK slice per step. KFAST: consecutive threads take consecutive reduction
// positions; a thread keeps one reduction position (digits) and L outer positions OSTEP apart
// (Op::Outer: base offsets, coordinates). Otherwise consecutive threads take consecutive outer
// positions; a thread keeps one outer position and L consecutive reduction positions, walked from one
// set of digits. Either way the per-position state is computed once per block, and the k-major stores
// of a warp fall on distinct banks (row pad of 4).
template <class Cfg, int BO, bool KFAST, class Op>
struct TileGather {
  using AccT = typename Op::AccT;
  static constexpr int BK = Cfg::BK, NT = Cfg::NT;
  static constexpr int L = BO * BK / NT;          // values per thread per step
  // Affine operands (Op::kAffineOuter: the outer state of o + j follows from that of o, e.g. a weight
  // row's base offset) keep one outer state and derive the others when they gather.
  static constexpr int NO = (KFAST && !Op::kAffineOuter) ? L : 1;
  static constexpr int OSTEP = NT / BK;
  static_assert((BO * BK) % NT == 0, "tile slice must split evenly over the threads");
  static_assert(KFAST ? NT % BK == 0 : NT % BO == 0, "each thread keeps a fixed position on the fast axis");

  typename Op::Outer outer[NO];
  Digits3 dig;
  int oi, ki;   // tile position of the thread's first value

  __device__ __forceinline__ void init(const Op& op, index_t o_base, index_t k_begin, int tid) {
    if (KFAST) {
      ki = tid % BK;
      oi = tid / BK;
#pragma unroll
      for (int e = 0; e < NO; ++e) outer[e] = op.outer(o_base + oi + e * OSTEP);   // NO = 1 when affine
    } else {
      oi = tid % BO;
      ki = (tid / BO) * L;
      outer[0] = op.outer(o_base + oi);
    }
    dig = radix_decode(op.kr, k_begin + ki);
  }
  __device__ __forceinline__ void fetch(const Op& op, AccT (&v)[L]) const {
    if (KFAST) {
#pragma unroll
      for (int e = 0; e < L; ++e) {
        if constexpr (Op::kAffineOuter) v[e] = op.load(op.outer_plus(outer[0], e * OSTEP), dig);
        else v[e] = op.load(outer[e], dig);
      }
    } else {
      Digits3 d = dig;
#pragma unroll
      for (int e = 0; e < L; ++e) {
        v[e] = op.load(outer[0], d);
        if (e + 1 < L) radix_increment(d, op.kr);
      }
    }
  }
  __device__ __forceinline__ void advance(const Op& op) { radix_advance(dig, op.kr); }
  // s: this operand's [BK][BO + PAD] buffer.
  __device__ __forceinline__ void store(AccT* s, const AccT (&v)[L]) const {
    constexpr int LD = BO + Cfg::PAD;
#pragma unroll
    for (int e = 0; e < L; ++e) {
      if (KFAST) s[ki * LD + oi + e * OSTEP] = v[e];
      else s[(ki + e) * LD + oi] = v[e];
    }
  }
};

// Four consecutive shared-memory values (16-byte aligned for float: one LDS.128 on the GPU).
template <class AccT>
__device__ __forceinline__ void load4(const AccT* p, AccT* out) {
  out[0] = p[0]; out[1] = p[1]; out[2] = p[2]; out[3] = p[3];
}
#if defined(__CUDA_ARCH__)
template <>
__device__ __forceinline__ void load4<float>(const float* p, float* out) {
  const float4 v = *reinterpret_cast<const float4*>(p);
  out[0] = v.x; out[1] = v.y; out[2] = v.z; out[3] = v.w;
}
#endif

// acc[TM][TN] = sum over the ktiles steps from k_begin of A[m0 + row][k] * B[k][n0 + col], with the
// rows/columns of ThreadPos<Cfg, MFAST>. smA / smB: 2 * BK * LDA and 2 * BK * LDB elements of shared
// memory. ktiles must be the same for the whole block (it decides the barriers).
template <class Cfg, bool A_KFAST, bool B_KFAST, bool MFAST, class OpA, class OpB>
__device__ __forceinline__ void mainloop(const OpA& opa, const OpB& opb, index_t m0, index_t n0, index_t k_begin,
                                         int ktiles, typename OpA::AccT (&acc)[Cfg::TM][Cfg::TN],
                                         typename OpA::AccT* smA, typename OpA::AccT* smB) {
  using AccT = typename OpA::AccT;
  constexpr int BK = Cfg::BK, TM = Cfg::TM, TN = Cfg::TN, LDA = Cfg::LDA, LDB = Cfg::LDB;
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = AccT(0);
  if (ktiles <= 0) return;

  const int tid = threadIdx.x;
  const ThreadPos<Cfg, MFAST> pos(tid);
  TileGather<Cfg, Cfg::BM, A_KFAST, OpA> ga;
  TileGather<Cfg, Cfg::BN, B_KFAST, OpB> gb;
  ga.init(opa, m0, k_begin, tid);
  gb.init(opb, n0, k_begin, tid);
  AccT ra[TileGather<Cfg, Cfg::BM, A_KFAST, OpA>::L], rb[TileGather<Cfg, Cfg::BN, B_KFAST, OpB>::L];
  ga.fetch(opa, ra);
  gb.fetch(opb, rb);
  ga.store(smA, ra);
  gb.store(smB, rb);
  __syncthreads();

  for (int kt = 0; kt < ktiles; ++kt) {
    const int cur = kt & 1;
    const bool more = kt + 1 < ktiles;
    if (more) {   // next step's gathers, in flight during this step's FMAs
      ga.advance(opa);
      gb.advance(opb);
      ga.fetch(opa, ra);
      gb.fetch(opb, rb);
    }
    const AccT* sA = smA + cur * BK * LDA;
    const AccT* sB = smB + cur * BK * LDB;
#pragma unroll
    for (int k = 0; k < BK; ++k) {
      AccT a[TM], b[TN];
#pragma unroll
      for (int i = 0; i < TM; i += 4) load4(sA + k * LDA + pos.row(i), a + i);
#pragma unroll
      for (int j = 0; j < TN; j += 4) load4(sB + k * LDB + pos.col(j), b + j);
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] += a[i] * b[j];
    }
    if (more) {
      ga.store(smA + (cur ^ 1) * BK * LDA, ra);
      gb.store(smB + (cur ^ 1) * BK * LDB, rb);
    }
    __syncthreads();
  }
}

}  // namespace igemm
}  // namespace fc

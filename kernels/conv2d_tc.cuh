// conv2d on tensor cores (sm_80+): forward (bias + ReLU fused), dgrad and wgrad as implicit GEMMs with
// mma.sync, operands staged through shared memory by a multi-stage cp.async pipeline and read with
// ldmatrix. fp16 / bf16 inputs and fp32 inputs as TF32, fp32 accumulation. Channels-last activations
// (NHWC) and KRSC weights, so that one operand row of channels is contiguous for 16-byte cp.async.
//
// The three GEMMs, per group g (Cg = C / groups, Kg = K / groups):
//   forward  y[npq][k]   = sum_{rsc} x[n][p*sh - ph + r*dh][q*sw - pw + s*dw][c] * w[k][r][s][c]
//            M = N*P*Q pixels, N = Kg, reduction (r, s, c) with c fastest;
//   dgrad    dx[nhw][c]  = sum_{rsk} dy[n][p][q][k] * w[k][r][s][c],  p = (h + ph - r*dh) / sh when exact
//            M = N*H*W pixels, N = Cg, reduction (r, s, k) with k fastest;
//   wgrad    dw[k][rsc]  = sum_{npq} dy[n][p][q][k] * x[n][p*sh - ph + r*dh][q*sw - pw + s*dw][c]
//            M = Kg, N = R*S*Cg, reduction N*P*Q (split over blockIdx.z, partial sums reduced in a fixed
//            order by a second kernel: deterministic).
// Every gathered 16-byte chunk holds VEC = 16 / sizeof(T) consecutive channels of one pixel (or one
// weight tap), so the channel counts the chunks run along must be multiples of VEC; a chunk that falls
// outside the image, beyond M/N, or beyond the reduction is a zero-fill cp.async (src-size 0).
//
// Tiling (TcTile): a block computes a BM x BN tile with WARPS_M x WARPS_N warps, each a
// (BM/WARPS_M) x (BN/WARPS_N) warp tile of m16n8 mma tiles, fp32 accumulators in registers. The
// reduction advances in k-tiles of BK = CHUNKS * VEC (32 for fp16/bf16, 16 for fp32: 64 bytes).
//   mma.m16n8k16 (f16, bf16) or mma.m16n8k8 (tf32): each mma k-step consumes 32 bytes of reduction.
// Configurations (launcher heuristic in csrc/cuda/conv2d_tc.cu):
//   128x128, 8 warps (2x4, warp tile 64x32), 3 stages: 48 KiB smem, 64 accumulators per thread;
//   128x64 and 64x128, 4 warps (2x2, warp tiles 64x32 / 32x64), 4 stages: 48 KiB;
//   64x64, 4 warps (2x2, warp tile 32x32), 4 stages: 32 KiB.
// Pipeline (STAGES-deep ring of k-tiles, one __syncthreads per k-tile):
//   prologue: issue the cp.async of k-tiles 0..STAGES-2, one commit group each;
//   iteration kt: wait_group(STAGES-2) (this thread's chunks of k-tile kt have landed), __syncthreads
//   (everyone's have, and everyone has finished reading k-tile kt-1's stage), issue k-tile kt+STAGES-1
//   into that freed stage and commit (an empty group past the end keeps the group count uniform), then
//   ldmatrix + mma on k-tile kt's stage while the next STAGES-1 k-tiles are in flight.
// Operand tiles in shared memory come in two orientations:
//   reduction-major (forward A and B, dgrad A): ROWS rows (m or n) of CHUNKS chunks along the reduction,
//     fragments by ldmatrix.x4 (A: matrices rows 0-7 / 8-15 x the k-step's chunks 0 / 1, the a0..a3
//     order; B: n8 tile x chunk 0 / 1, for a pair of n8 tiles);
//   M/N-major (dgrad B = weights [k][c], wgrad A = dy [npq][k] and B = x [npq][c]): BK rows (reduction)
//     of ROWS * sizeof(T) / 16 chunks, fragments by ldmatrix.x4.trans (16-bit types), which transposes
//     each 8x8 block into the "row g, cols 2t..2t+1" fragment; fp32 (tf32) cannot use the 16-bit
//     transpose and reads its fragment elements with scalar shared loads.
//   fp32 data in the reduction-major tiles loads with the same b16 ldmatrix (lane l gets float l%4 of row
//   l/4: the tf32 fragment "row g, col t") and is rounded to tf32 with cvt.rna in registers.
// Swizzle (no padding, stages stay dense and 16-byte aligned): chunk c of row `row` of a tile with CHR
//   chunks per row is stored at row * CHR + (c ^ (row & 7)) when CHR >= 8, and for 64-byte rows
//   (CHR = 4, two rows per 128-byte line) at L ^ ((L >> 3) & 7) with L = row * 4 + c. An ldmatrix phase
//   reads 8 rows at one logical chunk: the XOR keys of those rows are 8 (or, for 64-byte rows, 4 lines x
//   2 halves) distinct values, so the 8 addresses hit 8 distinct 16-byte bank groups: conflict-free.
//   cp.async stores write whole 128-byte lines per 8 consecutive threads: conflict-free as well.
// Epilogues straight from the accumulators (lane holds rows g, g+8 and column pairs 2t, 2t+1 of every
//   mma tile): one rounding to T, paired stores where the output's channel stride is 1.
#pragma once

#include "common.cuh"
#include "ptx_wrappers.cuh"

namespace fc {
namespace tc {

template <int BM_, int BN_, int WARPS_M_, int WARPS_N_, int STAGES_, int CHUNKS_ = 4>
struct TcTile {
  static constexpr int BM = BM_, BN = BN_, WARPS_M = WARPS_M_, WARPS_N = WARPS_N_, STAGES = STAGES_;
  static constexpr int CHUNKS = CHUNKS_;                      // 16-byte chunks of reduction per k-tile row
  static constexpr int NT = 32 * WARPS_M * WARPS_N;           // threads
  static constexpr int WTM = BM / WARPS_M, WTN = BN / WARPS_N;  // warp tile
  static constexpr int MI = WTM / 16, NI = WTN / 8;           // mma tiles per warp
  static constexpr int A_BYTES = BM * CHUNKS * 16, B_BYTES = BN * CHUNKS * 16;
  static constexpr int STAGE_BYTES = A_BYTES + B_BYTES;
  static constexpr int SMEM_BYTES = STAGES * STAGE_BYTES;
  static_assert(WTM % 16 == 0 && WTN % 16 == 0, "warp tile: m16 tiles, pairs of n8 tiles");
  static_assert(CHUNKS % 2 == 0 && CHUNKS <= 8, "a k-step reads 2 chunks; the swizzle spans 8");
  static_assert(STAGES >= 2 && STAGES <= 8, "cp.async.wait_group immediate");
};

// Per storage type: elements per 16-byte chunk, reduction per mma, and the mma instruction.
template <class T> struct MmaOp;
template <> struct MmaOp<__half> {
  static constexpr int VEC = 8, KSTEP = 16;
  static constexpr bool TF32 = false;
  __device__ __forceinline__ static void run(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    ptx::mma_m16n8k16_f16(d, a, b, d);
  }
};
template <> struct MmaOp<__nv_bfloat16> {
  static constexpr int VEC = 8, KSTEP = 16;
  static constexpr bool TF32 = false;
  __device__ __forceinline__ static void run(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    ptx::mma_m16n8k16_bf16(d, a, b, d);
  }
};
template <> struct MmaOp<float> {
  static constexpr int VEC = 4, KSTEP = 8;
  static constexpr bool TF32 = true;
  __device__ __forceinline__ static void run(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    ptx::mma_m16n8k8_tf32(d, a, b, d);
  }
};

// Shape of one operand tile in shared memory: ROWS = BM or BN; KMAJOR = reduction-major.
template <class T, class Cfg, int ROWS, bool KMAJOR>
struct TileGeom {
  static constexpr int VEC = MmaOp<T>::VEC;
  static constexpr int BK = Cfg::CHUNKS * VEC;                                  // reduction per k-tile
  static constexpr int CHR = KMAJOR ? Cfg::CHUNKS : ROWS / VEC;                 // chunks per smem row
  static constexpr int NROWS = KMAJOR ? ROWS : BK;                              // smem rows
  static constexpr int ROW_STEP = Cfg::NT / CHR;                                // rows between a thread's chunks
  static constexpr int ITERS = NROWS * CHR / Cfg::NT;                           // chunks per thread per k-tile
  static_assert(Cfg::NT % CHR == 0 && (NROWS * CHR) % Cfg::NT == 0, "a tile's chunks split evenly over threads");
  static_assert(CHR < 8 ? 8 % CHR == 0 : CHR % 8 == 0, "swizzle granularity");
};

// Swizzled chunk index (16-byte units) of chunk c of row `row` in a tile with CHR chunks per row.
template <int CHR>
__device__ __forceinline__ int swz(int row, int c) {
  if (CHR >= 8) return row * CHR + (c ^ (row & 7));
  const int L = row * CHR + c;
  return L ^ ((L >> 3) & 7);
}

// "Outside the image" coordinate for rows beyond M: any tap added keeps it negative.
constexpr int kRowOutside = -(1 << 29);

// ---- fragments of one mma k-step ------------------------------------------------------------------
template <class T, class Cfg, bool KMAJOR>
__device__ __forceinline__ void load_frag_a(unsigned (&af)[Cfg::MI][4], const unsigned char* sA, int kstep, int wm,
                                            int lane) {
  using Op = MmaOp<T>;
  constexpr int CHR = TileGeom<T, Cfg, Cfg::BM, KMAJOR>::CHR;
  if constexpr (KMAJOR) {
    const int row = wm * Cfg::WTM + (lane & 15), chunk = kstep * 2 + (lane >> 4);
#pragma unroll
    for (int mi = 0; mi < Cfg::MI; ++mi) {
      ptx::ldmatrix_x4(af[mi], sA + swz<CHR>(row + mi * 16, chunk) * 16);
      if (Op::TF32) {
#pragma unroll
        for (int e = 0; e < 4; ++e) af[mi][e] = ptx::tf32_from_f32(ptx::u32_as_float(af[mi][e]));
      }
    }
  } else if constexpr (!Op::TF32) {
    // matrix j = lane / 8: reduction rows 8 * (j / 2) .. +7 of the k-step, m rows 8 * (j % 2) .. +7
    const int j = lane >> 3, red = kstep * 16 + (j >> 1) * 8 + (lane & 7);
#pragma unroll
    for (int mi = 0; mi < Cfg::MI; ++mi)
      ptx::ldmatrix_x4_trans(af[mi], sA + swz<CHR>(red, (wm * Cfg::WTM + mi * 16) / 8 + (j & 1)) * 16);
  } else {
    // tf32 a_e at (m = g + 8 (e & 1), k = t + 4 (e >> 1)), stored at [k][m]
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int m = wm * Cfg::WTM + mi * 16 + g + 8 * (e & 1), red = kstep * 8 + t + 4 * (e >> 1);
        const float v = *reinterpret_cast<const float*>(sA + swz<CHR>(red, m >> 2) * 16 + (m & 3) * 4);
        af[mi][e] = ptx::tf32_from_f32(v);
      }
  }
}

template <class T, class Cfg, bool KMAJOR>
__device__ __forceinline__ void load_frag_b(unsigned (&bf)[Cfg::NI][2], const unsigned char* sB, int kstep, int wn,
                                            int lane) {
  using Op = MmaOp<T>;
  constexpr int CHR = TileGeom<T, Cfg, Cfg::BN, KMAJOR>::CHR;
  if constexpr (KMAJOR || !Op::TF32) {
#pragma unroll
    for (int ni = 0; ni < Cfg::NI; ni += 2) {
      unsigned r[4];
      if constexpr (KMAJOR) {
        // matrix j = lane / 8: n8 tile ni + j / 2, chunk j % 2 of the k-step
        const int row = wn * Cfg::WTN + (ni + (lane >> 4)) * 8 + (lane & 7), chunk = kstep * 2 + ((lane >> 3) & 1);
        ptx::ldmatrix_x4(r, sB + swz<CHR>(row, chunk) * 16);
        if (Op::TF32) {
#pragma unroll
          for (int e = 0; e < 4; ++e) r[e] = ptx::tf32_from_f32(ptx::u32_as_float(r[e]));
        }
      } else {
        // matrix j: reduction rows 8 * (j % 2) .. +7 of the k-step, n8 tile ni + j / 2
        const int j = lane >> 3, red = kstep * 16 + (j & 1) * 8 + (lane & 7);
        ptx::ldmatrix_x4_trans(r, sB + swz<CHR>(red, (wn * Cfg::WTN + ni * 8) / 8 + (j >> 1)) * 16);
      }
      bf[ni][0] = r[0];
      bf[ni][1] = r[1];
      bf[ni + 1][0] = r[2];
      bf[ni + 1][1] = r[3];
    }
  } else {
    // tf32 b_e at (k = t + 4 e, n = g), stored at [k][n]
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int ni = 0; ni < Cfg::NI; ++ni)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int n = wn * Cfg::WTN + ni * 8 + g, red = kstep * 8 + t + 4 * e;
        const float v = *reinterpret_cast<const float*>(sB + swz<CHR>(red, n >> 2) * 16 + (n & 3) * 4);
        bf[ni][e] = ptx::tf32_from_f32(v);
      }
  }
}

// acc = sum over ktiles k-tiles of A * B, the operand tiles brought in by ld.issue(sA, sB) (which issues
// one k-tile's cp.async and advances to the next). ktiles must be uniform over the block.
template <class T, class Cfg, bool A_KMAJOR, bool B_KMAJOR, class Loader, class Params>
__device__ __forceinline__ void mainloop(Loader& ld, const Params& p, int ktiles, float (&acc)[Cfg::MI][Cfg::NI][4],
                                         unsigned char* smem) {
  constexpr int STAGES = Cfg::STAGES;
#pragma unroll
  for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
    for (int ni = 0; ni < Cfg::NI; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.f;

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < ktiles) ld.issue(p, smem + s * Cfg::STAGE_BYTES, smem + s * Cfg::STAGE_BYTES + Cfg::A_BYTES);
    ptx::cp_async_commit();
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int wm = warp % Cfg::WARPS_M, wn = warp / Cfg::WARPS_M;
  for (int kt = 0; kt < ktiles; ++kt) {
    ptx::cp_async_wait<STAGES - 2>();
    __syncthreads();
    if (kt + STAGES - 1 < ktiles) {
      unsigned char* s = smem + ((kt + STAGES - 1) % STAGES) * Cfg::STAGE_BYTES;
      ld.issue(p, s, s + Cfg::A_BYTES);
    }
    ptx::cp_async_commit();

    const unsigned char* sA = smem + (kt % STAGES) * Cfg::STAGE_BYTES;
    const unsigned char* sB = sA + Cfg::A_BYTES;
#pragma unroll
    for (int kstep = 0; kstep < Cfg::CHUNKS / 2; ++kstep) {
      unsigned af[Cfg::MI][4], bf[Cfg::NI][2];
      load_frag_a<T, Cfg, A_KMAJOR>(af, sA, kstep, wm, lane);
      load_frag_b<T, Cfg, B_KMAJOR>(bf, sB, kstep, wn, lane);
#pragma unroll
      for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < Cfg::NI; ++ni) MmaOp<T>::run(acc[mi][ni], af[mi], bf[ni]);
    }
  }
  ptx::cp_async_wait_all();   // only empty groups remain; leaves no copy in flight at exit
}

// Three reduction digits (d0, d1, d2), d2 fastest, advanced by a step given in the same radix.
struct Digits {
  int d0, d1, d2;
  __device__ __forceinline__ void set(int v, int r1, int r2) {
    d2 = v % r2;
    const int t = v / r2;
    d1 = t % r1;
    d0 = t / r1;
  }
  __device__ __forceinline__ void advance(int s0, int s1, int s2, int r1, int r2) {
    d2 += s2;
    if (d2 >= r2) { d2 -= r2; ++d1; }
    d1 += s1;
    if (d1 >= r1) { d1 -= r1; ++d0; }
    d0 += s0;
  }
};

// ---- output stores ----------------------------------------------------------------------------------
// One 2-element vector store (a 4- or 8-byte store on the GPU; two scalar stores in the emulator).
#if defined(__CUDA_ARCH__)
__device__ __forceinline__ void store2(float* d, float a, float b) { *reinterpret_cast<float2*>(d) = make_float2(a, b); }
__device__ __forceinline__ void store2(__half* d, float a, float b) {
  *reinterpret_cast<__half2*>(d) = __floats2half2_rn(a, b);
}
__device__ __forceinline__ void store2(__nv_bfloat16* d, float a, float b) {
  *reinterpret_cast<__nv_bfloat162*>(d) = __floats2bfloat162_rn(a, b);
}
#else
template <class T>
__device__ __forceinline__ void store2(T* d, float a, float b) {
  d[0] = from_acc<T>(a);
  d[1] = from_acc<T>(b);
}
#endif

// Stores channel c (v0) and c+1 (v1, when has1) of one pixel; one vector store when they are adjacent
// and the pair is aligned (channels-last output, even channel offset).
template <class T>
__device__ __forceinline__ void store_pair(T* dst, index_t sc, float v0, float v1, bool has1) {
  if (has1 && sc == 1 && (reinterpret_cast<unsigned long long>(dst) % (2 * sizeof(T))) == 0) {
    store2(dst, v0, v1);
    return;
  }
  dst[0] = from_acc<T>(v0);
  if (has1) dst[sc] = from_acc<T>(v1);
}

// ======================================================================================================
// Forward
// ======================================================================================================
template <class T>
struct TcFwdParams {
  const T* x;
  const T* w;
  const T* bias;                    // K values, or null
  T* y;
  index_t x_sn, x_sh, x_sw;         // element strides; channel stride 1
  index_t w_sk, w_sr, w_ss;         // element strides; channel stride 1
  index_t y_sn, y_sk, y_sp, y_sq;   // element strides (any)
  index_t M;                        // N * P * Q
  int PQ, Q;
  int H, W, R, S;
  int stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  int Cg, Kg;                       // channels and output channels per group
  int ktiles;                       // ceil(R * S * Cg / BK)
  int step_r, step_s, step_c;       // BK in the (r, s, c) mixed radix
};

// A: x gathered, reduction-major (row m = pixel, chunks along c); B: w, reduction-major (row k). Both
// use the same chunk column, so one set of (r, s, c) digits serves both.
template <class T, class Cfg>
struct FwdLoader {
  using GA = TileGeom<T, Cfg, Cfg::BM, true>;
  using GB = TileGeom<T, Cfg, Cfg::BN, true>;
  static constexpr int VEC = MmaOp<T>::VEC;
  const T* xg;
  const T* wg;
  int ch, row0;
  index_t a_base[GA::ITERS];
  int a_h[GA::ITERS], a_w[GA::ITERS];
  index_t b_off[GB::ITERS];
  Digits d;   // (r, s, c) of this thread's chunk in the next k-tile

  __device__ __forceinline__ void init(const TcFwdParams<T>& p, index_t m0, int n0, int grp, int tid) {
    xg = p.x + static_cast<index_t>(grp) * p.Cg;
    wg = p.w + static_cast<index_t>(grp) * p.Kg * p.w_sk;
    ch = tid % Cfg::CHUNKS;
    row0 = tid / Cfg::CHUNKS;
#pragma unroll
    for (int i = 0; i < GA::ITERS; ++i) {
      const index_t m = m0 + row0 + i * GA::ROW_STEP;
      if (m < p.M) {
        const index_t n = m / p.PQ;
        const int pq = static_cast<int>(m - n * p.PQ);
        const int pp = pq / p.Q, q = pq - pp * p.Q;
        a_base[i] = n * p.x_sn;
        a_h[i] = pp * p.stride_h - p.pad_h;
        a_w[i] = q * p.stride_w - p.pad_w;
      } else {
        a_base[i] = 0;
        a_h[i] = kRowOutside;
        a_w[i] = kRowOutside;
      }
    }
#pragma unroll
    for (int i = 0; i < GB::ITERS; ++i) {
      const int k = n0 + row0 + i * GB::ROW_STEP;
      b_off[i] = k < p.Kg ? k * p.w_sk : index_t(-1);   // -1: row beyond Kg
    }
    d.set(ch * VEC, p.S, p.Cg);
  }

  __device__ __forceinline__ void issue(const TcFwdParams<T>& p, unsigned char* sA, unsigned char* sB) {
    const bool k_ok = d.d0 < p.R;
    const int dh = d.d0 * p.dil_h, dw = d.d1 * p.dil_w;
#pragma unroll
    for (int i = 0; i < GA::ITERS; ++i) {
      const int h = a_h[i] + dh, w = a_w[i] + dw;
      const bool ok = k_ok && static_cast<unsigned>(h) < static_cast<unsigned>(p.H) &&
                      static_cast<unsigned>(w) < static_cast<unsigned>(p.W);
      const T* src = ok ? xg + a_base[i] + h * p.x_sh + w * p.x_sw + d.d2 : p.x;   // clamped when masked
      ptx::cp_async_cg16(sA + swz<GA::CHR>(row0 + i * GA::ROW_STEP, ch) * 16, src, ok ? 16 : 0);
    }
    const index_t tap = d.d0 * p.w_sr + d.d1 * p.w_ss + d.d2;
#pragma unroll
    for (int i = 0; i < GB::ITERS; ++i) {
      const bool ok = k_ok && b_off[i] >= 0;
      ptx::cp_async_cg16(sB + swz<GB::CHR>(row0 + i * GB::ROW_STEP, ch) * 16, ok ? wg + b_off[i] + tap : p.w,
                         ok ? 16 : 0);
    }
    d.advance(p.step_r, p.step_s, p.step_c, p.S, p.Cg);
  }
};

template <class T, class Cfg, bool HAS_BIAS, bool RELU>
__global__ void __launch_bounds__(Cfg::NT) conv2d_fwd_tc(TcFwdParams<T> p) {
  FC_EXTERN_SHARED(unsigned char, smem);
  const index_t m0 = static_cast<index_t>(blockIdx.x) * Cfg::BM;
  const int n0 = static_cast<int>(blockIdx.y) * Cfg::BN;
  const int grp = static_cast<int>(blockIdx.z);
  FwdLoader<T, Cfg> ld;
  ld.init(p, m0, n0, grp, threadIdx.x);
  float acc[Cfg::MI][Cfg::NI][4];
  mainloop<T, Cfg, true, true>(ld, p, p.ktiles, acc, smem);

  // Epilogue: + bias, ReLU, one rounding, store.
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int wm = warp % Cfg::WARPS_M, wn = warp / Cfg::WARPS_M;
  const int g = lane >> 2, t4 = lane & 3;
  const index_t kbase = static_cast<index_t>(grp) * p.Kg;
#pragma unroll
  for (int mi = 0; mi < Cfg::MI; ++mi) {
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const index_t m = m0 + wm * Cfg::WTM + mi * 16 + g + 8 * hh;
      if (m >= p.M) continue;
      const index_t n = m / p.PQ;
      const int pq = static_cast<int>(m - n * p.PQ);
      const int pp = pq / p.Q, q = pq - pp * p.Q;
      T* yrow = p.y + n * p.y_sn + pp * p.y_sp + q * p.y_sq + kbase * p.y_sk;
#pragma unroll
      for (int ni = 0; ni < Cfg::NI; ++ni) {
        const int k = n0 + wn * Cfg::WTN + ni * 8 + 2 * t4;
        if (k >= p.Kg) continue;
        const bool has1 = k + 1 < p.Kg;
        float v0 = acc[mi][ni][2 * hh], v1 = acc[mi][ni][2 * hh + 1];
        if (HAS_BIAS) {
          v0 += to_acc(p.bias[kbase + k]);
          if (has1) v1 += to_acc(p.bias[kbase + k + 1]);
        }
        if (RELU) {
          v0 = fmaxf(v0, 0.f);
          v1 = fmaxf(v1, 0.f);
        }
        store_pair<T>(yrow + k * p.y_sk, p.y_sk, v0, v1, has1);
      }
    }
  }
}

// ======================================================================================================
// Dgrad
// ======================================================================================================
template <class T>
struct TcDgradParams {
  const T* dy;
  const T* w;
  T* dx;
  index_t dy_sn, dy_sp, dy_sq;          // element strides; channel stride 1
  index_t w_sk, w_sr, w_ss;             // element strides; channel stride 1
  index_t dx_sn, dx_sc, dx_sh, dx_sw;   // element strides (any)
  index_t M;                            // N * H * W
  int HW, W;
  int P, Q, R, S;
  int stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  int Cg, Kg;
  int ktiles;                           // ceil(R * S * Kg / BK)
  int step_r, step_s, step_k;           // BK in the (r, s, k) mixed radix
};

// A: dy gathered, reduction-major (row m = input pixel, chunks along k); B: w, N-major (row = reduction
// index (r, s, k), chunks along c).
template <class T, class Cfg>
struct DgradLoader {
  using GA = TileGeom<T, Cfg, Cfg::BM, true>;
  using GB = TileGeom<T, Cfg, Cfg::BN, false>;
  static constexpr int VEC = MmaOp<T>::VEC;
  const T* dyg;
  const T* wg;
  int ch, row0, cb, rowb0;
  bool c_ok;
  index_t a_base[GA::ITERS];
  int a_h[GA::ITERS], a_w[GA::ITERS];   // h + pad_h, w + pad_w (negative: row beyond M)
  Digits da;                            // (r, s, k) of this thread's A chunk
  Digits db[GB::ITERS];                 // (r, s, k) of this thread's B rows

  __device__ __forceinline__ void init(const TcDgradParams<T>& p, index_t m0, int n0, int grp, int tid) {
    dyg = p.dy + static_cast<index_t>(grp) * p.Kg;
    wg = p.w + static_cast<index_t>(grp) * p.Kg * p.w_sk + n0;
    ch = tid % Cfg::CHUNKS;
    row0 = tid / Cfg::CHUNKS;
#pragma unroll
    for (int i = 0; i < GA::ITERS; ++i) {
      const index_t m = m0 + row0 + i * GA::ROW_STEP;
      if (m < p.M) {
        const index_t n = m / p.HW;
        const int hw = static_cast<int>(m - n * p.HW);
        const int h = hw / p.W, w = hw - h * p.W;
        a_base[i] = n * p.dy_sn;
        a_h[i] = h + p.pad_h;
        a_w[i] = w + p.pad_w;
      } else {
        a_base[i] = 0;
        a_h[i] = kRowOutside;
        a_w[i] = kRowOutside;
      }
    }
    da.set(ch * VEC, p.S, p.Kg);
    cb = tid % GB::CHR;
    rowb0 = tid / GB::CHR;
    c_ok = n0 + cb * VEC < p.Cg;
#pragma unroll
    for (int i = 0; i < GB::ITERS; ++i) db[i].set(rowb0 + i * GB::ROW_STEP, p.S, p.Kg);
  }

  __device__ __forceinline__ void issue(const TcDgradParams<T>& p, unsigned char* sA, unsigned char* sB) {
    const bool k_ok = da.d0 < p.R;
    const int dh = da.d0 * p.dil_h, dw = da.d1 * p.dil_w;
#pragma unroll
    for (int i = 0; i < GA::ITERS; ++i) {
      const int ph = a_h[i] - dh, pw = a_w[i] - dw;   // p * stride_h, q * stride_w when the tap hits
      const int pp = ph / p.stride_h, q = pw / p.stride_w;
      const bool ok = k_ok && ph >= 0 && pw >= 0 && pp * p.stride_h == ph && q * p.stride_w == pw && pp < p.P &&
                      q < p.Q;
      const T* src = ok ? dyg + a_base[i] + pp * p.dy_sp + q * p.dy_sq + da.d2 : p.dy;
      ptx::cp_async_cg16(sA + swz<GA::CHR>(row0 + i * GA::ROW_STEP, ch) * 16, src, ok ? 16 : 0);
    }
    da.advance(p.step_r, p.step_s, p.step_k, p.S, p.Kg);
#pragma unroll
    for (int i = 0; i < GB::ITERS; ++i) {
      const bool ok = c_ok && db[i].d0 < p.R;
      const T* src = ok ? wg + db[i].d2 * p.w_sk + db[i].d0 * p.w_sr + db[i].d1 * p.w_ss + cb * VEC : p.w;
      ptx::cp_async_cg16(sB + swz<GB::CHR>(rowb0 + i * GB::ROW_STEP, cb) * 16, src, ok ? 16 : 0);
      db[i].advance(p.step_r, p.step_s, p.step_k, p.S, p.Kg);
    }
  }
};

template <class T, class Cfg>
__global__ void __launch_bounds__(Cfg::NT) conv2d_dgrad_tc(TcDgradParams<T> p) {
  FC_EXTERN_SHARED(unsigned char, smem);
  const index_t m0 = static_cast<index_t>(blockIdx.x) * Cfg::BM;
  const int n0 = static_cast<int>(blockIdx.y) * Cfg::BN;
  const int grp = static_cast<int>(blockIdx.z);
  DgradLoader<T, Cfg> ld;
  ld.init(p, m0, n0, grp, threadIdx.x);
  float acc[Cfg::MI][Cfg::NI][4];
  mainloop<T, Cfg, true, false>(ld, p, p.ktiles, acc, smem);

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int wm = warp % Cfg::WARPS_M, wn = warp / Cfg::WARPS_M;
  const int g = lane >> 2, t4 = lane & 3;
  const index_t cbase = static_cast<index_t>(grp) * p.Cg;
#pragma unroll
  for (int mi = 0; mi < Cfg::MI; ++mi) {
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const index_t m = m0 + wm * Cfg::WTM + mi * 16 + g + 8 * hh;
      if (m >= p.M) continue;
      const index_t n = m / p.HW;
      const int hw = static_cast<int>(m - n * p.HW);
      const int h = hw / p.W, w = hw - h * p.W;
      T* row = p.dx + n * p.dx_sn + h * p.dx_sh + w * p.dx_sw + cbase * p.dx_sc;
#pragma unroll
      for (int ni = 0; ni < Cfg::NI; ++ni) {
        const int c = n0 + wn * Cfg::WTN + ni * 8 + 2 * t4;
        if (c >= p.Cg) continue;
        store_pair<T>(row + c * p.dx_sc, p.dx_sc, acc[mi][ni][2 * hh], acc[mi][ni][2 * hh + 1], c + 1 < p.Cg);
      }
    }
  }
}

// ======================================================================================================
// Wgrad
// ======================================================================================================
template <class T>
struct TcWgradParams {
  const T* dy;
  const T* x;
  T* dw;                                // written directly when splits == 1
  float* ws;                            // splits > 1: [groups * splits][Kg][RSC] partial sums
  index_t dy_sn, dy_sp, dy_sq;          // element strides; channel stride 1
  index_t x_sn, x_sh, x_sw;             // element strides; channel stride 1
  index_t dw_sk, dw_sc, dw_sr, dw_ss;   // element strides (any)
  int N, P, Q, H, W, R, S;
  int stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  int Cg, Kg, RSC;                      // RSC = R * S * Cg: GEMM columns
  int ktiles, kt_per_split, splits;     // k-tiles over N * P * Q, per split
  int step_n, step_p, step_q;           // BK in the (n, p, q) mixed radix
};

// A: dy, M-major (row = output pixel npq of the k-tile, chunks along k); B: x gathered, N-major (row =
// npq, chunks along the GEMM column (r, s, c), one filter tap per chunk).
template <class T, class Cfg>
struct WgradLoader {
  using GA = TileGeom<T, Cfg, Cfg::BM, false>;
  using GB = TileGeom<T, Cfg, Cfg::BN, false>;
  static constexpr int VEC = MmaOp<T>::VEC;
  const T* dyg;
  const T* xg;
  int ca, rowa0, cb, rowb0;
  bool k_ok, col_ok;
  int hoff, woff;                 // r * dil_h - pad_h, s * dil_w - pad_w of this thread's B column
  Digits da[GA::ITERS], db[GB::ITERS];   // (n, p, q) of this thread's rows

  __device__ __forceinline__ void init(const TcWgradParams<T>& p, int m0, int n0, int grp, int kt_begin, int tid) {
    const int BK = GA::BK;
    ca = tid % GA::CHR;
    rowa0 = tid / GA::CHR;
    k_ok = m0 + ca * VEC < p.Kg;
    dyg = p.dy + static_cast<index_t>(grp) * p.Kg + m0 + ca * VEC;
#pragma unroll
    for (int i = 0; i < GA::ITERS; ++i) da[i].set(kt_begin * BK + rowa0 + i * GA::ROW_STEP, p.P, p.Q);
    cb = tid % GB::CHR;
    rowb0 = tid / GB::CHR;
    const int col = n0 + cb * VEC;
    col_ok = col < p.RSC;
    const int c = col % p.Cg, rs = col / p.Cg;
    hoff = (rs / p.S) * p.dil_h - p.pad_h;
    woff = (rs % p.S) * p.dil_w - p.pad_w;
    xg = p.x + static_cast<index_t>(grp) * p.Cg + c;
#pragma unroll
    for (int i = 0; i < GB::ITERS; ++i) db[i].set(kt_begin * BK + rowb0 + i * GB::ROW_STEP, p.P, p.Q);
  }

  __device__ __forceinline__ void issue(const TcWgradParams<T>& p, unsigned char* sA, unsigned char* sB) {
#pragma unroll
    for (int i = 0; i < GA::ITERS; ++i) {
      const bool ok = k_ok && da[i].d0 < p.N;
      const T* src = ok ? dyg + da[i].d0 * p.dy_sn + da[i].d1 * p.dy_sp + da[i].d2 * p.dy_sq : p.dy;
      ptx::cp_async_cg16(sA + swz<GA::CHR>(rowa0 + i * GA::ROW_STEP, ca) * 16, src, ok ? 16 : 0);
      da[i].advance(p.step_n, p.step_p, p.step_q, p.P, p.Q);
    }
#pragma unroll
    for (int i = 0; i < GB::ITERS; ++i) {
      const int h = db[i].d1 * p.stride_h + hoff, w = db[i].d2 * p.stride_w + woff;
      const bool ok = col_ok && db[i].d0 < p.N && static_cast<unsigned>(h) < static_cast<unsigned>(p.H) &&
                      static_cast<unsigned>(w) < static_cast<unsigned>(p.W);
      const T* src = ok ? xg + db[i].d0 * p.x_sn + h * p.x_sh + w * p.x_sw : p.x;
      ptx::cp_async_cg16(sB + swz<GB::CHR>(rowb0 + i * GB::ROW_STEP, cb) * 16, src, ok ? 16 : 0);
      db[i].advance(p.step_n, p.step_p, p.step_q, p.P, p.Q);
    }
  }
};

// blockIdx.z = group * splits + split; split s covers k-tiles [s * kt_per_split, (s + 1) * kt_per_split).
template <class T, class Cfg>
__global__ void __launch_bounds__(Cfg::NT) conv2d_wgrad_tc(TcWgradParams<T> p) {
  FC_EXTERN_SHARED(unsigned char, smem);
  const int m0 = static_cast<int>(blockIdx.x) * Cfg::BM;
  const int n0 = static_cast<int>(blockIdx.y) * Cfg::BN;
  const int grp = static_cast<int>(blockIdx.z) / p.splits, split = static_cast<int>(blockIdx.z) % p.splits;
  const int kt_begin = split * p.kt_per_split;
  const int ktiles = min(p.ktiles - kt_begin, p.kt_per_split);
  WgradLoader<T, Cfg> ld;
  ld.init(p, m0, n0, grp, kt_begin, threadIdx.x);
  float acc[Cfg::MI][Cfg::NI][4];
  mainloop<T, Cfg, false, false>(ld, p, ktiles, acc, smem);

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int wm = warp % Cfg::WARPS_M, wn = warp / Cfg::WARPS_M;
  const int g = lane >> 2, t4 = lane & 3;
#pragma unroll
  for (int mi = 0; mi < Cfg::MI; ++mi) {
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const int k = m0 + wm * Cfg::WTM + mi * 16 + g + 8 * hh;
      if (k >= p.Kg) continue;
#pragma unroll
      for (int ni = 0; ni < Cfg::NI; ++ni) {
        const int col = n0 + wn * Cfg::WTN + ni * 8 + 2 * t4;   // even; col + 1 is in the same tap
        if (col >= p.RSC) continue;
        const float v0 = acc[mi][ni][2 * hh], v1 = acc[mi][ni][2 * hh + 1];
        if (p.splits == 1) {
          const int c = col % p.Cg, rs = col / p.Cg;
          T* dst = p.dw + (static_cast<index_t>(grp) * p.Kg + k) * p.dw_sk + (rs / p.S) * p.dw_sr +
                   (rs % p.S) * p.dw_ss + c * p.dw_sc;
          store_pair<T>(dst, p.dw_sc, v0, v1, true);
        } else {
          float* dst = p.ws + (static_cast<index_t>(blockIdx.z) * p.Kg + k) * p.RSC + col;
          dst[0] = v0;
          dst[1] = v1;
        }
      }
    }
  }
}

// dw[g][k][col] = sum over the splits, in split order (deterministic), of ws[g][split][k][col].
template <class T>
__global__ void conv2d_wgrad_tc_reduce(const float* ws, T* dw, index_t dw_sk, index_t dw_sc, index_t dw_sr,
                                       index_t dw_ss, int groups, int splits, int Kg, int RSC, int S, int Cg) {
  const index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const index_t per_group = static_cast<index_t>(Kg) * RSC;
  if (i >= per_group * groups) return;
  const int grp = static_cast<int>(i / per_group);
  const index_t kc = i - grp * per_group;
  const int k = static_cast<int>(kc / RSC), col = static_cast<int>(kc - static_cast<index_t>(k) * RSC);
  const float* src = ws + static_cast<index_t>(grp) * splits * per_group + kc;
  float s = 0.f;
  for (int sp = 0; sp < splits; ++sp) s += src[sp * per_group];
  const int c = col % Cg, rs = col / Cg;
  dw[(static_cast<index_t>(grp) * Kg + k) * dw_sk + (rs / S) * dw_sr + (rs % S) * dw_ss + c * dw_sc] = from_acc<T>(s);
}

}  // namespace tc
}  // namespace fc

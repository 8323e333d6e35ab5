// Tiny kernels that test the PTX wrappers (kernels/ptx_wrappers.cuh) against plain references, for
// tests/test_emu_mma_wrappers.py. Each builds its operands straight from the PTX ISA's tables, written
// out register by register here (independently of the wrappers' own layout functions), so a wrong index
// on either side shows up as a wrong result. Written like kernels/*.cuh (no host headers, only the
// wrapper header), so nvcc compiles them too and a GPU can confirm that the emulation matches hardware.
#pragma once

#include "ptx_wrappers.cuh"

namespace fc_mma_selftest {

using namespace fc::ptx;

__device__ __forceinline__ unsigned short f16_bits(float v) {
#if defined(FC_SIMT_EMULATOR) && !defined(__CUDA_ARCH__)
  return __float2half_rn(v).x;
#else
  return __half_as_ushort(__float2half_rn(v));
#endif
}
__device__ __forceinline__ unsigned short bf16_bits(float v) {
#if defined(FC_SIMT_EMULATOR) && !defined(__CUDA_ARCH__)
  return __float2bfloat16_rn(v).x;
#else
  return __bfloat16_as_ushort(__float2bfloat16_rn(v));
#endif
}

// Two 16-bit values in one register, the first (lower column/row index) in the low half.
template <int KIND>
__device__ __forceinline__ unsigned pack2(float lo, float hi) {
  const unsigned a = KIND == 1 ? f16_bits(lo) : bf16_bits(lo);
  const unsigned b = KIND == 1 ? f16_bits(hi) : bf16_bits(hi);
  return a | (b << 16);
}

// One m16n8 mma per warp: KIND 0 = m16n8k8 tf32, 1 = m16n8k16 f16, 2 = m16n8k16 bf16. Warp w reads
// A + w*16*KD (16 x KD, row-major), B + w*KD*8 (KD x 8, row-major), C + w*128 (16 x 8) and writes
// D + w*128 = repeat * A*B + C, accumulating in place `repeat` times (d aliasing c).
template <int KIND>
__global__ void mma_tile(const float* A, const float* B, const float* C, float* D, int repeat) {
  constexpr int KD = KIND == 0 ? 8 : 16;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane >> 2, t = lane & 3;
  A += warp * 16 * KD;
  B += warp * KD * 8;
  C += warp * 128;
  D += warp * 128;
  unsigned a[4], b[2];
  if (KIND == 0) {
    // tf32 A: a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4);  B: b0 (k=t, n=g), b1 (k=t+4, n=g)
    a[0] = tf32_from_f32(A[g * KD + t]);
    a[1] = tf32_from_f32(A[(g + 8) * KD + t]);
    a[2] = tf32_from_f32(A[g * KD + t + 4]);
    a[3] = tf32_from_f32(A[(g + 8) * KD + t + 4]);
    b[0] = tf32_from_f32(B[t * 8 + g]);
    b[1] = tf32_from_f32(B[(t + 4) * 8 + g]);
  } else {
    // 16-bit A: reg0 (g, 2t..2t+1), reg1 (g+8, 2t..), reg2 (g, 2t+8..), reg3 (g+8, 2t+8..)
    a[0] = pack2<KIND>(A[g * KD + 2 * t], A[g * KD + 2 * t + 1]);
    a[1] = pack2<KIND>(A[(g + 8) * KD + 2 * t], A[(g + 8) * KD + 2 * t + 1]);
    a[2] = pack2<KIND>(A[g * KD + 2 * t + 8], A[g * KD + 2 * t + 9]);
    a[3] = pack2<KIND>(A[(g + 8) * KD + 2 * t + 8], A[(g + 8) * KD + 2 * t + 9]);
    // B: reg0 (k = 2t..2t+1, n = g), reg1 (k = 2t+8..2t+9, n = g)
    b[0] = pack2<KIND>(B[(2 * t) * 8 + g], B[(2 * t + 1) * 8 + g]);
    b[1] = pack2<KIND>(B[(2 * t + 8) * 8 + g], B[(2 * t + 9) * 8 + g]);
  }
  // C/D: c0 (g, 2t), c1 (g, 2t+1), c2 (g+8, 2t), c3 (g+8, 2t+1)
  float c[4] = {C[g * 8 + 2 * t], C[g * 8 + 2 * t + 1], C[(g + 8) * 8 + 2 * t], C[(g + 8) * 8 + 2 * t + 1]};
  for (int r = 0; r < repeat; ++r) {
    if (KIND == 0) mma_m16n8k8_tf32(c, a, b, c);
    else if (KIND == 1) mma_m16n8k16_f16(c, a, b, c);
    else mma_m16n8k16_bf16(c, a, b, c);
  }
  D[g * 8 + 2 * t] = c[0];
  D[g * 8 + 2 * t + 1] = c[1];
  D[(g + 8) * 8 + 2 * t] = c[2];
  D[(g + 8) * 8 + 2 * t + 1] = c[3];
}

// ldmatrix of X 8x8 b16 matrices: shared memory holds `nrows` rows of 8 16-bit values (16 bytes) copied
// from `rows`; lane l passes the address of row row_of_lane[l]; out[l * X + j] = lane l's register j.
template <int X, bool TRANS>
__global__ void ldmatrix_tile(const unsigned short* rows, int nrows, const int* row_of_lane, unsigned* out) {
  __shared__ int4 smem4[64];   // 64 rows of 16 bytes, 16-byte aligned
  unsigned short* s = reinterpret_cast<unsigned short*>(smem4);
  for (int i = threadIdx.x; i < nrows * 8; i += blockDim.x) s[i] = rows[i];
  __syncthreads();
  const int lane = threadIdx.x % 32;
  const void* addr = s + row_of_lane[lane] * 8;
  unsigned r[X];
  if (X == 1) {
    unsigned (&r1)[1] = *reinterpret_cast<unsigned(*)[1]>(r);
    if (TRANS) ldmatrix_x1_trans(r1, addr);
    else ldmatrix_x1(r1, addr);
  } else if (X == 2) {
    unsigned (&r2)[2] = *reinterpret_cast<unsigned(*)[2]>(r);
    if (TRANS) ldmatrix_x2_trans(r2, addr);
    else ldmatrix_x2(r2, addr);
  } else {
    unsigned (&r4)[4] = *reinterpret_cast<unsigned(*)[4]>(r);
    if (TRANS) ldmatrix_x4_trans(r4, addr);
    else ldmatrix_x4(r4, addr);
  }
  for (int j = 0; j < X; ++j) out[lane * X + j] = r[j];
}

// cp.async groups and waits; every thread owns one 16-byte slot per region r of shared memory, set to
// -1.0f before any copy; region r's copy reads src[(r * nthreads + t) * 4 ...+4].
//   mode 0: regions 0, 1, 2 in committed groups 0, 1, 2, region 3 issued but never committed; snapshots
//           of the thread's four slots after wait_group 2, 1, 0 and wait_all go to out[snap][region][t][4].
//   mode 1: region 0 copied and committed, __syncthreads WITHOUT a wait, then each thread reads its
//           neighbour's (t ^ 1) slot into out[t][4]: the bug the emulator must expose (stale -1s).
//   mode 2: as mode 1 with cp.async.wait_group 0 before the barrier: the neighbour's data.
__global__ void cp_async_groups(const float* src, float* out, int mode) {
  __shared__ int4 slots[4 * 64];
  const int t = threadIdx.x, nt = blockDim.x;
  for (int r = 0; r < 4; ++r) {
    float* f = reinterpret_cast<float*>(&slots[r * nt + t]);
    f[0] = f[1] = f[2] = f[3] = -1.f;
  }
  __syncthreads();
  if (mode == 0) {
    for (int r = 0; r < 4; ++r) {
      cp_async_cg16(&slots[r * nt + t], src + (r * nt + t) * 4);
      if (r < 3) cp_async_commit();
    }
    for (int snap = 0; snap < 4; ++snap) {
      if (snap == 0) cp_async_wait<2>();
      else if (snap == 1) cp_async_wait<1>();
      else if (snap == 2) cp_async_wait<0>();
      else cp_async_wait_all();
      for (int r = 0; r < 4; ++r) {
        const float* f = reinterpret_cast<const float*>(&slots[r * nt + t]);
        for (int e = 0; e < 4; ++e) out[((snap * 4 + r) * nt + t) * 4 + e] = f[e];
      }
    }
  } else {
    cp_async_cg16(&slots[t], src + t * 4);
    cp_async_commit();
    if (mode == 2) cp_async_wait<0>();
    __syncthreads();
    const float* f = reinterpret_cast<const float*>(&slots[t ^ 1]);
    for (int e = 0; e < 4; ++e) out[t * 4 + e] = f[e];
    __syncthreads();      // every thread has read before any completes its copy below
    cp_async_wait_all();
  }
}

// Zero-fill: thread t runs spec[t] = (kind, cp_size, src_size), kind 0 = cp.async.cg, 1 = cp.async.ca,
// copying from src + 16 t into its 16-byte slot (pre-filled with 0xAB), then waits and writes the slot to
// out + 16 t. Expected: src_size bytes of data, cp_size - src_size zeros, the rest of the slot 0xAB.
__global__ void cp_async_zfill(const unsigned char* src, const int* spec, unsigned char* out) {
  __shared__ int4 slots[64];
  const int t = threadIdx.x;
  unsigned char* d = reinterpret_cast<unsigned char*>(&slots[t]);
  for (int i = 0; i < 16; ++i) d[i] = 0xAB;
  const int kind = spec[3 * t], cp = spec[3 * t + 1], sb = spec[3 * t + 2];
  const unsigned char* s = src + 16 * t;
  if (kind == 0) cp_async_cg16(d, s, sb);
  else if (cp == 16) cp_async_ca16(d, s, sb);
  else if (cp == 8) cp_async_ca8(d, s, sb);
  else cp_async_ca4(d, s, sb);
  cp_async_commit();
  cp_async_wait<0>();
  for (int i = 0; i < 16; ++i) out[16 * t + i] = d[i];
}

// out[i] = cvt.rna.tf32.f32(in[i]) as bits.
__global__ void tf32_round(const float* in, unsigned* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = tf32_from_f32(in[i]);
}

}  // namespace fc_mma_selftest

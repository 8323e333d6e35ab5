// The sm_80 warp-level instructions the tensor-core kernels use (conv2d_tc.cuh), one device function
// each: mma.sync (tf32, f16, bf16 inputs, f32 accumulators), ldmatrix (x1/x2/x4, plain and .trans),
// cp.async (.cg 16 bytes, .ca 4/8/16 bytes, with the src-size zero-fill form) and its commit/wait, and
// cvt.rna.tf32.f32.
//
// Three branches per function:
//   - nvcc / NVRTC for sm_80 and newer: the inline PTX;
//   - the SIMT emulator (csrc/emu/simt_emulator.h, g++): the same instruction as a whole-warp
//     operation that follows the PTX ISA's fragment layouts exactly, so that a kernel which puts a
//     value in the wrong register, forgets a cp.async wait or reads a fragment of the wrong lane
//     computes a wrong result in CI, not just on a GPU;
//   - anything else (nvcc's host pass, device code for < sm_80): never executed — the launchers only
//     launch tensor-core kernels on sm_80+ — so device code traps.
//
// How the emulator runs a warp-wide instruction: every CUDA thread is a fiber and all fibers of a block
// share one address space. Each lane publishes pointers (to its operand registers or its ldmatrix row
// address, and to its result registers) in a per-warp table and waits at __syncwarp; lane 0 then
// performs the instruction for the whole warp with one lane-agnostic function of the documented layout
// (gather every lane's operand registers into the matrices, compute, scatter each lane's result
// registers back through the same layout), and a second __syncwarp releases the warp with the results
// in place. The table is `static thread_local`: one block runs at a time on a host thread, exactly like
// __shared__.
//
// ---- Fragment layouts (PTX ISA, "Matrix fragments for mma.m16n8k*") ------------------------------
// lane = threadIdx % 32, g = lane >> 2 (groupID, 0..7), t = lane & 3 (threadID_in_group, 0..3).
// 16-bit elements pack two to a 32-bit register, the lower-indexed element in the low half.
//
// mma.m16n8k16 .f16/.bf16:  D[16x8] = A[16x16] * B[16x8] + C[16x8]
//   A (row-major, 4 regs = 8 halves a0..a7):  a_i at row g + 8*((i>>1)&1), col 2t + (i&1) + 8*(i>>2)
//       reg0 = A[g][2t..2t+1]   reg1 = A[g+8][2t..2t+1]   reg2 = A[g][2t+8..+9]   reg3 = A[g+8][2t+8..+9]
//   B ("col": k fastest per column, 2 regs = 4 halves b0..b3):  b_i at row(k) 2t + (i&1) + 8*(i>>1), col(n) g
//       reg0 = B[2t..2t+1][g]   reg1 = B[2t+8..2t+9][g]
//   C, D (4 floats c0..c3):  c_i at row g + 8*(i>>1), col 2t + (i&1)
// mma.m16n8k8 .tf32:  D[16x8] = A[16x8] * B[8x8] + C[16x8]; one tf32 (a .b32 holding an f32 whose low 13
//   mantissa bits are zero) per register
//   A (4 regs a0..a3):  a_i at row g + 8*(i&1), col t + 4*(i>>1)
//   B (2 regs b0..b1):  b_i at row(k) t + 4*i, col(n) g
//   C, D: as for m16n8k16.
// Shape math: a warp holds 16*16 + 16*8 + 16*8 values for k16 = 32 lanes * (8 + 4 + 4): 4 + 2 + 4 registers
// per lane; for k8 (tf32, 32-bit elements) 16*8 + 8*8 + 16*8 = 32 * (4 + 2 + 4) registers.
//
// ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{,.trans}.shared.b16: loads 1, 2 or 4 8x8 matrices of 16-bit
//   elements. Lane i supplies the (16-byte aligned) shared address of row i%8 of matrix i/8 (x1 reads
//   lanes 0-7's addresses, x2 lanes 0-15's; the other lanes' addresses are ignored). Register j of lane
//   l receives matrix j's row l/4, elements 2(l%4) and 2(l%4)+1; with .trans, matrix j's column l/4,
//   elements 2(l%4) and 2(l%4)+1 of it (i.e. rows 2(l%4), 2(l%4)+1 of the stored matrix).
//   So a row-major 8x8 tile loads exactly as the A/B/C fragment pattern "row g, cols 2t..2t+1".
//   For 32-bit data (tf32) one 16-byte row is 4 floats and lane l receives float l%4 of row l/4: the
//   tf32 A/B fragments "row g, col t" load with the plain (non-.trans) form too.
//
// cp.async.{ca,cg}.shared.global [dst], [src], cp_size, src_size: copies src_size bytes global -> shared
//   and zero-fills the remaining cp_size - src_size bytes (src_size 0: nothing is read, all zeros).
//   Asynchronous: a thread's copies become visible to itself after cp.async.wait_group N has returned
//   for the group that contains them (every committed group but the newest N is complete), to other
//   threads after a __syncthreads following that wait. Emulated as a DEFERRED copy: queued per thread at
//   issue, grouped by commit_group, performed by wait_group(N) for all but the newest N groups (and by
//   wait_all for every copy): a kernel that reads its stage before the matching wait reads stale shared
//   memory (the emulator fills it with 0xFF, a NaN) and fails its test.
#pragma once

#include "common.cuh"

#if defined(FC_SIMT_EMULATOR) && !defined(__CUDA_ARCH__)
#define FC_PTX_EMULATED 1
#endif

namespace fc {
namespace ptx {

// ---- small helpers ---------------------------------------------------------------------------------
__device__ __forceinline__ float u32_as_float(unsigned u) { return __int_as_float(static_cast<int>(u)); }
__device__ __forceinline__ unsigned float_as_u32(float f) { return static_cast<unsigned>(__float_as_int(f)); }

#if !defined(FC_PTX_EMULATED) && !(defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800)
// nvcc's host pass parses device bodies without executing them; device code for < sm_80 traps.
__device__ __forceinline__ void unsupported_arch() {
#if defined(__CUDA_ARCH__)
  __trap();
#endif
}
#endif

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
__device__ __forceinline__ unsigned smem_addr(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
#endif

// cvt.rna.tf32.f32, in software: round to nearest, ties away from zero, to 10 mantissa bits (the low 13
// bits of the result are zero). NaN stays NaN, infinities stay; a finite value may round up to inf.
__device__ __forceinline__ unsigned tf32_round_bits(unsigned u) {
  if ((u & 0x7f800000u) == 0x7f800000u) {                        // inf or NaN
    return (u & 0x007fffffu) ? (u | 0x00400000u) & 0xffffe000u : u;   // NaN: quiet, payload's top bits
  }
  return (u + 0x1000u) & 0xffffe000u;   // + half an ulp of tf32 on the magnitude, then truncate
}

// An f32 as a tf32 operand register.
__device__ __forceinline__ unsigned tf32_from_f32(float x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  unsigned r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
#else
  return tf32_round_bits(float_as_u32(x));
#endif
}

#if defined(FC_PTX_EMULATED)
// ---- the emulator's whole-warp machinery -----------------------------------------------------------
namespace emu {

__device__ __forceinline__ unsigned linear_tid() { return ::fc_emu::current_fiber().linear; }

[[noreturn]] __device__ __forceinline__ void fail(const char* what) {
  throw std::runtime_error(std::string("fastconv ptx wrapper (emulated): ") + what);
}

// Per warp and lane: the pointers a lane publishes for one warp-wide instruction (its operand
// registers or row address, and where its results go).
struct Published {
  const void* in[3];
  void* out;
};
__device__ __forceinline__ Published (&table())[32][32] {
  static thread_local Published t[32][32];
  return t;
}

// Runs one warp-wide instruction: every lane publishes its pointers and waits for the whole warp; lane 0
// then computes the instruction for the warp, `body(row)` with row[l] = lane l's pointers, writing each
// lane's results through its `out`; a second barrier releases the lanes with their results in place
// (and keeps lane 0 from reusing the table while it is read). All 32 lanes must take part.
template <class F>
__device__ __forceinline__ void warp_op(const void* in0, const void* in1, const void* in2, void* out, F&& body) {
  const unsigned tid = linear_tid();
  Published(&t)[32][32] = table();
  t[tid / 32][tid % 32] = Published{{in0, in1, in2}, out};
  __syncwarp();
  if (tid % 32 == 0) body(static_cast<const Published*>(t[tid / 32]));
  __syncwarp();
}

__device__ __forceinline__ float half_bits_to_float(unsigned short b) {
  __half h;
  h.x = b;
  return __half2float(h);
}
__device__ __forceinline__ float bf16_bits_to_float(unsigned short b) {
  __nv_bfloat16 h;
  h.x = b;
  return __bfloat162float(h);
}

// Kind of mma input; decides the element width and how a register holds elements.
enum class In { f16, bf16, tf32 };

// The documented layouts (see the header comment), as functions of (lane, element index).
// m16n8k16 A: element i in 0..7 (register i/2, half i%2).
__device__ __forceinline__ int k16_a_row(int lane, int i) { return (lane >> 2) + 8 * ((i >> 1) & 1); }
__device__ __forceinline__ int k16_a_col(int lane, int i) { return 2 * (lane & 3) + (i & 1) + 8 * (i >> 2); }
// m16n8k16 B: element i in 0..3 (register i/2, half i%2).
__device__ __forceinline__ int k16_b_row(int lane, int i) { return 2 * (lane & 3) + (i & 1) + 8 * (i >> 1); }
__device__ __forceinline__ int k16_b_col(int lane, int /*i*/) { return lane >> 2; }
// m16n8k8 tf32 A: register i in 0..3; B: register i in 0..1.
__device__ __forceinline__ int k8_a_row(int lane, int i) { return (lane >> 2) + 8 * (i & 1); }
__device__ __forceinline__ int k8_a_col(int lane, int i) { return (lane & 3) + 4 * (i >> 1); }
__device__ __forceinline__ int k8_b_row(int lane, int i) { return (lane & 3) + 4 * i; }
__device__ __forceinline__ int k8_b_col(int lane, int /*i*/) { return lane >> 2; }
// C/D of both shapes: element i in 0..3.
__device__ __forceinline__ int cd_row(int lane, int i) { return (lane >> 2) + 8 * (i >> 1); }
__device__ __forceinline__ int cd_col(int lane, int i) { return 2 * (lane & 3) + (i & 1); }

// D = A * B + C for the whole warp. The warp's A, B and C are assembled from every lane's fragments
// through the layout functions, D is computed once, and each lane's D fragment is scattered back
// through the same layout. Products of the (tf32-rounded, or 16-bit) inputs are exact in double; the
// sum over k is done in double and rounded once to f32 together with C (the hardware's f32
// accumulation is at least this close to exact). D may alias C: everything is read before any write.
template <In IN>
__device__ __forceinline__ void mma(float (&d)[4], const unsigned* a, const unsigned* b, const float (&c)[4]) {
  warp_op(a, b, c, d, [](const Published* lanes) {
    constexpr int KD = IN == In::tf32 ? 8 : 16;
    double A[16][KD], B[KD][8], D[16][8];
    for (int l = 0; l < 32; ++l) {
      const unsigned* la = static_cast<const unsigned*>(lanes[l].in[0]);
      const unsigned* lb = static_cast<const unsigned*>(lanes[l].in[1]);
      const float* lc = static_cast<const float*>(lanes[l].in[2]);
      if (IN == In::tf32) {
        for (int i = 0; i < 4; ++i) A[k8_a_row(l, i)][k8_a_col(l, i)] = u32_as_float(tf32_round_bits(la[i]));
        for (int i = 0; i < 2; ++i) B[k8_b_row(l, i)][k8_b_col(l, i)] = u32_as_float(tf32_round_bits(lb[i]));
      } else {
        for (int i = 0; i < 8; ++i) {
          const unsigned short h = static_cast<unsigned short>(la[i >> 1] >> (16 * (i & 1)));
          A[k16_a_row(l, i)][k16_a_col(l, i)] = IN == In::f16 ? half_bits_to_float(h) : bf16_bits_to_float(h);
        }
        for (int i = 0; i < 4; ++i) {
          const unsigned short h = static_cast<unsigned short>(lb[i >> 1] >> (16 * (i & 1)));
          B[k16_b_row(l, i)][k16_b_col(l, i)] = IN == In::f16 ? half_bits_to_float(h) : bf16_bits_to_float(h);
        }
      }
      for (int i = 0; i < 4; ++i) D[cd_row(l, i)][cd_col(l, i)] = lc[i];
    }
    for (int row = 0; row < 16; ++row)
      for (int col = 0; col < 8; ++col) {
        double s = 0.0;
        for (int k = 0; k < KD; ++k) s += A[row][k] * B[k][col];
        D[row][col] += s;
      }
    for (int l = 0; l < 32; ++l) {
      float* ld = static_cast<float*>(lanes[l].out);
      for (int i = 0; i < 4; ++i) ld[i] = static_cast<float>(D[cd_row(l, i)][cd_col(l, i)]);
    }
  });
}

// ldmatrix for X matrices: lane l's register j from the published row addresses of matrix j (lanes
// 8j..8j+7 supply its rows; the addresses of lanes >= 8X are not read).
template <int X, bool TRANS>
__device__ __forceinline__ void ldmatrix(unsigned* r, const void* row_addr) {
  const int lane = static_cast<int>(linear_tid() % 32);
  if (lane < 8 * X && (reinterpret_cast<std::uintptr_t>(row_addr) & 15u) != 0)
    fail("ldmatrix: a row address is not 16-byte aligned");
  warp_op(row_addr, nullptr, nullptr, r, [](const Published* lanes) {
    for (int l = 0; l < 32; ++l) {
      unsigned* out = static_cast<unsigned*>(lanes[l].out);
      for (int j = 0; j < X; ++j) {
        unsigned short lo, hi;
        if (!TRANS) {   // row l/4 of matrix j, elements 2(l%4), 2(l%4)+1
          const unsigned short* row = static_cast<const unsigned short*>(lanes[8 * j + l / 4].in[0]);
          lo = row[2 * (l % 4)];
          hi = row[2 * (l % 4) + 1];
        } else {        // column l/4 of matrix j: element l/4 of rows 2(l%4), 2(l%4)+1
          lo = static_cast<const unsigned short*>(lanes[8 * j + 2 * (l % 4)].in[0])[l / 4];
          hi = static_cast<const unsigned short*>(lanes[8 * j + 2 * (l % 4) + 1].in[0])[l / 4];
        }
        out[j] = static_cast<unsigned>(lo) | (static_cast<unsigned>(hi) << 16);
      }
    }
  });
}

__device__ __forceinline__ void cp_async(void* dst, const void* src, unsigned cp_bytes, unsigned src_bytes) {
  if (src_bytes > cp_bytes) fail("cp.async: src-size larger than cp-size");
  if ((reinterpret_cast<std::uintptr_t>(dst) % cp_bytes) != 0) fail("cp.async: shared address not aligned to cp-size");
  if (src_bytes > 0 && (reinterpret_cast<std::uintptr_t>(src) % cp_bytes) != 0)
    fail("cp.async: global address not aligned to cp-size");
  ::fc_emu::current_fiber().async_copies.push_back(::fc_emu::AsyncCopy{dst, src, cp_bytes, src_bytes});
}

// Performs the calling thread's oldest copies, up to (not including) index `end`.
__device__ __forceinline__ void perform_copies(std::size_t end) {
  ::fc_emu::Fiber& f = ::fc_emu::current_fiber();
  for (std::size_t i = 0; i < end; ++i) {
    const ::fc_emu::AsyncCopy& c = f.async_copies[i];
    if (c.src_bytes > 0) std::memcpy(c.dst, c.src, c.src_bytes);
    if (c.cp_bytes > c.src_bytes) std::memset(static_cast<char*>(c.dst) + c.src_bytes, 0, c.cp_bytes - c.src_bytes);
  }
  f.async_copies.erase(f.async_copies.begin(), f.async_copies.begin() + static_cast<std::ptrdiff_t>(end));
}

__device__ __forceinline__ void commit_group() {
  ::fc_emu::Fiber& f = ::fc_emu::current_fiber();
  f.async_group_ends.push_back(f.async_copies.size());
}

// Completes every committed group but the newest `pending`.
__device__ __forceinline__ void wait_group(int pending) {
  ::fc_emu::Fiber& f = ::fc_emu::current_fiber();
  const std::size_t groups = f.async_group_ends.size();
  if (groups <= static_cast<std::size_t>(pending)) return;
  const std::size_t complete = groups - static_cast<std::size_t>(pending);
  const std::size_t end = f.async_group_ends[complete - 1];
  perform_copies(end);
  f.async_group_ends.erase(f.async_group_ends.begin(), f.async_group_ends.begin() + static_cast<std::ptrdiff_t>(complete));
  for (std::size_t& e : f.async_group_ends) e -= end;
}

}  // namespace emu
#endif  // FC_PTX_EMULATED

// ---- mma.sync -------------------------------------------------------------------------------------
// d may alias c (accumulate in place).
__device__ __forceinline__ void mma_m16n8k8_tf32(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2],
                                                 const float (&c)[4]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#elif defined(FC_PTX_EMULATED)
  emu::mma<emu::In::tf32>(d, a, b, c);
#else
  unsupported_arch();
  (void)a; (void)b;
  for (int i = 0; i < 4; ++i) d[i] = c[i];
#endif
}

__device__ __forceinline__ void mma_m16n8k16_f16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2],
                                                 const float (&c)[4]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#elif defined(FC_PTX_EMULATED)
  emu::mma<emu::In::f16>(d, a, b, c);
#else
  unsupported_arch();
  (void)a; (void)b;
  for (int i = 0; i < 4; ++i) d[i] = c[i];
#endif
}

__device__ __forceinline__ void mma_m16n8k16_bf16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2],
                                                  const float (&c)[4]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#elif defined(FC_PTX_EMULATED)
  emu::mma<emu::In::bf16>(d, a, b, c);
#else
  unsupported_arch();
  (void)a; (void)b;
  for (int i = 0; i < 4; ++i) d[i] = c[i];
#endif
}

// ---- ldmatrix -------------------------------------------------------------------------------------
// row: this lane's row address in shared memory (see the header comment for which row).
__device__ __forceinline__ void ldmatrix_x1(unsigned (&r)[1], const void* row) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(smem_addr(row)));
#elif defined(FC_PTX_EMULATED)
  emu::ldmatrix<1, false>(r, row);
#else
  unsupported_arch();
  (void)row;
  r[0] = 0;
#endif
}

__device__ __forceinline__ void ldmatrix_x2(unsigned (&r)[2], const void* row) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(smem_addr(row)));
#elif defined(FC_PTX_EMULATED)
  emu::ldmatrix<2, false>(r, row);
#else
  unsupported_arch();
  (void)row;
  r[0] = r[1] = 0;
#endif
}

__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const void* row) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row)));
#elif defined(FC_PTX_EMULATED)
  emu::ldmatrix<4, false>(r, row);
#else
  unsupported_arch();
  (void)row;
  r[0] = r[1] = r[2] = r[3] = 0;
#endif
}

__device__ __forceinline__ void ldmatrix_x1_trans(unsigned (&r)[1], const void* row) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(smem_addr(row)));
#elif defined(FC_PTX_EMULATED)
  emu::ldmatrix<1, true>(r, row);
#else
  unsupported_arch();
  (void)row;
  r[0] = 0;
#endif
}

__device__ __forceinline__ void ldmatrix_x2_trans(unsigned (&r)[2], const void* row) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_addr(row)));
#elif defined(FC_PTX_EMULATED)
  emu::ldmatrix<2, true>(r, row);
#else
  unsupported_arch();
  (void)row;
  r[0] = r[1] = 0;
#endif
}

__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], const void* row) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row)));
#elif defined(FC_PTX_EMULATED)
  emu::ldmatrix<4, true>(r, row);
#else
  unsupported_arch();
  (void)row;
  r[0] = r[1] = r[2] = r[3] = 0;
#endif
}

// ---- cp.async -------------------------------------------------------------------------------------
// dst: shared memory, src: global memory, both aligned to the copy size. src_bytes (0..cp size) bytes
// are read, the rest of dst is zero-filled: masked and out-of-bounds loads pass src_bytes = 0 with src
// clamped to any valid address (nothing is read from it).
__device__ __forceinline__ void cp_async_cg16(void* dst, const void* src, int src_bytes = 16) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes));
#elif defined(FC_PTX_EMULATED)
  emu::cp_async(dst, src, 16, static_cast<unsigned>(src_bytes));
#else
  unsupported_arch();
  (void)dst; (void)src; (void)src_bytes;
#endif
}

__device__ __forceinline__ void cp_async_ca16(void* dst, const void* src, int src_bytes = 16) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes));
#elif defined(FC_PTX_EMULATED)
  emu::cp_async(dst, src, 16, static_cast<unsigned>(src_bytes));
#else
  unsupported_arch();
  (void)dst; (void)src; (void)src_bytes;
#endif
}

__device__ __forceinline__ void cp_async_ca8(void* dst, const void* src, int src_bytes = 8) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes));
#elif defined(FC_PTX_EMULATED)
  emu::cp_async(dst, src, 8, static_cast<unsigned>(src_bytes));
#else
  unsupported_arch();
  (void)dst; (void)src; (void)src_bytes;
#endif
}

__device__ __forceinline__ void cp_async_ca4(void* dst, const void* src, int src_bytes = 4) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes));
#elif defined(FC_PTX_EMULATED)
  emu::cp_async(dst, src, 4, static_cast<unsigned>(src_bytes));
#else
  unsupported_arch();
  (void)dst; (void)src; (void)src_bytes;
#endif
}

// Closes the group of this thread's cp.async issued since the previous commit (possibly empty).
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#elif defined(FC_PTX_EMULATED)
  emu::commit_group();
#else
  unsupported_arch();
#endif
}

// Waits until at most N of this thread's committed groups are pending (the newest N).
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  static_assert(N >= 0 && N <= 7, "cp.async.wait_group takes 0..7 in practice");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#elif defined(FC_PTX_EMULATED)
  emu::wait_group(N);
#else
  unsupported_arch();
#endif
}

// Waits for every cp.async of this thread, committed or not (= commit_group; wait_group 0).
__device__ __forceinline__ void cp_async_wait_all() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#elif defined(FC_PTX_EMULATED)
  emu::commit_group();
  emu::wait_group(0);
#else
  unsupported_arch();
#endif
}

}  // namespace ptx
}  // namespace fc

"""The PTX wrappers of the tensor-core kernels (kernels/ptx_wrappers.cuh) on the SIMT emulator: each
emulated instruction against a plain reference written from the PTX ISA's fragment layouts — mma.sync
(tf32, f16, bf16) against a float64 matmul of the rounded inputs, ldmatrix x1/x2/x4 (+ .trans) against
the documented register layout, cp.async groups / waits / zero-fill, cvt.rna.tf32.f32. The kernels
(csrc/emu/mma_selftest.h) build their fragments from the same tables independently, so a wrong fragment
index in either place fails here. cp.async is emulated as a deferred copy: a kernel that reads shared
memory before the matching wait sees stale data, which test_cp_async_missing_wait_reads_stale_data
shows."""
from __future__ import annotations

import pytest
import torch

emu = pytest.importorskip("fastconv._C_emu", reason="fastconv._C_emu is built by every `pip install -e .`")
pytestmark = pytest.mark.emu
if not hasattr(emu, "mma_selftest"):
    pytest.skip("fastconv._C_emu predates the tensor-core wrappers: rebuild it", allow_module_level=True)
k = emu.mma_selftest

ORDERS = ["forward", "reversed"]


@pytest.fixture(params=ORDERS)
def order(request):
    emu.set_thread_order(request.param, 99)
    yield request.param
    emu.set_thread_order("forward", 0)


def tf32_rna_bits(x: torch.Tensor) -> torch.Tensor:
    """cvt.rna.tf32.f32 as bits (int64, 0..2^32): round to nearest, ties away, 13 low bits cleared;
    NaN stays a NaN, infinities stay."""
    b = x.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    special = (b & 0x7F800000) == 0x7F800000
    nan = special & ((b & 0x007FFFFF) != 0)
    rounded = (b + 0x1000) & 0xFFFFE000
    return torch.where(nan, (b | 0x00400000) & 0xFFFFE000, torch.where(special, b, rounded))


def bits_to_float(bits: torch.Tensor) -> torch.Tensor:
    b = torch.where(bits >= 2**31, bits - 2**32, bits).to(torch.int32)
    return b.view(torch.float32)


def tf32_round(x: torch.Tensor) -> torch.Tensor:
    return bits_to_float(tf32_rna_bits(x))


# ---- mma.sync ---------------------------------------------------------------------------------------

KINDS = {"tf32": (0, 8, torch.float32), "f16": (1, 16, torch.float16), "bf16": (2, 16, torch.bfloat16)}


@pytest.mark.parametrize("repeat", [1, 3])
@pytest.mark.parametrize("kind", list(KINDS))
def test_mma_matches_float64_matmul_of_rounded_inputs(order, kind, repeat):
    """D = repeat * A @ B + C over 3 warps (each its own tile), accumulating in place (d aliases c)."""
    code, kd, dtype = KINDS[kind]
    g = torch.Generator().manual_seed(code * 10 + repeat)
    warps = 3
    A = torch.randn(warps, 16, kd, generator=g)
    B = torch.randn(warps, kd, 8, generator=g)
    C = torch.randn(warps, 16, 8, generator=g)
    if dtype == torch.float32:
        Ar, Br = tf32_round(A), tf32_round(B)           # the kernel converts with cvt.rna; the reference too
    else:
        A, B = A.to(dtype).float(), B.to(dtype).float()  # exactly representable inputs
        Ar, Br = A, B
    D = torch.full((warps, 16, 8), float("nan"))
    k.mma(code, A.data_ptr(), B.data_ptr(), C.data_ptr(), D.data_ptr(), warps, repeat)
    ref = C.double()
    for _ in range(repeat):
        ref = (Ar.double() @ Br.double() + ref).float().double()   # one f32 rounding per mma
    torch.testing.assert_close(D, ref.float(), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("kind", list(KINDS))
def test_mma_each_output_sees_exactly_its_row_and_column(kind):
    """One-hot operands: D[i][j] = A[i][kk] * B[kk][j] picks single elements, so any permutation of
    rows, columns or k inside a fragment moves a 1 to a wrong place (the random test shows that a
    layout is wrong; this one which entry)."""
    code, kd, _ = KINDS[kind]
    for kk in range(kd):
        A = torch.zeros(16, kd)
        B = torch.zeros(kd, 8)
        A[:, kk] = torch.arange(1, 17, dtype=torch.float32)     # row i carries i + 1
        B[kk, :] = torch.arange(1, 9, dtype=torch.float32) * 32  # column j carries 32 (j + 1)
        C = torch.zeros(16, 8)
        D = torch.full((16, 8), float("nan"))
        k.mma(code, A.data_ptr(), B.data_ptr(), C.data_ptr(), D.data_ptr(), 1, 1)
        torch.testing.assert_close(D, torch.outer(A[:, kk], B[kk]), rtol=0, atol=0, msg=f"k = {kk}")


# ---- cvt.rna.tf32.f32 ---------------------------------------------------------------------------------

def test_tf32_rounding_is_round_to_nearest_ties_away():
    specials = torch.tensor([
        0x00000000, 0x80000000, 0x3F800000, 0x3F801000, 0x3F803000, 0xBF801000, 0x3F800FFF, 0x3F801001,
        0x7F7FFFFF, 0xFF7FFFFF, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0x00000001, 0x00001000,
        0x00FFF000, 0x3FFFF000,
    ], dtype=torch.int64)
    x = torch.cat([bits_to_float(specials), torch.randn(1000) * 10.0 ** torch.randint(-30, 30, (1000,)).float()])
    out = torch.zeros(x.numel(), dtype=torch.int32)
    k.tf32_round(x.data_ptr(), out.data_ptr(), x.numel())
    got = out.to(torch.int64) & 0xFFFFFFFF
    want = tf32_rna_bits(x)
    assert torch.equal(got, want), [(hex(int(a)), hex(int(b)), hex(int(c)))
                                    for a, b, c in zip(x.view(torch.int32), got, want) if b != c][:5]
    assert hex(int(got[3])) == "0x3f802000"    # a tie (1 + 2^-11) rounds away from zero
    assert hex(int(got[5])) == "0xbf802000"    # and so does its negative
    assert hex(int(got[8])) == "0x7f800000"    # the largest float rounds up to inf
    assert torch.isnan(bits_to_float(got[12:14])).all()


# ---- ldmatrix -----------------------------------------------------------------------------------------

def ldmatrix_reference(smem: torch.Tensor, row_of_lane: list, x: int, trans: bool) -> torch.Tensor:
    """Lane l's register j: matrix j's rows are the rows addressed by lanes 8j..8j+7; without .trans
    the register holds row l/4, elements 2(l%4), 2(l%4)+1 (low half first); with .trans column l/4,
    rows 2(l%4), 2(l%4)+1."""
    out = torch.zeros(32, x, dtype=torch.int64)
    for lane in range(32):
        for j in range(x):
            rows = [row_of_lane[8 * j + r] for r in range(8)]
            if not trans:
                lo = smem[rows[lane // 4], 2 * (lane % 4)]
                hi = smem[rows[lane // 4], 2 * (lane % 4) + 1]
            else:
                lo = smem[rows[2 * (lane % 4)], lane // 4]
                hi = smem[rows[2 * (lane % 4) + 1], lane // 4]
            out[lane, j] = (int(lo) & 0xFFFF) | ((int(hi) & 0xFFFF) << 16)
    return out


@pytest.mark.parametrize("trans", [False, True], ids=["plain", "trans"])
@pytest.mark.parametrize("x", [1, 2, 4])
def test_ldmatrix_follows_the_documented_layout(order, x, trans):
    """Row addresses are a random permutation of 63 distinct rows; lanes beyond the 8x that x reads
    point at a poison row (0xDEAD everywhere), which must not show up in any register."""
    g = torch.Generator().manual_seed(x * 2 + trans)
    nrows = 64
    smem = torch.randint(0, 2**16, (nrows, 8), generator=g, dtype=torch.int64)
    smem[nrows - 1] = 0xDEAD
    perm = torch.randperm(nrows - 1, generator=g)[:32].tolist()
    row_of_lane = [perm[lane] if lane < 8 * x else nrows - 1 for lane in range(32)]
    rows16 = (smem & 0xFFFF).to(torch.int32).to(torch.int16)   # wraps to the same 16 bits
    lanes = torch.tensor(row_of_lane, dtype=torch.int32)
    out = torch.zeros(32, x, dtype=torch.int32)
    k.ldmatrix(x, trans, rows16.data_ptr(), nrows, lanes.data_ptr(), out.data_ptr())
    got = out.to(torch.int64) & 0xFFFFFFFF
    want = ldmatrix_reference(smem, row_of_lane, x, trans)
    assert torch.equal(got, want), (got[:4], want[:4])
    halves = torch.cat([got & 0xFFFF, got >> 16])
    assert not (halves == 0xDEAD).any(), "a lane beyond the matrices' address providers was read"


def test_ldmatrix_trans_transposes_an_identity_pattern():
    """With smem[r][c] = 16 r + c, the plain x1 gives lane l the pair (row l/4, cols 2(l%4), 2(l%4)+1),
    .trans the pair (rows 2(l%4), 2(l%4)+1, col l/4): the mma 'row g, cols 2t..2t+1' fragment of the
    matrix and of its transpose."""
    smem = torch.tensor([[16 * r + c for c in range(8)] for r in range(8)], dtype=torch.int16)
    lanes = torch.arange(32, dtype=torch.int32) % 8
    for trans in (False, True):
        out = torch.zeros(32, 1, dtype=torch.int32)
        k.ldmatrix(1, trans, smem.data_ptr(), 8, lanes.data_ptr(), out.data_ptr())
        for lane in range(32):
            g, t = lane // 4, lane % 4
            lo, hi = int(out[lane, 0]) & 0xFFFF, (int(out[lane, 0]) >> 16) & 0xFFFF
            if trans:
                assert (lo, hi) == (16 * (2 * t) + g, 16 * (2 * t + 1) + g)
            else:
                assert (lo, hi) == (16 * g + 2 * t, 16 * g + 2 * t + 1)


# ---- cp.async -------------------------------------------------------------------------------------------

def test_cp_async_wait_group_completes_all_but_the_newest_groups(order):
    """Regions 0, 1, 2 in groups 0, 1, 2; region 3 issued but not committed. wait_group(2) completes
    group 0, wait_group(1) group 1, wait_group(0) group 2, wait_all the uncommitted copy too; until then
    a region keeps its old contents (-1) in the emulator's deferred-copy model."""
    threads = 64
    src = torch.arange(4 * threads * 4, dtype=torch.float32)
    out = torch.full((4, 4, threads, 4), float("nan"))
    k.cp_async_groups(src.data_ptr(), out.data_ptr(), threads, 0)
    data = src.view(4, threads, 4)
    stale = torch.full((threads, 4), -1.0)
    for snap, done in enumerate([1, 2, 3, 4]):
        for region in range(4):
            want = data[region] if region < done else stale
            torch.testing.assert_close(out[snap, region], want, rtol=0, atol=0, msg=f"snapshot {snap} region {region}")


def test_cp_async_missing_wait_reads_stale_data(order):
    """A __syncthreads is not a cp.async wait: without wait_group the neighbour's slot still holds the
    old value; with it, the copied data."""
    threads = 32
    src = torch.arange(threads * 4, dtype=torch.float32) + 100
    out = torch.full((threads, 4), float("nan"))
    k.cp_async_groups(src.data_ptr(), out.data_ptr(), threads, 1)
    assert (out == -1).all(), "the missing wait went unnoticed"
    k.cp_async_groups(src.data_ptr(), out.data_ptr(), threads, 2)
    neighbour = src.view(threads, 4)[torch.arange(threads) ^ 1]
    torch.testing.assert_close(out, neighbour, rtol=0, atol=0)


def test_cp_async_zero_fill():
    specs = [(0, 16, sb) for sb in (0, 4, 8, 12, 16)] + [(1, 16, sb) for sb in (0, 8, 16)] + \
            [(1, 8, sb) for sb in (0, 4, 8)] + [(1, 4, sb) for sb in (0, 4)]
    threads = len(specs)
    src = torch.randint(1, 255, (threads, 16), dtype=torch.uint8)   # no zero bytes in the data
    spec = torch.tensor(specs, dtype=torch.int32)
    out = torch.zeros(threads, 16, dtype=torch.uint8)
    k.cp_async_zfill(src.data_ptr(), spec.data_ptr(), out.data_ptr(), threads)
    for t, (kind, cp, sb) in enumerate(specs):
        want = torch.full((16,), 0xAB, dtype=torch.uint8)
        want[:sb] = src[t, :sb]
        want[sb:cp] = 0
        assert torch.equal(out[t], want), (kind, cp, sb, out[t], want)

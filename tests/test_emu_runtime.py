"""The SIMT emulator itself (csrc/emu/): the CUDA constructs the kernels rely on behave as on a GPU,
and the mistakes it exists to catch are caught — a missing __syncthreads gives a wrong result in at
least one thread order, a barrier in divergent code is an error rather than a hang, launch limits
are enforced. The kernels used here are csrc/emu/selftest_kernels.h."""
from __future__ import annotations

import pytest
import torch

emu = pytest.importorskip("fastconv._C_emu", reason="fastconv._C_emu is built by every `pip install -e .`")
pytestmark = pytest.mark.emu
kernels = emu.selftest

ORDERS = ["forward", "reversed", "shuffled"]


@pytest.fixture(params=ORDERS)
def order(request):
    emu.set_thread_order(request.param, 1234)
    yield request.param
    emu.set_thread_order("forward", 0)


def block_sums(x: torch.Tensor, threads: int) -> torch.Tensor:
    pad = (-x.numel()) % threads
    return torch.cat([x, x.new_zeros(pad)]).view(-1, threads).double().sum(1).float()


@pytest.mark.parametrize("n,threads", [(1000, 256), (64, 64), (1, 32), (300, 128)])
def test_block_reduction_with_barriers(order, n, threads):
    x = torch.randn(n)
    out = torch.zeros((n + threads - 1) // threads)
    kernels.block_sum(x.data_ptr(), out.data_ptr(), n, threads, False)
    torch.testing.assert_close(out, block_sums(x, threads), rtol=1e-5, atol=1e-5)


def test_missing_barrier_is_exposed_by_some_order():
    """Without the barrier between the shared-memory stores and the tree reduction, a thread reads
    entries that other threads have not stored yet; the forward order (thread 0 runs first) shows it."""
    x = torch.rand(1024) + 0.5   # positive: a missing addend always changes the sum
    wrong = {}
    for o in ORDERS:
        emu.set_thread_order(o, 7)
        out = torch.zeros(4)
        kernels.block_sum(x.data_ptr(), out.data_ptr(), 1024, 256, True)
        wrong[o] = not torch.allclose(out, block_sums(x, 256), rtol=1e-4)
    emu.set_thread_order("forward", 0)
    assert wrong["forward"] and wrong["shuffled"], wrong


@pytest.mark.parametrize("mode", [0, 1, 2], ids=["shfl_down", "shfl_xor", "shfl_broadcast"])
def test_warp_shuffles(order, mode):
    blocks, threads = 3, 96
    x = torch.randn(blocks * threads)
    per_warp = x.view(-1, 32)
    if mode == 0:
        out = torch.zeros(blocks * threads // 32)
        kernels.warp_sum(x.data_ptr(), out.data_ptr(), blocks, threads, mode)
        torch.testing.assert_close(out, per_warp.sum(1), rtol=1e-5, atol=1e-5)
    else:
        out = torch.zeros(blocks * threads)
        kernels.warp_sum(x.data_ptr(), out.data_ptr(), blocks, threads, mode)
        expected = per_warp.sum(1, keepdim=True) if mode == 1 else per_warp[:, :1]
        torch.testing.assert_close(out.view(-1, 32), expected.expand(-1, 32), rtol=1e-5, atol=1e-5)


def test_warp_ballot(order):
    x = torch.randn(2 * 64)
    out = torch.zeros(4, dtype=torch.int32)
    kernels.warp_ballot(x.data_ptr(), out.data_ptr(), 2, 64)
    expected = [sum(1 << lane for lane in range(32) if x[w * 32 + lane] > 0) for w in range(4)]
    assert [int(v) & 0xFFFFFFFF for v in out] == expected


def test_divergent_barrier_is_an_error_not_a_hang():
    out = torch.zeros(64)
    with pytest.raises(RuntimeError, match="deadlock: 32 of 64 threads wait at __syncthreads"):
        kernels.divergent_barrier(out.data_ptr(), 64)


@pytest.mark.parametrize("host_threads", [1, 2])
def test_atomics_from_concurrent_blocks(host_threads):
    emu.set_host_threads(host_threads)
    try:
        bins = torch.randint(0, 13, (20000,), dtype=torch.int32)
        counts = torch.zeros(13, dtype=torch.int32)
        weights = torch.zeros(13)
        kernels.atomic_histogram(bins.data_ptr(), bins.numel(), counts.data_ptr(), weights.data_ptr(), 128)
    finally:
        emu.set_host_threads(1)
    expected = torch.bincount(bins, minlength=13)
    assert torch.equal(counts, expected.int())
    assert torch.equal(weights, expected.float() * 0.5)


def test_dynamic_shared_memory_is_poisoned_then_shared(order):
    before, after = torch.zeros(128), torch.zeros(128)
    kernels.dynamic_smem_roundtrip(before.data_ptr(), after.data_ptr(), 128, 128 * 4)
    assert before.isnan().all()        # a read before any write sees 0xFF bytes, a NaN
    assert torch.equal(after, torch.arange(127, -1, -1, dtype=torch.float32))


def test_three_dimensional_coordinates():
    grid, block = (3, 2, 2), (4, 3, 2)
    threads = block[0] * block[1] * block[2]
    out = torch.full((grid[0] * grid[1] * grid[2] * threads,), -1, dtype=torch.int32)
    kernels.coordinates(out.data_ptr(), list(grid), list(block))
    expected = []
    for bz in range(grid[2]):
        for by in range(grid[1]):
            for bx in range(grid[0]):
                for tz in range(block[2]):
                    for ty in range(block[1]):
                        for tx in range(block[0]):
                            expected.append(((bz * 8 + by) * 8 + bx) * 4096 + (tz * 16 + ty) * 16 + tx)
    assert out.tolist() == expected


@pytest.mark.parametrize("grid,block,smem", [
    ((1, 1, 1), (2048, 1, 1), 0),        # over 1024 threads per block
    ((1, 1, 1), (0, 1, 1), 0),           # empty block
    ((1, 70000, 1), (32, 1, 1), 0),      # grid.y over 65535
    ((1, 1, 1), (32, 1, 1), 300 * 1024),  # dynamic shared memory over the sm_90 limit
])
def test_launch_limits_raise_a_named_error(grid, block, smem):
    out = torch.zeros(4096, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="failed to launch: invalid configuration argument"):
        if smem:
            kernels.dynamic_smem_roundtrip(out.data_ptr(), out.data_ptr(), block[0], smem)
        else:
            kernels.coordinates(out.data_ptr(), list(grid), list(block))


def test_launch_statistics_count_what_ran():
    emu.reset_launch_stats()
    x, out = torch.randn(512), torch.zeros(2)
    kernels.block_sum(x.data_ptr(), out.data_ptr(), 512, 256, False)
    s = emu.launch_stats()
    assert s["launches"] == 1 and s["blocks"] == 2 and s["threads"] == 512
    assert s["barriers"] == 2 * 256 * 9          # 1 + log2(256) barriers per thread
    assert s["switches"] >= 512


def test_bad_thread_order_is_rejected():
    with pytest.raises(ValueError, match="order must be"):
        emu.set_thread_order("backwards")

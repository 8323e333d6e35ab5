"""Whole networks, torch eager against fastconv.convert and torch.compile: inference at each batch size
and one training step (forward, cross-entropy, backward, SGD with momentum), NCHW and channels_last,
float32 - the pytest-benchmark form of `fastconv bench --models` (fastconv.benchmarks.networks builds the
networks, variants, steps and checks for both).

    pytest bench/test_networks.py --benchmark-only                 # every network, batch 1/8/32, compile (slow)
    FASTCONV_BENCH_SHORT=1 pytest bench/test_networks.py --benchmark-only   # tv_resnet18, 64 px, no compile (CI)
    FASTCONV_BENCH_NETWORKS=resnet50 FASTCONV_BENCH_COMPILE=0 pytest bench/test_networks.py --benchmark-only

Parametrized network x batch x layout x variant (torch first, then fastconv, compile for inference,
fastconv-opt once fastconv has optimize()); group "network/<mode>/<net>@b<batch>/<layout>". Before a
variant is timed its logits (infer) or its loss and four gradients (train, against a float64 torch run)
are checked against torch eager's; the compile variant compiles in that check (Inductor freezing on),
its compile time goes to extra_info["compile_s"] and is not timed. The rows are printed at the end
in the shared "fastconv vs torch" tables (backend = the variant), followed by the geometric means over
the networks per mode, batch and layout. Axes: FASTCONV_BENCH_NETWORKS, _NET_BATCHES, _TRAIN_BATCH,
_IMAGE_SIZE, _COMPILE (bench/conftest.py).
"""
from __future__ import annotations

import functools

import pytest

from fastconv.benchmarks import networks as N

from ._harness import Case


@functools.lru_cache(maxsize=2)
def _base(network: str, image_size: int):
    """The torch model (built and calibrated once per network) and its FLOPs per image."""
    model = N.build_network(network, image_size)
    return model, N.forward_flops(model, image_size)


def _run(run_case, bench_config, benchmark, network, batch, layout, variant, mode):
    if bench_config.device != "cpu":
        pytest.skip("the network suite runs on the CPU only (for now)")
    size = bench_config.image_size
    base, flops = _base(network, size)
    x = N.make_input(batch, size, layout)
    y = N.make_labels(batch)
    model = N.variant_model(variant, base, mode, layout, x)
    case = Case("network", mode, N.NetShape(network, batch, size), layout, variant,
                work=flops * batch * (3 if mode == "train" else 1), unit="GFLOP/s", table=N.TABLE)
    if mode == "infer":
        step = N.infer_step(variant, model, x)

        def check():
            ref = N.infer_step("torch", N.variant_model("torch", base, mode, layout, x), x)()
            if variant == "compile":
                seconds, out = N.compile_first_call(model, x)
                benchmark.extra_info["compile_s"] = seconds
            else:
                out = step()
            N.check_infer(out, ref)
    else:
        def check():
            ref = N.train_reference(N.variant_model("torch", base, mode, layout, x), x, y)
            N.check_train(N.train_values(model, x, y), ref)

        step = N.train_step(model, x, y)
    run_case(case, step, check, side=None if variant == "torch" else variant)


def test_network_infer(run_case, bench_config, benchmark, network, net_batch, layout, variant):
    _run(run_case, bench_config, benchmark, network, net_batch, layout, variant, "infer")


def test_network_train(run_case, bench_config, benchmark, network, layout, variant):
    _run(run_case, bench_config, benchmark, network, bench_config.train_batch, layout, variant, "train")

"""`fastconv demo`: every op once on the chosen backend, checked against torch, with timings (the
command-line front-end is fastconv.cli.demo).

A quick end-to-end look for a newcomer: it shows which backend ran, the relative error of each
result (forward and gradients) against torch in float64, and the time of ours and torch's.
"""
from __future__ import annotations

import time
from typing import Callable, List, Tuple

import torch
import torch.nn.functional as F

from . import backends
from . import functional as FC


def _rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    ours, ref = ours.detach().double(), ref.detach().double()
    return float((ours - ref).norm() / ref.norm().clamp_min(1e-30))


def _median_ms(fn: Callable[[], object], repeat: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1e3


def _check(name: str, ours_fn, torch_fn, inputs: List[torch.Tensor]) -> Tuple[str, float, float, float]:
    """Forward and backward of both, errors vs torch in float64, forward times in float32."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    ours = ours_fn(*leaves)
    grad = torch.randn_like(ours)
    ours.backward(grad)
    ref_leaves = [t.detach().double().requires_grad_() for t in inputs]
    ref = torch_fn(*ref_leaves)
    ref.backward(grad.double())
    err = max([_rel_err(ours, ref)] + [_rel_err(a.grad, b.grad) for a, b in zip(leaves, ref_leaves)])
    with torch.no_grad():
        t_ours = _median_ms(lambda: ours_fn(*inputs))
        t_torch = _median_ms(lambda: torch_fn(*inputs))
    return name, err, t_ours, t_torch


def run_demo(backend: str = "auto") -> int:
    torch.manual_seed(0)
    x = torch.randn(8, 32, 28, 28)
    w = torch.randn(64, 32, 3, 3) * 0.1
    b = torch.randn(64)
    wd = torch.randn(32, 1, 3, 3)
    with backends.use_backend(backend):
        chosen = backends.resolve(x.device).name
        rows = [
            _check("conv2d 3x3 pad 1", lambda x, w, b: FC.conv2d(x, w, b, padding=1),
                   lambda x, w, b: F.conv2d(x, w, b, padding=1), [x, w, b]),
            _check("conv2d_relu 3x3 stride 2", lambda x, w, b: FC.conv2d_relu(x, w, b, stride=2, padding=1),
                   lambda x, w, b: F.relu(F.conv2d(x, w, b, stride=2, padding=1)), [x, w, b]),
            _check("conv2d depthwise 'same'", lambda x, w: FC.conv2d(x, w, padding="same", groups=32),
                   lambda x, w: F.conv2d(x, w, padding="same", groups=32), [x, wd]),
            _check("conv2d channels_last", lambda x, w, b: FC.conv2d(x, w, b, padding=1),
                   lambda x, w, b: F.conv2d(x, w, b, padding=1), [x.to(memory_format=torch.channels_last), w, b]),
            _check("max_pool2d 3x3 s2 p1", lambda x: FC.max_pool2d(x, 3, 2, 1),
                   lambda x: F.max_pool2d(x, 3, 2, 1), [x]),
            _check("avg_pool2d 2x2", lambda x: FC.avg_pool2d(x, 2), lambda x: F.avg_pool2d(x, 2), [x]),
        ]
    print(f"fastconv demo on backend '{chosen}' ({torch.get_num_threads()} threads); errors vs torch float64, "
          f"forward times in float32")
    print(f"{'op':<28} {'max rel err':>12} {'ours ms':>9} {'torch ms':>9}")
    ok = True
    for name, err, t_ours, t_torch in rows:
        ok &= err < 1e-4
        print(f"{name:<28} {err:12.2e} {t_ours:9.3f} {t_torch:9.3f}")
    print("all results match torch" if ok else "MISMATCH against torch")
    return 0 if ok else 1

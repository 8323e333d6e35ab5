"""A sample of fastconv's CUDA kernels for compute-sanitizer (bench/gpu_check.sh): convolution forward,
dgrad and wgrad on the tensor-core path (fp16, bf16, fp32 as TF32; channels_last) and the SIMT path
(fp32 NCHW), depthwise, max/avg pooling forward and backward, each compared with torch, and a check that
the tensor-core kernels are the ones that ran where they are eligible (kernel names from torch.profiler
on a GPU, from the SIMT emulator's launch recorder on the CPU).

    python bench/gpu_sample.py               # CUDA GPU, backend 'cuda' (under compute-sanitizer in gpu_check)
    python bench/gpu_sample.py --small       # fewer cases (racecheck is slow)
    python bench/gpu_sample.py --device cpu  # the same kernels on the SIMT emulator (backend 'cuda_emu')

Exit status 1 when a result differs from torch's or a tensor-core kernel did not run.
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

import fastconv
import fastconv.functional as FC

TOL = {torch.float16: 2e-2, torch.bfloat16: 5e-2, torch.float32: 1e-2}


def rel(a, b):
    a, b = a.double(), b.double()
    return (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-30)).item()


def kernel_names(fn, device):
    """Names of the kernels fn launches."""
    if device == "cpu":
        import fastconv._C_emu as emu

        emu.start_recording()
        try:
            fn()
        finally:
            return [launch["signature"] for launch in emu.stop_recording()]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


def conv_case(device, dtype, channels_last, C, K, HW, groups=1, expect_tc=False):
    g = torch.Generator().manual_seed(C * 31 + K)
    x = torch.randn(2, C, HW, HW, generator=g, dtype=torch.float64).to(dtype).to(device)
    w = torch.randn(K, C // groups, 3, 3, generator=g, dtype=torch.float64).to(dtype).to(device)
    b = torch.randn(K, generator=g, dtype=torch.float64).to(dtype).to(device)
    if channels_last:
        x, w = x.to(memory_format=torch.channels_last), w.to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    w.requires_grad_(True)
    errors = []

    def ours():
        y = FC.conv2d(x, w, b, padding=1, groups=groups)
        return (y, *torch.autograd.grad(y, (x, w), torch.ones_like(y)))

    names = kernel_names(ours, device)
    got = ours()
    xr, wr = x.detach().double().requires_grad_(True), w.detach().double().requires_grad_(True)
    y = F.conv2d(xr, wr, b.double(), padding=1, groups=groups)
    want = (y, *torch.autograd.grad(y, (xr, wr), torch.ones_like(y)))
    for what, o, r in zip(("y", "dx", "dw"), got, want):
        e = rel(o.cpu(), r.cpu())
        if not e <= TOL[dtype]:
            errors.append(f"{what} relative error {e:.2e}")
    tc = [n for n in names if "_tc" in n.split("(")[0]]
    if expect_tc and len({n.split("<")[0] for n in tc}) < 3:
        errors.append(f"tensor-core fwd/dgrad/wgrad expected, ran: {sorted(set(n[:60] for n in names))}")
    label = f"conv {str(dtype)[6:]} {'cl' if channels_last else 'nchw'} C{C} K{K} {HW}x{HW} g{groups}"
    return label, errors, len(tc)


def pool_case(device, dtype):
    x = torch.randn(2, 16, 13, 13, dtype=torch.float64).to(dtype).to(device).requires_grad_(True)
    errors = []
    for name, ours, ref in (("max", lambda t: FC.max_pool2d(t, 3, 2, 1), lambda t: F.max_pool2d(t, 3, 2, 1)),
                            ("avg", lambda t: FC.avg_pool2d(t, 3, 2, 1), lambda t: F.avg_pool2d(t, 3, 2, 1))):
        y = ours(x)
        dx, = torch.autograd.grad(y, x, torch.ones_like(y))
        xr = x.detach().double().requires_grad_(True)
        yr = ref(xr)
        dxr, = torch.autograd.grad(yr, xr, torch.ones_like(yr))
        for what, o, r in (("y", y, yr), ("dx", dx, dxr)):
            e = rel(o.cpu(), r.cpu())
            if not e <= TOL[dtype]:
                errors.append(f"{name} {what} relative error {e:.2e}")
    return f"pool {str(dtype)[6:]}", errors, 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--small", action="store_true", help="one tensor-core and one SIMT case, one pooling case")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_sample: no CUDA device", file=sys.stderr)
        return 2
    backend = "cuda" if args.device == "cuda" else "cuda_emu"
    torch.backends.cudnn.allow_tf32 = True  # the fp32 tensor-core path is TF32 (cuDNN's default rule)
    cases = [(torch.float16, True, 32, 48, 9, 1, True), (torch.float32, False, 8, 12, 7, 1, False)]
    if not args.small:
        cases += [(torch.bfloat16, True, 16, 24, 8, 1, True), (torch.float32, True, 16, 16, 7, 1, True),
                  (torch.float16, False, 8, 16, 7, 1, False), (torch.float32, True, 16, 16, 9, 16, False)]
    failed = 0
    with fastconv.use_backend(backend):
        results = [conv_case(args.device, *c) for c in cases]
        results += [pool_case(args.device, dt) for dt in ((torch.float16,) if args.small else
                                                            (torch.float16, torch.float32))]
    for label, errors, tc in results:
        print(f"{label:44s} tensor-core launches {tc:2d}  {'FAIL: ' + '; '.join(errors) if errors else 'ok'}")
        failed += bool(errors)
    print(f"gpu_sample on {backend}: {len(results) - failed}/{len(results)} ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark shape tables and their work models (FLOPs for convolution, bytes for pooling).

Letters as in CUTLASS: input N x C x H x W, filter K x (C/groups) x R x S, output N x K x P x Q.
The FLOP count is the direct-convolution count, 2·N·K·P·Q·(C/groups)·R·S (a multiply and an add
per MAC), whatever algorithm a backend uses, so GFLOP/s of different implementations compare the
same work. Byte counts are the minimum traffic: every tensor read or written once, no re-reads.

TABLES maps a table name to its shapes; later tables (ResNet-50, MobileNet, GPU sizes) are added
there and picked up by bench/ and `fastconv bench` without further changes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, List, Sequence, Union

# bytes per element of the benchmarked dtype (float32) and of max-pool indices (int64)
F32 = 4
I64 = 8


def _out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


@dataclass(frozen=True)
class ConvShape:
    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    stride: int = 1
    pad: int = 0
    groups: int = 1
    name: str = ""

    def __post_init__(self):
        if self.C % self.groups or self.K % self.groups:
            raise ValueError(f"ConvShape {self.name or self.label}: C={self.C} and K={self.K} must be "
                             f"divisible by groups={self.groups}")
        if not self.name:
            object.__setattr__(self, "name", self.label)

    @property
    def P(self) -> int:
        return _out(self.H, self.R, self.stride, self.pad)

    @property
    def Q(self) -> int:
        return _out(self.W, self.S, self.stride, self.pad)

    @property
    def label(self) -> str:
        """Compact, id-safe description, e.g. n32c64h32w32k64r3s3u1p1g1."""
        return (f"n{self.N}c{self.C}h{self.H}w{self.W}k{self.K}r{self.R}s{self.S}"
                f"u{self.stride}p{self.pad}g{self.groups}")

    @property
    def input_shape(self):
        return (self.N, self.C, self.H, self.W)

    @property
    def weight_shape(self):
        return (self.K, self.C // self.groups, self.R, self.S)

    @property
    def output_shape(self):
        return (self.N, self.K, self.P, self.Q)

    @property
    def flops(self) -> int:
        """Forward FLOPs: 2·N·K·P·Q·(C/groups)·R·S."""
        return 2 * self.N * self.K * self.P * self.Q * (self.C // self.groups) * self.R * self.S

    @property
    def flops_fwd_bwd(self) -> int:
        """Forward + input gradient + weight gradient: three GEMM-sized passes (bias grad and ReLU
        mask are O(output) and not counted)."""
        return 3 * self.flops

    def bytes(self, itemsize: int = F32, bias: bool = True) -> int:
        """Forward minimum traffic: read input, weight (and bias), write output."""
        elems = (self.N * self.C * self.H * self.W + self.K * (self.C // self.groups) * self.R * self.S
                 + (self.K if bias else 0) + self.N * self.K * self.P * self.Q)
        return elems * itemsize

    def with_batch(self, N: int) -> "ConvShape":
        return dataclasses.replace(self, N=N, name=f"{self.name}@n{N}" if self.name != self.label else "")


@dataclass(frozen=True)
class PoolShape:
    N: int
    C: int
    H: int
    W: int
    kernel: int
    stride: int
    pad: int = 0
    op: str = "max"  # "max" or "avg"
    name: str = ""

    def __post_init__(self):
        if self.op not in ("max", "avg"):
            raise ValueError(f"PoolShape: op must be 'max' or 'avg', got {self.op!r}")
        if not self.name:
            object.__setattr__(self, "name", self.label)

    @property
    def P(self) -> int:
        return _out(self.H, self.kernel, self.stride, self.pad)

    @property
    def Q(self) -> int:
        return _out(self.W, self.kernel, self.stride, self.pad)

    @property
    def label(self) -> str:
        return f"{self.op}-n{self.N}c{self.C}h{self.H}w{self.W}k{self.kernel}u{self.stride}p{self.pad}"

    @property
    def input_shape(self):
        return (self.N, self.C, self.H, self.W)

    @property
    def output_shape(self):
        return (self.N, self.C, self.P, self.Q)

    @property
    def in_elems(self) -> int:
        return self.N * self.C * self.H * self.W

    @property
    def out_elems(self) -> int:
        return self.N * self.C * self.P * self.Q

    def bytes(self, itemsize: int = F32, indices: bool = False) -> int:
        """Forward: read the input once, write the output (and the int64 indices when recorded,
        i.e. max pooling of an input that requires grad)."""
        extra = self.out_elems * I64 if (indices and self.op == "max") else 0
        return (self.in_elems + self.out_elems) * itemsize + extra

    def bytes_backward(self, itemsize: int = F32) -> int:
        """Backward: read grad_output (and max's int64 indices), write grad_input."""
        extra = self.out_elems * I64 if self.op == "max" else 0
        return (self.out_elems + self.in_elems) * itemsize + extra

    def with_batch(self, N: int) -> "PoolShape":
        return dataclasses.replace(self, N=N, name=f"{self.name}@n{N}" if self.name != self.label else "")


# CPU convolution shapes: CIFAR-sized layers, ResNet-like 14x14/56x56 stages, a 1x1, a strided and
# a depthwise layer, so that direct, im2col/GEMM-like and depthwise paths are all exercised.
CPU_CONV: List[ConvShape] = [
    ConvShape(32, 3, 32, 32, 32, 3, 3, 1, 1, 1, name="c3k32-32x32-3x3"),
    ConvShape(32, 64, 32, 32, 64, 3, 3, 1, 1, 1, name="c64k64-32x32-3x3"),
    ConvShape(32, 128, 16, 16, 128, 3, 3, 1, 1, 1, name="c128k128-16x16-3x3"),
    ConvShape(16, 256, 14, 14, 256, 3, 3, 1, 1, 1, name="c256k256-14x14-3x3"),
    ConvShape(8, 64, 56, 56, 64, 3, 3, 1, 1, 1, name="c64k64-56x56-3x3"),
    ConvShape(32, 64, 32, 32, 64, 1, 1, 1, 0, 1, name="c64k64-32x32-1x1"),
    ConvShape(32, 128, 32, 32, 128, 3, 3, 2, 1, 1, name="c128k128-32x32-3x3s2"),
    ConvShape(32, 128, 32, 32, 128, 3, 3, 1, 1, 128, name="c128-32x32-3x3dw"),
]

CPU_POOL: List[PoolShape] = [
    PoolShape(32, 64, 56, 56, 2, 2, 0, "max", name="max-2x2s2"),
    PoolShape(32, 64, 56, 56, 3, 2, 1, "max", name="max-3x3s2p1"),
    PoolShape(32, 64, 56, 56, 2, 2, 0, "avg", name="avg-2x2s2"),
    PoolShape(32, 64, 56, 56, 3, 2, 1, "avg", name="avg-3x3s2p1"),
]



def _resnet50_conv(N: int = 32) -> List[ConvShape]:
    """The distinct (C, K, H, R, stride) conv layers of ResNet-50 (torchvision v1.5: the stride is on the
    3x3 of each stage's first bottleneck) at 224x224; the 1x1 downsample and the bottleneck's third
    1x1 coincide in layer1 (64->256 at 56x56) and count once. 23 layers."""
    rows = [ConvShape(N, 3, 224, 224, 64, 7, 7, 2, 3, name="r50-conv1-7x7s2")]
    c_in, h = 64, 56
    for stage, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3)), start=1):
        out = 4 * width
        stride = 1 if stage == 1 else 2
        hs = h // stride
        p = f"r50-l{stage}"
        rows.append(ConvShape(N, c_in, h, h, width, 1, 1, 1, 0, name=f"{p}-1x1-c{c_in}k{width}-{h}"))
        rows.append(ConvShape(N, width, h, h, width, 3, 3, stride, 1,
                              name=f"{p}-3x3{'s2' if stride == 2 else ''}-c{width}-{h}"))
        rows.append(ConvShape(N, width, hs, hs, out, 1, 1, 1, 0, name=f"{p}-1x1-c{width}k{out}-{hs}"))
        if stride == 2:  # layer1's downsample (64->256 at 56, stride 1) is the 1x1 expand above
            rows.append(ConvShape(N, c_in, h, h, out, 1, 1, 2, 0, name=f"{p}-down-1x1s2-c{c_in}k{out}-{h}"))
        rows.append(ConvShape(N, out, hs, hs, width, 1, 1, 1, 0, name=f"{p}-1x1-c{out}k{width}-{hs}"))
        if stride == 2:
            rows.append(ConvShape(N, width, hs, hs, width, 3, 3, 1, 1, name=f"{p}-3x3-c{width}-{hs}"))
        c_in, h = out, hs
    return rows


def _resnet18_cifar_conv(N: int = 32) -> List[ConvShape]:
    """The conv layers of ResNet-18 with the CIFAR stem (3x3 stem, no max pooling) at 32x32: 11 distinct."""
    rows = [ConvShape(N, 3, 32, 32, 64, 3, 3, 1, 1, name="r18c-stem-3x3-c3k64-32")]
    c_in, h = 64, 32
    for stage, width in enumerate((64, 128, 256, 512), start=1):
        stride = 1 if stage == 1 else 2
        hs = h // stride
        p = f"r18c-l{stage}"
        if stride == 2:
            rows.append(ConvShape(N, c_in, h, h, width, 3, 3, 2, 1, name=f"{p}-3x3s2-c{c_in}k{width}-{h}"))
            rows.append(ConvShape(N, c_in, h, h, width, 1, 1, 2, 0, name=f"{p}-down-1x1s2-c{c_in}k{width}-{h}"))
        rows.append(ConvShape(N, width, hs, hs, width, 3, 3, 1, 1, name=f"{p}-3x3-c{width}-{hs}"))
        c_in, h = width, hs
    return rows


def _mobilenet_dw(N: int = 32) -> List[ConvShape]:
    """The distinct depthwise 3x3 layers of MobileNet v1 at 224x224 (groups = C = K): 9 layers."""
    spec = [(32, 112, 1), (64, 112, 2), (128, 56, 1), (128, 56, 2), (256, 28, 1), (256, 28, 2),
            (512, 14, 1), (512, 14, 2), (1024, 7, 1)]
    return [ConvShape(N, c, h, h, c, 3, 3, s, 1, c, name=f"mbv1-dw{'s2' if s == 2 else ''}-c{c}-{h}")
            for c, h, s in spec]


# Pooling layers of the same networks (and VGG / LeNet), batch 32.
POOL: List[PoolShape] = [
    PoolShape(32, 64, 112, 112, 3, 2, 1, "max", name="r50-stem-max3x3s2-c64-112"),
    PoolShape(32, 128, 112, 112, 2, 2, 0, "max", name="vgg-max2x2-c128-112"),
    PoolShape(32, 512, 28, 28, 2, 2, 0, "max", name="vgg-max2x2-c512-28"),
    PoolShape(32, 6, 28, 28, 2, 2, 0, "max", name="lenet-max2x2-c6-28"),
    PoolShape(32, 2048, 7, 7, 7, 7, 0, "avg", name="r50-gap-avg7x7-c2048-7"),
    PoolShape(32, 1024, 7, 7, 7, 7, 0, "avg", name="mbv1-gap-avg7x7-c1024-7"),
    PoolShape(32, 512, 4, 4, 4, 4, 0, "avg", name="r18c-gap-avg4x4-c512-4"),
    PoolShape(32, 256, 56, 56, 2, 2, 0, "avg", name="avg2x2-c256-56"),
]

@dataclass(frozen=True)
class AdaptivePoolShape(PoolShape):
    """An adaptive pooling row (issue #30): op 'adaptive_avg' or 'adaptive_max', output out_h x out_w with
    torch's adaptive windows (kernel and stride unused: 0). Output 1 x 1 is global average pooling."""

    out_h: int = 1
    out_w: int = 1

    def __post_init__(self):
        if self.op not in ("adaptive_avg", "adaptive_max"):
            raise ValueError(f"AdaptivePoolShape: op must be 'adaptive_avg' or 'adaptive_max', got {self.op!r}")
        if not self.name:
            object.__setattr__(self, "name", self.label)

    @property
    def P(self) -> int:
        return self.out_h

    @property
    def Q(self) -> int:
        return self.out_w

    @property
    def label(self) -> str:
        return f"{self.op}-n{self.N}c{self.C}h{self.H}w{self.W}-to{self.out_h}x{self.out_w}"

    def bytes(self, itemsize: int = F32, indices: bool = False) -> int:
        extra = self.out_elems * I64 if (indices and self.op == "adaptive_max") else 0
        return (self.in_elems + self.out_elems) * itemsize + extra

    def bytes_backward(self, itemsize: int = F32) -> int:
        extra = self.out_elems * I64 if self.op == "adaptive_max" else 0
        return (self.out_elems + self.in_elems) * itemsize + extra


def _adaptive(N, C, H, W, out, op, name) -> AdaptivePoolShape:
    return AdaptivePoolShape(N, C, H, W, 0, 0, 0, op, name, out[0], out[1])


# Adaptive and global pooling on the CPU: classifier heads (global average of the last feature map: ResNet-50,
# MobileNetV2), one beyond the L3 cache (the streaming-bandwidth case), AlexNet's 13x13 -> 6x6 and a
# 14x14 -> 7x7 head (VGG's AdaptiveAvgPool2d at 448 px), adaptive max of the same maps.
CPU_ADAPTIVE_POOL: List[AdaptivePoolShape] = [
    _adaptive(32, 2048, 7, 7, (1, 1), "adaptive_avg", "r50-gap-c2048-7"),
    _adaptive(32, 1280, 7, 7, (1, 1), "adaptive_avg", "mbv2-gap-c1280-7"),
    _adaptive(16, 256, 56, 56, (1, 1), "adaptive_avg", "gap-c256-56"),
    _adaptive(32, 256, 13, 13, (6, 6), "adaptive_avg", "alexnet-aap6-c256-13"),
    _adaptive(32, 512, 14, 14, (7, 7), "adaptive_avg", "vgg448-aap7-c512-14"),
    _adaptive(32, 256, 13, 13, (6, 6), "adaptive_max", "alexnet-amp6-c256-13"),
    _adaptive(32, 512, 14, 14, (7, 7), "adaptive_max", "amp7-c512-14"),
]

RESNET50_CONV: List[ConvShape] = _resnet50_conv()
RESNET18_CIFAR_CONV: List[ConvShape] = _resnet18_cifar_conv()
MOBILENET_DW: List[ConvShape] = _mobilenet_dw()

TABLES: Dict[str, List[Union[ConvShape, PoolShape]]] = {
    "cpu_conv": CPU_CONV,
    "cpu_pool": CPU_POOL,
    "resnet50": RESNET50_CONV,
    "resnet18_cifar": RESNET18_CIFAR_CONV,
    "mobilenet_dw": MOBILENET_DW,
    "pool": POOL,
    "cpu_adaptive_pool": CPU_ADAPTIVE_POOL,
}

# Short (smoke-test) mode: a few representative shapes at a small batch.
SHORT_N = 2
_SHORT_PICK = {
    "cpu_conv": ("c64k64-32x32-3x3", "c64k64-32x32-1x1", "c128k128-32x32-3x3s2", "c128-32x32-3x3dw"),
    "cpu_pool": ("max-3x3s2p1", "avg-2x2s2"),
    "cpu_adaptive_pool": ("r50-gap-c2048-7", "alexnet-amp6-c256-13"),
}


def short_table(name: str, N: int = SHORT_N) -> List[Union[ConvShape, PoolShape]]:
    """The smoke-test subset of TABLES[name] at batch N (the whole table when no subset is named)."""
    pick: Sequence[str] = _SHORT_PICK.get(name, ())
    shapes = [s for s in TABLES[name] if not pick or s.name in pick]
    return [s.with_batch(N) for s in shapes]

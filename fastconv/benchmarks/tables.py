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
    """A convolution layer. dims=1: a 1-d convolution of (N, C, W) with a (K, C/groups, S) filter (H = R = 1,
    the padding is on W only). transposed: a transposed convolution of (N, C, H, W) with a (C, K/groups, R,
    S) filter giving (N, K, P, Q), P = (H - 1)·stride - 2·pad + R + output_padding."""
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
    dims: int = 2
    transposed: bool = False
    output_padding: int = 0

    def __post_init__(self):
        if self.C % self.groups or self.K % self.groups:
            raise ValueError(f"ConvShape {self.name or self.label}: C={self.C} and K={self.K} must be "
                             f"divisible by groups={self.groups}")
        if self.dims == 1 and (self.H != 1 or self.R != 1 or self.transposed):
            raise ValueError(f"ConvShape {self.name or self.label}: a 1-d shape has H = R = 1 and is not transposed")
        if not self.name:
            object.__setattr__(self, "name", self.label)

    def _out(self, size: int, kernel: int, pad: int) -> int:
        if self.transposed:
            return (size - 1) * self.stride - 2 * pad + kernel + self.output_padding
        return _out(size, kernel, self.stride, pad)

    @property
    def P(self) -> int:
        return 1 if self.dims == 1 else self._out(self.H, self.R, self.pad)

    @property
    def Q(self) -> int:
        return self._out(self.W, self.S, self.pad)

    @property
    def ops(self) -> tuple:
        """The benchmark ops that run this shape."""
        if self.transposed:
            return ("conv_transpose2d",)
        return ("conv1d", "conv1d_relu") if self.dims == 1 else ("conv2d", "conv2d_relu")

    @property
    def label(self) -> str:
        """Compact, id-safe description, e.g. n32c64h32w32k64r3s3u1p1g1 (1-d: n8c64l4096k64s3u1p1g1,
        transposed: t-n64c512h4w4k256r4s4u2p1g1)."""
        if self.dims == 1:
            return f"n{self.N}c{self.C}l{self.W}k{self.K}s{self.S}u{self.stride}p{self.pad}g{self.groups}"
        return (f"{'t-' if self.transposed else ''}n{self.N}c{self.C}h{self.H}w{self.W}k{self.K}r{self.R}s{self.S}"
                f"u{self.stride}p{self.pad}g{self.groups}")

    @property
    def input_shape(self):
        return (self.N, self.C, self.W) if self.dims == 1 else (self.N, self.C, self.H, self.W)

    @property
    def weight_shape(self):
        if self.dims == 1:
            return (self.K, self.C // self.groups, self.S)
        if self.transposed:
            return (self.C, self.K // self.groups, self.R, self.S)
        return (self.K, self.C // self.groups, self.R, self.S)

    @property
    def output_shape(self):
        return (self.N, self.K, self.Q) if self.dims == 1 else (self.N, self.K, self.P, self.Q)

    @property
    def flops(self) -> int:
        """Forward FLOPs: 2·N·K·P·Q·(C/groups)·R·S (transposed: 2·N·C·H·W·(K/groups)·R·S, every input
        pixel times every tap)."""
        if self.transposed:
            return 2 * self.N * self.C * self.H * self.W * (self.K // self.groups) * self.R * self.S
        return 2 * self.N * self.K * self.P * self.Q * (self.C // self.groups) * self.R * self.S

    @property
    def flops_fwd_bwd(self) -> int:
        """Forward + input gradient + weight gradient: three GEMM-sized passes (bias grad and ReLU
        mask are O(output) and not counted)."""
        return 3 * self.flops

    @property
    def elems(self) -> tuple:
        """(input, weight, output) element counts."""
        return (self.N * self.C * self.H * self.W, self.K * (self.C // self.groups) * self.R * self.S,
                self.N * self.K * self.P * self.Q)

    def bytes(self, itemsize: int = F32, bias: bool = True) -> int:
        """Forward minimum traffic: read input, weight (and bias), write output."""
        x, w, y = self.elems
        return (x + w + (self.K if bias else 0) + y) * itemsize

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

def _conv1d(N, C, L, K, k, stride=1, pad=0, groups=1, name=""):
    return ConvShape(N, C, 1, L, K, 1, k, stride, pad, groups, name=name, dims=1)


# 1-d convolutions of speech and sequence models: a waveform stem (wav2vec 2.0's first layer: 512
# filters of width 10, stride 5, over 1 s of 16 kHz audio), TDNN / QuartzNet-like layers at C 64-512
# over 1k-4k frames with kernels 3-11, a strided layer, a pointwise layer, and depthwise layers as in
# Conformer (kernel 31) and Mamba (kernel 4, causal padding 3).
CONV1D: List[ConvShape] = [
    _conv1d(4, 1, 16000, 512, 10, 5, 0, name="wav2vec-stem-k10s5"),
    _conv1d(8, 64, 4096, 64, 3, 1, 1, name="c64-L4096-k3"),
    _conv1d(8, 128, 2048, 128, 5, 1, 2, name="c128-L2048-k5"),
    _conv1d(4, 256, 1024, 256, 11, 1, 5, name="c256-L1024-k11"),
    _conv1d(8, 512, 1000, 512, 3, 1, 1, name="tdnn-c512-L1000-k3"),
    _conv1d(4, 256, 4096, 256, 3, 2, 1, name="c256-L4096-k3s2"),
    _conv1d(4, 256, 2048, 512, 1, 1, 0, name="pw-c256k512-L2048"),
    _conv1d(4, 256, 2048, 256, 31, 1, 15, 256, name="dw-c256-L2048-k31"),
    _conv1d(8, 1024, 1024, 1024, 4, 1, 3, 1024, name="dw-c1024-L1024-k4"),
]


def _deconv(N, C, H, K, k, stride, pad, output_padding=0, name=""):
    return ConvShape(N, C, H, H, K, k, k, stride, pad, name=name, transposed=True, output_padding=output_padding)


# Transposed convolutions of decoders: the DCGAN generator (64x64 images, batch 64: a 1x1 latent to
# 4x4, then 4x4 stride-2 layers doubling the size), U-Net's 2x2 stride-2 up-convolutions (batch 4,
# 256x256 output) and an FCN/segmentation-style 3x3 stride-2 layer with output_padding 1.
CONV_TRANSPOSE: List[ConvShape] = [
    _deconv(64, 100, 1, 512, 4, 1, 0, name="dcgan-z100-to-4x4"),
    _deconv(64, 512, 4, 256, 4, 2, 1, name="dcgan-c512-4-to-8"),
    _deconv(64, 256, 8, 128, 4, 2, 1, name="dcgan-c256-8-to-16"),
    _deconv(64, 128, 16, 64, 4, 2, 1, name="dcgan-c128-16-to-32"),
    _deconv(64, 64, 32, 3, 4, 2, 1, name="dcgan-c64-32-to-64-rgb"),
    _deconv(4, 1024, 16, 512, 2, 2, 0, name="unet-up-c1024-16"),
    _deconv(4, 512, 32, 256, 2, 2, 0, name="unet-up-c512-32"),
    _deconv(4, 256, 64, 128, 2, 2, 0, name="unet-up-c256-64"),
    _deconv(4, 128, 128, 64, 2, 2, 0, name="unet-up-c128-128"),
    _deconv(8, 256, 28, 128, 3, 2, 1, 1, name="fcn-3x3s2op1-c256-28"),
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
    "conv1d": CONV1D,
    "conv_transpose": CONV_TRANSPOSE,
}

# Short (smoke-test) mode: a few representative shapes at a small batch.
SHORT_N = 2
_SHORT_PICK = {
    "cpu_conv": ("c64k64-32x32-3x3", "c64k64-32x32-1x1", "c128k128-32x32-3x3s2", "c128-32x32-3x3dw"),
    "cpu_pool": ("max-3x3s2p1", "avg-2x2s2"),
    "conv1d": ("c64-L4096-k3", "dw-c1024-L1024-k4"),
    "conv_transpose": ("dcgan-c256-8-to-16", "fcn-3x3s2op1-c256-28"),
}


def short_table(name: str, N: int = SHORT_N) -> List[Union[ConvShape, PoolShape]]:
    """The smoke-test subset of TABLES[name] at batch N (the whole table when no subset is named)."""
    pick: Sequence[str] = _SHORT_PICK.get(name, ())
    shapes = [s for s in TABLES[name] if not pick or s.name in pick]
    return [s.with_batch(N) for s in shapes]

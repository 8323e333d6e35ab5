"""The 'reference' backend: every op in plain torch. The tests' yardstick, and the fallback for a
device that has no native fastconv backend (fastconv.info() says when that happens)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._utils import memory_format_of
from . import Backend


class ReferenceBackend(Backend):
    name = "reference"
    device_types = ("cpu", "cuda", "mps", "xpu", "meta")

    def serves(self, device: torch.device) -> bool:
        return True

    def conv2d_fwd(self, x, w, bias, stride, padding, dilation, groups, relu):
        y = F.conv2d(x, w, bias, stride, padding, dilation, groups)
        return torch.relu(y) if relu else y

    @staticmethod
    def _masked(dy, relu_y):
        return dy if relu_y is None else dy * (relu_y > 0).to(dy.dtype)

    def conv2d_dgrad(self, dy, x, w, relu_y, stride, padding, dilation, groups):
        # The transposed convolution of dy: output_padding covers an x taller/wider than dy's rows
        # reach (a convolution's discarded edge, or fastconv::conv_transpose2d's output_padding).
        reach = [(dy.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (w.shape[2 + i] - 1) + 1
                 for i in range(2)]
        extra = [x.shape[2 + i] - reach[i] for i in range(2)]
        dx = F.conv_transpose2d(self._masked(dy, relu_y), w, None, stride, padding, extra, groups, dilation)
        return dx.contiguous(memory_format=memory_format_of(x))  # the layout the op promises

    def conv2d_wgrad(self, dy, x, w, relu_y, stride, padding, dilation, groups, need_weight, need_bias):
        dy = self._masked(dy, relu_y)
        if need_weight:
            # torch wants dy of the convolution's full output size: rows/columns of it that dy lacks
            # (fastconv::conv_transpose2d's backward) are zeros, contributing nothing.
            full = [(x.shape[2 + i] + 2 * padding[i] - dilation[i] * (w.shape[2 + i] - 1) - 1) // stride[i] + 1
                    for i in range(2)]
            dy_full = F.pad(dy, [0, full[1] - dy.shape[3], 0, full[0] - dy.shape[2]])
            dw = torch.nn.grad.conv2d_weight(x, w.shape, dy_full, stride, padding, dilation, groups)
        else:
            dw = None
        db = dy.sum(dim=(0, 2, 3)) if need_bias else None
        return dw, db

    def max_pool2d_fwd(self, x, kernel, stride, padding, dilation, ceil_mode, with_indices):
        y, idx = F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode, return_indices=True)
        return y, (idx if with_indices else None)

    def max_pool2d_bwd(self, dy, x, indices, kernel, stride, padding, dilation, ceil_mode):
        # A window lying entirely in the padding (possible with dilation) has output -inf and depends on
        # no input, but torch gives it the index of its first dilated position, which can be outside the
        # plane; torch's CPU backward adds dy there unchecked (into the next plane, or past the end of
        # grad_input). Such windows contribute nothing here, as in the cpu backend.
        outside = indices >= x.shape[-2] * x.shape[-1]
        if outside.any():
            dy, indices = dy.masked_fill(outside, 0), indices.masked_fill(outside, 0)
        return torch.ops.aten.max_pool2d_with_indices_backward(
            dy, x, list(kernel), list(stride), list(padding), list(dilation), ceil_mode, indices
        )

    def avg_pool2d_fwd(self, x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
        return F.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)

    def avg_pool2d_bwd(self, dy, x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
        return torch.ops.aten.avg_pool2d_backward(
            dy, x, list(kernel), list(stride), list(padding), ceil_mode, count_include_pad, divisor_override
        )

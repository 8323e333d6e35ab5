"""fastconv.convert(model, memory_format=...): an NCHW caller's network run in channels_last.

The converted model must compute what the torch model computes and hand back what torch hands back
(values, shapes, the output's and the input gradient's layout); only the layout of the activations
inside changes, and only where it carries through the whole network.
"""
from __future__ import annotations

import io
from collections import namedtuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastconv


class SmallNet(nn.Module):
    """A CNN whose layout carries through: convs, BatchNorm, ReLU, a residual add, a pool, a head."""

    def __init__(self, dense: bool = False):
        super().__init__()
        self.dense = dense
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=2), nn.BatchNorm2d(16), nn.ReLU(),
                                   nn.Conv2d(16, 16, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.block(x))
        if self.dense:
            return x
        return self.fc(torch.flatten(self.pool(x), 1))


class ShuffleNet(SmallNet):
    """A channel shuffle in forward (view, transpose, contiguous): the next conv sees an NCHW tensor."""

    def forward(self, x):
        x = self.stem(x)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        return self.fc(torch.flatten(self.pool(self.block(x)), 1))


class NormNet(SmallNet):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(16)

    def forward(self, x):
        x = self.stem(x).permute(0, 2, 3, 1)
        return self.fc(self.norm(x).mean((1, 2)))


Pair = namedtuple("Pair", "features logits")


class PairNet(SmallNet):
    def forward(self, x):
        f = self.stem(x)
        return Pair(f, self.fc(torch.flatten(self.pool(f), 1)))


def _pair(cls, **kw):
    torch.manual_seed(0)
    ref = cls(**kw).eval()
    ours = cls(**kw).eval()
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _conv_input_layouts(model):
    """Records whether each Conv2d's input was channels_last, per call."""
    seen = []

    def hook(module, args):
        seen.append(args[0].is_contiguous(memory_format=torch.channels_last))

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    return seen, handles


def test_auto_runs_an_nchw_cnn_in_channels_last():
    ref, ours = _pair(SmallNet)
    fastconv.convert(ours)
    x = torch.randn(2, 3, 12, 12)
    seen, handles = _conv_input_layouts(ours)
    with torch.no_grad():
        for _ in range(2):  # the first call decides, the second runs as decided
            torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)
    assert seen and all(seen)
    assert ours._fastconv_layout.mode == "channels_last"
    assert x.is_contiguous()  # the caller's tensor is not touched
    for h in handles:
        h.remove()


def test_dense_output_and_input_gradient_keep_torch_layouts():
    ref, ours = _pair(SmallNet, dense=True)
    fastconv.convert(ours)
    x = torch.randn(2, 3, 10, 9)
    xr, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    yr, yo = ref(xr), ours(xo)
    torch.testing.assert_close(yo, yr, rtol=1e-4, atol=1e-5)
    assert yo.stride() == yr.stride()
    g = torch.randn_like(yr)
    yr.backward(g)
    yo.backward(g)
    torch.testing.assert_close(xo.grad, xr.grad, rtol=1e-4, atol=1e-5)
    assert xo.grad.stride() == xr.grad.stride()


def test_a_reshape_in_forward_keeps_the_given_layout():
    ref, ours = _pair(ShuffleNet)
    fastconv.convert(ours)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)  # the probe finds an NCHW conv input
        assert ours._fastconv_layout.mode == "preserve"
        seen, handles = _conv_input_layouts(ours)
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)
    assert seen and not any(seen)
    for h in handles:
        h.remove()


def test_layernorm_models_and_preserve_install_nothing():
    _, norm = _pair(NormNet)
    fastconv.convert(norm)
    assert not hasattr(norm, "_fastconv_layout") and not norm._forward_pre_hooks
    _, plain = _pair(SmallNet)
    fastconv.convert(plain, memory_format="preserve")
    assert not hasattr(plain, "_fastconv_layout") and not plain._forward_pre_hooks


def test_channels_last_is_forced_and_convert_twice_adds_no_hooks():
    ref, ours = _pair(NormNet)
    fastconv.convert(ours, memory_format="channels_last")
    fastconv.convert(ours, memory_format="channels_last")
    assert len(ours._forward_pre_hooks) == 1 and len(ours._forward_hooks) == 1
    x = torch.randn(2, 3, 8, 8)
    seen, handles = _conv_input_layouts(ours)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)
    assert all(seen)
    fastconv.convert(ours, memory_format="preserve")  # switches the installed hooks off
    seen.clear()
    with torch.no_grad():
        ours(x)
    assert not any(seen)
    for h in handles:
        h.remove()


def test_channels_last_inputs_are_left_alone():
    ref, ours = _pair(SmallNet, dense=True)
    fastconv.convert(ours)
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        yr, yo = ref(x), ours(x)
    torch.testing.assert_close(yo, yr, rtol=1e-4, atol=1e-5)
    assert yo.is_contiguous(memory_format=torch.channels_last) == yr.is_contiguous(memory_format=torch.channels_last)


def test_namedtuple_outputs_come_back_nchw():
    ref, ours = _pair(PairNet)
    fastconv.convert(ours)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        yr, yo = ref(x), ours(x)
    assert type(yo) is Pair
    torch.testing.assert_close(yo.features, yr.features, rtol=1e-4, atol=1e-5)
    assert yo.features.is_contiguous()
    torch.testing.assert_close(yo.logits, yr.logits, rtol=1e-4, atol=1e-5)


def test_converted_model_pickles_and_traces():
    ref, ours = _pair(SmallNet)
    fastconv.convert(ours)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        want = ref(x)
        ours(x)
        buf = io.BytesIO()
        torch.save(ours, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        torch.testing.assert_close(loaded(x), want, rtol=1e-4, atol=1e-5)
        traced = torch.jit.trace(ours, (x,))
        torch.testing.assert_close(traced(x), want, rtol=1e-4, atol=1e-5)


class ViewNet(SmallNet):
    """A `.view` that needs NCHW strides (the PyTorch tutorials' flatten), in training mode."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16 * 4 * 4, 5)

    def forward(self, x):
        x = F.max_pool2d(self.stem(x), 2)
        return self.fc(x.view(x.size(0), -1))


def test_a_view_that_needs_nchw_falls_back_once_with_buffers_restored():
    ref, ours = _pair(ViewNet)
    ref.train()
    ours.train()
    fastconv.convert(ours)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)  # the channels_last probe raised
    assert ours._fastconv_layout.mode == "preserve"
    # BatchNorm's running statistics moved once, as torch's did (the probe's update was undone)
    for (name, b), r in zip(ours.named_buffers(), ref.buffers()):
        torch.testing.assert_close(b, r, rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)


def test_train_mode_probe_leaves_the_statistics_to_the_real_call():
    """'auto' decides with a forward on copies before the first call; BatchNorm's running statistics
    move once per call, as torch's do, and the gradients are torch's."""
    ref, ours = _pair(SmallNet)
    ref.train()
    ours.train()
    fastconv.convert(ours)
    x = torch.randn(4, 3, 8, 8)
    yr, yo = ref(x), ours(x)
    torch.testing.assert_close(yo, yr, rtol=1e-4, atol=1e-5)
    assert ours._fastconv_layout.mode == "channels_last"
    for b, r in zip(ours.buffers(), ref.buffers()):
        torch.testing.assert_close(b, r, rtol=1e-5, atol=1e-6)
    yr.sum().backward()
    yo.sum().backward()
    for p, r in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, r.grad, rtol=1e-3, atol=1e-4)


class DropoutNet(SmallNet):
    """SmallNet with a Dropout before its head, as torchvision's MobileNets, EfficientNet and VGG have."""

    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.block(x))
        return self.fc(self.drop(torch.flatten(self.pool(x), 1)))


def test_train_mode_probe_leaves_the_random_numbers_to_the_real_call():
    """The probe forward runs Dropout too; the generator is put back after it, so that under one seed the
    converted model draws torch's masks (a training run reproduces the unconverted one's)."""
    ref, ours = _pair(DropoutNet)
    ref.train()
    ours.train()
    fastconv.convert(ours)
    x = torch.randn(4, 3, 8, 8)
    torch.manual_seed(7)
    yr = ref(x)
    after_ref = torch.rand(3)
    torch.manual_seed(7)
    yo = ours(x)
    after_ours = torch.rand(3)
    assert ours._fastconv_layout.mode == "channels_last"
    torch.testing.assert_close(yo, yr, rtol=1e-4, atol=1e-5)
    assert torch.equal(after_ours, after_ref)


def test_a_raising_call_keeps_the_record_balanced():
    _, ours = _pair(SmallNet)
    fastconv.convert(ours, memory_format="channels_last")
    with pytest.raises(RuntimeError):
        ours(torch.randn(2, 4, 8, 8))  # 4 channels for a 3-channel stem
    assert ours._fastconv_layout.converted == []


def test_bad_memory_format_names_the_argument():
    with pytest.raises(ValueError, match="memory_format must be one of"):
        fastconv.convert(SmallNet(), memory_format="nhwc")


def test_optimize_runs_nchw_callers_in_channels_last_too():
    ref, ours = _pair(SmallNet, dense=True)
    x = torch.randn(2, 3, 9, 8)
    opt = fastconv.optimize(ours, (x,))
    with torch.no_grad():
        for _ in range(2):
            y = opt(x)
            torch.testing.assert_close(y, ref(x), rtol=1e-4, atol=1e-5)
            assert y.is_contiguous()
    assert opt._fastconv_layout.mode == "channels_last"
    kept = fastconv.optimize(ours, (x,), memory_format="preserve")
    assert not hasattr(kept, "_fastconv_layout")
    with pytest.raises(ValueError, match="memory_format must be one of"):
        fastconv.optimize(ours, (x,), memory_format="cl")

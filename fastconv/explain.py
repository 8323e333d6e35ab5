"""Why did the network predict that class: Grad-CAM and input-gradient saliency (plain and SmoothGrad).

    import fastconv.explain as fx
    ex = fx.explain(model, x, method="gradcam")          # or "saliency", "smoothgrad"; x: (N, C, H, W)
    ex.maps                                              # (N, H, W) in [0, 1], one heatmap per image
    fx.mass_fraction(ex.maps, mask)                      # share of each map's mass inside a region
    fx.explain_files("runs/X/checkpoint.pt", ["a.png"], "out/")   # what `fastconv explain` runs

Both methods are gradients of the target class's logit, so they run the model's own backward: on a
model built from fastconv layers that is fastconv's dgrad / wgrad / pool-backward kernels.

- Grad-CAM (Selvaraju et al. 2017): at a conv layer with activations A (N, K, h, w), the channel
  weights are the spatial means of d logit / dA; the map is relu(sum_k weight_k * A_k), upsampled
  bilinearly to the input size. Default layer: the last nn.Conv2d in module order (fastconv.nn's
  Conv2d and Conv2dReLU are nn.Conv2d subclasses), whose maps are the coarsest but most class-specific.
- Saliency (Simonyan et al. 2014): |d logit / d x|, the maximum over the input channels.
- SmoothGrad (Smilkov et al. 2017): the saliency map averaged over `samples` copies of the input with
  Gaussian noise of standard deviation `noise` x (max - min) of that image (the paper's 10-20% range).

Each map is divided by its maximum (an all-zero map stays zero), so maps compare by shape, not scale.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

METHODS = ("gradcam", "saliency", "smoothgrad")


@dataclass
class Explanation:
    maps: Tensor      # (N, H, W) float32 in [0, 1]
    probs: Tensor     # (N, num_classes) softmax of the logits of the clean input
    target: Tensor    # (N,) int64: the class each map explains
    method: str
    layer: Optional[str] = None  # Grad-CAM's layer name


def conv_layers(model: nn.Module) -> List[str]:
    """The names of the model's convolution modules, in module order (Grad-CAM's layer choices)."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def find_layer(model: nn.Module, layer: Optional[str] = None) -> str:
    """`layer` checked against the model's modules, or the last conv layer when None."""
    convs = conv_layers(model)
    if layer is None:
        if not convs:
            raise ValueError("explain: the model has no nn.Conv2d module for Grad-CAM; use method='saliency'")
        return convs[-1]
    modules = dict(model.named_modules())
    if layer not in modules or layer == "":
        raise ValueError(f"explain: layer {layer!r} is not a module of the model; its conv layers are "
                         f"{', '.join(convs) or 'none'}")
    return layer


def _targets(logits: Tensor, target) -> Tensor:
    n, k = logits.shape
    if target is None:
        return logits.argmax(1)
    t = torch.as_tensor(target, dtype=torch.long, device=logits.device).reshape(-1)
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise ValueError(f"explain: target must be one class index or one per image ({n}), got {t.numel()}")
    if bool((t < 0).any()) or bool((t >= k).any()):
        raise ValueError(f"explain: target must be a class index in [0, {k}), got {t.tolist()}")
    return t


def _normalize(maps: Tensor) -> Tensor:
    peak = maps.flatten(1).amax(1).clamp_min(1e-12).reshape(-1, 1, 1)
    return (maps / peak).float()


def grad_cam(model: nn.Module, x: Tensor, target=None, layer: Optional[str] = None) -> Explanation:
    """Grad-CAM maps of x (N, C, H, W) for `target` (None: the predicted class) at conv layer `layer`."""
    name = find_layer(model, layer)
    module = dict(model.named_modules())[name]
    captured: List[Tensor] = []

    def hook(_module, _inputs, output):
        if not isinstance(output, Tensor) or output.dim() != 4:
            raise ValueError(f"explain: layer {name!r} must output an (N, K, h, w) tensor for Grad-CAM")
        captured.append(output)
        # Downstream in-place ops (ReLU(inplace=True) after a conv) then modify the clone, not A.
        return output.clone()

    handle = module.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            # an input that requires grad: the activations do too, even if the parameters are frozen
            logits = model(x.detach().requires_grad_(True))
            if not captured:
                raise ValueError(f"explain: layer {name!r} did not run in the forward pass")
            acts = captured[-1]
            t = _targets(logits, target)
            score = logits.gather(1, t[:, None]).sum()
            (grads,) = torch.autograd.grad(score, acts)
    finally:
        handle.remove()
    weights = grads.mean(dim=(2, 3), keepdim=True)                    # (N, K, 1, 1)
    cam = F.relu((weights * acts).sum(1, keepdim=True)).detach()     # (N, 1, h, w)
    cam = F.interpolate(cam.float(), size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return Explanation(_normalize(cam.clamp_min(0)), torch.softmax(logits.detach().float(), 1), t, "gradcam", name)


def saliency(model: nn.Module, x: Tensor, target=None, samples: int = 0, noise: float = 0.15,
             generator: Optional[torch.Generator] = None) -> Explanation:
    """|d logit_target / d x| (max over channels); with samples > 0, SmoothGrad's average over noisy copies."""
    if samples < 0:
        raise ValueError(f"explain: samples must be >= 0, got {samples}")
    if noise < 0:
        raise ValueError(f"explain: noise must be >= 0, got {noise}")
    with torch.no_grad():
        logits = model(x)
    t = _targets(logits, target)
    n = x.shape[0]
    sigma = noise * (x.flatten(1).amax(1) - x.flatten(1).amin(1)).reshape(n, 1, 1, 1)
    total = torch.zeros((n,) + tuple(x.shape[-2:]), dtype=torch.float32, device=x.device)
    for i in range(max(1, samples)):
        xi = x.detach().clone()
        if samples > 0:
            xi = xi + sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
        xi.requires_grad_(True)
        with torch.enable_grad():
            score = model(xi).gather(1, t[:, None]).sum()
            (g,) = torch.autograd.grad(score, xi)
        total += g.abs().amax(1).float()
    method = "smoothgrad" if samples > 0 else "saliency"
    return Explanation(_normalize(total), torch.softmax(logits.float(), 1), t, method)


def explain(model: nn.Module, x: Tensor, method: str = "gradcam", target=None, layer: Optional[str] = None,
            samples: int = 25, noise: float = 0.15, generator: Optional[torch.Generator] = None) -> Explanation:
    """One heatmap per image of x (N, C, H, W) or (C, H, W): method 'gradcam', 'saliency' or 'smoothgrad'."""
    if method not in METHODS:
        raise ValueError(f"explain: method must be one of {', '.join(METHODS)}, got {method!r}")
    if not isinstance(x, Tensor) or x.dim() not in (3, 4):
        raise ValueError(f"explain: x must be an (N, C, H, W) or (C, H, W) tensor, got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    was_training = model.training
    model.eval()
    try:
        if method == "gradcam":
            return grad_cam(model, x, target, layer)
        return saliency(model, x, target, samples if method == "smoothgrad" else 0, noise, generator)
    finally:
        model.train(was_training)


def mass_fraction(maps: Tensor, mask: Tensor) -> Tensor:
    """(N,): the share of each map's total mass that lies where mask (N, H, W) or (H, W) is true."""
    mask = mask.to(maps.device, torch.bool).expand_as(maps)
    total = maps.flatten(1).sum(1).clamp_min(1e-12)
    return (maps * mask).flatten(1).sum(1) / total


# ----------------------------------------------------------------------------------------------------
# The PNG per image and `fastconv explain` on a checkpoint


def render_png(path: Union[str, Path], image: Tensor, heatmap: Tensor, top: Sequence[Dict[str, Any]],
               title: str) -> None:
    """Three panels: the image (C, H, W in [0, 1]), the heatmap over it, the top-k classes as bars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    img = image.detach().float().clamp(0, 1).cpu()
    shown = img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()
    cmap = "gray" if img.shape[0] == 1 else None
    fig = Figure(figsize=(9, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax_img, ax_map, ax_top = fig.subplots(1, 3)
    ax_img.imshow(shown, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax_img.set_title("image")
    ax_map.imshow(shown, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax_map.imshow(heatmap.detach().float().cpu().numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1,
                  interpolation="bilinear")
    ax_map.set_title(title)
    for ax in (ax_img, ax_map):
        ax.set_axis_off()
    names = [str(t["class"]) for t in top][::-1]
    probs = [100 * float(t["probability"]) for t in top][::-1]
    ax_top.barh(range(len(names)), probs, color="tab:blue")
    ax_top.set_yticks(range(len(names)), names)
    ax_top.set_xlim(0, 100)
    ax_top.set_xlabel("probability (%)")
    ax_top.set_title(f"top {len(names)}")
    fig.tight_layout()
    fig.savefig(path)


def explain_files(checkpoint, inputs: Sequence[str], out_dir, method: str = "gradcam", layer: Optional[str] = None,
                  target: Optional[str] = None, top_k: int = 3, samples: int = 25, noise: float = 0.15,
                  device: str = "auto", backend: str = "auto", seed: int = 0) -> List[Dict[str, Any]]:
    """`fastconv explain`: a PNG per image file (image, heatmap overlay, top-k classes) in out_dir."""
    from . import backends
    from .data import preprocess_image
    from .training.engine import DTYPES, ConfigError, image_files, load_for_inference

    if top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {top_k}")
    previous = backends.get_backend()
    try:
        model, ckpt, cfg, dev, label = load_for_inference(checkpoint, device, backend)
        info, classes = ckpt["data"], [str(c) for c in ckpt["classes"]]
        if target is not None and str(target) not in classes:
            raise ConfigError(f"--target {target!r} is not a class of this checkpoint; its classes are {classes}")
        t = None if target is None else classes.index(str(target))
        files = image_files(list(inputs))
        c = info["in_channels"]
        mean = torch.tensor(info["mean"]).reshape(c, 1, 1)
        std = torch.tensor(info["std"]).reshape(c, 1, 1)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        gen = torch.Generator().manual_seed(seed)
        results, used = [], set()
        for f in files:
            x = preprocess_image(f, info).unsqueeze(0).to(dev, DTYPES[cfg.dtype])
            try:
                ex = explain(model, x, method, t, layer, samples, noise, gen)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            probs = ex.probs[0].cpu()
            k = min(top_k, len(classes))
            top_p, top_i = probs.topk(k)
            top = [{"class": classes[j], "probability": float(p)} for p, j in zip(top_p.tolist(), top_i.tolist())]
            png = out / f"{f.stem}.{method}.png"
            i = 1
            while png in used:  # same file name in two folders
                png, i = out / f"{f.stem}-{i}.{method}.png", i + 1
            used.add(png)
            tname = classes[int(ex.target[0])]
            render_png(png, preprocess_image(f, info) * std + mean, ex.maps[0],
                       top, f"{method}{' @ ' + ex.layer if ex.layer else ''}, class {tname}")
            results.append({"file": str(f), "png": str(png), "method": method, "layer": ex.layer,
                            "explained_class": tname, "top": top, "backend": label})
    finally:
        backends.set_backend(previous)
    return results

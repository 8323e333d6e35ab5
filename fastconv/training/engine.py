"""The training loop behind `fastconv train`, and evaluation / prediction on a checkpoint.

Exactness of --resume: the shuffling of epoch e depends only on (seed, e) (DistributedSampler's
rule, also used for a single process), the checkpoint holds the model, optimizer, LR schedule, grad
scaler, completed epochs and the RNG states (torch, numpy, python, CUDA, the DataLoader's generator),
and a resumed run rebuilds the model from the same seed before loading them. So a run resumed after
epoch k performs exactly the arithmetic of the uninterrupted run from epoch k on.

Data parallelism: --batch-size is the global batch; each of the W processes gets batch/W samples of
it (DistributedSampler interleaves the epoch's permutation, so the union of the W shards of step i
is the single-process batch i) and DDP averages the gradients: the same update as one process with
the whole batch, up to rounding (BatchNorm statistics are per process, as usual with DDP).
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import sys
import time
from argparse import Namespace
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint as ckpt_io
from . import distributed as dist_util
from . import report
from ..data.augment import augment_train_split
from .arch import arch_options


class ConfigError(ValueError):
    """A command-line choice that cannot work here; the message says why and what to do instead."""


FASTCONV_KERNEL_BACKENDS = ("cpu", "cuda", "triton", "reference")
AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
DTYPES = {"float32": torch.float32, "float64": torch.float64}


# ----------------------------------------------------------------------------------------------------
# Device, backend, precision


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    name = (name or "auto").strip().lower()
    if name == "auto":
        name = "cuda" if _cuda_usable() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"--device {name!r}: {exc}; expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA is not available (torch {torch.__version__}, "
                              f"{'no CUDA build' if torch.version.cuda is None else 'no usable GPU'}); "
                              f"use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
    elif device.type != "cpu":
        raise ConfigError(f"--device {name}: only cpu and cuda devices are supported")
    return device


def _cuda_usable() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        torch.zeros(1, device="cuda")
        return True
    except RuntimeError:
        return False


def select_backend(name: str, device: torch.device) -> Tuple[str, str]:
    """(layers, label): layers 'fastconv' or 'torch' for fastconv.models; label names what computes
    the convolutions. For a fastconv kernel backend, selects it process-wide (fastconv.set_backend)."""
    from .. import backends

    name = (name or "auto").strip().lower()
    if name == "torch":
        return "torch", "torch"
    if name == "auto":  # fastconv layers; the registry's own choice (FASTCONV_BACKEND or auto)
        return "fastconv", backends.resolve(device).name
    registry = backends.registered()
    if name not in registry:
        raise ConfigError(f"--backend {name}: the {name!r} backend is not available in this build of fastconv "
                          f"(built: {', '.join(sorted(registry))}); use --backend cpu for fastconv's C++ "
                          f"kernels or --backend torch for torch.nn layers")
    backend = registry[name]
    ok, why = backend.availability()
    if not ok:
        raise ConfigError(f"--backend {name}: not available: {why}")
    if not backend.serves(device):
        raise ConfigError(f"--backend {name} runs on {'/'.join(backend.device_types)} tensors, but the device is "
                          f"{device}; choose another --device or --backend")
    backends.set_backend(name)
    return "fastconv", name


def amp_context(amp: str, layers: str, backend_label: str, device: torch.device, dtype: torch.dtype):
    """(autocast context factory, GradScaler or None). fastconv's custom ops have autocast rules (their
    floating-point inputs are cast to the autocast dtype, as torch's conv2d's are; tests/test_autocast.py),
    so AMP runs on every backend: torch.nn layers and fastconv's (the cpu backend computes fp16/bf16
    convolutions in fp32 and rounds the result)."""
    amp = (amp or "none").lower()
    if amp == "none":
        return contextlib.nullcontext, None
    if amp not in AMP_DTYPES:
        raise ConfigError(f"--amp {amp}: expected none, fp16 or bf16")
    if dtype != torch.float32:
        raise ConfigError(f"--amp {amp} needs --dtype float32 (autocast lowers float32 ops), got {dtype}")
    amp_dtype = AMP_DTYPES[amp]
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    return (lambda: torch.autocast(device.type, dtype=amp_dtype)), scaler


# ----------------------------------------------------------------------------------------------------
# Model, optimizer, data


def model_kwargs(model: str, width: float) -> Dict[str, Any]:
    """--width (a multiplier of the model's standard channel counts) as constructor arguments, plus the
    training-time choices of the torchvision architectures."""
    from ..models import imagenet

    w = float(width)
    if w <= 0:
        raise ConfigError(f"--width must be positive, got {width}")
    if model in imagenet.SPECS:
        try:
            kwargs: Dict[str, Any] = imagenet.width_kwargs(model, w)
        except ValueError as exc:
            raise ConfigError(f"--width {width}: {exc}") from exc
        if model == "googlenet":
            # The loop trains on plain logits: no auxiliary heads (the layout of torchvision's weights).
            kwargs["aux_logits"] = False
        return kwargs
    if model == "lenet5":
        return {"channels": (max(1, round(6 * w)), max(1, round(16 * w)))}
    if model.startswith("resnet18"):
        return {"width": max(1, round(64 * w))}
    return {"width": w}


def build(cfg: Namespace, data_info: Dict, layers: str) -> nn.Module:
    from ..models import build_model

    try:
        return build_model(cfg.model, len(data_info["classes"]), data_info["in_channels"], data_info["image_size"],
                           backend=layers, **model_kwargs(cfg.model, cfg.width), **arch_options(cfg))
    except ConfigError:
        raise
    except ValueError as exc:  # the models' argument checks, e.g. an image size below the model's minimum
        raise ConfigError(f"--model {cfg.model}: {exc}") from exc


def make_optimizer(cfg: Namespace, params) -> torch.optim.Optimizer:
    opt = cfg.optimizer.lower()
    if opt == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.momentum > 0)
    if opt == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if opt == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ConfigError(f"--optimizer {cfg.optimizer}: expected sgd, adam or adamw")


def make_scheduler(cfg: Namespace, optimizer):
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, cfg.epochs))
    if cfg.lr_schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    raise ConfigError(f"--lr-schedule {cfg.lr_schedule}: expected cosine or constant")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def load_data(cfg: Namespace):
    from ..data import load_dataset
    from ..data.subsets import select

    data = load_dataset(cfg.dataset, cfg.data_dir, seed=cfg.seed, image_size=cfg.image_size,
                        train_subset=cfg.train_subset, test_subset=cfg.test_subset)
    # --classes, --train-per-class, --folds (getattr: checkpoints written before these options lack them)
    return select(data, getattr(cfg, "classes", None), getattr(cfg, "train_per_class", None),
                  getattr(cfg, "folds", None), getattr(cfg, "fold", None), cfg.seed)


def _loader(dataset, batch_size: int, sampler, workers: int, device: torch.device, generator=None):
    from ..data import collate_batch

    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                       collate_fn=collate_batch, pin_memory=device.type == "cuda",
                                       generator=generator, persistent_workers=False)


def _to_device(x: torch.Tensor, y: torch.Tensor, device, dtype, channels_last: bool):
    x = x.to(device=device, dtype=dtype, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


def _float_logits(logits: torch.Tensor) -> torch.Tensor:
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


# ----------------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate_model(model: nn.Module, loader, device, dtype, channels_last: bool, autocast, num_classes: int
                   ) -> Dict[str, Any]:
    was_training = model.training
    model.eval()
    loss_sum, targets, preds = 0.0, [], []
    for x, y in loader:
        x, y = _to_device(x, y, device, dtype, channels_last)
        with autocast():
            logits = _float_logits(model(x))
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        targets.append(y.cpu())
        preds.append(logits.argmax(1).cpu())
    model.train(was_training)
    t = torch.cat(targets) if targets else torch.zeros(0, dtype=torch.long)
    p = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)
    n = max(1, t.numel())
    conf = report.confusion_matrix(t, p, num_classes)
    return {"loss": loss_sum / n, "accuracy": float((t == p).sum()) / n, "correct": int((t == p).sum()),
            "total": int(t.numel()), "confusion": conf}


# ----------------------------------------------------------------------------------------------------
# Training


class _Log:
    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __call__(self, *lines: str) -> None:
        if self.enabled:
            for line in lines:
                print(line, flush=True)


def _default_out_dir(cfg: Namespace) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path.cwd() / "runs" / f"{cfg.model}-{cfg.dataset}-{stamp}"
    out, i = base, 1
    while out.exists():
        out, i = base.with_name(f"{base.name}-{i}"), i + 1
    return out


def _progress_enabled(cfg: Namespace, is_main: bool) -> bool:
    if not is_main or cfg.progress == "off":
        return False
    return cfg.progress == "on" or sys.stderr.isatty()


def train(cfg: Namespace) -> Dict[str, Any]:
    """Runs a whole training as configured (options: fastconv.cli.train; defaults: .config); returns the metrics.

    Under torch.distributed (WORLD_SIZE > 1 in the environment) every process calls this; rank 0
    returns the metrics, the others return {"rank": r}."""
    from .. import backends

    previous_backend = backends.get_backend()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(cfg.device, local_rank if dist_util.env_world_size() > 1 else 0)
    dinfo = dist_util.setup(device)
    try:
        result = _train(cfg, device, dinfo)
        # All ranks leave together: a rank that destroyed its gloo group and exited while rank 0 was still
        # writing the results aborted once in CI ("terminate called without an active exception", SIGABRT).
        dist_util.barrier(dinfo)
        return result
    finally:
        backends.set_backend(previous_backend)
        dist_util.teardown(dinfo)


def _train(cfg: Namespace, device: torch.device, dinfo: dist_util.DistInfo) -> Dict[str, Any]:
    log = _Log(dinfo.is_main)
    wall0 = time.perf_counter()
    resume = ckpt_io.load(cfg.resume) if cfg.resume else None
    layers, backend_label = select_backend(cfg.backend, device)
    dtype = DTYPES[cfg.dtype]
    autocast, scaler = amp_context(cfg.amp, layers, backend_label, device, dtype)
    if cfg.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {cfg.batch_size}")
    if cfg.batch_size % dinfo.world_size:
        raise ConfigError(f"--batch-size {cfg.batch_size} is the global batch; it must be divisible by the "
                          f"number of processes ({dinfo.world_size})")
    if cfg.epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {cfg.epochs}")
    for fmt in cfg.export or ():
        from ..export import check_format
        try:
            check_format(fmt)
        except ValueError as exc:
            raise ConfigError(f"--export {fmt}: {exc}") from None

    seed_everything(cfg.seed)
    data = load_data(cfg)
    augment_train_split(data, cfg.augment, cfg.seed)
    info = data.info()
    model = build(cfg, info, layers).to(device=device, dtype=dtype)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    from . import transfer

    if getattr(cfg, "init", None) and resume is None:
        transfer.load_pretrained(model, cfg.init, data.classes, log)
    optimizer = make_optimizer(cfg, transfer.param_groups(model, cfg))
    scheduler = make_scheduler(cfg, optimizer)
    loader_gen = torch.Generator().manual_seed(cfg.seed)

    start_epoch, history, train_seconds = 0, [], 0.0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        if scaler is not None and resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        start_epoch = int(resume["epoch"])
        history = list(resume.get("history", []))
        train_seconds = float(resume.get("train_seconds", 0.0))
        ckpt_io.set_rng_state(resume["rng"], loader_gen)

    out_dir = Path(cfg.out) if cfg.out else (Path(cfg.resume).parent if cfg.resume else _default_out_dir(cfg))
    if dinfo.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)

    step_model: nn.Module = model
    if dinfo.enabled:
        step_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        step_model = torch.compile(step_model)

    from torch.utils.data import DistributedSampler, SequentialSampler

    sampler = DistributedSampler(data.train, num_replicas=dinfo.world_size, rank=dinfo.rank, shuffle=True,
                                 seed=cfg.seed, drop_last=False)
    per_rank = cfg.batch_size // dinfo.world_size
    train_loader = _loader(data.train, per_rank, sampler, cfg.workers, device, loader_gen)
    test_loader = _loader(data.test, max(256, cfg.batch_size), SequentialSampler(data.test), cfg.workers, device)

    n_params = sum(p.numel() for p in model.parameters())
    log(f"fastconv train: {cfg.model} ({n_params:,} parameters, {layers} layers, backend {backend_label}) on "
        f"{cfg.dataset} ({len(data.train)} train / {len(data.test)} test images, {info['in_channels']}x"
        f"{info['image_size']}x{info['image_size']}, {len(data.classes)} classes)",
        f"  device {device}, {dinfo.world_size} process(es), {cfg.dtype}"
        f"{', AMP ' + cfg.amp if cfg.amp != 'none' else ''}{', channels_last' if cfg.channels_last else ''}"
        f"{', torch.compile' if cfg.compile else ''}; {cfg.optimizer} lr {cfg.lr} ({cfg.lr_schedule}), "
        f"batch {cfg.batch_size}, epochs {cfg.epochs}, seed {cfg.seed}; output {out_dir}")
    if resume is not None:
        log(f"  resumed from {cfg.resume} after epoch {start_epoch}")

    show_bar = _progress_enabled(cfg, dinfo.is_main)
    last_eval = None
    for epoch in range(start_epoch, cfg.epochs):
        stats = _train_epoch(step_model, train_loader, sampler, optimizer, scaler, autocast, device, dtype, cfg,
                             epoch, dinfo, show_bar)
        train_seconds += stats["seconds"]
        scheduler.step()
        entry = {"epoch": epoch + 1, "train_loss": stats["loss"], "train_accuracy": stats["accuracy"],
                 "images_per_second": stats["images_per_second"], "epoch_seconds": stats["seconds"],
                 "lr": optimizer.param_groups[0]["lr"], "test_loss": None, "test_accuracy": None}
        evaluate_now = (epoch + 1 == cfg.epochs) or (cfg.eval_every > 0 and (epoch + 1) % cfg.eval_every == 0)
        if evaluate_now and dinfo.is_main:
            last_eval = evaluate_model(model, test_loader, device, dtype, cfg.channels_last, autocast,
                                       len(data.classes))
            entry.update(test_loss=last_eval["loss"], test_accuracy=last_eval["accuracy"])
        history.append(entry)
        test_part = (f"  test loss {entry['test_loss']:.4f} acc {100 * entry['test_accuracy']:.2f}%"
                     if entry["test_accuracy"] is not None else "")
        log(f"epoch {epoch + 1:>3}/{cfg.epochs}  train loss {stats['loss']:.4f} acc {100 * stats['accuracy']:.2f}%"
            f"{test_part}  {stats['images_per_second']:,.0f} img/s  {stats['seconds']:.2f} s")
        if dinfo.is_main:
            payload = _checkpoint_payload(cfg, model, optimizer, scheduler, scaler, epoch + 1, history,
                                          train_seconds, info, loader_gen, backend_label)
            ckpt_io.save(out_dir / "checkpoint.pt", payload)
            if cfg.save_every and (epoch + 1) % cfg.save_every == 0:
                ckpt_io.save(out_dir / f"checkpoint_epoch{epoch + 1}.pt", payload)
        dist_util.barrier(dinfo)

    if not dinfo.is_main:
        dist_util.barrier(dinfo)
        return {"rank": dinfo.rank}
    if last_eval is None:  # resumed from a finished run: evaluate what was loaded
        last_eval = evaluate_model(model, test_loader, device, dtype, cfg.channels_last, autocast, len(data.classes))
    result = _finish(cfg, data, info, model, last_eval, history, train_seconds, time.perf_counter() - wall0,
                     out_dir, device, dinfo, layers, backend_label, n_params, log)
    dist_util.barrier(dinfo)
    return result


def _train_epoch(model, loader, sampler, optimizer, scaler, autocast, device, dtype, cfg, epoch, dinfo, show_bar):
    model.train()
    sampler.set_epoch(epoch)
    getattr(loader.dataset, "set_epoch", lambda e: None)(epoch)  # augmentation draws per (seed, epoch, sample)
    bar = None
    if show_bar:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(loader), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False,
                   dynamic_ncols=True, file=sys.stderr)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    t0 = time.perf_counter()
    for i, (x, y) in enumerate(loader):
        x, y = _to_device(x, y, device, dtype, cfg.channels_last)
        with autocast():
            logits = _float_logits(model(x))
        loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        n = y.shape[0]
        loss_sum += loss.detach().double() * n
        correct += (logits.detach().argmax(1) == y).sum()
        count += n
        if bar is not None:
            bar.update(1)
            if i % 10 == 0 or i + 1 == len(loader):
                elapsed = max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(loss=f"{loss_sum.item() / count:.4f}", acc=f"{100 * correct.item() / count:.1f}%",
                                img_s=f"{count * dinfo.world_size / elapsed:,.0f}", refresh=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    total_loss, total_correct, total = dist_util.all_reduce_sum([loss_sum.item(), float(correct.item()), count],
                                                                dinfo, device)
    total = max(total, 1)
    return {"loss": total_loss / total, "accuracy": total_correct / total, "seconds": seconds,
            "images_per_second": total / max(seconds, 1e-9)}


def _checkpoint_payload(cfg, model, optimizer, scheduler, scaler, epoch, history, train_seconds, info,
                        loader_gen, backend_label) -> Dict[str, Any]:
    from ..version import __version__

    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch,
        "rng": ckpt_io.rng_state(loader_gen),
        "args": dict(vars(cfg)),
        "data": info,
        "classes": list(info["classes"]),
        "history": history,
        "train_seconds": train_seconds,
        "backend": backend_label,
        "fastconv_version": __version__,
        "torch_version": str(torch.__version__),
    }


def _finish(cfg, data, info, model, ev, history, train_seconds, wall_seconds, out_dir, device, dinfo, layers,
            backend_label, n_params, log) -> Dict[str, Any]:
    from ..version import __version__

    classes = list(data.classes)
    conf = ev["confusion"]
    per_class = report.per_class_accuracy(conf)
    last = history[-1] if history else {}
    metrics = {
        "test_accuracy": ev["accuracy"],
        "test_loss": ev["loss"],
        "test_correct": ev["correct"],
        "test_total": ev["total"],
        "per_class_accuracy": dict(zip(classes, per_class)),
        "confusion_matrix": conf.tolist(),
        "classes": classes,
        "train_seconds": train_seconds,
        "wall_seconds": wall_seconds,
        "epochs": cfg.epochs,
        "final_train_loss": last.get("train_loss"),
        "final_train_accuracy": last.get("train_accuracy"),
        "images_per_second": last.get("images_per_second"),
        "model": cfg.model,
        "dataset": cfg.dataset,
        "layers": layers,
        "backend": backend_label,
        "device": str(device),
        "world_size": dinfo.world_size,
        "num_parameters": n_params,
        "history": history,
        "args": dict(vars(cfg)),
        "fastconv_version": __version__,
        "torch_version": str(torch.__version__),
        "checkpoint": str(out_dir / "checkpoint.pt"),
    }
    exported = _export_model(cfg, data, model, device, _dtype_of(model), out_dir)
    if exported:
        metrics["exports"] = exported
    report.write_json(out_dir / "metrics.json", metrics)
    plot = out_dir / "curves.png"
    try:
        report.plot_curves(plot, history, f"{cfg.model} on {cfg.dataset} ({backend_label})")
        metrics["plot"] = str(plot)
    except ImportError:
        log("  (matplotlib is not installed: no plot; pip install matplotlib)")
    log("", f"test accuracy: {100 * ev['accuracy']:.2f}% ({ev['correct']}/{ev['total']})  test loss {ev['loss']:.4f}",
        f"training time: {train_seconds:.1f} s ({cfg.epochs} epochs; {wall_seconds:.1f} s in all, with data "
        f"loading and evaluation)", "per-class accuracy:", *report.format_per_class(classes, conf),
        *report.format_confusion(classes, conf),
        f"wrote {out_dir / 'metrics.json'}, {plot.name}, checkpoint.pt"
        + "".join(f", {Path(p).name}" for p in exported.values()))
    return metrics


def _dtype_of(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def _export_model(cfg, data, model, device, dtype, out_dir) -> Dict[str, str]:
    """`--export FORMAT`: the trained model next to the checkpoint (fastconv.export.save_for_deployment),
    traced with one test image; {format: path}."""
    if not cfg.export:
        return {}
    from ..export import save_for_deployment

    x = data.test[0][0].unsqueeze(0).to(device=device, dtype=dtype)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return {fmt: save_for_deployment(model, x, fmt, out_dir) for fmt in dict.fromkeys(cfg.export)}


# ----------------------------------------------------------------------------------------------------
# evaluate / predict on a checkpoint


def load_for_inference(path, device_name: str, backend: str, data_dir=None):
    """(model in eval mode, checkpoint, cfg, device, autocast) rebuilt from a checkpoint."""
    ckpt = ckpt_io.load(path)
    cfg = Namespace(**ckpt["args"])
    if data_dir is not None:
        cfg.data_dir = data_dir
    device = pick_device(device_name)
    layers, label = select_backend(backend, device)
    dtype = DTYPES[cfg.dtype]
    model = build(cfg, ckpt["data"], layers).to(device=device, dtype=dtype)
    model.load_state_dict(ckpt["model"])
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.eval()
    return model, ckpt, cfg, device, label


def evaluate_checkpoint(path, device: str = "auto", backend: str = "auto", data_dir=None, batch_size: int = 256,
                        split: str = "test") -> Dict[str, Any]:
    from .. import backends

    previous = backends.get_backend()
    try:
        model, ckpt, cfg, dev, label = load_for_inference(path, device, backend, data_dir)
        data = load_data(cfg)
        ds = data.test if split == "test" else data.train
        loader = _loader(ds, batch_size, torch.utils.data.SequentialSampler(ds), 0, dev)
        ev = evaluate_model(model, loader, dev, DTYPES[cfg.dtype], cfg.channels_last, contextlib.nullcontext,
                            len(data.classes))
    finally:
        backends.set_backend(previous)
    classes = list(data.classes)
    return {"checkpoint": str(path), "split": split, "accuracy": ev["accuracy"], "loss": ev["loss"],
            "correct": ev["correct"], "total": ev["total"],
            "per_class_accuracy": dict(zip(classes, report.per_class_accuracy(ev["confusion"]))),
            "confusion_matrix": ev["confusion"].tolist(), "classes": classes, "backend": label,
            "device": str(dev), "_confusion": ev["confusion"]}


def image_files(paths: List[str]) -> List[Path]:
    from ..data import IMAGE_EXTENSIONS

    files: List[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise ConfigError(f"{str(p)!r} contains no image files ({', '.join(IMAGE_EXTENSIONS)})")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise ConfigError(f"{str(p)!r} does not exist (expected an image file or a folder of images)")
    return files


@torch.no_grad()
def predict_files(path, inputs: List[str], device: str = "auto", backend: str = "auto", top_k: int = 1,
                  batch_size: int = 64) -> List[Dict[str, Any]]:
    from .. import backends
    from ..data import preprocess_image

    previous = backends.get_backend()
    try:
        model, ckpt, cfg, dev, _ = load_for_inference(path, device, backend)
        info, classes = ckpt["data"], list(ckpt["classes"])
        files = image_files(inputs)
        k = max(1, min(top_k, len(classes)))
        out = []
        for i in range(0, len(files), batch_size):
            chunk = files[i:i + batch_size]
            x = torch.stack([preprocess_image(f, info) for f in chunk])
            x, _ = _to_device(x, torch.zeros(0), dev, DTYPES[cfg.dtype], cfg.channels_last)
            probs = torch.softmax(_float_logits(model(x)), dim=1).cpu()
            top_p, top_i = probs.topk(k, dim=1)
            for f, ps, idx in zip(chunk, top_p.tolist(), top_i.tolist()):
                out.append({"file": str(f), "class": classes[idx[0]], "probability": ps[0],
                            "top": [{"class": classes[j], "probability": p} for j, p in zip(idx, ps)]})
    finally:
        backends.set_backend(previous)
    return out


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))

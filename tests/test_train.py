"""`fastconv train / evaluate / predict` end to end on tiny data: outputs, exact --resume, the CIFAR-10
and image-folder loaders on synthetic data written here, and the errors a user can run into."""
from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")

from fastconv.cli import main  # noqa: E402
from fastconv.data import DatasetError, load_dataset, preprocess_image  # noqa: E402
from fastconv.cli.train import run_train  # noqa: E402

TINY = ["--train-subset", "160", "--test-subset", "80", "--batch-size", "32", "--progress", "off"]


def _weights(path: Path):
    return torch.load(path, weights_only=True)["model"]


def test_train_default_command_outputs(backend, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--backend", backend, "--epochs", "2", "--out", str(out), *TINY]) == 0
    text = capsys.readouterr().out
    assert "test accuracy:" in text and "training time:" in text and "confusion matrix" in text
    assert "epoch   2/2" in text and "img/s" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert metrics["test_total"] == 80 and metrics["model"] == "lenet5" and metrics["backend"] == backend
    assert len(metrics["history"]) == 2 and len(metrics["confusion_matrix"]) == 10
    assert set(metrics["per_class_accuracy"]) == {str(d) for d in range(10)}
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["classes"] == [str(d) for d in range(10)]
    assert {"model", "optimizer", "scheduler", "rng", "args"} <= set(ckpt)

    # evaluate reproduces the final test accuracy; predict runs on image files.
    assert main(["evaluate", str(out / "checkpoint.pt"), "--backend", backend, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert res["confusion_matrix"] == metrics["confusion_matrix"]


def test_default_output_directory(backend, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_train(["--backend", backend, "--epochs", "1", *TINY])
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("lenet5-digits-")
    assert {"metrics.json", "curves.png", "checkpoint.pt"} <= {p.name for p in runs[0].iterdir()}


def test_resume_is_exact(backend, tmp_path):
    """Stopping after epoch 1 and resuming gives bit-for-bit the weights of an uninterrupted run."""
    args = ["--backend", backend, "--epochs", "3", "--save-every", "1", *TINY]
    full = run_train([*args, "--out", str(tmp_path / "full")])
    resumed = run_train(["--resume", str(tmp_path / "full" / "checkpoint_epoch1.pt"), "--backend", backend,
                         "--progress", "off", "--out", str(tmp_path / "resumed")])
    a, b = _weights(tmp_path / "full" / "checkpoint.pt"), _weights(tmp_path / "resumed" / "checkpoint.pt")
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in full["history"]]
    assert resumed["test_accuracy"] == full["test_accuracy"]
    # The resumed run took its settings (epochs, batch, subsets) from the checkpoint.
    assert resumed["args"]["epochs"] == 3 and resumed["args"]["train_subset"] == 160


def test_torch_layers_and_amp(tmp_path):
    m = run_train(["--backend", "torch", "--amp", "bf16", "--epochs", "1", "--out", str(tmp_path / "a"), *TINY])
    assert m["layers"] == "torch" and m["args"]["amp"] == "bf16"


def test_channels_last_float64_adam(backend, tmp_path):
    m = run_train(["--backend", backend, "--channels-last", "--dtype", "float64", "--optimizer", "adam",
                   "--epochs", "1", "--model", "vgg_small", "--width", "0.25", "--out", str(tmp_path / "a"), *TINY])
    assert m["args"]["channels_last"] and m["args"]["lr"] == 1e-3


@pytest.mark.parametrize("argv,message", [
    (["--backend", "cuda"], "--backend cuda: not available: "),
    (["--backend", "triton"], "--backend triton: not available: "),
    (["--backend", "cpu", "--amp", "fp16", "--dtype", "float64"], "--amp fp16 needs --dtype float32"),
    (["--dataset", "cifar10"], "no data directory given"),
    (["--dataset", "cifar10", "--data-dir", "/nonexistent/cifar"], "data_batch_1 ... data_batch_5, test_batch"),
    (["--dataset", "folder", "--data-dir", "/nonexistent/images"], "one sub-folder per class"),
    (["--resume", "/nonexistent/checkpoint.pt"], "does not exist"),
    (["--batch-size", "0"], "at least 1"),
])
def test_errors_are_clear(tmp_path, capsys, argv, message):
    argv = [a.replace("/nonexistent", str(tmp_path / "nonexistent")) for a in argv]
    assert main(["train", "--epochs", "1", "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastconv train: error:") and message in err, err


def test_help_documents_amp(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "autocast to float16/bfloat16 on any backend" in text and "--resume" in text


# ----------------------------------------------------------------------------------------------------
# CIFAR-10 python batches, synthetic


def _write_cifar(root: Path, per_batch: int = 8, test: int = 16) -> None:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)

    def batch(n, i):
        return {b"batch_label": f"batch {i}".encode(), b"labels": [int(v) for v in rng.integers(0, 10, n)],
                b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                b"filenames": [f"{i}_{j}.png".encode() for j in range(n)]}

    for i in range(1, 6):
        (root / f"data_batch_{i}").write_bytes(pickle.dumps(batch(per_batch, i)))
    (root / "test_batch").write_bytes(pickle.dumps(batch(test, 0)))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": names, b"num_vis": 3072}))


def test_cifar10_loader_and_training(backend, tmp_path):
    _write_cifar(tmp_path / "cifar-10-batches-py")
    splits = load_dataset("cifar10", tmp_path)  # the parent of cifar-10-batches-py works too
    assert len(splits.train) == 40 and len(splits.test) == 16 and splits.classes[1] == "automobile"
    x, y = splits.train.__getitems__([0, 1, 2])
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    # Rows are R, G, B planes of 32x32, normalized with the training set's per-channel statistics.
    raw = pickle.loads((tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes())[b"data"][0]
    expected = (torch.from_numpy(raw.reshape(3, 32, 32)).float() / 255 - torch.tensor(splits.mean).view(3, 1, 1)) \
        / torch.tensor(splits.std).view(3, 1, 1)
    torch.testing.assert_close(x[0], expected)
    m = run_train(["--dataset", "cifar10", "--data-dir", str(tmp_path / "cifar-10-batches-py"), "--model", "lenet5",
                   "--backend", backend, "--epochs", "1", "--batch-size", "8", "--progress", "off",
                   "--out", str(tmp_path / "run")])
    assert m["test_total"] == 16 and m["classes"][0] == "airplane"


def test_cifar10_malformed(tmp_path):
    root = tmp_path / "c"
    _write_cifar(root)
    (root / "data_batch_2").write_bytes(pickle.dumps({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}))
    with pytest.raises(DatasetError, match=r"data_batch_2: 'data' is uint8 of shape \(4, 100\), expected uint8 of shape"):
        load_dataset("cifar10", root)
    (root / "data_batch_2").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="cannot read .*data_batch_2"):
        load_dataset("cifar10", root)
    (root / "test_batch").unlink()
    with pytest.raises(DatasetError, match="lacks test_batch"):
        load_dataset("cifar10", root)


# ----------------------------------------------------------------------------------------------------
# Image folders, synthetic PNGs


def _write_folder(root: Path, classes=("circle", "square", "stripes"), per_class: int = 6, size: int = 12,
                  mode: str = "RGB") -> None:
    rng = np.random.default_rng(1)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            a = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            a[..., k] += 150  # each class has its own dominant colour
            Image.fromarray(a).convert(mode).save(root / name / f"{i}.png")


def test_image_folder_training_evaluate_predict(backend, tmp_path, capsys):
    data = tmp_path / "images"
    _write_folder(data)
    (data / "circle" / "notes.txt").write_text("ignored: not an image")
    splits = load_dataset("folder", data, image_size=16)
    assert splits.classes == ["circle", "square", "stripes"] and splits.in_channels == 3
    assert len(splits.train) + len(splits.test) == 18 and len(splits.test) == 3  # 20% of each class, stratified
    x, y = splits.train.__getitems__([0, 1])
    assert x.shape == (2, 3, 16, 16)

    out = tmp_path / "run"
    assert main(["train", "--dataset", "folder", "--data-dir", str(data), "--model", "lenet5", "--image-size", "16",
                 "--backend", backend, "--epochs", "2", "--batch-size", "5", "--progress", "off",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["predict", str(out / "checkpoint.pt"), str(data / "square"), str(data / "circle" / "0.png"),
                 "--top-k", "2", "--backend", backend, "--json"]) == 0
    preds = json.loads(capsys.readouterr().out)
    assert len(preds) == 7 and preds[-1]["file"].endswith("0.png")
    assert all(p["class"] in splits.classes and len(p["top"]) == 2 for p in preds)
    assert main(["predict", str(out / "checkpoint.pt"), str(data / "circle" / "1.png"), "--backend", backend]) == 0
    assert capsys.readouterr().out.startswith(str(data / "circle" / "1.png") + ": ")
    assert main(["evaluate", str(out / "checkpoint.pt"), "--backend", backend]) == 0
    assert "test accuracy:" in capsys.readouterr().out


def test_image_folder_train_test_layout_and_greyscale(tmp_path):
    _write_folder(tmp_path / "d" / "train", mode="L", per_class=3)
    _write_folder(tmp_path / "d" / "test", mode="L", per_class=2)
    splits = load_dataset("folder", tmp_path / "d", image_size=8)
    assert splits.in_channels == 1 and len(splits.train) == 9 and len(splits.test) == 6


def test_image_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="has no class sub-folders"):
        load_dataset("folder", tmp_path / "empty")
    (tmp_path / "noimg" / "cat").mkdir(parents=True)
    (tmp_path / "noimg" / "cat" / "a.txt").write_text("x")
    with pytest.raises(DatasetError, match="has no image files"):
        load_dataset("folder", tmp_path / "noimg")
    _write_folder(tmp_path / "bad", per_class=2)
    (tmp_path / "bad" / "circle" / "broken.png").write_bytes(b"\x89PNG" + struct.pack(">I", 0))
    with pytest.raises(DatasetError, match="cannot read image .*broken.png"):
        ds = load_dataset("folder", tmp_path / "bad")
        [ds.train[i] for i in range(len(ds.train))] + [ds.test[i] for i in range(len(ds.test))]


def test_digits_predict_preprocessing_matches_training(tmp_path):
    """A digits image saved as a dark-on-light 8x8 PNG is preprocessed into the training tensor."""
    from sklearn.datasets import load_digits

    splits = load_dataset("digits")
    img = load_digits().images[0] / 16.0  # light ink on dark, as trained
    Image.fromarray(np.round(255 * (1 - img)).astype(np.uint8), mode="L").save(tmp_path / "d.png")
    x = preprocess_image(tmp_path / "d.png", splits.info())
    expected = (torch.from_numpy(img).float() - splits.mean[0]) / splits.std[0]
    torch.testing.assert_close(x[0], expected, atol=1 / 255 / splits.std[0] + 1e-6, rtol=0)

"""Transfer learning: `fastconv train --init CHECKPOINT_OR_STATE_DICT`, head replacement, the RGB stem on
greyscale images, --freeze-backbone, --finetune-lr, and the errors (fastconv.training.transfer)."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from fastconv.cli import main  # noqa: E402
from fastconv.cli.train import run_train  # noqa: E402
from fastconv.models import build_model  # noqa: E402
from fastconv.training import ConfigError  # noqa: E402
from fastconv.training.transfer import head_name, load_pretrained  # noqa: E402

TINY = ["--train-subset", "120", "--test-subset", "40", "--epochs", "1", "--progress", "off"]


def _model(ckpt_path):
    return torch.load(ckpt_path, weights_only=True)["model"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A checkpoint trained on digits 0-4 (1 epoch: the weights only have to be distinguishable)."""
    out = tmp_path_factory.mktemp("transfer") / "pre"
    run_train([*TINY, "--classes", "0,1,2,3,4", "--out", str(out)])
    return out / "checkpoint.pt"


@pytest.mark.parametrize("name, head", [("lenet5", "classifier.5"), ("tv_resnet18", "fc"), ("vgg11", "classifier.6"),
                                        ("mobilenet_v2", "classifier.1"), ("densenet121", "classifier")])
def test_head_is_the_last_linear(name, head):
    assert head_name(build_model(name, 10, 3, 32, backend="torch")) == head


def test_torchvision_state_dict_into_greyscale_model_with_other_classes(tmp_path):
    """torchvision's layout (tv_resnet18 has its module tree: keys fc.weight, layer1.0.conv1.weight, ...),
    1000 RGB classes -> 10 greyscale classes: every tensor but the head loads, the stem is summed over RGB."""
    src = build_model("tv_resnet18", 1000, 3, 32, backend="torch").state_dict()
    src = {k: v + 0.5 if v.is_floating_point() else v for k, v in src.items()}  # unlike a fresh init
    path = tmp_path / "resnet18-weights.pth"
    torch.save(src, path)
    model = build_model("tv_resnet18", 10, 1, 8)
    fresh_fc = model.fc.weight.detach().clone()
    lines = []
    info = load_pretrained(model, path, log=lines.append)
    assert info["replaced"] == ["fc.weight", "fc.bias"] and info["source"] == "state_dict"
    assert "classifier head 'fc' replaced (1000 -> 10 classes" in lines[0]
    got = model.state_dict()
    torch.testing.assert_close(got["conv1.weight"], src["conv1.weight"].sum(1, keepdim=True))
    for k in ("layer4.1.conv2.weight", "bn1.running_var", "layer2.0.downsample.1.bias"):
        torch.testing.assert_close(got[k], src[k])
    torch.testing.assert_close(got["fc.weight"], fresh_fc)


def test_init_from_checkpoint_replaces_head_for_other_classes(pretrained, tmp_path, capsys):
    pre = _model(pretrained)
    out = tmp_path / "ft"
    assert main(["train", *TINY, "--classes", "5,6,7,8,9", "--init", str(pretrained), "--epochs", "1",
                 "--lr", "1e-9", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "classifier head 'classifier.5' replaced (classes ['0', '1', '2', '3', '4'] -> ['5', '6', '7', '8', '9']" \
        in text
    ft = _model(out / "checkpoint.pt")
    # lr 1e-9: the backbone stays the pretrained one; the head is a fresh one, not the pretrained head
    torch.testing.assert_close(ft["features.0.weight"], pre["features.0.weight"], rtol=0, atol=1e-6)
    assert (ft["classifier.5.weight"] - pre["classifier.5.weight"]).abs().max() > 1e-3
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["classes"] == ["5", "6", "7", "8", "9"]


def test_freeze_backbone_trains_the_head_only(pretrained, tmp_path):
    out = tmp_path / "frozen"
    run_train([*TINY, "--classes", "5,6,7,8,9", "--init", str(pretrained), "--freeze-backbone", "--out", str(out)])
    pre, ft = _model(pretrained), _model(out / "checkpoint.pt")
    for k in ("features.0.weight", "features.2.bias", "classifier.1.weight", "classifier.3.bias"):
        assert torch.equal(ft[k], pre[k]), k
    assert not torch.equal(ft["classifier.5.bias"], pre["classifier.5.bias"])


def test_finetune_lr_is_the_backbones(pretrained, tmp_path, capsys):
    out = tmp_path / "lr"
    run_train([*TINY, "--classes", "0,1,2,3,4", "--init", str(pretrained), "--finetune-lr", "0.004", "--lr", "0.03",
               "--out", str(out)])
    groups = torch.load(out / "checkpoint.pt", weights_only=True)["optimizer"]["param_groups"]
    assert [g["initial_lr"] for g in groups] == [0.004, 0.03]
    assert [len(g["params"]) for g in groups] == [8, 2]  # 4 weights + 4 biases; the head's weight + bias
    # same classes as the checkpoint: the head is kept
    assert "loaded 10 tensors from" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--freeze-backbone"], "--freeze-backbone needs --init"),
    (["--finetune-lr", "0.01"], "--finetune-lr needs --init"),
    (["--init", "nope.pt"], "--init 'nope.pt' does not exist"),
    (["--init", "{pre}", "--model", "vgg_small"], "does not fit --model's parameters"),
    (["--init", "{pre}", "--freeze-backbone", "--finetune-lr", "0.1"], "exclude each other"),
    (["--init", "{pre}", "--finetune-lr", "0"], "--finetune-lr must be positive"),
    (["--init", "{junk}"], "is neither a fastconv checkpoint nor a state_dict"),
])
def test_init_errors(pretrained, tmp_path, capsys, extra, message):
    junk = tmp_path / "junk.pt"
    torch.save({"weights": [1, 2]}, junk)
    argv = [a.format(pre=pretrained, junk=junk) for a in extra]
    assert main(["train", *TINY, "--out", str(tmp_path / "x"), *argv]) == 2
    assert message in capsys.readouterr().err


def test_load_pretrained_rejects_other_architecture(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(build_model("lenet5", 10, 1, 8, backend="torch").state_dict(), path)
    with pytest.raises(ConfigError, match="does not fit --model's parameters"):
        load_pretrained(build_model("vgg_small", 10, 1, 8), path, log=lambda *_: None)

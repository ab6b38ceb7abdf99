"""The CNN reference (vitkit.cnn): the benchmarks' ResNet, unchanged; saved, loaded, trained and
evaluated as a ViT is; refused, in one line, by the commands that need a ViT."""

import json

import pytest
import torch
from conftest import TINY_ARGS, perturbed
from torch import nn
from torchvision.models.resnet import BasicBlock

import vitkit
from vitkit import ResNet, ResNetConfig, VisionTransformer, create_model
from vitkit.cli import main
from vitkit.cnn import count_params
from vitkit.errors import ConfigError
from vitkit.interop import detect_format


class BenchmarkResNet(nn.Module):
    """The independent reference: the ResNet as ``benchmarks/experiments/common.py`` defined it
    before it moved into the library (copied verbatim, the 1-channel stem included)."""

    def __init__(self, widths=(32, 64, 128), blocks=(1, 1, 1), num_classes=10):
        super().__init__()
        c = widths[0]
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True))
        layers = []
        for stage, (w, n) in enumerate(zip(widths, blocks, strict=True)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                down = None
                if stride != 1 or c != w:
                    down = nn.Sequential(nn.Conv2d(c, w, 1, stride, bias=False), nn.BatchNorm2d(w))
                layers.append(BasicBlock(c, w, stride, down))
                c = w
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.head(self.layers(self.stem(x)).mean(dim=(2, 3)))


def _with_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` with its weights moved off their initial values and BatchNorm running statistics
    that are not the initial zeros and ones (a few training-mode forwards), in eval mode."""
    perturbed(model, seed=seed)
    model.train()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, model.stem[0].in_channels, 28, 28, generator=g))
    return model.eval()


# ============================================================================ the model
@pytest.mark.parametrize("widths, blocks", [((32, 64, 128), (1, 1, 1)), ((8, 16, 32), (2, 1, 3))])
def test_the_library_resnet_is_the_benchmarks(widths, blocks):
    torch.manual_seed(0)
    old = BenchmarkResNet(widths, blocks)
    torch.manual_seed(0)
    new = ResNet(ResNetConfig(widths=widths, blocks=blocks))
    assert new.num_params() == sum(p.numel() for p in old.parameters()) == count_params(new.config)
    old_state, new_state = old.state_dict(), new.state_dict()
    assert list(new_state) == list(old_state)  # the same names: old weights load as they are
    assert all(torch.equal(old_state[k], new_state[k]) for k in old_state)  # the same seeded initialisation
    _with_statistics(old)
    new.load_state_dict(old.state_dict())
    new.eval()
    x = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(new(x), old(x), rtol=0, atol=0)


def test_the_preset_is_the_benchmarks_cnn_reference():
    model = create_model("resnet_fmnist")
    assert isinstance(model, ResNet)
    assert model.num_params() == 308_074  # the "params" of benchmarks/results/cnn_reference.jsonl
    assert model.config.flops() == 74_313_216  # and its "gflops_forward" (0.074313216)
    assert create_model("resnet_fmnist", in_channels=3, num_classes=4).head.out_features == 4
    with pytest.raises(ConfigError, match=r"unknown ResNetConfig field\(s\) \['patch_size'\]"):
        create_model("resnet_fmnist", patch_size=4)
    with pytest.raises(ConfigError, match="one width and one block count a stage"):
        ResNetConfig(widths=(8, 16), blocks=(1,))


def test_config_round_trips_through_json_with_its_marker():
    config = ResNetConfig(image_size=(28, 30), widths=(8, 16), blocks=(1, 2), num_classes=3, class_names=list("abc"))
    d = json.loads(json.dumps(config.to_dict()))
    assert d["architecture"] == "resnet"
    assert ResNetConfig.from_dict(d) == config
    assert "architecture" not in vitkit.ViTConfig().to_dict()


# ============================================================================ save and load
def test_save_then_load_gives_the_same_logits(tmp_path):
    torch.manual_seed(0)
    model = _with_statistics(create_model("resnet_fmnist", widths=(8, 16, 32), class_names=[str(i) for i in range(10)]))
    vitkit.save(model, tmp_path / "cnn")
    assert json.loads((tmp_path / "cnn" / "config.json").read_text())["architecture"] == "resnet"
    assert detect_format(tmp_path / "cnn") == "vitkit"  # not timm's folder, which also says "architecture"
    loaded = vitkit.load(tmp_path / "cnn")
    assert isinstance(loaded, ResNet) and loaded.config == model.config and not loaded.training
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert isinstance(create_model(str(tmp_path / "cnn")), ResNet)
    with pytest.raises(ConfigError, match="needs a Vision Transformer"):
        vitkit.load(tmp_path / "cnn", num_classes=3)


def test_a_vit_checkpoint_without_the_marker_stays_a_vit(tmp_path):
    vit = create_model("vit_tiny_28", width=32, depth=1, num_heads=2, mlp_dim=64)
    vitkit.save(vit, tmp_path / "vit")
    assert "architecture" not in json.loads((tmp_path / "vit" / "config.json").read_text())
    assert type(vitkit.load(tmp_path / "vit")) is VisionTransformer


# ============================================================================ through the CLI
FAST = ["--steps", "5", "--threads", "1", "--no-progress", "--batch-size", "32", "--precision", "fp32"]


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cnn") / "run"
    assert main(["train", "--data", "digits", "--model", "resnet_fmnist", "--out", str(out), *FAST]) == 0
    return out


@pytest.mark.slow
def test_train_a_cnn_then_evaluate_and_predict_it(cnn_run, tmp_path, capsys):
    record = json.loads((cnn_run / "train_config.json").read_text())
    assert record["model"]["architecture"] == "resnet" and record["train"]["model"] == "resnet_fmnist"
    summary = json.loads((cnn_run / "summary.json").read_text())
    assert summary["steps"] == 5 and summary["params"] == count_params(vitkit.load(cnn_run / "last").config)
    capsys.readouterr()
    assert main(["evaluate", str(cnn_run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == summary["eval_images"] and result["top1"] == pytest.approx(summary["accuracy"])

    from PIL import Image

    from vitkit.data import load_dataset

    ds = load_dataset("digits", "test")
    Image.fromarray(ds.images[0, 0].numpy(), "L").save(tmp_path / "digit.png")
    assert main(["predict", str(cnn_run), str(tmp_path / "digit.png"), "--json"]) == 0
    predictions = json.loads(capsys.readouterr().out)[0]["predictions"]
    assert len(predictions) == 3 and {p["class"] for p in predictions} <= set(ds.class_names)


@pytest.mark.slow
@pytest.mark.parametrize(
    "command, says",
    [
        (["explain", "{run}", "--data", "digits", "--out", "{tmp}/x"], "explain (attention maps"),
        (["convert", "{run}/last", "{tmp}/converted"], "convert needs a Vision Transformer"),
        (["export", "{run}/last", "{tmp}/model.onnx"], "export (ONNX) needs a Vision Transformer"),
        (["evaluate", "{run}", "--onnx"], "evaluate --onnx needs a Vision Transformer"),
        (["probe", "{run}"], "probe (a ViT's pooled representation)"),
        (["serve", "{run}", "--port", "18765"], "serve (attention with every answer)"),
        (["train", "--data", "digits", "--init", "{run}", "--out", "{tmp}/ft", *FAST], "--init (fine-tuning"),
    ],
    ids=["explain", "convert", "export", "evaluate-onnx", "probe", "serve", "init"],
)
def test_vit_only_commands_refuse_a_cnn_in_one_line(cnn_run, tmp_path, capsys, command, says):
    capsys.readouterr()
    argv = [a.format(run=cnn_run, tmp=tmp_path) for a in command]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"vitkit {argv[0]}: error: ") and "holds a CNN" in err and says in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags, says",
    [(["--freeze", "embed"], "--freeze embed"), (["--layer-decay", "0.7"], "--layer-decay 0.7")],
    ids=["freeze", "layer-decay"],
)
def test_vit_only_training_options_are_refused_for_a_cnn(tmp_path, capsys, flags, says):
    argv = ["train", "--data", "digits", "--model", "resnet_fmnist", "--out", str(tmp_path / "r"), *FAST, *flags]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("vitkit train: error: ") and says in err and "ResNet" in err


def test_presets_lists_the_cnn(capsys):
    assert main(["presets"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("resnet_fmnist"))
    assert "308,074" in row and "CNN" in row
    assert main(["presets", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["architecture"] for r in rows if r["name"] == "resnet_fmnist"] == ["resnet"]


def test_a_vit_set_override_is_refused_for_the_cnn(tmp_path, capsys):
    argv = ["train", "--data", "digits", "--model", "resnet_fmnist", "--out", str(tmp_path / "r"), *FAST]
    assert main([*argv, *TINY_ARGS[:2]]) == 1
    assert "unknown ResNetConfig field(s) ['width']" in capsys.readouterr().err

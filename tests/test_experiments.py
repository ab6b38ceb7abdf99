"""Each experiment script of docs/experiments.md, in its tiny configuration: the scripts keep working."""

import json
import sys
from pathlib import Path

import pytest

from vitkit.data import DataError, candidate_dirs, find_dataset_dir

EXPERIMENTS = Path(__file__).resolve().parents[1] / "benchmarks" / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import attention_distance  # noqa: E402
import common  # noqa: E402
import data_efficiency  # noqa: E402
import patch_size  # noqa: E402
import pooling  # noqa: E402
import posemb  # noqa: E402
import registers  # noqa: E402
import transfer  # noqa: E402


def _have_fashion_mnist() -> bool:
    try:
        find_dataset_dir("fashion-mnist", download=False)
    except DataError:
        return False
    return True


pytestmark = [
    pytest.mark.slow,  # these tests train models
    pytest.mark.skipif(
        not _have_fashion_mnist(), reason=f"Fashion-MNIST not found in {candidate_dirs('fashion-mnist')}"
    ),
]


def _runs(path: Path) -> dict:
    return json.loads(path.read_text())["runs"]


def test_posemb_runs_every_variant_and_resumes(tmp_path):
    posemb.main(["--tiny", "--seeds", "2", "--out", str(tmp_path)])
    runs = _runs(tmp_path / "posemb.json")
    assert sorted(runs) == sorted(f"{p}/seed{s}" for p in posemb.VARIANTS.values() for s in (0, 1))
    assert all(0.0 <= r["test_top1"] <= 1.0 and r["steps"] == 3 for r in runs.values())
    assert (tmp_path / "posemb.png").stat().st_size > 10_000
    posemb.main(["--tiny", "--seeds", "2", "--out", str(tmp_path)])  # everything is done: nothing retrains
    assert _runs(tmp_path / "posemb.json") == runs


def test_pooling_tries_every_learning_rate_for_both_poolings(tmp_path):
    pooling.main(["--tiny", "--out", str(tmp_path)])
    runs = _runs(tmp_path / "pooling.json")
    assert len(runs) == 2 * len(pooling.LRS) and {r["pool"] for r in runs.values()} == {"cls", "gap"}
    assert (tmp_path / "pooling.png").is_file()


def test_patch_size_records_tokens_and_compute(tmp_path):
    patch_size.main(["--tiny", "--out", str(tmp_path)])
    runs = _runs(tmp_path / "patch_size.json")
    assert {r["tokens"] for r in runs.values()} == {16, 49, 196}
    # 4x the tokens: more than 3x the forward FLOPs at the same width and depth
    g = {r["patch_size"]: r["gflops_forward"] for r in runs.values()}
    assert g[2] > 3 * g[4] > 9 * g[7]
    assert (tmp_path / "patch_size.png").is_file()


@pytest.mark.parametrize("budget, name", [("data", "data_efficiency_data"), ("steps", "data_efficiency")])
def test_data_efficiency_trains_both_models_on_each_size(tmp_path, budget, name):
    data_efficiency.main(["--tiny", "--seeds", "1", "--budget", budget, "--out", str(tmp_path)])
    runs = _runs(tmp_path / f"{name}.json")
    assert {(r["model"], r["train_images"]) for r in runs.values()} == {
        (m, n) for m in ("ViT", "ResNet") for n in (64, 256)
    }
    assert (tmp_path / "data_efficiency.png").is_file()


def test_data_budget_grows_with_the_data():
    steps = {n: common.steps_for_data(n) for n in (1000, 5000, 20000, 60000)}
    assert steps[1000] == steps[5000] == 1500  # the floor: 192 and 38 epochs
    assert steps[60000] == 3750  # 8 epochs of 128-image steps
    epochs = {n: s * 128 / n for n, s in steps.items()}
    assert epochs[1000] > epochs[5000] > epochs[20000] > epochs[60000]  # fewer passes over more data


def test_registers_trains_0_1_4_and_reports_sinks(tmp_path):
    registers.main(["--tiny", "--images", "16", "--out", str(tmp_path), "--models", str(tmp_path / "m")])
    runs = _runs(tmp_path / "registers.json")
    assert sorted(runs) == ["r0", "r1", "r4"] and [runs[k]["register_tokens"] for k in ("r0", "r1", "r4")] == [0, 1, 4]
    for r in runs.values():
        assert r["steps"] == 3 and r["images"] == 16 and len(r["max_patch_ratio"]) == 2
        assert r["verdict"].startswith(("no sinks", "sinks in")) and len(r["rollout"]) == registers.SHOWN
    assert runs["r4"]["params"] - runs["r0"]["params"] == 4 * 32 and "max_register_ratio" not in runs["r0"]
    assert (tmp_path / "registers.png").stat().st_size > 10_000


def test_attention_distance_per_layer_and_head(tmp_path):
    attention_distance.main(["--tiny", "--images", "16", "--out", str(tmp_path), "--models", str(tmp_path / "m")])
    runs = _runs(tmp_path / "attention_distance.json")
    assert set(runs) == {"n60000", "n1000", "n0"}
    for r in runs.values():
        layers, heads = len(r["distance"]), len(r["distance"][0])
        assert (layers, heads) == (common.TINY_VIT["depth"], common.TINY_VIT["num_heads"])
        # a distance is a weighted mean of patch distances: between 0 and the 7x7 grid's diagonal
        assert all(0 < d < 6 * 4 * 2**0.5 for row in r["distance"] for d in row)
    assert (tmp_path / "m" / "tiny-n1000" / "config.json").is_file()


def test_resnet_flops_equal_a_hand_count():
    """Counted by hand, per image: each conv is 2 x H x W x k^2 x C_in x C_out; the head 2 x 128 x 10."""

    def conv(hw, k, cin, cout):
        return 2 * hw * hw * k * k * cin * cout

    stem = conv(28, 3, 1, 32)
    stage1 = 2 * conv(28, 3, 32, 32)
    stage2 = conv(14, 3, 32, 64) + conv(14, 3, 64, 64) + conv(14, 1, 32, 64)
    stage3 = conv(7, 3, 64, 128) + conv(7, 3, 128, 128) + conv(7, 1, 64, 128)
    head = 2 * 128 * 10
    assert common.forward_flops(common.resnet()) == stem + stage1 + stage2 + stage3 + head


def test_transfer_pretrains_then_probes_fine_tunes_and_trains_from_scratch(tmp_path):
    transfer.main(["--tiny", "--out", str(tmp_path), "--models", str(tmp_path / "m")])
    runs = _runs(tmp_path / "transfer.json")
    parts = {r["part"] for r in runs.values()}
    assert parts == {"upstream", "probe", "few", "full", "digits", "digits-probe", "few56", "full56"}
    for arch in ("ViT", "ResNet"):
        assert (tmp_path / "m" / f"{arch}-n256.pt").is_file()
        # scratch and every upstream model see the same 10-shot images, each with its own grid
        few = [r for r in runs.values() if r["part"] == "few" and r["arch"] == arch and r["seed"] == 0]
        assert {r["init"] for r in few} == {"scratch", "n64", "n256"}
        assert {r["train_images"] for r in few} == {50}
        assert all(len(r["grid"]) == len(transfer.LRS) and r["lr"] in transfer.LRS for r in few)
    # 56 px runs keep the rate their 28 px twin chose
    assert runs["few56/ViT/n256/seed1"]["lr"] == runs["few/ViT/n256/seed1"]["lr"]
    probe = runs["probe/ViT/n256"]["summary"]
    assert [r["shots"] for r in probe] == [1, 5, 10]  # 25 is more than the tiny set's 12 per class
    assert (tmp_path / "transfer_upstream.png").is_file() and (tmp_path / "transfer_shots.png").is_file()
    before = dict(runs)
    transfer.main(["--tiny", "--out", str(tmp_path), "--models", str(tmp_path / "m")])  # resumes: nothing to do
    assert _runs(tmp_path / "transfer.json") == before

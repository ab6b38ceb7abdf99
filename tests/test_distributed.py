"""Training in several processes with torchrun (gloo on the CPU): the same run as one process,
a killed worker, resuming with another number of processes, and the errors."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_ARGS, write_digits
from conftest import tiny_config as shared_tiny_config

import vitkit
from vitkit import distributed
from vitkit import train as T
from vitkit.commands.train import torchrun_argv
from vitkit.errors import CheckpointError
from vitkit.train import RunFolder, TrainConfig, train

pytestmark = pytest.mark.slow  # these tests train models

# the digits set and a 16-token width-64 ViT, as in test_train.py: seconds per epoch on one core
COMMON = ["--data", "digits", "--batch-size", "32", "--lr", "2e-3", "--label-smoothing", "0", "--threads", "1"]
COMMON += ["--no-progress", "--precision", "fp32", *TINY_ARGS]


def vitkit_train(*args: str, nproc: int | None = None, timeout: float = 240, env: dict | None = None):
    """``python -m vitkit train ARGS`` (with ``--nproc``: handed over to torchrun) in a subprocess."""
    cmd = [sys.executable, "-m", "vitkit", "train", *COMMON, *args]
    if nproc is not None:
        cmd += ["--nproc", str(nproc), "--dist-timeout", "30"]
    full_env = os.environ | {"OMP_NUM_THREADS": "1"} | (env or {})
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)


def tiny_config(out, **kw) -> TrainConfig:
    return shared_tiny_config(out, precision="fp32", **kw)


def curve(run_dir: Path) -> list[tuple]:
    return [(r["epoch"], r["step"], r["train_loss"], r["val_loss"]) for r in T.read_metrics(run_dir)]


def test_world_of_one_and_the_batch_split():
    one = distributed.current()
    assert (one.rank, one.world_size, one.is_main, one.active) == (0, 1, True, False)
    x = torch.arange(8)
    assert torch.equal(one.shard(x), x) and one.check_batch(7) == 7
    assert torch.equal(distributed.World(rank=1, world_size=2).shard(x), torch.tensor([4, 5, 6, 7]))
    with pytest.raises(ValueError, match=r"--batch-size 32 .* 3 processes: use --batch-size 30 or 33"):
        distributed.World(rank=0, world_size=3).check_batch(32)
    assert distributed.backend_for("cpu") == "gloo" and distributed.backend_for("cuda:0") == "nccl"


def test_nproc_hands_the_same_command_to_torchrun():
    argv = torchrun_argv(["train", "--data", "digits", "--nproc", "2", "--epochs", "3", "--nproc=4"], 2)
    assert argv[1:] == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "--max-restarts=0",
        "-m",
        "vitkit",
        "train",
        "--data",
        "digits",
        "--epochs",
        "3",
    ]


def test_two_processes_give_the_loss_curve_and_weights_of_one(tmp_path):
    """Same global batch (32 = 2 x 16), seed, augmentation (random crops), accumulation (no_sync)."""
    kw = dict(epochs=3, accum_steps=2, crop_padding=1, warmup_epochs=1)
    one = tmp_path / "one"
    train(tiny_config(one, **kw), progress=False)
    two = tmp_path / "two"
    proc = vitkit_train("--epochs", "3", "--accum-steps", "2", "--crop-padding", "1", "--out", str(two), nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((two / "train_config.json").read_text())["processes"] == 2
    a, b = curve(one), curve(two)
    assert [r[:2] for r in a] == [r[:2] for r in b] == [(1, 22), (2, 44), (3, 66)]
    for ra, rb in zip(a, b, strict=True):
        assert rb[2] == pytest.approx(ra[2], rel=1e-4) and rb[3] == pytest.approx(ra[3], rel=1e-3)
    wa, wb = vitkit.load(one / "last").state_dict(), vitkit.load(two / "last").state_dict()
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst < 1e-2, f"final weights differ by {worst}"
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert sb["eval_images"] == sa["eval_images"] == 359  # the split evaluation covers the whole set once
    assert sb["accuracy"] == pytest.approx(sa["accuracy"], abs=3 / 359)


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def _rank(pid: int) -> int | None:
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    ranks = [e.split(b"=", 1)[1] for e in env if e.startswith(b"RANK=")]
    return int(ranks[0]) if ranks else None


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the workers through /proc")
def test_killed_worker_stops_the_job_and_the_run_resumes_with_two_and_one_process(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "vitkit", "train", *COMMON, "--epochs", "30", "--out", str(run)]
    cmd += ["--nproc", "2", "--dist-timeout", "20"]
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ)
    try:
        deadline = time.monotonic() + 120
        while RunFolder(run).find_checkpoint("last") is None:  # the first epoch's checkpoint
            assert job.poll() is None, job.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint after 120 s"
            time.sleep(0.1)
        workers = {_rank(p): p for p in _children(job.pid)}  # --nproc exec'd torchrun in this very process
        os.kill(workers[1], signal.SIGKILL)
        _, err = job.communicate(timeout=60)  # torchrun tears the group down: no hang
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode != 0
    # torchrun's report names the worker that died first and how
    assert "Root Cause" in err and "rank      : 1" in err and "SIGKILL" in err, err[-3000:]
    epochs_done = RunFolder.read_state(RunFolder(run).find_checkpoint("last")).epoch
    assert 1 <= epochs_done < 30
    assert len(T.read_metrics(run)) >= epochs_done

    # continue with 2 processes for one more epoch, then with 1 for another
    proc = vitkit_train("--resume", str(run), "--epochs", str(epochs_done + 1), nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = vitkit_train("--resume", str(run), "--epochs", str(epochs_done + 2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = T.read_metrics(run)
    assert [r["epoch"] for r in rows] == list(range(1, epochs_done + 3))
    assert [r["step"] for r in rows] == [44 * e for e in range(1, epochs_done + 3)]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_done"] == epochs_done + 2 and summary["processes"] == 1


def test_unreachable_rendezvous_is_a_clear_error_not_a_hang(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(WORLD_SIZE="2", RANK="1", LOCAL_RANK="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    env[distributed.TIMEOUT_ENV] = "2"
    start = time.monotonic()
    proc = vitkit_train("--epochs", "1", "--out", str(tmp_path / "run"), env=env, timeout=60)
    assert proc.returncode == 1
    assert f"rank 1 of 2 could not join the process group at 127.0.0.1:{port} within 2s" in proc.stderr
    assert "MASTER_ADDR" in proc.stderr and time.monotonic() - start < 45


def test_resume_with_a_checkpoint_of_another_model_says_so(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(run, epochs=1), progress=False)
    meta = json.loads((run / "train_config.json").read_text())
    meta["train"]["model_overrides"]["width"] = 32  # the config no longer describes the weights
    (run / "train_config.json").write_text(json.dumps(meta))
    with pytest.raises(
        CheckpointError, match=r"different model than .*train_config\.json describes \(.*shape mismatch"
    ):
        train(T.load_run_config(run), resume=True, progress=False)


def test_a_peer_that_dies_is_a_clear_error_for_the_survivor(tmp_path):
    """Without torchrun's agent (e.g. the other machine of a two-node job went down): rank 0's next
    collective fails, and it stops with one line that says what happened and how to go on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "vitkit", "train", *COMMON, "--epochs", "30", "--out", str(run)]
    base = os.environ | dict(WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    ranks = [
        subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=base | dict(RANK=str(r), LOCAL_RANK=str(r)))
        for r in (0, 1)
    ]
    try:
        deadline = time.monotonic() + 120
        while RunFolder(run).find_checkpoint("last") is None:
            assert ranks[0].poll() is None, ranks[0].communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint after 120 s"
            time.sleep(0.1)
        ranks[1].kill()
        _, err = ranks[0].communicate(timeout=60)
    finally:
        for p in ranks:
            if p.poll() is None:
                p.kill()
            p.communicate()
    assert ranks[0].returncode == 1
    assert "vitkit train: error: rank 0 of 2 lost the other processes" in err and "--resume RUN" in err, err[-3000:]


def test_two_processes_on_the_disk_cache_give_the_curve_of_one_in_memory(tmp_path):
    """The cache path under torchrun: one rank builds the cache while the other waits on its lock,
    both map it, and the run is the in-memory run of one process."""
    folder = write_digits(tmp_path / "digits", 24, classes=4, sizes=((8, 8), (12, 10)))
    kw = dict(data=str(folder), test_fraction=0.1, val_fraction=0.25, epochs=2, crop_padding=1, image_size=8)
    one = tmp_path / "one"
    train(tiny_config(one, data_mode="memory", **kw), progress=False)
    two = tmp_path / "two"
    args = ["--data", str(folder), "--test-fraction", "0.1", "--val-fraction", "0.25", "--epochs", "2"]
    args += ["--crop-padding", "1"]
    args += ["--image-size", "8", "--data-mode", "cache", "--out", str(two)]
    proc = vitkit_train(*args, nproc=2, env={"VITKIT_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((two / "train_config.json").read_text())["data"]["held"] == "cache"
    assert len(list((tmp_path / "cache" / "images").glob("digits-*/meta.json"))) == 1  # one cache for both
    a, b = curve(one), curve(two)
    assert [r[:2] for r in a] == [r[:2] for r in b] == [(1, 2), (2, 4)]  # 96 less 8 + 20 held out: 68, batch 32
    assert [r[2] for r in b] == pytest.approx([r[2] for r in a], rel=1e-4)
    assert b[-1][3] == pytest.approx(a[-1][3], rel=1e-3)  # validation, after the last epoch

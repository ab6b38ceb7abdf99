"""The disk cache (vitkit.data.cache), the data-mode rule and mid-epoch checkpoints, on real
images: scikit-learn's digits written as PNG files of several sizes."""

from __future__ import annotations

import errno
import json
import logging
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY, write_digits
from PIL import Image

import vitkit
from vitkit.data import cache as C
from vitkit.data import choose_mode, list_images, load_dataset
from vitkit.errors import DataError
from vitkit.preprocess import Preprocess
from vitkit.runtime import available_memory
from vitkit.train import TrainConfig, load_run_config, train
from vitkit.train import step as step_module

GEOMETRY = Preprocess((12, 12), channels=3, pad=2)  # gray digits made RGB, resized, bordered


def pixels(ds) -> torch.Tensor:  # noqa: ANN001
    return ds.images[torch.arange(len(ds))]


@pytest.fixture
def digits(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("VITKIT_CACHE", str(tmp_path / "cache"))
    return write_digits(tmp_path / "digits", 20, classes=4, sizes=((16, 16), (24, 20)))


def test_cache_yields_the_pixels_of_the_in_memory_path(digits):
    memory = load_dataset(str(digits), preprocess=GEOMETRY, mode="memory")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cached = load_dataset(str(digits), preprocess=GEOMETRY, mode="cache")  # decoded in this process
        assert torch.get_num_threads() == 2  # the training process keeps its threads
    finally:
        torch.set_num_threads(threads)
    assert cached.mapped and not memory.mapped
    assert torch.equal(pixels(cached), memory.images) and torch.equal(cached.labels, memory.labels)
    assert cached.class_names == memory.class_names and cached.mean_std() == memory.mean_std()
    # subsets and classes are views that read the same pixels
    a, b = cached.select_classes(["3", "1"]), memory.select_classes(["3", "1"])
    assert a.images.rows is not None and torch.equal(pixels(a), b.images) and torch.equal(a.labels, b.labels)
    # a second open maps the same file, building nothing
    (folder,) = [p for p in (digits.parent / "cache" / "images").iterdir() if p.is_dir()]
    mtime = (folder / C.IMAGES_NAME).stat().st_mtime_ns
    again = load_dataset(str(digits), preprocess=GEOMETRY, mode="cache")
    assert torch.equal(pixels(again), memory.images) and (folder / C.IMAGES_NAME).stat().st_mtime_ns == mtime


def test_parallel_decode_equals_decoding_in_process(digits, tmp_path):
    listing = list_images(digits)
    one = C.cached_image_folder(listing, GEOMETRY, cache_dir=tmp_path / "one", workers=1)
    C.PARALLEL_FROM, C.CHUNK = 0, 7  # force the worker pool, with chunks that do not divide the set
    try:
        two = C.cached_image_folder(listing, GEOMETRY, cache_dir=tmp_path / "two", workers=2)
    finally:
        C.PARALLEL_FROM, C.CHUNK = 512, 64
    assert torch.equal(pixels(one), pixels(two))


def test_a_changed_folder_is_rebuilt_never_stale(digits):
    first = pixels(load_dataset(str(digits), preprocess=GEOMETRY, mode="cache"))
    victim = sorted((digits / "2").iterdir())[0]
    Image.new("L", (16, 16), 255).save(victim)  # same name, new pixels (size and mtime change)
    second = load_dataset(str(digits), preprocess=GEOMETRY, mode="cache")
    index = list_images(digits).files.index(victim)
    assert (pixels(second)[index] == 255).sum() > 0 and not torch.equal(second.images[index], first[index])
    assert torch.equal(pixels(second), load_dataset(str(digits), preprocess=GEOMETRY, mode="memory").images)
    caches = [p for p in (digits.parent / "cache" / "images").iterdir() if p.is_dir()]
    assert len(caches) == 1, caches  # the stale one is removed once its replacement is whole
    other = Preprocess((10, 10), channels=1)  # another preparation of the same folder is kept
    load_dataset(str(digits), preprocess=other, mode="cache")
    load_dataset(str(digits), preprocess=GEOMETRY, mode="cache")
    assert len([p for p in (digits.parent / "cache" / "images").iterdir() if p.is_dir()]) == 2


KILL_MID_BUILD = textwrap.dedent(
    """
    import os, signal, sys
    from vitkit.data import cache as C, list_images
    from vitkit.preprocess import Preprocess

    decode, calls = C.decode_rows, []
    def dying(*args):
        calls.append(1)
        if len(calls) == 2:  # one chunk on disk, then killed
            os.kill(os.getpid(), signal.SIGKILL)
        return decode(*args)
    C.decode_rows, C.CHUNK = dying, 16
    C.cached_image_folder(list_images(sys.argv[1]), Preprocess((12, 12), 3, pad=2), cache_dir=sys.argv[2], workers=1)
    """
)


def test_a_killed_build_leaves_nothing_trusted_and_a_rerun_is_correct(digits, tmp_path):
    root = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILL_MID_BUILD, str(digits), str(root)], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert [p.name for p in root.iterdir() if p.is_dir() and ".tmp-" not in p.name] == []  # no cache, a leftover
    rebuilt = C.cached_image_folder(list_images(digits), GEOMETRY, cache_dir=root)
    assert torch.equal(pixels(rebuilt), load_dataset(str(digits), preprocess=GEOMETRY, mode="memory").images)
    assert not any(".tmp-" in p.name for p in root.iterdir())  # the leftover was cleared


def test_a_full_disk_is_one_line_and_nothing_half_built_is_kept(digits, tmp_path, monkeypatch):
    def full(path, rows, offset):  # noqa: ANN001, ARG001
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(C, "write_rows", full)
    root = tmp_path / "full"
    with pytest.raises(DataError, match="no space left.*--cache-dir.*nothing half-built") as e:
        C.cached_image_folder(list_images(digits), GEOMETRY, cache_dir=root)
    assert "\n" not in str(e.value)
    assert [p for p in root.iterdir() if p.is_dir()] == []
    monkeypatch.undo()
    assert len(C.cached_image_folder(list_images(digits), GEOMETRY, cache_dir=root)) == 80


def test_too_little_free_space_is_refused_before_writing(digits, tmp_path, monkeypatch):
    monkeypatch.setattr(C.shutil, "disk_usage", lambda _: SimpleNamespace(free=10))
    with pytest.raises(DataError, match="needs .* MB but .* free.*--cache-dir"):
        C.cached_image_folder(list_images(digits), GEOMETRY, cache_dir=tmp_path / "small")


def test_corrupt_image_named_or_skipped_and_remembered(digits, tmp_path):
    bad = digits / "1" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match="broken.png.*--skip-bad-images"):
        load_dataset(str(digits), preprocess=GEOMETRY, mode="cache")
    with pytest.warns(UserWarning, match="broken.png"):
        ds = load_dataset(str(digits), preprocess=GEOMETRY, mode="cache", skip_bad_images=True)
    assert len(ds) == 80 and ds.skipped == [str(bad)]
    with pytest.warns(UserWarning, match="broken.png"):
        memory = load_dataset(str(digits), preprocess=GEOMETRY, mode="memory", skip_bad_images=True)
    assert torch.equal(pixels(ds), memory.images)
    with pytest.raises(DataError, match="broken.png.*--skip-bad-images again"):  # the cache remembers
        load_dataset(str(digits), preprocess=GEOMETRY, mode="cache")


CONCURRENT = textwrap.dedent(
    """
    import logging, sys, torch
    from vitkit.data import cache as C, list_images
    from vitkit.preprocess import Preprocess
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    C.CHUNK = 8
    ds = C.cached_image_folder(list_images(sys.argv[1]), Preprocess((12, 12), 3, pad=2), cache_dir=sys.argv[2], workers=1)
    print(int(ds.images[torch.arange(len(ds))].sum()))
    """
)


def test_concurrent_processes_build_once_and_the_other_waits(digits, tmp_path):
    args = [sys.executable, "-c", CONCURRENT, str(digits), str(tmp_path / "shared")]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert outs[0][0] == outs[1][0]  # the same pixels
    logs = outs[0][1] + outs[1][1]
    assert logs.count("built in") == 1, logs  # one build; the other waited or found it done
    assert logs.count("reusing") == 1, logs  # the other waited for the lock (or came later) and mapped it


def test_the_data_mode_rule():
    assert choose_mode("auto", 100, available=400)[0] == "memory"
    mode, why = choose_mode("auto", 101, available=400)
    assert mode == "cache" and "1/4" in why
    assert choose_mode("memory", 10**12, available=1)[0] == "memory"  # --data-mode overrides
    with pytest.raises(DataError, match="vitkit shards"):
        choose_mode("stream", 1)
    with pytest.raises(DataError, match="held in memory"):
        load_dataset("digits", mode="cache")


def test_available_memory_reads_the_cgroup_limit(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 100 kB\nMemAvailable:   2000 kB\n")
    assert available_memory(meminfo, tmp_path / "no-cgroups") == 2000 * 1024
    own = Path("/proc/self/cgroup").read_text().splitlines()
    for line in own:
        _, controllers, path = line.split(":", 2)
        if controllers == "" or "memory" in controllers.split(","):
            sub = (tmp_path / "cg" / ("memory" if controllers else "") / path.lstrip("/")).resolve()
            sub.mkdir(parents=True, exist_ok=True)
            (sub / ("memory.max" if controllers == "" else "memory.limit_in_bytes")).write_text("1048576\n")
            assert available_memory(meminfo, tmp_path / "cg") == 1048576
            return
    pytest.skip("this process has no memory cgroup")


def test_mid_epoch_resume_on_the_cache_path_is_bit_exact(digits, tmp_path, monkeypatch):
    """--checkpoint-every writes last/ mid-epoch; a run killed after it and resumed ends with the
    weights of the run that was never interrupted."""
    kw = dict(
        data=str(digits),
        data_mode="cache",
        image_size=12,
        model="vit_tiny_28",
        model_overrides=TINY | dict(image_size=12, patch_size=4, drop_path=0.1),
        test_fraction=0.1,
        val_fraction=0.1,
        batch_size=10,
        epochs=2,
        lr=2e-3,
        threads=1,
        ema_decay=0.9,
        crop_scale=0.3,
        crop_fraction=0.75,  # kept at 16 px, cropped to 12, evaluated on the centre 12 of 16
        auto_augment="randaugment",
        randaugment_ops=1,
        checkpoint_every=2,
    )
    reference = train(TrainConfig(**kw, out=str(tmp_path / "reference")), progress=False)
    assert reference.steps == 12  # 80 images less 2 + 1 of each class held out: 68, 6 steps an epoch

    calls, real_call = [], step_module.TrainStep.__call__

    def interrupted(self, batches):  # noqa: ANN001, ANN202
        calls.append(1)
        if len(calls) == 10:  # the 10th step: after the mid-epoch checkpoint of step 8
            raise KeyboardInterrupt
        return real_call(self, batches)

    monkeypatch.setattr(step_module.TrainStep, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**kw, out=str(tmp_path / "killed")), progress=False)
    monkeypatch.undo()
    state = torch.load(tmp_path / "killed" / "last" / "training_state.pt", weights_only=True)
    assert (state["epoch"], state["epoch_step"], state["step"]) == (1, 2, 8)
    resumed = train(load_run_config(tmp_path / "killed"), resume=True, progress=False)
    assert resumed.steps == 12 and resumed.accuracy == reference.accuracy
    a, b = vitkit.load(tmp_path / "killed" / "last"), vitkit.load(tmp_path / "reference" / "last")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    record = json.loads((tmp_path / "killed" / "train_config.json").read_text())
    assert record["train"]["data_mode"] == "cache" and record["data"]["held"] == "cache"
    assert record["preprocess"]["image_size"] == [12, 12] and record["preprocess"]["fit"] == "crop"
    (meta,) = (digits.parent / "cache" / "images").glob("digits-*/meta.json")
    assert json.loads(meta.read_text())["shape"] == [80, 1, 16, 16]  # the (gray) training images, kept larger


def test_log_says_which_path_ran(digits, caplog):
    with caplog.at_level(logging.INFO):
        load_dataset(str(digits), preprocess=GEOMETRY)
    assert "in memory" in caplog.text and "MB decoded" in caplog.text

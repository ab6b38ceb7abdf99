"""WebDataset shards (vitkit.data.shards), streaming batches from them (vitkit.data.stream) and
``vitkit shards``, on real images: scikit-learn's digits written as PNG and JPEG files."""

from __future__ import annotations

import errno
import io
import json
import tarfile
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch
import webdataset
from conftest import write_digits

from vitkit.cli import main
from vitkit.commands.shards import parse_size
from vitkit.data import shards as shards_module
from vitkit.data.shards import (
    INDEX_NAME,
    ShardIndex,
    ShardSet,
    iter_samples,
    rank_plan,
    write_shards,
)
from vitkit.data.stream import StreamLoader, resume_segments
from vitkit.errors import DataError, VitkitError
from vitkit.images import decode_image

CLASSES, PER_CLASS, TEST_PER_CLASS = 3, 12, 4
SHARD_SIZE = 2750  # bytes of samples per shard: several uneven shards of the 36 digits


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory) -> Path:
    """``root/train`` (3 classes x 12 images) and ``root/test`` (3 x 4), read-only by the tests."""
    root = tmp_path_factory.mktemp("digits")
    write_digits(root / "train", PER_CLASS, CLASSES)
    write_digits(root / "test", TEST_PER_CLASS, CLASSES, offset=PER_CLASS)
    return root


@pytest.fixture(scope="module")
def shard_dir(digits_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "set"
    write_shards(digits_root / "train", out, SHARD_SIZE, seed=0)
    return out


def _source_files(folder: Path) -> dict[str, tuple[bytes, int]]:
    """stem -> (the file's bytes, its label)."""
    return {f.stem: (f.read_bytes(), int(f.parent.name)) for f in sorted(folder.glob("*/*")) if f.is_file()}


def _stem(key: str) -> str:
    return key.split("-", 1)[1]


def _epoch(shards: ShardSet, **kw) -> tuple[list[torch.Tensor], list[torch.Tensor], list[str]]:
    """All batches of one rank's epoch, with the samples' keys."""
    args = dict(world_size=1, rank=0, batch_size=4, seed=0, epoch=0, size=(24, 24), with_keys=True) | kw
    images, labels, keys = [], [], []
    for x, y, k in StreamLoader(shards, **args):
        images.append(x)
        labels.append(y)
        keys.extend(k)
    return images, labels, keys


# --------------------------------------------------------------------------- writing


def test_write_shards_round_trip(digits_root, shard_dir):
    files = _source_files(digits_root / "train")
    index = json.loads((shard_dir / INDEX_NAME).read_text())
    assert index["format"] == "vitkit-shards" and index["class_names"] == ["0", "1", "2"]
    assert index["samples"] == len(files) == CLASSES * PER_CLASS and index["skipped"] == []
    assert len(index["shards"]) >= 4 and len({s["samples"] for s in index["shards"]}) > 1  # uneven

    seen = Counter()
    for entry in index["shards"]:
        with tarfile.open(shard_dir / entry["name"]) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        keys = {name.split(".", 1)[0] for name in members}
        assert len(keys) == entry["samples"] and len(members) == 2 * entry["samples"]
        labels = set()
        for key in keys:
            data, label = files[_stem(key)]
            ext = "png" if f"{key}.png" in members else "jpg"
            assert members[f"{key}.{ext}"] == data  # the original bytes, not re-encoded
            assert members[f"{key}.cls"] == str(label).encode()
            labels.add(label)
            seen[_stem(key)] += 1
        if entry["samples"] >= 4:
            assert len(labels) > 1  # the shuffled order mixes classes
    assert seen == Counter(dict.fromkeys(files, 1))

    # Ordinary WebDataset shards: webdataset's own reader sees the same samples.
    urls = [str(shard_dir / s["name"]) for s in index["shards"]]
    plain = list(webdataset.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert sorted(_stem(s["__key__"]) for s in plain) == sorted(files)
    assert all(int(s["cls"]) == files[_stem(s["__key__"])][1] for s in plain)
    ours = list(iter_samples(urls))
    assert [s.key for s in ours] == [s["__key__"] for s in plain]
    assert all(s.data == files[_stem(s.key)][0] and s.label == files[_stem(s.key)][1] for s in ours)


def test_write_shards_bad_image(tmp_path):
    source = tmp_path / "src"
    write_digits(source, 4, CLASSES)
    bad = source / "1" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DataError, match=r"broken\.png.*--skip-bad-images") as e:
        write_shards(source, tmp_path / "out", 10**6)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == [source]

    with pytest.warns(UserWarning, match="broken.png"):
        index = write_shards(source, tmp_path / "out", 10**6, skip_bad_images=True)
    assert index.samples == 12 and index.skipped == [str(bad)]
    assert json.loads((tmp_path / "out" / INDEX_NAME).read_text())["skipped"] == [str(bad)]


def test_write_shards_refuses_a_non_empty_out(digits_root, shard_dir):
    with pytest.raises(DataError, match="not empty"):
        write_shards(digits_root / "train", shard_dir, SHARD_SIZE)


def test_killed_build_leaves_nothing_and_a_rerun_succeeds(digits_root, tmp_path, monkeypatch):
    real, calls = shards_module.decode_image, []

    def dies_on_the_tenth(*args, **kw):
        calls.append(1)
        if len(calls) == 10:
            raise KeyboardInterrupt  # the process is stopped mid-build
        return real(*args, **kw)

    monkeypatch.setattr(shards_module, "decode_image", dies_on_the_tenth)
    with pytest.raises(KeyboardInterrupt):
        write_shards(digits_root / "train", tmp_path / "out", SHARD_SIZE)
    assert list(tmp_path.iterdir()) == []  # neither out nor its temporary sibling
    monkeypatch.undo()

    index = write_shards(digits_root / "train", tmp_path / "out", SHARD_SIZE)
    assert index.samples == CLASSES * PER_CLASS and ShardSet.open(tmp_path / "out").samples == index.samples


def test_disk_full_is_one_line_and_leaves_nothing(digits_root, tmp_path, monkeypatch):
    real, calls = webdataset.writer.TarWriter.write, []

    def full_after_five(self, obj):
        calls.append(1)
        if len(calls) > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, obj)

    monkeypatch.setattr(webdataset.writer.TarWriter, "write", full_after_five)
    with pytest.raises(DataError, match="no space left") as e:
        write_shards(digits_root / "train", tmp_path / "out", SHARD_SIZE)
    assert "\n" not in str(e.value) and "choose another OUT" in str(e.value)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- opening


def test_open_folder_json_and_patterns(shard_dir):
    whole = ShardSet.open(shard_dir)
    assert whole.samples == CLASSES * PER_CLASS and whole.class_names == ["0", "1", "2"]
    assert ShardSet.open(shard_dir / INDEX_NAME) == whole
    assert ShardSet.open(f"{shard_dir}/*.tar") == whole
    n = len(whole.urls)
    two = ShardSet.open(f"{shard_dir}/shard-{{000000..000001}}.tar")
    assert two.urls == whole.urls[:2] and two.counts == whole.counts[:2]
    # A URL (here a pipe: command) reads shards.json from beside the shards.
    piped = ShardSet.open(f"pipe:cat {shard_dir}/shard-{{000000..{n - 1:06d}}}.tar")
    assert piped.counts == whole.counts and piped.urls[0] == f"pipe:cat {shard_dir}/shard-000000.tar"
    assert [s.key for s in iter_samples(piped.urls[:1])] == [s.key for s in iter_samples(whole.urls[:1])]


def test_open_errors(shard_dir, tmp_path):
    with pytest.raises(DataError, match="matches no shard") as e:
        ShardSet.open(f"{tmp_path}/shard-{{000000..000009}}.tar")
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="matches no shard"):
        ShardSet.open(f"{tmp_path}/*.tar")
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "shard-000000.tar").write_bytes((shard_dir / "shard-000000.tar").read_bytes())
    with pytest.raises(DataError, match="no shards.json"):
        ShardSet.open(f"{lone}/*.tar")
    with pytest.raises(DataError, match="cannot read .*shards.json"):
        ShardSet.open(f"pipe:cat {lone}/shard-000000.tar")


# --------------------------------------------------------------------------- balancing


@pytest.mark.parametrize("world_size, batch_size", [(1, 4), (2, 6), (2, 5), (3, 4), (4, 1)])
def test_rank_plan_splits_the_sequence(world_size, batch_size):
    counts = [7, 3, 9, 1, 6, 5]
    total, per_rank = sum(counts), sum(counts) // world_size
    plans = [rank_plan(counts, world_size, r, batch_size, seed=1, epoch=2) for r in range(world_size)]
    order = torch.randperm(
        len(counts),
        generator=torch.Generator().manual_seed(shards_module.derive_seed(1, shards_module.Stream.SHARD_EPOCH, 2)),
    )
    starts = {s: sum(counts[t] for t in order.tolist()[: order.tolist().index(s)]) for s in range(len(counts))}
    covered = []
    for r, plan in enumerate(plans):
        assert plan.steps == per_rank // batch_size and plan.samples == per_rank
        for seg in plan.segments:
            assert 0 <= seg.first and seg.first + seg.count <= counts[seg.shard]
            assert seg.position == starts[seg.shard] + seg.first  # global position in the epoch's order
            covered.extend(range(seg.position, seg.position + seg.count))
        assert covered[-per_rank:] == list(range(r * per_rank, (r + 1) * per_rank))  # contiguous, in order
    assert len(covered) == len(set(covered)) == world_size * per_rank <= total
    with pytest.raises(DataError, match="fewer than the batch size"):
        rank_plan(counts, 4, 0, 8, seed=1, epoch=2)


def test_two_ranks_see_each_image_once(shard_dir):
    shards = ShardSet.open(shard_dir)
    files = {_stem(s.key): s.label for s in iter_samples(shards.urls)}
    for workers in (0, 2):
        per_rank = [_epoch(shards, world_size=2, rank=r, batch_size=6, workers=workers) for r in (0, 1)]
        assert [len(p[0]) for p in per_rank] == [3, 3]  # the same number of steps
        keys = [_stem(k) for p in per_rank for k in p[2]]
        assert sorted(keys) == sorted(files)  # T = 36 is a multiple of 2 x 6: each image exactly once
        labels = torch.cat([y for p in per_rank for y in p[1]]).tolist()
        assert labels == [files[k] for k in keys]

    # 36 is not a multiple of 2 x 5: each rank takes 3 steps of 5, no image twice.
    per_rank = [_epoch(shards, world_size=2, rank=r, batch_size=5) for r in (0, 1)]
    assert [len(p[0]) for p in per_rank] == [3, 3]
    keys = [k for p in per_rank for k in p[2]]
    assert len(keys) == 30 == len(set(keys))

    first = _epoch(shards, world_size=2, rank=0, batch_size=6, epoch=0)[2]
    again = _epoch(shards, world_size=2, rank=0, batch_size=6, epoch=0)[2]
    other = _epoch(shards, world_size=2, rank=0, batch_size=6, epoch=1)[2]
    assert first == again and first != other


def test_batches_and_crops_do_not_depend_on_workers(shard_dir):
    shards = ShardSet.open(shard_dir)
    crops = {}
    for workers in (0, 2):
        images, labels, keys = _epoch(shards, batch_size=6, workers=workers, size=(20, 24), hflip=True)
        assert len(images) == 6
        assert all(x.shape == (6, 3, 20, 24) and x.dtype == torch.uint8 for x in images)
        assert all(y.shape == (6,) and y.dtype == torch.int64 for y in labels)
        crops[workers] = dict(zip(keys, torch.cat(images), strict=True))
    assert crops[0].keys() == crops[2].keys()
    assert all(torch.equal(crops[0][k], crops[2][k]) for k in crops[0])
    # With the whole image as the box and no flip, a sample is its decoded digit (Pillow's decode).
    digits = {s.key: decode_image(io.BytesIO(s.data)) for s in iter_samples(shards.urls)}  # (1, 32, 32)
    images, _, keys = _epoch(shards, batch_size=6, channels=1, scale=(1.0, 1.0), hflip=False, size=(32, 32))
    whole = dict(zip(keys, torch.cat(images), strict=True))
    assert all((whole[k].int() - digits[k].int()).abs().max() <= 1 for k in digits)
    # The random crops are not the whole digit.
    images, _, keys = _epoch(shards, batch_size=6, channels=1, size=(32, 32))
    assert sum(not torch.equal(x, whole[k]) for k, x in zip(keys, torch.cat(images), strict=True)) > 30


def test_start_step_skips_whole_shards(shard_dir, monkeypatch):
    from vitkit.data import stream

    shards = ShardSet.open(shard_dir)
    loader = StreamLoader(shards, 1, 0, 4, seed=0, epoch=0, size=(16, 16), start_step=3, with_keys=True)
    plan = loader.plan
    kept = resume_segments(plan, 3)
    assert 0 < len(plan.segments) - len(kept) and sum(s.count for s in plan.segments[: -len(kept)]) <= 12
    read, real = [], stream.read_shard
    monkeypatch.setattr(stream, "read_shard", lambda url: read.append(url) or real(url))
    batches = list(loader)
    assert len(batches) == len(loader) == plan.steps - 3 == 6
    assert read == [s.url for s in kept]  # the skipped shards are not even opened
    skipped_keys = {s.key for seg in plan.segments[: -len(kept)] for s in iter_samples([seg.url])}
    assert not skipped_keys & {k for b in batches for k in b[2]}


# --------------------------------------------------------------------------- bad samples in a shard


def _shard_with_a_bad_sample(folder: Path, digits_root: Path, good: int) -> ShardSet:
    """One shard of ``good`` real digits and one entry whose bytes are not an image."""
    folder.mkdir()
    files = sorted((digits_root / "train").glob("*/*"))[:good]
    with webdataset.TarWriter(str(folder / "shard-000000.tar"), encoder=False) as tar:
        for i, f in enumerate(files):
            if i == good // 2:
                tar.write({"__key__": "broken", "jpg": b"\xff\xd8 not a jpeg", "cls": b"0"})
            tar.write({"__key__": f"{i:08d}", f.suffix[1:]: f.read_bytes(), "cls": f.parent.name.encode()})
    index = ShardIndex(folder, ["0", "1", "2"], ["shard-000000.tar"], [good + 1])
    (folder / INDEX_NAME).write_text(json.dumps(index.to_json()))
    return ShardSet.open(folder)


def test_stream_bad_sample_names_key_and_shard(digits_root, tmp_path):
    shards = _shard_with_a_bad_sample(tmp_path / "bad", digits_root, good=11)
    for workers in (0, 1):
        with pytest.raises(DataError, match=r"broken.*shard-000000\.tar.*--skip-bad-images") as e:
            _epoch(shards, workers=workers)
        assert "\n" not in str(e.value)


def test_stream_skips_bad_samples_and_still_takes_every_step(digits_root, tmp_path):
    # 12 samples, 11 readable, batch 4: 3 steps need 12, so the rank fills from its range's start.
    shards = _shard_with_a_bad_sample(tmp_path / "bad", digits_root, good=11)
    for workers in (0, 2):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            images, labels, keys = _epoch(shards, workers=workers, skip_bad_images=True)
        assert any("broken" in str(w.message) for w in caught)
        assert len(images) == 3 and all(x.shape == (4, 3, 24, 24) for x in images)
        assert "broken" not in keys and len(set(keys)) == 11


# --------------------------------------------------------------------------- the command


def test_cli_writes_train_and_test(digits_root, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["shards", str(digits_root), str(out), "--shard-size", "5KB"]) == 0
    printed = capsys.readouterr().out
    assert f"to {out / 'train'}" in printed and f"to {out / 'test'}" in printed
    train, test = ShardSet.open(out / "train"), ShardSet.open(out / "test")
    assert train.samples == CLASSES * PER_CLASS and test.samples == CLASSES * TEST_PER_CLASS
    assert train.class_names == test.class_names == ["0", "1", "2"] and len(train.urls) >= 2
    assert sorted(set(outputs := [s.label for s in iter_samples(test.urls)])) == [0, 1, 2] and len(outputs) == 12

    assert main(["shards", str(digits_root), str(out)]) == 1  # OUT exists
    assert main(["shards", str(digits_root / "train"), str(tmp_path / "x"), "--shard-size", "lots"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 1 and "--shard-size 'lots'" in err and not (tmp_path / "x").exists()


def test_parse_size():
    assert parse_size("1GB") == 10**9 and parse_size("500MB") == 5 * 10**8 and parse_size("64MiB") == 2**26
    assert parse_size("20KB") == 20_000 and parse_size("123456") == 123456 and parse_size("1.5kib") == 1536
    for bad in ("", "0", "12 parsecs", "-5MB", "GB"):
        with pytest.raises(VitkitError, match="--shard-size"):
            parse_size(bad)

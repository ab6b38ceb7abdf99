"""Image datasets larger than memory, as WebDataset tar shards.

A shard is an ordinary WebDataset tar file (the format timm and OpenCLIP read): each sample is
a pair of entries ``KEY.jpg`` (or ``.png``, ...), the image file's original encoded bytes, and
``KEY.cls``, its label index as text. The samples are written in a seeded shuffled order so
every shard mixes the classes. Beside the shards, ``shards.json`` records the class names and
how many samples each shard holds: the balancing rule below needs the counts before reading.

The balancing rule (:func:`rank_plan`), for ``world_size`` processes of one epoch:

1. The epoch's shard order is a permutation of the shards drawn from ``(seed, epoch)``; every
   rank draws the same one. Concatenated in that order the shards give a sequence of ``T``
   samples; a sample's place in it is its *global position* (the seed of its random crop).
2. The sequence is cut into ``world_size`` contiguous ranges of ``floor(T / world_size)``
   samples each; the last ``T mod world_size`` samples wait for another epoch (another order).
3. Rank ``r`` reads the shards that overlap its range, starting part-way into the first one and
   stopping part-way into the last, and takes exactly
   ``steps = floor(floor(T / world_size) / batch_size)`` steps of ``batch_size`` samples.

So every rank takes the same number of steps (no rank waits for a gradient all-reduce that
never comes), and together the ranks see each image at most once per epoch: exactly once when
``T`` is a multiple of ``world_size * batch_size``.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import io
import json
import logging
import os
import re
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import braceexpand
import torch
import webdataset
from webdataset.gopen import gopen
from webdataset.tariterators import group_by_keys, tar_file_expander

from ..errors import ConfigError, DataError
from ..files import atomic_write_json, write_folder
from ..images import IMAGE_EXTENSIONS, decode_image, unreadable, warn_skipped
from .dataset import Stream, derive_seed
from .folders import scan_image_folder

log = logging.getLogger(__name__)

INDEX_NAME = "shards.json"
SHARD_PATTERN = "shard-%06d.tar"
FORMAT = "vitkit-shards"
VERSION = 1
# The tar entry suffixes that hold an image (WebDataset lowercases them on reading).
IMAGE_KEYS = tuple(sorted({e.lstrip(".").replace("jpeg", "jpg") for e in IMAGE_EXTENSIONS}))
_URL = re.compile(r"^(pipe:|[a-z][a-z0-9+.-]*://)", re.IGNORECASE)


@dataclass
class ShardIndex:
    """What ``shards.json`` says about one shard set: written by :func:`write_shards`."""

    folder: Path
    class_names: list[str]
    names: list[str]  # shard file names, in writing order
    counts: list[int]  # samples per shard
    skipped: list[str] = field(default_factory=list)  # unreadable source files left out
    source: str = ""

    @property
    def samples(self) -> int:
        return sum(self.counts)

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "class_names": list(self.class_names),
            "shards": [{"name": n, "samples": c} for n, c in zip(self.names, self.counts, strict=True)],
            "samples": self.samples,
            "skipped": list(self.skipped),
            "source": self.source,
        }

    @classmethod
    def from_json(cls, obj: object, where: str) -> ShardIndex:
        """Parse a ``shards.json`` (read from ``where``), or a one-line DataError saying what is off."""
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise DataError(f"{where} is not a vitkit shard index; write the shards with `vitkit shards`")
        if obj.get("version") != VERSION:
            raise DataError(f"{where} has version {obj.get('version')}, this vitkit reads {VERSION}; upgrade vitkit")
        try:
            names = [str(s["name"]) for s in obj["shards"]]
            counts = [int(s["samples"]) for s in obj["shards"]]
            class_names = [str(c) for c in obj["class_names"]]
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{where} lacks {e} or has a wrong type; write the shards again") from None
        folder = Path(where).parent if not _URL.match(where) else Path()
        return cls(folder, class_names, names, counts, list(obj.get("skipped", [])), str(obj.get("source", "")))


class Sample(NamedTuple):
    """One sample as stored: the image file's own bytes, its suffix (``jpg``, ``png``, ...)."""

    key: str
    data: bytes
    ext: str
    label: int


# --------------------------------------------------------------------------- writing


def write_shards(
    source: str | os.PathLike, out: str | os.PathLike, shard_size: int, skip_bad_images: bool = False, seed: int = 0
) -> ShardIndex:
    """Write the images of a class-folder tree (or a ``path,label`` CSV) as WebDataset shards of
    about ``shard_size`` bytes in the new folder ``out``, with ``out/shards.json``.

    A shard is closed once the image bytes written to it reach ``shard_size`` (WebDataset's
    ``ShardWriter`` rule: it can run over by one image; tar headers add about 1 KiB a sample).
    The shards are built in ``out.tmp-<pid>`` and renamed to ``out`` at the end, so a build that
    dies leaves no ``out`` for a later run to trust (a killed process can leave that folder). A file that does not decode raises a
    DataError naming it, or with ``skip_bad_images`` is left out with a warning.
    """
    source, out = Path(source), Path(out)
    files, labels, class_names = _scan(source)
    with _building(out) as tmp:
        index = _write_set(files, labels, class_names, tmp, shard_size, skip_bad_images, seed, source)
    index.folder = out
    return index


def write_split_shards(
    source: str | os.PathLike, out: str | os.PathLike, shard_size: int, skip_bad_images: bool = False, seed: int = 0
) -> dict[str, ShardIndex]:
    """A folder holding ``train/`` and ``test/`` (each with class sub-folders) -> ``out/train`` and
    ``out/test``, two shard sets whose labels share train's class order."""
    source, out = Path(source), Path(out)
    train_files, train_labels, class_names = _scan(source / "train")
    test_files, test_labels, test_classes = _scan(source / "test")
    unknown = sorted(set(test_classes) - set(class_names))
    if unknown:
        raise DataError(f"{source}/test has class(es) {unknown[:5]} that {source}/train lacks; give both the same")
    indexes = {}
    with _building(out) as tmp:
        for split, files, labels in (("train", train_files, train_labels), ("test", test_files, test_labels)):
            (tmp / split).mkdir()
            args = (tmp / split, shard_size, skip_bad_images, seed, source / split)
            indexes[split] = _write_set(files, labels, class_names, *args)
    for split, index in indexes.items():
        index.folder = out / split
    return indexes


def is_shard_location(location: str | os.PathLike) -> bool:
    """Whether ``--data`` names shards: a URL pattern, a ``.tar`` pattern or file, a
    ``shards.json``, or a folder holding one (or ``train/`` and ``test/`` that do)."""
    text = str(location)
    if _URL.match(text) or text.endswith((".tar", ".tar}", INDEX_NAME)) or ".tar" in text and "{" in text:
        return True
    path = Path(text).expanduser()
    return path.is_dir() and ((path / INDEX_NAME).is_file() or (path / "train" / INDEX_NAME).is_file())


def shard_split(location: str | os.PathLike, split: str) -> str | None:
    """The shard set of ``split`` (``train`` or ``test``) at ``location``: ``location/split`` when
    it holds both (as ``vitkit shards`` writes a folder with train/ and test/), else the location
    itself for ``train`` and none for ``test``."""
    path = Path(str(location)).expanduser()
    if not _URL.match(str(location)) and path.is_dir() and (path / "train" / INDEX_NAME).is_file():
        test = path / "test"
        return str(path / split) if split == "train" or (test / INDEX_NAME).is_file() else None
    return str(location) if split == "train" else None


def has_splits(source: str | os.PathLike) -> bool:
    """True for a folder holding ``train/`` and ``test/`` sub-folders (write both with one call)."""
    source = Path(source)
    return (source / "train").is_dir() and (source / "test").is_dir()


def _scan(source: Path) -> tuple[list[Path], list[str], list[str]]:
    if not source.exists():
        raise DataError(f"{source} does not exist; give an image folder (one sub-folder per class) or a CSV")
    files, labels, class_names = scan_image_folder(source)
    if not files:
        raise DataError(f"{source} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files, labels, class_names


def _building(out: Path) -> contextlib.AbstractContextManager[Path]:
    """The shard folder ``out``, written whole or not at all; an existing non-empty one is refused."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} already exists and is not empty; remove it or choose another OUT")
    return write_folder(out, lambda e: _write_error(e, out))


def _write_error(e: OSError, out: Path) -> DataError:
    if e.errno == errno.ENOSPC:
        return DataError(f"no space left on the device writing shards to {out}; free space or choose another OUT")
    return DataError(f"cannot write shards to {out} ({e.strerror or e}); check the folder or choose another OUT")


def _write_set(
    files: list[Path],
    labels: list[str],
    class_names: list[str],
    folder: Path,
    shard_size: int,
    skip_bad_images: bool,
    seed: int,
    source: Path,
) -> ShardIndex:
    """Write one shard set into the existing empty ``folder``; return its index (also written)."""
    if shard_size < 1:
        raise ConfigError(f"shard size {shard_size} bytes: give a positive size such as 1GB")
    label_of = {c: i for i, c in enumerate(class_names)}
    order = torch.randperm(
        len(files), generator=torch.Generator().manual_seed(derive_seed(seed, Stream.SHARD_ORDER))
    ).tolist()
    counts: dict[str, int] = {}
    skipped: list[str] = []
    written = 0
    pattern = str(folder / SHARD_PATTERN)
    writer = webdataset.ShardWriter(
        pattern, maxcount=10**9, maxsize=shard_size, post=_fsync_file, verbose=0, encoder=False, mtime=0.0
    )
    try:
        for i in order:
            sample = _read_checked(files[i], skip_bad_images)
            if sample is None:
                skipped.append(str(files[i]))
                continue
            data, ext = sample
            key = f"{written:08d}-{_safe_stem(files[i])}"
            writer.write({"__key__": key, ext: data, "cls": str(label_of[labels[i]]).encode()})
            name = Path(writer.fname).name
            counts[name] = counts.get(name, 0) + 1
            written += 1
    except BaseException:
        with contextlib.suppress(Exception):  # the first error is the one to report
            writer.close()
        raise
    writer.close()
    if skipped:
        log.warning("skipped %d unreadable image(s) of %d in %s", len(skipped), len(files), source)
    if not counts:
        raise DataError(f"{source}: none of the {len(files)} images could be read")
    index = ShardIndex(folder, list(class_names), list(counts), list(counts.values()), skipped, str(source))
    atomic_write_json(folder / INDEX_NAME, index.to_json())
    return index


def _read_checked(path: Path, skip_bad_images: bool) -> tuple[bytes, str] | None:
    """The file's own bytes and its tar suffix, once they are known to decode; None to skip it."""
    try:
        data = path.read_bytes()
        decode_image(io.BytesIO(data), name=str(path))
    except (DataError, OSError) as e:
        message = str(e) if isinstance(e, DataError) else f"{path}: cannot read the file ({e.strerror or e})"
        if not skip_bad_images:
            raise unreadable(message) from None
        warn_skipped(message)
        return None
    return data, path.suffix.lower().lstrip(".").replace("jpeg", "jpg")


def _safe_stem(path: Path) -> str:
    """The file name without dots (WebDataset splits a key from its suffix at the first dot)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", path.stem)[:64]


def _fsync_file(name: str) -> None:
    with open(name, "rb") as f:
        os.fsync(f.fileno())


# --------------------------------------------------------------------------- opening


@dataclass
class ShardSet:
    """Shards to read: their URLs (local paths, or anything WebDataset's ``gopen`` opens), how
    many samples each holds, and the class names their labels index."""

    urls: list[str]
    counts: list[int]
    class_names: list[str]
    firsts: list[int] | None = None  # samples of each shard to pass over first (a share cut from its tail)
    totals: list[int] | None = None  # each shard's own sample count, when this set takes part of some

    @property
    def samples(self) -> int:
        return sum(self.counts)

    def first(self, i: int) -> int:
        """Samples of shard ``i`` that come before this set's own (0 unless it is a tail share)."""
        return self.firsts[i] if self.firsts is not None else 0

    def total(self, i: int) -> int:
        """Samples shard ``i`` holds in all (its ``shards.json`` count), this set's or not."""
        return self.totals[i] if self.totals is not None else self.counts[i]

    @classmethod
    def open(cls, location: str | os.PathLike) -> ShardSet:
        """``location``: a folder holding ``shards.json``, a ``shards.json``, or a shard pattern,
        local (``/data/shard-{000000..000009}.tar`` or ``/data/*.tar``) or a URL (``https://``,
        ``pipe:``), with ``shards.json`` beside the shards."""
        location = str(location)
        if _URL.match(location):
            return _open_urls(location)
        path = Path(location)
        if path.is_dir():
            if not (path / INDEX_NAME).is_file() and has_splits(path):
                raise DataError(f"{path} holds train/ and test/ shard sets; give {path}/train or {path}/test")
            return _from_index(_read_local_index(path / INDEX_NAME), None)
        if path.suffix == ".json":
            return _from_index(_read_local_index(path), None)
        files = sorted({f for p in braceexpand.braceexpand(location) for f in glob.glob(p)})
        files = [f for f in files if Path(f).is_file()]
        if not files:
            raise DataError(
                f"--data {location} matches no shard; give a folder with shards.json, "
                "or a pattern such as /data/shard-{000000..000009}.tar"
            )
        index = _read_local_index(Path(files[0]).parent / INDEX_NAME)
        return _from_index(index, files)


def _read_local_index(path: Path) -> ShardIndex:
    if not path.is_file():
        raise DataError(
            f"no {INDEX_NAME} at {path}; vitkit needs the sample counts it holds: "
            f"write the shards with `vitkit shards`, or put its {INDEX_NAME} beside them"
        )
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON ({e}); write the shards again") from None
    return ShardIndex.from_json(obj, str(path))


def _from_index(index: ShardIndex, urls: Sequence[str] | None) -> ShardSet:
    """The shards of ``index`` (all, or those of ``urls``, matched by file name)."""
    count_of = dict(zip(index.names, index.counts, strict=True))
    if urls is None:
        urls = [str(index.folder / n) for n in index.names]
        missing = [u for u in urls if not Path(u).is_file()]
        if missing:
            raise DataError(f"{missing[0]} is listed in {INDEX_NAME} but missing; copy the whole shard folder")
    unknown = [u for u in urls if _basename(u) not in count_of]
    if unknown:
        raise DataError(f"{unknown[0]} is not listed in its {INDEX_NAME}; give shards of one set")
    return ShardSet(list(urls), [count_of[_basename(u)] for u in urls], list(index.class_names))


def _basename(url: str) -> str:
    """The shard's file name within a path, URL or ``pipe:`` command."""
    found = re.findall(r"[^\s/]+\.tar\b", url)
    return found[-1] if found else url.rsplit("/", 1)[-1]


def _open_urls(pattern: str) -> ShardSet:
    """Remote shards: their ``shards.json`` is read from the same place as the first shard."""
    urls = list(braceexpand.braceexpand(pattern))
    name = _basename(urls[0])
    at = urls[0].rfind(name)
    index_url = urls[0][:at] + INDEX_NAME + urls[0][at + len(name) :]
    try:
        with gopen(index_url, "rb") as f:
            text = f.read()
        obj = json.loads(text)
    except Exception as e:  # noqa: BLE001 - any transport failure means the same to the user
        raise DataError(
            f"cannot read {index_url} ({_reason(e)}); "
            f"shards at a URL need the {INDEX_NAME} that `vitkit shards` wrote beside them"
        ) from None
    return _from_index(ShardIndex.from_json(obj, index_url), urls)


def _reason(e: Exception) -> str:
    """One short line for a failed read: a ``pipe:``/curl command's exit status, or the error."""
    status = re.search(r"exit (\d+)", str(e))
    if status:
        return f"the command that fetches it exited with status {status.group(1)}"
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}"[:200]


# --------------------------------------------------------------------------- reading


def read_shard(url: str) -> Iterator[Sample]:
    """The samples of one shard in stored order, still encoded. A sample without an image or a
    ``cls`` entry, or a damaged tar, raises a DataError naming the shard."""
    try:
        stream = gopen(url, "rb")
    except OSError as e:
        raise DataError(f"cannot open shard {url} ({e.strerror or e}); check the path or URL") from None
    finished = False
    try:
        records = group_by_keys(tar_file_expander([{"url": url, "stream": stream}]))
        for record in records:
            yield _sample(record, url)
        finished = True
    except (tarfile.TarError, OSError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        reason = str(e.args[0]).split(" @ ")[0] if e.args else str(e)
        raise DataError(f"shard {url} is damaged ({type(e).__name__}: {reason}); write it again") from None
    finally:
        _close(stream, url, report=finished)


def _close(stream: object, url: str, report: bool) -> None:
    """Close a shard's stream. A ``pipe:`` command's exit status counts only when the shard was
    read to its end: a reader that stops part-way kills the command on purpose."""
    try:
        stream.close()
    except OSError as e:
        if report:
            raise DataError(f"reading shard {url} failed ({_reason(e)}); check the URL or command") from None


def _sample(record: dict, url: str) -> Sample:
    key = record["__key__"]
    exts = [k for k in record if k in IMAGE_KEYS or k == "jpeg"]
    if not exts or "cls" not in record:
        raise DataError(f"sample {key} in {url} lacks an image or a cls entry; write the shards with `vitkit shards`")
    try:
        label = int(record["cls"])
    except ValueError:
        raise DataError(f"sample {key} in {url}: cls {record['cls'][:20]!r} is not a class index") from None
    return Sample(key, record[exts[0]], exts[0].replace("jpeg", "jpg"), label)


def iter_samples(urls: Sequence[str]) -> Iterator[Sample]:
    """Every sample of whole shards, in order: ``(key, bytes, ext, label)`` for a cache that
    decodes them once."""
    for url in urls:
        yield from read_shard(url)


# --------------------------------------------------------------------------- balancing


class Segment(NamedTuple):
    """A run of samples of one shard that a rank reads: samples ``first .. first + count - 1``
    of shard ``shard`` (index into the set, and its URL); ``position`` is the global position
    (in the epoch's sequence) of its first sample."""

    url: str
    first: int
    count: int
    position: int
    shard: int


@dataclass
class RankPlan:
    """One rank's share of one epoch (see the module docstring): ``segments`` in reading order,
    and ``steps`` batches of ``batch_size`` to take from them."""

    segments: list[Segment]
    steps: int
    batch_size: int
    start: int  # global position of the rank's first sample

    @property
    def samples(self) -> int:
        return sum(s.count for s in self.segments)


def rank_plan(
    counts: Sequence[int],
    world_size: int,
    rank: int,
    batch_size: int,
    seed: int,
    epoch: int,
    urls: Sequence[str] | None = None,
) -> RankPlan:
    """The shards (and parts of shards) rank ``rank`` of ``world_size`` reads in ``epoch``, by
    the balancing rule of the module docstring. ``urls`` names the shards (default: their index)."""
    if world_size < 1 or not 0 <= rank < world_size or batch_size < 1:
        raise ConfigError(f"rank {rank} of world size {world_size}, batch size {batch_size}: need 0 <= rank < world")
    if urls is not None and len(urls) != len(counts):
        raise ConfigError(f"{len(urls)} shard URLs for {len(counts)} sample counts; give one count per shard")
    total = sum(counts)
    per_rank = total // world_size
    steps = per_rank // batch_size
    if steps == 0:
        raise DataError(
            f"{total} samples over {world_size} rank(s) give {per_rank} per rank, fewer than the batch size "
            f"{batch_size}: use a smaller batch or fewer ranks"
        )
    g = torch.Generator().manual_seed(derive_seed(seed, Stream.SHARD_EPOCH, epoch))
    order = torch.randperm(len(counts), generator=g).tolist()
    lo, hi = rank * per_rank, (rank + 1) * per_rank  # the rank's range [lo, hi) of global positions
    segments, position = [], 0
    for shard in order:
        n = counts[shard]
        start, stop = max(lo, position), min(hi, position + n)
        if start < stop:
            url = urls[shard] if urls is not None else str(shard)
            segments.append(Segment(url, start - position, stop - start, start, shard))
        position += n
        if position >= hi:
            break
    return RankPlan(segments, steps, batch_size, lo)

"""The disk cache: an image folder, a CSV or a shard set decoded once into a memory-mapped
uint8 file.

A set whose decoded pixels would crowd memory (:func:`choose_mode`) is decoded once, by worker
processes in parallel, into one file of ``(N, C, H, W)`` uint8 pixels, prepared exactly as the
in-memory path prepares them (:meth:`Preprocess.pixels <vitkit.preprocess.Preprocess.pixels>`).
Training, ``evaluate``, ``probe``, ``embed`` and every torchrun rank then map that file
(:class:`~vitkit.data.dataset.MappedImages`) and read a batch at a time; the kernel keeps what it
can in its page cache and reclaims the rest, so memory stays bounded whatever the set's size.
The batched augmentation and the seeded order work on top of it unchanged.

Three rules keep a cache trustworthy:

- **Its key** is a SHA-256 of the file (or shard) list with each file's size and modification
  time, the labels and class names, the preparation (size, channels, border, resize rule) and the decoder's
  version. A changed folder has another key, so a stale cache is never read; it is rebuilt.
- **It is built whole or not at all**: in a ``.tmp`` sibling that is renamed into place only
  once every image, the labels and ``meta.json`` are on disk. A killed or failed build leaves
  nothing a later run would trust (the next build clears such leftovers).
- **One process builds it**: builders take an exclusive lock on a file beside it, and the others
  wait on that lock (not on a torchrun barrier, whose timeout a long decode would outlast), then
  map what the first one built.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..files import atomic_write_json, write_folder
from ..images import decode_image, unreadable, warn_skipped
from ..preprocess import Preprocess
from ..runtime import available_cores
from .builtin import cache_dir as vitkit_cache_dir
from .dataset import ImageDataset, MappedImages
from .folders import Listing
from .shards import ShardSet, read_shard

log = logging.getLogger(__name__)

IMAGES_NAME, LABELS_NAME, META_NAME = "images.u8", "labels.npy", "meta.json"
DECODER = "vitkit-decode-1"  # bump when decode_image or Preprocess.pixels changes its pixels
CHUNK = 64  # images per task of a worker: one contiguous write each
PARALLEL_FROM = 512  # fewer images decode in this process (starting workers costs seconds)


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``--cache-dir``, else ``images/`` under the vitkit cache (``$VITKIT_CACHE``...)."""
    return Path(cache_dir).expanduser() if cache_dir else vitkit_cache_dir() / "images"


@dataclass(frozen=True)
class CacheSource:
    """What a cache is decoded from: image files (a folder or CSV), or the samples of shards.

    ``tasks`` are the units of work, each ``(first row, kind, items)``: ``"files"`` with
    ``[(path, label), ...]`` (:data:`CHUNK` of them), or ``"shard"`` with ``[url, samples, first, total]``
    (``samples`` of the shard's ``total``, after its first ``first``)."""

    name: str
    count: int
    class_names: list[str]
    identity: str  # a digest of the files or shards, with their sizes and modification times
    tasks: list[tuple[int, str, list]]

    @classmethod
    def files(cls, listing: Listing) -> CacheSource:
        h = hashlib.sha256()
        for f, y in zip(listing.files, listing.labels, strict=True):
            h.update(f"{f}\0{_stat(str(f))}\0{y}\n".encode())
        pairs = [(str(f), y) for f, y in zip(listing.files, listing.labels, strict=True)]
        tasks = [(s, "files", pairs[s : s + CHUNK]) for s in range(0, len(pairs), CHUNK)]
        return cls(str(listing.source), len(pairs), listing.class_names, h.hexdigest(), tasks)

    @classmethod
    def shards(cls, shards: ShardSet) -> CacheSource:
        h = hashlib.sha256()
        tasks, start = [], 0
        for i, (url, n) in enumerate(zip(shards.urls, shards.counts, strict=True)):
            h.update(f"{url}\0{_stat(url)}\0{n}\0{shards.first(i)}\n".encode())
            tasks.append((start, "shard", [url, n, shards.first(i), shards.total(i)]))
            start += n
        name = str(Path(shards.urls[0]).parent) if shards.urls else "shards"
        if shards.totals is not None:  # part of each shard (a validation tail, or the rest): a name of its own,
            name += "-tail" if shards.firsts and any(shards.firsts) else "-head"  # or each would evict the other
        return cls(name, start, list(shards.class_names), h.hexdigest(), tasks)


def _stat(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:  # a URL, or gone: the name alone
        return "-"
    return f"{st.st_size}\0{st.st_mtime_ns}"


def preparation(geometry: Preprocess | dict) -> dict:
    """The fields of a Preprocess that decide the cached pixels (not the normalisation)."""
    d = geometry if isinstance(geometry, dict) else geometry.to_dict()
    return {k: d.get(k) for k in ("image_size", "channels", "pad", "interpolation", "fit", "crop_fraction")}


def cache_key(source: CacheSource, geometry: Preprocess) -> str:
    """What the cached pixels depend on (see the module's docstring), as a hex digest."""
    what = {"decoder": DECODER, "prepare": preparation(geometry), "classes": source.class_names}
    return hashlib.sha256(json.dumps(what | {"images": source.identity}).encode()).hexdigest()


def cached_image_folder(
    listing: Listing,
    geometry: Preprocess,
    skip_bad_images: bool = False,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
) -> ImageDataset:
    """The images of ``listing`` prepared by ``geometry``, mapped from the disk cache; decoded
    into it first when no complete cache has this key."""
    return cached_images(CacheSource.files(listing), geometry, skip_bad_images, cache_dir, workers)


def cached_images(
    source: CacheSource,
    geometry: Preprocess,
    skip_bad_images: bool = False,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
) -> ImageDataset:
    """The images of ``source`` prepared by ``geometry``, mapped from the disk cache."""
    root = cache_root(cache_dir)
    key = cache_key(source, geometry)
    folder = root / f"{_slug(source.name)}-{key[:16]}"
    with _build_lock(root, folder.name):
        meta = _read_meta(folder)
        if meta is None:
            _build(source, geometry, key, folder, skip_bad_images, workers)
            meta = _read_meta(folder)
            _remove_stale(folder, source.name, preparation(geometry))
        else:
            log.info("image cache: reusing %s (%s)", folder, _megabytes(folder / IMAGES_NAME))
    if meta is None or meta["key"] != key:
        raise DataError(f"{folder}: the image cache is incomplete or belongs to other images; delete it and run again")
    return _open(folder, meta, skip_bad_images)


def _remove_stale(folder: Path, source: str, prepared: dict) -> None:
    """Remove the caches of the same source and preparation that ``folder`` replaces: the source
    changed since they were built, so nothing will read them again. One being built or read
    under its lock right now is left alone (a process that maps it keeps its pixels anyway)."""
    for other in folder.parent.glob(f"{folder.name.rsplit('-', 1)[0]}-*"):
        meta = _read_meta(other) if other != folder and ".tmp-" not in other.name else None
        if meta is None or meta.get("source") != source or preparation(meta.get("preprocess", {})) != prepared:
            continue
        with open(folder.parent / f".{other.name}.lock", "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            shutil.rmtree(other, ignore_errors=True)  # (its empty lock file stays: a waiter may hold it)
        log.info("image cache: removed %s, built from an earlier state of %s", other, source)


def _slug(source: str) -> str:
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(source).resolve().name)
    return name[:40] or "images"


def _megabytes(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:,.1f} MB"


@contextmanager
def _build_lock(root: Path, name: str) -> Iterator[None]:
    """Hold the exclusive lock that lets one process build cache ``name``; others wait here."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("image cache %s is being built by another process (another rank?): waiting for it", root / name)
            start = time.perf_counter()
            fcntl.flock(f, fcntl.LOCK_EX)
            log.info("image cache %s: ready after %.0f s of waiting", root / name, time.perf_counter() - start)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read_meta(folder: Path) -> dict | None:
    """The cache's ``meta.json`` when the folder is a complete cache (it is written last)."""
    try:
        meta = json.loads((folder / META_NAME).read_text())
    except (OSError, ValueError):
        return None
    images = folder / IMAGES_NAME
    expected = int(np.prod(meta.get("shape", [0])))
    if not images.is_file() or images.stat().st_size != expected or not (folder / LABELS_NAME).is_file():
        return None
    return meta


def _open(folder: Path, meta: dict, skip_bad_images: bool) -> ImageDataset:
    labels = torch.from_numpy(np.load(folder / LABELS_NAME))
    images = MappedImages(folder / IMAGES_NAME, tuple(meta["shape"]), meta["key"])
    skipped = list(meta["skipped"])
    if skipped and not skip_bad_images:
        raise DataError(
            f"{skipped[0]} (and {len(skipped) - 1} more) could not be read when the cache {folder} was built "
            "with --skip-bad-images; pass --skip-bad-images again, or fix the files"
        )
    good = (labels >= 0).nonzero()[:, 0]
    if len(good) < len(labels):  # a view without the unreadable images' rows
        images, labels = images.take(good), labels[good]
    return ImageDataset(images, labels, list(meta["class_names"]), meta["name"], skipped=skipped)


# ---------------------------------------------------------------------------- building
def _build(source: CacheSource, geometry: Preprocess, key: str, folder: Path, skip: bool, workers: int | None) -> None:
    """Decode every image of ``source`` into ``folder``, whole or not at all."""
    for leftover in folder.parent.glob(f"{folder.name}.tmp-*"):  # a killed build's: we hold the lock
        shutil.rmtree(leftover, ignore_errors=True)
    n = source.count
    shape = (n, geometry.channels, *geometry.input_size)
    nbytes = int(np.prod(shape))
    _check_space(folder.parent, nbytes)
    start = time.perf_counter()
    log.info("image cache: decoding %d images of %s into %s (%.1f MB)", n, source.name, folder, nbytes / 1e6)

    def disk_full(e: OSError) -> Exception:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            return e
        return DataError(
            f"no space left on the disk of {folder.parent} while caching {n} images ({nbytes / 1e6:,.0f} MB); "
            "free some space or give --cache-dir on a larger disk; nothing half-built was kept"
        )

    with write_folder(folder, disk_full) as tmp:
        labels, bad = _decode_all(source, geometry, tmp / IMAGES_NAME, shape, skip, workers)
        _finish(source, geometry, key, tmp, shape, labels, bad)
    seconds = time.perf_counter() - start
    log.info("image cache: %s built in %.0f s (%.0f images/s)", folder, seconds, n / max(seconds, 1e-9))


def _check_space(root: Path, nbytes: int) -> None:
    free = shutil.disk_usage(root).free
    if free < nbytes + (64 << 20):
        raise DataError(
            f"the image cache needs {nbytes / 1e6:,.0f} MB but {root} has {free / 1e6:,.0f} MB free; "
            "give --cache-dir on a larger disk, or write shards (vitkit shards) and stream them"
        )


def _finish(
    source: CacheSource,
    geometry: Preprocess,
    key: str,
    tmp: Path,
    shape: tuple[int, ...],
    labels: np.ndarray,
    bad: dict,
) -> None:
    """The labels (-1 for an unreadable image) and, last, ``meta.json``: the mark of a whole cache."""
    for i, message in bad.items():
        labels[i] = -1
        warn_skipped(message)
    if bad:
        log.warning("skipped %d unreadable image(s) of %d in %s", len(bad), len(labels), source.name)
    if len(bad) == len(labels):
        raise DataError(f"{source.name}: none of the {len(labels)} images could be read")
    with open(tmp / LABELS_NAME, "wb") as f:
        np.save(f, labels)
        f.flush()
        os.fsync(f.fileno())
    meta = {
        "key": key,
        "name": Path(source.name).name,
        "source": source.name,
        "shape": list(shape),
        "class_names": source.class_names,
        "skipped": [bad[i].split(": ")[0] for i in sorted(bad)],
        "preprocess": geometry.to_dict(),
    }
    atomic_write_json(tmp / META_NAME, meta)


def _decode_all(
    source: CacheSource, geometry: Preprocess, path: Path, shape: tuple[int, ...], skip: bool, workers: int | None
) -> tuple[np.ndarray, dict[int, str]]:
    """Decode into ``path`` (space reserved first, so a full disk fails here and not later);
    returns every row's label and {row: message} of the images that could not be read (with
    ``skip``)."""
    from tqdm.auto import tqdm

    with open(path, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, int(np.prod(shape)))
    labels = np.full(source.count, -1, dtype=np.int64)
    bad: dict[int, str] = {}
    jobs = [(str(path), shape, start, kind, items, geometry.to_dict(), skip) for start, kind, items in source.tasks]
    workers = min(workers or available_cores(), len(jobs))

    def done(start: int, result: tuple[list[int], dict[int, str]]) -> int:
        labels[start : start + len(result[0])] = result[0]
        bad.update(result[1])
        return len(result[0])

    with tqdm(total=source.count, desc="decoding into the image cache", unit="img", leave=False, disable=None) as bar:
        if workers <= 1 or source.count < PARALLEL_FROM:
            for job in jobs:
                bar.update(done(job[2], decode_rows(*job)))
        else:
            # forked as DataLoader forks its workers: each sets itself to one thread first
            with ProcessPoolExecutor(
                workers, get_context("fork"), initializer=torch.set_num_threads, initargs=(1,)
            ) as pool:
                futures = {pool.submit(decode_rows, *job): job[2] for job in jobs}
                for future in as_completed(futures):
                    bar.update(done(futures[future], future.result()))
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
    return labels, bad


def decode_rows(
    path: str, shape: tuple[int, ...], start: int, kind: str, items: list, geometry: dict, skip: bool
) -> tuple[list[int], dict[int, str]]:
    """Decode one task's images into rows ``start...`` of the cache file at ``path``: one task of
    a worker (one thread each: the workers are the parallelism). Returns the rows' labels, and
    {row: message} for unreadable images (their rows stay black), which raise without ``skip``."""
    prepare = Preprocess.from_dict(geometry)
    images = _encoded(items) if kind == "shard" else ((f, f, y) for f, y in items)
    rows, labels, bad = [], [], {}
    for i, (name, data, label) in enumerate(images):
        try:
            rows.append(prepare.pixels(decode_image(data, name=name)).numpy())
        except (DataError, FileNotFoundError) as e:
            if not skip:
                raise unreadable(str(e)) from None
            rows.append(np.zeros(shape[1:], dtype=np.uint8))
            bad[start + i] = f"{name}: {e}" if not str(e).startswith(name) else str(e)
        labels.append(label)
    write_rows(path, np.stack(rows), start * int(np.prod(shape[1:])))
    return labels, bad


def _encoded(items: list) -> Iterator[tuple[str, io.BytesIO, int]]:
    """A shard's samples ``first .. first + count - 1`` as (name, encoded image, label), the
    shard checked against the ``total`` samples its index promises."""
    url, count, first, total = items
    n = 0
    for sample in read_shard(url):
        if first <= n < first + count:
            yield f"sample {sample.key} in {url}", io.BytesIO(sample.data), sample.label
        n += 1
    if n != total:
        raise DataError(f"shard {url} holds {n} samples, but its shards.json says {total}; write the shards again")


def write_rows(path: str, rows: np.ndarray, offset: int) -> None:
    """Write decoded rows at byte ``offset`` of the cache file."""
    fd = os.open(path, os.O_WRONLY)
    try:
        view = memoryview(rows.reshape(-1))
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written
    finally:
        os.close(fd)

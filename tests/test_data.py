import gzip
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FMNIST, needs_fashion_mnist, sample_photo
from PIL import Image

from vitkit import data as D
from vitkit.data import AugmentConfig, BatchAugment, DataError
from vitkit.data import builtin as B
from vitkit.preprocess import Preprocess


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    blob = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(blob) if compress else blob)


def fake_idx_folder(folder: Path, n_train: int = 20, n_test: int = 10, compress: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 28, 28)), compress)
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", np.arange(n) % 10, compress)
    return folder


@pytest.fixture
def no_system_data(monkeypatch, tmp_path):
    """Hide the Debian folder, $VITKIT_DATA, and point the cache at an empty folder."""
    monkeypatch.setattr(B, "SYSTEM_DIRS", {})
    monkeypatch.delenv("VITKIT_DATA", raising=False)
    monkeypatch.setenv("VITKIT_CACHE", str(tmp_path / "cache"))


# ---------------------------------------------------------------------------- IDX files
@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trip(tmp_path, compress):
    a = np.random.default_rng(1).integers(0, 256, (3, 5, 7)).astype(np.uint8)
    write_idx(tmp_path / "x", a, compress)
    assert np.array_equal(D.read_idx(tmp_path / "x"), a)


def test_truncated_and_foreign_idx_files_name_the_file(tmp_path):
    write_idx(tmp_path / "x.gz", np.zeros((4, 28, 28)), compress=False)
    (tmp_path / "x.gz").write_bytes((tmp_path / "x.gz").read_bytes()[:-10])
    with pytest.raises(DataError, match=r"x\.gz.*truncated"):
        D.read_idx(tmp_path / "x.gz")
    (tmp_path / "y").write_bytes(b"PK\x03\x04 not an idx file")
    with pytest.raises(DataError, match="bad magic"):
        D.read_idx(tmp_path / "y")
    (tmp_path / "z.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01" + (100).to_bytes(4, "big") + b"\x00" * 100)[:-12])
    with pytest.raises(DataError, match=r"z\.gz"):
        D.read_idx(tmp_path / "z.gz")


def test_search_order_data_dir_then_env_then_system_then_cache(tmp_path, monkeypatch, no_system_data):
    a = fake_idx_folder(tmp_path / "a")
    b = fake_idx_folder(tmp_path / "b" / "fashion-mnist")
    c = fake_idx_folder(tmp_path / "c")
    cache = fake_idx_folder(tmp_path / "cache" / "FashionMNIST" / "raw", compress=False)
    monkeypatch.setattr(B, "SYSTEM_DIRS", {"fashion-mnist": (str(c),)})
    monkeypatch.setenv("VITKIT_DATA", str(tmp_path / "b"))
    assert D.find_dataset_dir("fashion-mnist", a) == a
    assert D.find_dataset_dir("fashion-mnist") == b.resolve()
    monkeypatch.delenv("VITKIT_DATA")
    assert D.find_dataset_dir("fashion-mnist") == c
    monkeypatch.setattr(B, "SYSTEM_DIRS", {})
    assert D.find_dataset_dir("fashion-mnist") == cache.resolve()
    ds = D.load_dataset("fashion-mnist", "test")
    assert ds.images.shape == (10, 1, 28, 28) and ds.class_names[9] == "Ankle boot"


def test_missing_dataset_says_how_to_get_it(monkeypatch, no_system_data):
    def offline(name, root):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: no network")

    monkeypatch.setattr(B, "download_dataset", offline)
    with pytest.raises(DataError) as e:
        D.load_dataset("fashion-mnist")
    msg = str(e.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "--data-dir" in msg and "\n" not in msg


def test_search_falls_back_to_download_into_the_cache(monkeypatch, tmp_path, no_system_data):
    calls = []

    def fake_download(name, root):
        calls.append((name, Path(root)))
        return fake_idx_folder(Path(root) / "FashionMNIST" / "raw")

    monkeypatch.setattr(B, "download_dataset", fake_download)
    ds = D.load_dataset("fashion-mnist", "train")
    assert calls == [("fashion-mnist", tmp_path / "cache")] and len(ds) == 20


def test_torchvision_download_path_with_files_already_there(tmp_path):
    # torchvision's downloader finds the (uncompressed) files in root/FashionMNIST/raw and fetches nothing.
    raw = fake_idx_folder(tmp_path / "FashionMNIST" / "raw", compress=False)
    assert D.download_dataset("fashion-mnist", tmp_path) == raw
    ds = D.load_idx_dataset("fashion-mnist", "train", raw)
    assert ds.images.shape == (20, 1, 28, 28) and ds.labels[:3].tolist() == [0, 1, 2]


@needs_fashion_mnist
def test_real_fashion_mnist_test_split():
    ds = D.load_dataset("fashion-mnist", "test", data_dir=FMNIST)
    assert ds.images.shape == (10_000, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert torch.bincount(ds.labels).tolist() == [1000] * 10


# ---------------------------------------------------------------------------- other sources
def test_cifar10_pickle_folder_and_hostile_pickle(tmp_path, monkeypatch, no_system_data):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.encode() for c in D.CIFAR10_CLASSES]}))
    ds = D.load_dataset("cifar10", "train", data_dir=tmp_path)
    assert ds.images.shape == (20, 3, 32, 32) and ds.class_names[1] == "automobile"

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        D.load_dataset("cifar10", "test", data_dir=tmp_path)


def test_digits_split_is_fixed_and_disjoint():
    train, test = D.load_dataset("digits", "train"), D.load_dataset("digits", "test")
    assert len(train) + len(test) == 1797 and train.images.shape[1:] == (1, 8, 8)
    assert int(train.images.max()) == 255
    assert torch.equal(D.load_dataset("digits", "test").images, test.images)


def _write_images(root: Path) -> None:
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(root / "cat" / "a.png")
    Image.new("L", (16, 16), 80).save(root / "cat" / "b.jpg")
    Image.new("RGBA", (20, 20), (0, 0, 255, 128)).save(root / "dog" / "c.png")
    Image.new("P", (8, 8)).save(root / "dog" / "d.gif")


RGB8 = Preprocess((8, 8), channels=3)


def test_image_folder_any_size_and_mode(tmp_path):
    _write_images(tmp_path / "imgs")
    assert D.resolve_source(str(tmp_path / "imgs")).native_format == (None, 3)  # colour images among them
    ds = D.load_dataset(str(tmp_path / "imgs"), preprocess=Preprocess((12, 12), channels=3))
    assert ds.images.shape == (4, 3, 12, 12) and ds.class_names == ["cat", "dog"]
    assert ds.labels.tolist() == [0, 0, 1, 1]
    assert ds.images[0, :, 6, 6].tolist() == [200, 10, 10]  # a uniform red image stays that red
    assert ds.images[2, :, 6, 6].tolist() == [127, 127, 255]  # half-transparent blue over white
    gray = D.load_dataset(str(tmp_path / "imgs"), preprocess=Preprocess((12, 12), channels=1, pad=2))
    assert gray.images.shape == (4, 1, 16, 16) and gray.images[:, :, :2].max() == 0  # the zero border
    assert gray.images[0, 0, 8, 8] == round(0.299 * 200 + 0.587 * 10 + 0.114 * 10)  # ITU-R 601-2 luma


def test_image_folder_all_grayscale_gives_one_channel(tmp_path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        Image.new("L", (10, 10), 7).save(tmp_path / c / "x.png")
    assert D.resolve_source(str(tmp_path)).native_format == (None, 1)


def test_csv_of_paths_and_labels(tmp_path):
    _write_images(tmp_path / "imgs")
    (tmp_path / "list.csv").write_text("path,label\nimgs/cat/a.png,cat\nimgs/dog/c.png,dog\n")
    ds = D.load_dataset(str(tmp_path / "list.csv"), preprocess=RGB8)
    assert len(ds) == 2 and ds.class_names == ["cat", "dog"]


def test_corrupt_image_error_names_the_file_or_is_skipped(tmp_path):
    _write_images(tmp_path / "imgs")
    bad = tmp_path / "imgs" / "dog" / "broken.png"
    bad.write_bytes((tmp_path / "imgs" / "cat" / "a.png").read_bytes()[:40])
    (tmp_path / "imgs" / "cat" / "text.jpg").write_text("not an image")
    with pytest.raises(DataError, match=r"broken\.png|text\.jpg") as e:
        D.load_dataset(str(tmp_path / "imgs"), preprocess=RGB8)
    assert "--skip-bad-images" in str(e.value)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ds = D.load_dataset(str(tmp_path / "imgs"), preprocess=RGB8, skip_bad_images=True)
    assert len(ds) == 4 and len(ds.skipped) == 2 and len(w) == 2


def test_decompression_bomb_guard_stays_on(tmp_path, monkeypatch):
    _write_images(tmp_path / "imgs")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 40x30 is then "a bomb"
    with pytest.raises(DataError, match=r"a\.png.*DecompressionBomb"):
        D.load_dataset(str(tmp_path / "imgs"), preprocess=RGB8)


def test_unknown_dataset_and_empty_folder(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'nope'"):
        D.load_dataset("nope")
    with pytest.raises(DataError, match="no class sub-folders"):
        D.load_dataset(str(tmp_path), preprocess=RGB8)


# ---------------------------------------------------------------------------- order, split, augmentation
def test_epoch_order_depends_only_on_seed_and_epoch():
    a, b = D.epoch_order(100, 3, 5), D.epoch_order(100, 3, 5)
    assert torch.equal(a, b) and sorted(a.tolist()) == list(range(100))
    assert not torch.equal(a, D.epoch_order(100, 3, 6))


def test_mean_std_equals_numpy_on_the_whole_set():
    ds = D.load_dataset("digits")
    mean, std = ds.mean_std(chunk=100)  # chunked sums, never a float copy of the set
    x = ds.images.numpy() / 255.0
    assert mean == pytest.approx([x.mean()], abs=1e-6) and std == pytest.approx([x.std(ddof=1)], abs=1e-6)


def test_batch_augment_is_reproducible_and_shape_preserving():
    x = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8)
    y = torch.arange(16) % 10
    cfg = AugmentConfig(
        crop_padding=4, hflip=True, erase_prob=0.5, auto_augment="trivialaugment", mixup=0.8, cutmix=1.0
    )
    aug = BatchAugment(cfg, [0.5], [0.25], 10, seed=0)
    a, ta = aug(x, y, epoch=2, batch=3)
    b, tb = aug(x, y, epoch=2, batch=3)
    c, _ = aug(x, y, epoch=2, batch=4)
    assert a.shape == (16, 1, 28, 28) and a.dtype == torch.float32
    assert torch.equal(a, b) and torch.equal(ta, tb) and not torch.equal(a, c)
    assert ta.shape == (16, 10) and torch.allclose(ta.sum(1), torch.ones(16))


def test_random_crop_shifts_content():
    x = torch.zeros(64, 1, 8, 8)
    x[:, :, 4, 4] = 1
    out = D.random_crop(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and (out.sum((1, 2, 3)) == 1).all()
    positions = {tuple(torch.nonzero(o[0])[0].tolist()) for o in out}
    assert len(positions) > 10 and all(2 <= r <= 6 and 2 <= c <= 6 for r, c in positions)


def test_random_erase_zeroes_a_rectangle():
    x = torch.ones(32, 1, 16, 16)
    out = D.random_erase(x, torch.Generator().manual_seed(0), p=1.0)
    erased = (out == 0).flatten(1).sum(1)
    assert (erased > 0).all() and (erased <= 16 * 16 / 3 + 16).all()


def test_jpeg_decoder_gives_pillows_pixels_and_names_a_truncated_file(tmp_path):
    """JPEGs go through torchvision's libjpeg-turbo decoder: the pixels Pillow gives, on a real
    photo in colour and in gray; a truncated file is still a one-line error naming it."""
    from vitkit.images import decode_image

    photo = sample_photo()
    assert torch.equal(
        decode_image(photo), torch.from_numpy(np.array(Image.open(photo).convert("RGB"))).permute(2, 0, 1)
    )
    gray = tmp_path / "gray.jpg"
    Image.open(photo).convert("L").save(gray, quality=90)
    assert torch.equal(decode_image(gray), torch.from_numpy(np.array(Image.open(gray)))[None])
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(photo.read_bytes()[:5000])
    with pytest.raises(DataError, match=r"cut\.jpg: cannot read the image"):
        decode_image(cut)

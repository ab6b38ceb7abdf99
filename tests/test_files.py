"""The bottom floor: files and folders written whole, JSON objects read back."""

import errno
import os
import stat

import pytest

from vitkit import files
from vitkit.errors import CheckpointError, DataError


def test_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "f.bin"
    files.atomic_write_bytes(path, b"old")

    def boom(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        files.atomic_write(path, boom)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_written_files_get_the_usual_permissions(tmp_path):
    files.atomic_write_bytes(tmp_path / "f.bin", b"x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "f.bin").stat().st_mode) == 0o666 & ~umask


def _folder(path, text):
    with files.write_folder(path) as tmp:
        (tmp / "data.txt").write_text(text)
        (tmp / "config.json").write_text("{}")  # the marker, written last


def test_a_folder_replaces_the_old_one_whole(tmp_path):
    _folder(tmp_path / "ckpt", "one")
    (tmp_path / "ckpt" / "extra.txt").write_text("belongs to the old folder")
    _folder(tmp_path / "ckpt", "two")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "data.txt"]
    assert (tmp_path / "ckpt" / "data.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # nothing temporary or aside is left


def test_a_failed_folder_leaves_the_old_one_and_no_temporary(tmp_path):
    _folder(tmp_path / "ckpt", "one")
    with pytest.raises(RuntimeError), files.write_folder(tmp_path / "ckpt") as tmp:
        (tmp / "data.txt").write_text("half")
        raise RuntimeError("killed")
    assert (tmp_path / "ckpt" / "data.txt").read_text() == "one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_an_oserror_becomes_the_callers_one_line_error(tmp_path):
    def full(e):
        return DataError(f"no space left writing {tmp_path / 'out'}")

    with pytest.raises(DataError, match="no space left"), files.write_folder(tmp_path / "out", full):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert not any(tmp_path.iterdir())


def test_a_kill_between_the_renames_leaves_the_previous_folder_found(tmp_path):
    _folder(tmp_path / "ckpt", "one")
    (tmp_path / "ckpt").rename(tmp_path / ".ckpt.old")  # killed after moving the old one aside
    assert files.find_complete(tmp_path / "ckpt", "config.json") == tmp_path / ".ckpt.old"
    _folder(tmp_path / "ckpt", "two")
    assert files.find_complete(tmp_path / "ckpt", "config.json") == tmp_path / "ckpt"
    assert not (tmp_path / ".ckpt.old").exists()
    assert files.find_complete(tmp_path / "ckpt", "config.json", also="state.pt") is None


def test_json_objects_are_read_or_refused_in_one_line(tmp_path):
    (tmp_path / "a.json").write_text('{"x": 1}')
    assert files.read_json_object(tmp_path / "a.json", "settings") == {"x": 1}
    (tmp_path / "b.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"b\.json is not valid JSON"):
        files.read_json_object(tmp_path / "b.json", "settings")
    (tmp_path / "c.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="should hold a JSON object of settings, found list"):
        files.read_json_object(tmp_path / "c.json", "settings")

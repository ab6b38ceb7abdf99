"""The tutorials (docs/tutorials/*.md) run start to finish, as a reader would follow them.

Each page's ```python and ```bash blocks run in order in an empty folder: the Python blocks in one
namespace (as one session in a notebook or a REPL), the bash blocks in a shell whose ``vitkit``
and ``python`` are this interpreter and this checkout. Other fences (```text, ```console) are
shown, never run. So a tutorial whose code stops working fails here, and none can rot.

What the pages show of the outputs comes from those runs, saved once and reused by the site build
(which runs nothing, so it takes seconds):

- a block's printed text: ``--8<-- "tutorials/outputs/PAGE/NN.txt"`` inside a ```text fence, NN
  the block's number among the page's run blocks (pymdownx.snippets includes the file);
- a figure the code saved as ``NAME.png`` (in any folder, one file of that name):
  ``![...](outputs/PAGE/NAME.png)``.

A normal test run writes nothing into the repository: it checks that every output the page shows
is one its code still makes, and that the saved copy exists. ``VITKIT_DOCS_REFRESH=1 pytest
tests/test_tutorials.py`` rewrites docs/tutorials/outputs/PAGE/ from the run (only what the page
shows), to commit with the page.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "docs" / "tutorials"
PAGES = sorted(p for p in TUTORIALS.glob("*.md") if p.name != "index.md")
REFRESH = os.environ.get("VITKIT_DOCS_REFRESH") == "1"

RUN_BLOCK = re.compile(r"^```(python|bash)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
SHOWN = re.compile(r'--8<-- "tutorials/outputs/([\w.-]+)/([\w.-]+)"|\]\(outputs/([\w.-]+)/([\w.-]+)\)')


def shown_outputs(page: Path) -> set[str]:
    """The output files the page shows, by name; each must be in its own folder, outputs/PAGE/."""
    names = set()
    for m in SHOWN.finditer(page.read_text()):
        folder, name = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        assert folder == page.stem, f"{page.name} shows {folder}/{name}, another page's output"
        names.add(name)
    return names


def _shims(bin_dir: Path) -> None:
    """``vitkit`` and ``python`` for the bash blocks: this interpreter, importing this checkout."""
    bin_dir.mkdir()
    for name, command in (("vitkit", f'"{sys.executable}" -m vitkit'), ("python", f'"{sys.executable}"')):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec {command} "$@"\n')
        (bin_dir / name).chmod(0o755)


def run_tutorial(page: Path, work: Path) -> dict[str, bytes]:
    """Run the page's blocks in order in ``work``; returns what they made that a page can show:
    ``NN.txt`` for each block that printed, and each PNG file it wrote, by name (empty when two
    files have that name, so the page cannot show either)."""
    _shims(work / ".bin")
    env = dict(os.environ, PATH=f"{work / '.bin'}{os.pathsep}{os.environ['PATH']}", MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])
    namespace: dict = {"__name__": "__main__"}
    made: dict[str, bytes] = {}
    for i, (lang, code) in enumerate(RUN_BLOCK.findall(page.read_text()), start=1):
        where = f"{page.name}, block {i} ({lang})"
        if lang == "python":
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                exec(compile(code, where, "exec"), namespace)  # noqa: S102 - the tutorial's own code
            text = printed.getvalue()
        else:
            done = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", code], cwd=work, env=env, capture_output=True, text=True
            )
            assert done.returncode == 0, f"{where} failed:\n{code}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
            text = done.stdout
        if text.strip():
            made[f"{i:02d}.txt"] = text.encode()
    figures = sorted(work.rglob("*.png"))
    count = Counter(f.name for f in figures)
    made |= {f.name: f.read_bytes() if count[f.name] == 1 else b"" for f in figures}
    return made


def test_there_are_the_five_tutorials_and_the_index_links_each():
    assert [p.stem for p in PAGES] == [
        "1-your-photos",
        "2-finetune-probe",
        "3-look-inside",
        "4-interop-onnx",
        "5-paper-in-code",
    ]
    index = (TUTORIALS / "index.md").read_text()
    assert all(f"({p.name})" in index for p in PAGES)


def test_every_output_a_page_shows_is_saved_and_no_saved_output_is_unused():
    """Without running anything: the site build needs each shown output, and an output no page
    shows is left over from an older version of the page."""
    for page in PAGES:
        saved = TUTORIALS / "outputs" / page.stem
        shown = shown_outputs(page)
        assert shown, f"{page.name} shows nothing its code made"
        on_disk = {p.name for p in saved.iterdir()} if saved.is_dir() else set()
        assert on_disk == shown, f"{page.name}: missing {sorted(shown - on_disk)}, unused {sorted(on_disk - shown)}"


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """An empty working folder, and the process-wide state a tutorial's Python may change (torch's
    threads and random state, open figures) put back afterwards, so later tests see none of it."""
    import matplotlib.pyplot as plt
    import torch

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("VITKIT_CACHE", str(tmp_path / ".cache"))
    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    yield tmp_path
    torch.set_num_threads(threads)
    torch.set_rng_state(rng)
    plt.close("all")


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_the_tutorial_runs_and_its_page_shows_what_its_code_makes(page, isolated):
    made = run_tutorial(page, isolated)
    shown = shown_outputs(page)
    stale = sorted(name for name in shown if not made.get(name))
    assert not stale, f"{page.name} shows outputs its code no longer makes: {stale}"
    saved = TUTORIALS / "outputs" / page.stem
    if REFRESH:
        shutil.rmtree(saved, ignore_errors=True)
        saved.mkdir(parents=True)
        for name in sorted(shown):
            (saved / name).write_bytes(made[name])
    missing = sorted(name for name in shown if not (saved / name).is_file())
    assert not missing, f"run VITKIT_DOCS_REFRESH=1 pytest {Path(__file__).name} to save {missing}"

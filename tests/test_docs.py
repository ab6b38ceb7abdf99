"""The README and the docs as a reader meets them: the README short, and no link that leads nowhere."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCED = re.compile(r"^```.*?^```", re.M | re.S)


def test_the_readme_is_a_users_page_of_at_most_300_lines():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces to dashes."""
    headings = re.findall(r"^#+\s+(.+)$", page.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(page):
    broken = []
    prose = FENCED.sub("", page.read_text())  # code such as `blocks[0](x)` is not a link
    for target in LINK.findall(prose):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: links to nothing: {broken}"


# ---------------------------------------------------------------------------- the API reference
API_PAGE = ROOT / "docs" / "api.md"


def _api_objects() -> list[str]:
    """Every dotted name the API page documents: ``::: vitkit.x.y`` lines, and the members a
    ``members: [a, b]`` option under one of them lists."""
    names, owner = [], None
    for line in API_PAGE.read_text().splitlines():
        if m := re.match(r"^::: ([\w.]+)\s*$", line):
            owner = m.group(1)
            names.append(owner)
        elif (m := re.match(r"^\s+members: \[(.+)\]\s*$", line)) and owner:
            names += [f"{owner}.{member.strip()}" for member in m.group(1).split(",")]
    return names


def _resolve(dotted: str):  # noqa: ANN202 - any documented object
    """(object, its module, its attribute name) for ``vitkit.a.b.C.m``: the longest importable
    module prefix, then attributes."""
    import importlib

    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = module = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for part in parts[i:]:
            module = obj if isinstance(obj, type(importlib)) else module
            obj = getattr(obj, part)
        return obj, module, parts[-1]
    raise ImportError(dotted)


def _attribute_docstring(module, name: str) -> str | None:  # noqa: ANN001 - a module
    """The string literal right after ``NAME = ...`` at a module's top level (how griffe, and so
    the site, documents a constant such as ``RECIPES``)."""
    import ast
    import inspect

    body = ast.parse(inspect.getsource(module)).body
    for node, after in zip(body, body[1:], strict=False):
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
                return after.value.value
    return None


def test_the_api_page_documents_the_public_api_the_issue_names():
    names = set(_api_objects())
    for required in [
        "vitkit.create_model",
        "vitkit.load",
        "vitkit.save",
        "vitkit.VisionTransformer",
        "vitkit.VisionTransformer.forward_features",
        "vitkit.VisionTransformer.forward_head",
        "vitkit.VisionTransformer.forward_intermediates",
        "vitkit.interop.from_timm",
        "vitkit.interop.from_hf",
        "vitkit.preprocess.Preprocess",
        "vitkit.train.TrainConfig",
        "vitkit.train.config.RECIPES",
        "vitkit.probe.few_shot",
        "vitkit.features.features",
        "vitkit.explain.explain_batch",
    ]:
        assert required in names, f"docs/api.md does not document {required}"


@pytest.mark.parametrize("dotted", _api_objects())
def test_every_object_on_the_api_page_has_a_docstring_that_says_something(dotted):
    import inspect

    obj, module, name = _resolve(dotted)
    own = obj.__doc__ if callable(obj) or inspect.isclass(obj) else None
    doc = own if own and own is not type(obj).__doc__ else _attribute_docstring(module, name)
    words = re.findall(r"[A-Za-z]{2,}", doc or "")
    assert len(words) >= 12, f"{dotted}: its docstring says too little to document it: {doc!r}"


# ---------------------------------------------------------------------------- the site
@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site built as ``scripts/docs.sh`` builds it, ``mkdocs build --strict``, once per run:
    a dead link, a page missing from the nav, a missing image or tutorial output, or an unreadable
    docstring fails it. The socket is closed to the build, so a plugin that wanted the network
    would fail too."""
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]')")
    import subprocess
    import sys

    tmp = tmp_path_factory.mktemp("docs")
    offline = tmp / "offline"
    offline.mkdir()
    (offline / "sitecustomize.py").write_text(
        "import socket\n"
        "def _refuse(*a, **k):\n    raise OSError('the docs build must not use the network')\n"
        "socket.socket.connect = _refuse\nsocket.create_connection = _refuse\n"
    )
    env = {"PYTHONPATH": str(offline), "PATH": "/usr/bin:/bin", "NO_MKDOCS_2_WARNING": "1", "HOME": str(tmp)}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp / "site"


def test_the_site_builds_strict_and_offline_with_every_page_and_api_entry(site):
    api = (site / "api.html").read_text()
    missing = [name for name in _api_objects() if f'id="{name}"' not in api]
    assert not missing, f"the built API page has no entry for {missing}"
    for page in ["index.html", "changelog.html", "results.html", "tutorials/5-paper-in-code.html", "guides/train.html"]:
        assert (site / page).is_file(), page


def test_a_tutorials_page_shows_the_output_its_run_saved(site):
    """pymdownx.snippets put the saved text in the page (not the ``--8<--`` line)."""
    page = (site / "tutorials" / "5-paper-in-code.html").read_text()
    saved = (ROOT / "docs" / "tutorials" / "outputs" / "5-paper-in-code" / "02.txt").read_text().split("|")[0]
    assert "--8&lt;--" not in page and saved.strip() in page


@pytest.mark.skipif(
    not (shutil.which("chromium") and shutil.which("chromedriver")),
    reason="Debian's chromium and chromium-driver are not installed (CI installs them)",
)
def test_the_built_pages_load_their_figures_and_highlight_their_code_in_a_browser(site, tmp_path):
    """scripts/docs_screenshots.py opens the home page, a guide, a tutorial and the API page in
    headless Chromium and exits non-zero when an image did not load."""
    pytest.importorskip("selenium")
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import docs_screenshots
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    assert docs_screenshots.main(["--site", str(site), "--out", str(tmp_path)]) == 0
    assert {p.name for p in tmp_path.glob("*.png")} == {f"{name}.png" for name in docs_screenshots.PAGES}


# ---------------------------------------------------------------------------- versions
def test_vitkit_version_prints_the_changelogs_top_released_version(capsys):
    """The changelog's first ``## [X.Y.Z]`` heading (after "Unreleased") is the version the
    package says it is, and ``vitkit --version`` prints it."""
    import vitkit
    from vitkit.cli import main

    released = re.findall(r"^## \[(\d+\.\d+\.\d+)\]", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert released, "CHANGELOG.md has no released version"
    assert vitkit.__version__ == released[0]
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out.strip() == f"vitkit {released[0]}"


def test_the_sites_link_hook_keeps_links_out_of_docs_working_and_flags_dead_ones(caplog):
    """scripts/mkdocs_hooks.py, without MkDocs: README/CHANGELOG become their pages, an existing
    source file becomes its text, a missing one is a warning (an error under --strict), and a
    table's note ``[1][2]`` is escaped so it is not read as a reference link."""
    from types import SimpleNamespace

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import mkdocs_hooks
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    page = SimpleNamespace(file=SimpleNamespace(src_uri="guides/train.md"))
    config = {"docs_dir": str(ROOT / "docs")}
    markdown = (
        "[changes](../../CHANGELOG.md) [code](../../src/vitkit/cnn.py) [gone](../../src/vitkit/nothing.py) "
        "[results](../results.md#main-job) | [1][2] |"
    )
    with caplog.at_level("WARNING"):
        out = mkdocs_hooks.on_page_markdown(markdown, page, config, None)
    assert "[changes](../changelog.md)" in out
    assert " code " in out and "cnn.py" not in out
    assert "[results](../results.md#main-job)" in out
    assert r"\[1\][2]" in out
    assert [r.getMessage() for r in caplog.records] == [
        "guides/train.md: link to src/vitkit/nothing.py, which does not exist in the repository"
    ]

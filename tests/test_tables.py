"""benchmarks/tables.py: every generated table and number in README.md and docs/ matches the records."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import tables  # noqa: E402


def test_every_generated_block_in_the_repository_is_up_to_date():
    files = tables.markdown_files(ROOT)
    stale = [m for f in files for m in tables.stale(f, tables.Sources())]
    assert not stale, "run `python benchmarks/tables.py`:\n" + "\n".join(stale)
    assert tables.main(["--check"]) == 0


def _copy_results(tmp_path: Path, *names: str, first: int | None = None) -> Path:
    """The named record files, or only the ``first`` records of each: records are only ever
    appended, so the first ones stay what they were when a test counted them by hand."""
    results = tmp_path / "results"
    results.mkdir()
    for name in names:
        lines = (ROOT / "benchmarks" / "results" / f"{name}.jsonl").read_text().splitlines(keepends=True)
        (results / f"{name}.jsonl").write_text("".join(lines[:first]))
    return results


def test_a_changed_record_makes_the_check_fail(tmp_path):
    results = _copy_results(tmp_path, "main_job", first=9)
    page = tmp_path / "page.md"
    page.write_text(
        "Intro.\n\n<!-- table:main-job -->\n<!-- /table:main-job -->\n\nThe job: <!-- value:main-job.accuracy -->?<!-- /value:main-job.accuracy -->.\n"
    )
    src = tables.Sources(results, tmp_path / "no-stores")
    assert tables.stale(page, src) == [
        f"{page}: table:main-job is out of date",
        f"{page}: value:main-job.accuracy is out of date",
    ]
    assert tables.main(["--results", str(results), str(page)]) == 0
    assert tables.main(["--check", "--results", str(results), str(page)]) == 0
    text = page.read_text()
    assert text.startswith("Intro.\n\n<!-- table:main-job -->\n9 records") and "| 93.40 % |" in text
    assert "The job: <!-- value:main-job.accuracy -->93.40 %<!-- /value:main-job.accuracy -->." in text

    lines = (results / "main_job.jsonl").read_text().splitlines()
    newest = json.loads(lines[-1])
    newest["metrics"]["train"]["accuracy"] = 0.9512
    (results / "main_job.jsonl").write_text("\n".join([*lines[:-1], json.dumps(newest)]) + "\n")
    assert tables.main(["--check", "--results", str(results), str(page)]) == 1
    assert set(tables.stale(page, tables.Sources(results))) == {
        f"{page}: table:main-job is out of date",
        f"{page}: value:main-job.accuracy is out of date",
    }


def test_unknown_names_and_unclosed_blocks_are_named(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("<!-- table:no-such-table -->\n<!-- /table:no-such-table -->\n<!-- table:main-job -->\n")
    messages = tables.stale(page, tables.Sources(tmp_path, tmp_path))
    assert f"{page}: unknown table 'no-such-table'" in messages
    assert f"{page}: table:main-job is never closed" in messages
    with pytest.raises(SystemExit, match="never closed"):
        tables.update(page, tables.Sources(tmp_path, tmp_path))


def test_a_file_without_markers_is_never_touched(tmp_path):
    page = tmp_path / "README.md"
    page.write_text("# A page\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    before = page.stat().st_mtime_ns
    assert tables.stale(page, tables.Sources()) == []
    assert tables.update(page, tables.Sources()) is False
    assert page.stat().st_mtime_ns == before


def test_every_table_renders_without_records(tmp_path):
    src = tables.Sources(tmp_path / "results", tmp_path / "stores")
    for name, table in tables.TABLES.items():
        assert isinstance(table(src), str), name
    assert tables.Values(src).names() == []


def test_rows_name_their_machine_revision_and_split(tmp_path):
    results = _copy_results(tmp_path, "recipe_search", "train_fmnist")
    src = tables.Sources(results, tmp_path)
    search = tables.recipe_search(src)
    assert search.count("scored on test; the recipe chosen on test") == 33
    hour = tables.recipes(src)
    assert "| Intel Xeon Processor | `ab737a1` |" in hour and "| AMD EPYC | `17389e4` |" in hour
    assert "`python benchmarks/train_fmnist.py --recipe fmnist-60m --seed 1 --threads 2 --out /tmp/r60s1/run`" in hour

"""benchmarks/record.py, the harness every benchmark appends through, and the records it keeps."""

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import record  # noqa: E402

RESULTS = record.ROOT / "benchmarks" / "results"  # the repository's, whatever $VITKIT_RESULTS says


def test_every_result_is_a_record_with_the_required_keys():
    files = sorted(RESULTS.glob("*.jsonl"))
    assert files, "no benchmarks/results/*.jsonl"
    for path in files:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            r = json.loads(line)
            missing = [k for k in record.REQUIRED if k not in r]
            assert not missing, f"{path.name}:{n} lacks {missing}"
            assert isinstance(r["config"], dict) and isinstance(r["metrics"], dict), f"{path.name}:{n}"
            assert r["revision"] and r["time"].endswith("Z"), f"{path.name}:{n}"


def test_no_result_file_outside_the_records():
    assert not sorted(p.name for p in RESULTS.glob("*.json"))


def test_append_adds_a_line_and_keeps_the_earlier_ones(tmp_path):
    env = record.environment()
    first = record.append("x", {"a": 1}, {"m": 2.0}, env=env, command="python x.py", results=tmp_path)
    record.append("x", {"a": 2}, {"m": 3.0}, command="python x.py --a 2", results=tmp_path, note="second")
    got = record.read("x", tmp_path)
    assert [r["config"]["a"] for r in got] == [1, 2] and got[0] == first and got[1]["note"] == "second"
    assert got[0]["load"] == env["load"] and all(k in got[1] for k in record.REQUIRED)
    with pytest.raises(ValueError, match="revision"):
        record.append("x", {}, {}, env={"time": "t", "cpu": "c"}, command="c", results=tmp_path)
    assert len(record.read("x", tmp_path)) == 2


def test_run_records_a_command_and_its_json(tmp_path):
    out = tmp_path / "figures.json"
    command = [sys.executable, "-c", f"import json; json.dump({{'model': 'm', 'ips': 5.0}}, open({str(out)!r}, 'w'))"]
    r = record.run_command("bench", command, {"k": 1}, json_file=out, config_keys=("model",), results=tmp_path)
    assert r["config"] == {"k": 1, "model": "m"} and r["metrics"]["ips"] == 5.0 and r["metrics"]["exit_status"] == 0
    log = tmp_path / "log.txt"
    r = record.run_command(
        "tests", [sys.executable, "-c", "print('3 passed'); raise SystemExit(1)"], {}, log=log, results=tmp_path
    )
    assert r["metrics"]["exit_status"] == 1 and r["metrics"]["last_line"] == "3 passed"


def test_merge_appends_a_lent_machines_records_once(tmp_path):
    lent, home = tmp_path / "lent", tmp_path / "home"
    record.append("vs", {"device": "cuda"}, {"r": 1.1}, command="c", results=lent)
    assert record.merge(lent, home) == {"vs": 1}
    assert record.merge(lent, home) == {"vs": 0}
    assert record.read("vs", home) == record.read("vs", lent)

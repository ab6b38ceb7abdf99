"""Every table of measurements that README.md and docs/ quote, generated from the records.

    python benchmarks/tables.py             # rewrite every generated block in README.md and docs/**/*.md
    python benchmarks/tables.py --check     # exit 1, naming each block that is out of date
    python benchmarks/tables.py --list      # the names, and the files that use each

A generated table sits in a Markdown file between two comments (which Markdown does not show)::

    <!-- table:main-job -->
    ...generated: edit the records or this file, never the block...
    <!-- /table:main-job -->

and a number inside a sentence between ``<!-- value:NAME -->`` and ``<!-- /value:NAME -->``.
A file without such comments is never touched. The numbers come from the benchmark records
(``benchmarks/results/NAME.jsonl``, :mod:`record`) and the experiments' stores
(``docs/experiments/*.json``); each row says when and on what machine it was measured and which
record it came from, and each accuracy which split scored it and which split chose it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import record

ROOT = record.ROOT
RESULTS = ROOT / "benchmarks" / "results"
STORES = ROOT / "docs" / "experiments"
BLOCK = re.compile(r"<!-- (table|value):([\w.-]+) -->(.*?)<!-- /\1:\2 -->", re.S)
OPENING = re.compile(r"<!-- (table|value):([\w.-]+) -->")

Record = dict[str, Any]


class Sources:
    """The records and the experiments' stores, each file read once."""

    def __init__(self, results: Path = RESULTS, stores: Path = STORES) -> None:
        self.results, self.stores = results, stores
        self._cache: dict[str, Any] = {}

    def records(self, name: str) -> list[Record]:
        """Every record of ``NAME.jsonl``, newest first (of two with the same time, the later line)."""
        if name not in self._cache:
            lines = enumerate(record.read(name, self.results))
            self._cache[name] = [r for _, r in sorted(lines, key=lambda ir: (ir[1]["time"], ir[0]), reverse=True)]
        return self._cache[name]

    def store(self, name: str) -> dict[str, Any]:
        """An experiment's store, ``{"meta": ..., "runs": {key: run}}`` (empty when missing)."""
        key = f"store:{name}"
        if key not in self._cache:
            path = self.stores / f"{name}.json"
            self._cache[key] = json.loads(path.read_text()) if path.is_file() else {"meta": {}, "runs": {}}
        return self._cache[key]


# ============================================================================ formatting
def pct(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{100 * x:.{digits}f} %"


def num(x: float | None, digits: int = 0) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def times(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}×"


def rate(x: float) -> str:
    """A learning rate as people write it: 3e-4, 2e-3, 0.03."""
    if x >= 0.01:
        return f"{x:g}"
    mantissa, exponent = f"{x:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def when(r: Record) -> str:
    """The record's UTC date and minute."""
    return r["time"][:16].replace("T", " ")


def machine(r: Record) -> str:
    """The GPU, or the CPU model and the cores the process had: what the record says, no more."""
    if r.get("gpu"):
        return r["gpu"]
    cpu = re.sub(r"\((R|TM)\)", "", r.get("cpu") or "unrecorded").replace("  ", " ").strip()
    cpu = "CPU unrecorded" if cpu == "unrecorded" else cpu
    return f"{cpu}, {r['cores']} cores" if r.get("cores") else cpu


def ref(r: Record) -> str:
    """The revision the record was measured on (its short hash); a dirty tree is said."""
    return f"`{r['revision'][:7]}`" + (" (dirty)" if r.get("dirty") else "")


def load(r: Record) -> str:
    """The 1-minute load average when the measurement started."""
    return f"{r['load'][0]:.2f}" if r.get("load") else "—"


class Notes:
    """Footnotes, numbered in order of first use: commands, and notes too long for a cell."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, bool]] = []

    def ref(self, text: str | None, code: bool = False) -> str:
        if not text:
            return ""
        if (text, code) not in self.texts:
            self.texts.append((text, code))
        return f"[{self.texts.index((text, code)) + 1}]"

    def command(self, r: Record) -> str:
        return self.ref(r["command"], code=True)

    def render(self) -> str:
        lines = [f"- [{i}] " + (f"`{t}`" if code else t) for i, (t, code) in enumerate(self.texts, 1)]
        return "\n\n" + "\n".join(lines) if lines else ""


def markdown(header: list[str], rows: Iterable[list[str]], right: str = "") -> str:
    """A Markdown table; ``right`` marks with ``r`` the columns aligned right (numbers)."""
    right = right.ljust(len(header), "l")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in right) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def count(rows: list, what: str = "record") -> str:
    return f"{len(rows)} {what}{'' if len(rows) == 1 else 's'}, newest first."


def split_words(scored: str | None, chosen: str | None, what: str = "`best/`") -> str:
    """Which split scored a number, and which split chose (a checkpoint, a recipe, a rate)."""
    text = f"scored on {scored or 'unrecorded'}"
    return text + (f"; {what} chosen on {chosen}" if chosen else "; nothing chosen")


# ============================================================================ training: accuracy
def main_job(src: Sources) -> str:
    """Every run of the main job (``bash scripts/main.sh`` on a fresh clone), newest first."""
    records, notes = src.records("main_job"), Notes()
    rows = []
    for r in records:
        t, e, c = r["metrics"]["train"], r["metrics"]["evaluate"], r["config"]
        rows.append(
            [when(r), pct(t["accuracy"]), pct(e.get("top1")), str(t["epochs_done"]), num(t["images_per_s"])]
            + [str(t["threads"]), f"{t['params'] / 1e6:.2f} M", str(c.get("seed", "—"))]
            + [split_words(c.get("scored_on"), c.get("best_chosen_on")), load(r), machine(r), ref(r)]
            + [notes.command(r) + notes.ref(c.get("note"))]
        )
    header = ["date (UTC)", "test accuracy", "`vitkit evaluate`, fp32", "epochs", "images/s", "threads", "params"]
    header += ["seed", "split", "load at start", "machine", "record", "command, note"]
    return count(records) + "\n\n" + markdown(header, rows, "lrrrrrrr") + notes.render()


def _recipe_row(r: Record, notes: Notes) -> list[str]:
    m, c = r["metrics"], r["config"]
    cells = [when(r), f"`{c['recipe']}`", str(c.get("seed", "—")), pct(m["test_accuracy"]), pct(m.get("top5"))]
    cells += [str(m["epochs_done"]), num(m["train_time_s"]), num(m["images_per_s"]), str(m.get("threads", "—"))]
    cells += [f"{m['params'] / 1e6:.2f} M", split_words(c.get("scored_on"), c.get("best_chosen_on")), machine(r)]
    return cells + [ref(r), notes.command(r) + notes.ref(c.get("note"))]


def recipes(src: Sources) -> str:
    """The recipes trained through ``benchmarks/train_fmnist.py``, newest first."""
    records, notes = src.records("train_fmnist"), Notes()
    header = ["date (UTC)", "recipe", "seed", "test accuracy", "top-5", "epochs", "training s", "images/s"]
    header += ["threads", "params", "split", "machine", "record", "command, note"]
    rows = [_recipe_row(r, notes) for r in records]
    return count(records) + "\n\n" + markdown(header, rows, "llrrrrrrrr") + notes.render()


def pipeline(src: Sources) -> str:
    """The data path's share of a training step: the full step against the model's alone."""
    records, notes = src.records("train_pipeline"), Notes()
    rows = []
    for r in records:
        m, c = r["metrics"], r["config"]
        rows.append(
            [when(r), f"`{c['recipe']}`", str(c["threads"]), str(c["batch_size"]), num(m["model_only_images_per_s"])]
            + [num(m["full_pipeline_images_per_s"]), pct(m["ratio"], 1), machine(r), ref(r), notes.command(r)]
        )
    header = ["date (UTC)", "recipe", "threads", "batch", "model alone, images/s", "full step, images/s"]
    header += ["full / model", "machine", "record", "command"]
    return count(records) + "\n\n" + markdown(header, rows, "llrrrrr") + notes.render()


def cnn_reference(src: Sources) -> str:
    """The ResNet the main job is measured against, under the same 10-minute budget."""
    records, notes = src.records("cnn_reference"), Notes()
    rows = []
    for r in records:
        m, c = r["metrics"], r["config"]
        rows.append(
            [when(r), pct(m["test_top1"]), f"{m['epochs']:.1f}", num(m["steps"]), num(m["train_s"])]
            + [num(m["images_per_s"]), str(c["threads"]), f"{m['params'] / 1e6:.2f} M", str(c.get("seed", "—"))]
            + [split_words(c.get("scored_on"), c.get("chosen_on")), load(r), machine(r), ref(r), notes.command(r)]
        )
    header = ["date (UTC)", "test accuracy", "epochs", "steps", "training s", "images/s", "threads", "params"]
    header += ["seed", "split", "load at start", "machine", "record", "command"]
    return count(records) + "\n\n" + markdown(header, rows, "lrrrrrrrr") + notes.render()


def data_hunger(src: Sources) -> str:
    """The data-hunger study's rows (benchmarks/data_hunger.py): each run's test accuracy, with
    the time its teacher or its pre-training took beside it."""
    records, notes = src.records("data_hunger"), Notes()
    rows = []
    for r in records:
        m, c = r["metrics"], r["config"]
        before = m.get("teacher_train_s") or m.get("pretrain_train_s")
        score = pct(m["test_top1"]) if m.get("objective", "classify") == "classify" else "—"
        rows.append(
            [when(r), str(c["labels"]), c["row"], score, num(m["train_s"]), num(before) if before else "—"]
            + [num(m["images_per_s"]), str(m["epochs"]), f"{m['params'] / 1e6:.2f} M", str(c["seed"])]
            + [split_words(c.get("scored_on"), c.get("chosen_on")), load(r), machine(r), ref(r), notes.command(r)]
        )
    header = ["date (UTC)", "labels", "run", "test accuracy", "training s", "teacher / pre-training s", "images/s"]
    header += ["epochs", "params", "seed", "split", "load at start", "machine", "record", "command"]
    return count(records, "run") + "\n\n" + markdown(header, rows, "lrlrrrrrrr") + notes.render()


def data_hunger_step(src: Sources) -> str:
    """What distillation costs a step: the distilled step against the student's step plus the
    teacher's forward, measured interleaved in one process."""
    records, notes = src.records("data_hunger_step"), Notes()
    rows = []
    for r in records:
        m, c = r["metrics"], r["config"]
        ms = [f"{m[k] * 1000:.1f}" for k in ("student_step_s", "teacher_forward_s", "distilled_step_s")]
        rows.append(
            [when(r), str(c["batch"]), *ms, f"{m['distilled_over_student_plus_teacher']:.3f}"]
            + [num(m["student_images_per_s"]), num(m["distilled_images_per_s"]), "bf16" if m["bf16"] else "fp32"]
            + [load(r), machine(r), ref(r), notes.command(r)]
        )
    header = ["date (UTC)", "batch", "student step ms", "teacher forward ms", "distilled step ms"]
    header += ["distilled / (student + teacher)", "student images/s", "distilled images/s", "precision"]
    header += ["load at start", "machine", "record", "command"]
    return count(records) + "\n\n" + markdown(header, rows, "lrrrrrrr") + notes.render()


def recipe_search(src: Sources) -> str:
    """Every candidate of the recipe searches: the first scored on the test split (which chose its
    winner), the later ones on the validation share held out of the training images."""
    records, notes = src.records("recipe_search"), Notes()
    rows = []
    for r in records:
        m, c = r["metrics"], r["config"]
        rows.append(
            [when(r), f"`{c['name']}`", num(c["seconds"]), str(c["seed"]), str(m["epochs"]), num(m["images_per_s"])]
            + [pct(m.get("val_top1", m.get("test_top1"))), pct(m.get("train_top1_last_epoch"))]
            + [f"{m['params'] / 1e6:.2f} M"]
            + [split_words(c.get("scored_on"), c.get("chosen_on"), "the recipe"), load(r), machine(r), ref(r)]
            + [notes.command(r)]
        )
    header = ["date (UTC)", "candidate", "budget s", "seed", "epochs", "images/s", "top-1 (on the split named)"]
    header += [
        "train top-1, last epoch (augmented)",
        "params",
        "split",
        "load at start",
        "machine",
        "record",
        "command",
    ]
    return count(records, "run") + "\n\n" + markdown(header, rows, "llrrrrrrr") + notes.render()


# ============================================================================ speed
def _case(row: dict) -> str:
    return f"{row['model']} {row['mode']} b{row['batch_size']}"


def vs_timm(src: Sources) -> str:
    """Every case of every ``vs_timm.py`` run: the two libraries timed interleaved in one process."""
    records, notes = src.records("vs_timm"), Notes()
    rows = []
    for r in records:
        for row in r["metrics"]["cases"]:
            timm, kit = row["timm"], row["vitkit"]
            rows.append(
                [when(r), _case(row), row["dtype"] + (", compiled" if row["compiled"] else "")]
                + [num(timm["images_per_s"], 1), num(kit["images_per_s"], 1), pct(timm.get("mfu"), 1)]
                + [pct(kit.get("mfu"), 1), times(row["ratio"]), times(row["ratio_paired"]), load(r), machine(r)]
                + [ref(r), notes.command(r) + notes.ref(r["config"].get("note"))]
            )
    header = ["date (UTC)", "case", "dtype", "timm images/s", "vitkit images/s", "timm MFU", "vitkit MFU"]
    header += ["vitkit / timm", "paired", "load at start", "machine", "record", "command, note"]
    intro = (
        f"{count(records, 'run')} *vitkit / timm*: of the median images/s; *paired*: the median over "
        "rounds of timm's time over vitkit's in the same round. MFU is against the peak probed in the same run."
    )
    return intro + "\n\n" + markdown(header, rows, "lllrrrrrrr") + notes.render()


def _fastest_cells(v: dict) -> list[str]:
    best = f"`{v['vitkit_fastest']}`" + (
        f" {num(v['vitkit_fastest_images_per_s'], 1)}" if "vitkit_fastest_images_per_s" in v else ""
    )
    timm = f"`{v['timm_best_eager']}` {num(v['timm_best_eager_images_per_s'], 1)}" if "timm_best_eager" in v else "—"
    both = times(v.get("vitkit_vs_timm_both_compiled"))
    return [
        best,
        times(v.get("vitkit_fastest_vs_timm_fp32")),
        timm,
        times(v.get("vitkit_fastest_vs_timm_best_eager")),
        both,
    ]


def vs_timm_fastest(src: Sources) -> str:
    """Each case's fastest vitkit variant against timm's fp32 and timm at its best eager variant."""
    records = src.records("vs_timm")
    rows = []
    for r in records:
        for case, v in r["metrics"].get("fastest_vs_timm_fp32", {}).items():
            rows.append([when(r), case.replace(":", " ")] + _fastest_cells(v) + [machine(r), ref(r)])
    header = ["date (UTC)", "case", "vitkit's fastest, images/s", "over timm fp32", "timm at its best (eager)"]
    header += ["vitkit's fastest over it", "both compiled, each at its best", "machine", "record"]
    note = "A dash: that run did not time it (the script measured fewer variants then)."
    return count(records, "run") + " " + note + "\n\n" + markdown(header, rows, "llrrrrr")


def profile(src: Sources) -> str:
    """``vitkit bench --profile`` of the main job's step: the history, then the newest by kind of work."""
    records = [r for r in src.records("bench") if "profile" in r["metrics"]]
    notes = Notes()
    rows = []
    for r in records:
        c, m = r["config"], r["metrics"]
        what = f"`{c.get('recipe') or c['model']}` {c['mode']} {c['dtype']} b{c['batch_size']}"
        rows.append(
            [when(r), what, f"{c['params'] / 1e6:.2f} M", num(m["images_per_s"]), pct(m["mfu"], 1)]
            + [f"{m['peak_tflops']:.2f}", machine(r), ref(r), notes.command(r)]
        )
    header = ["date (UTC)", "step", "params", "images/s", "MFU", "peak probe TFLOP/s", "machine", "record", "command"]
    text = count(records) + "\n\n" + markdown(header, rows, "llrrrr") + notes.render()
    if not records:
        return text
    newest = records[0]
    kinds = newest["metrics"]["profile"]["ms_per_step_by_kind"]
    total = sum(kinds.values())
    rows = [[k, f"{ms:.1f}", pct(ms / total, 1)] for k, ms in sorted(kinds.items(), key=lambda kv: -kv[1])]
    caption = f"The newest ({when(newest)}, {ref(newest)}), operators' self time summed by kind:"
    return text + "\n\n" + caption + "\n\n" + markdown(["kind of work", "ms/step", "share"], rows, "lrr")


def ab_train_speed(src: Sources) -> str:
    """An older revision's training loop against a newer one, alternated in one process."""
    records, notes = src.records("ab_train_speed"), Notes()
    rows = []
    for r in records:
        c, m = r["config"], r["metrics"]
        runs = m["images_per_s"]
        rows.append(
            [when(r), f"`{c['old_rev'][:7]}`", ref(r), f"{c['seconds_per_run']:g}", str(c["rounds"])]
            + [num(m["mean_old"]) + f" ({num(min(runs['old']))}–{num(max(runs['old']))})"]
            + [num(m["mean_new"]) + f" ({num(min(runs['new']))}–{num(max(runs['new']))})"]
            + [times(m["mean_new"] / m["mean_old"]), load(r), machine(r), notes.command(r)]
        )
    header = ["date (UTC)", "older revision", "newer (the record)", "s a run", "rounds", "older: images/s mean (runs)"]
    header += ["newer: images/s mean (runs)", "newer / older", "load at start", "machine", "command"]
    return count(records) + "\n\n" + markdown(header, rows, "lllrrrrrr") + notes.render()


def process_settings(src: Sources) -> str:
    """A process-wide setting (the allocator, thread affinity) against its baseline, alternated."""
    records, notes = src.records("process_settings"), Notes()
    rows = []
    for r in records:
        c, m = r["config"], r["metrics"]
        base, changed = list(m["mean"])
        rows.append(
            [when(r), c["setting"], f"{base}: {num(m['mean'][base])}", f"{changed}: {num(m['mean'][changed])}"]
            + [times(m["speedup"]), f"{c['rounds']} × {c['seconds_per_run']:g} s", load(r), machine(r), ref(r)]
            + [notes.command(r)]
        )
    header = ["date (UTC)", "setting", "baseline, images/s", "changed, images/s", "changed / baseline"]
    header += ["runs each", "load at start", "machine", "record", "command"]
    return count(records) + "\n\n" + markdown(header, rows, "llrrrr") + notes.render()


def attention_path(src: Sources) -> str:
    """The fused SDPA kernel against the written-out attention, per case: the newest record of each,
    and which path ``vitkit.runtime.attention_path`` picks there."""
    newest: dict[tuple, Record] = {}
    for r in src.records("attention_path"):
        c = r["config"]
        newest.setdefault((c["model"], c["mode"], c["dtype"], c["batch_size"]), r)
    notes, rows = Notes(), []
    for (model, mode, dtype, batch), r in newest.items():
        m = r["metrics"]
        ips = m["images_per_s"]
        rows.append(
            [f"`{model}` {mode} {dtype} b{batch}", str(m["tokens"]), num(ips["fused"]), num(ips["explicit"])]
            + [times(m["explicit_over_fused"]), "SDPA" if m["rule_fused"] else "explicit", load(r), machine(r)]
            + [when(r), ref(r), notes.command(r)]
        )
    header = ["case", "tokens", "SDPA, images/s", "explicit, images/s", "explicit / SDPA (paired rounds)"]
    header += ["the rule picks", "load at start", "machine", "date (UTC)", "record", "command"]
    return count(src.records("attention_path")) + "\n\n" + markdown(header, rows, "lrrrr") + notes.render()


def faithfulness(src: Sources) -> str:
    """Deletion and insertion areas of each explanation method, per recorded run, newest first."""
    records, notes, rows = src.records("faithfulness"), Notes(), []
    for r in records:
        c, summary = r["config"], r["metrics"]["summary"]
        for method, s in summary.items():
            rows.append(
                [when(r), c["note"] or c["run"], f"{c['images']:,} {c['dataset']} {c['split']}", method]
                + [f"{s['deletion_auc']:.3f}", f"{s['insertion_auc']:.3f}", machine(r), ref(r), notes.command(r)]
            )
    header = ["date (UTC)", "model", "images", "method", "deletion AUC (lower is better)"]
    header += ["insertion AUC (higher is better)", "machine", "record", "command"]
    return count(records) + "\n\n" + markdown(header, rows, "llllrr") + notes.render()


# ============================================================================ inference, data, serving
def int8(src: Sources) -> str:
    """CPU inference variants of one checkpoint: accuracy on the whole test split and speed."""
    records, notes = src.records("int8"), Notes()
    rows = []
    for r in records:
        c = r["config"]
        model = notes.ref(f"{c['checkpoint']}: {c['model']}")
        split = split_words(c.get("scored_on"), c.get("best_chosen_on"))
        for name, v in r["metrics"]["variants"].items():
            rows.append(
                [when(r), model, name, pct(v["accuracy"]), f"{v['accuracy_delta_points']:+.2f}"]
                + [pct(v["top1_agreement"]), num(v["images_per_s"]), times(v["speedup_vs_fp32"])]
                + [times(v["speedup_vs_bf16_autocast"]), f"±{100 * v['spread']:.0f} %", split, machine(r), ref(r)]
                + [notes.command(r)]
            )
    header = ["date (UTC)", "checkpoint", "variant", "top-1", "Δ points", "agrees with fp32", "images/s"]
    header += ["× fp32", "× bf16 autocast", "spread", "split", "machine", "record", "command"]
    return count(records) + "\n\n" + markdown(header, rows, "lllrrrrrrr") + notes.render()


def _feed_rows(m: dict) -> list[tuple[str, str, str, str]]:
    """(path, images/s fed, images/s of the model alone, ratio) of a data_path record."""
    d, cache, stream = m["decode"], m["cache"], m["stream"]
    rows = [
        ("decode and resize, 1 core", num(d["one_core_images_per_s"]), "", ""),
        (f"building the disk cache, {d['workers']} workers", num(d["all_workers_images_per_s"]), "", ""),
        ("cache, later epochs", num(cache["fed_images_per_s"], 1), num(cache["model_only_images_per_s"], 1)),
        ("cache, first epoch (decode + train)", num(cache["first_epoch_images_per_s"], 1), "", ""),
    ]
    rows[2] += (f"{cache['ratio']:.3f}",)
    for w in (1, 2):
        s = stream.get(f"{w}_workers")
        if s:
            rows.append(
                (
                    f"stream, {w} worker(s)",
                    num(s["fed_images_per_s"], 1),
                    num(s["model_only_images_per_s"], 1),
                    f"{s['ratio']:.3f}",
                )
            )
        alone = stream.get(f"loader_alone_{w}_workers_images_per_s")
        if alone:
            rows.append((f"stream loader alone, {w} worker(s)", num(alone), "", ""))
    return rows


def data_path(src: Sources) -> str:
    """How fast the disk cache and streamed shards feed ViT-Ti/16 training at 224 px."""
    records, notes = src.records("data_path"), Notes()
    rows = []
    for r in records:
        what = notes.ref(r["config"]["what"])
        for path, fed, alone, ratio in _feed_rows(r["metrics"]):
            rows.append([when(r), what, path, fed, alone or "—", ratio or "—", machine(r), ref(r)])
            rows[-1].append(notes.command(r))
        rows.append([when(r), what, "peak memory of the process", f"{num(r['metrics']['peak_rss_mb'])} MB"])
        rows[-1] += ["—", "—", machine(r), ref(r), notes.command(r)]
    header = ["date (UTC)", "model", "path", "images/s", "model alone, images/s", "fed / alone", "machine", "record"]
    return count(records) + "\n\n" + markdown(header + ["command"], rows, "lllrrr") + notes.render()


def memory_limit(src: Sources) -> str:
    """One epoch on 10,000 224-px JPEGs inside a memory cgroup: the peak memory of each data path."""
    records, notes = src.records("memory_limit"), Notes()
    rows = []
    for r in records:
        for run in r["metrics"]["runs"]:
            limit = f"{run['limit_mb']:,} MB" if run["limit_mb"] else "none"
            rows.append(
                [when(r), f"`{run['data_mode']}`", limit, str(run["exit_status"]), str(run["oom_kills"])]
                + [num(run["peak_anon_mb"]), num(run["peak_page_cache_mb"]), num(run.get("images_per_s"), 1)]
                + [pct(run.get("accuracy"), 1), load(r), machine(r), ref(r), notes.command(r)]
            )
    header = ["date (UTC)", "--data-mode", "memory limit", "exit", "OOM kills", "peak anonymous MB"]
    header += ["peak page cache MB", "images/s", "accuracy*", "load at start", "machine", "record", "command"]
    note = (
        "\n\n\\* On the 1,000 images `vitkit train` holds out of the folder for validation (it has no test "
        "split); one epoch of a one-block model: a check that training ran, not a result."
    )
    return count(records) + "\n\n" + markdown(header, rows, "lllrrrrrr") + notes.render() + note


def serve(src: Sources) -> str:
    """How fast ``vitkit serve`` answers one upload, end to end through the app."""
    records, notes = src.records("serve_latency"), Notes()
    rows = []
    for r in records:
        for row in r["metrics"]["rows"]:
            rows.append(
                [when(r), row["model"], row["image"], row["request"], f"{row['grid'][0]}×{row['grid'][1]}"]
                + [str(row["depth"]), num(row["median_ms"], 1), num(row["max_ms"], 1), str(row["repeats"])]
                + [str(r["config"]["threads"]), machine(r), ref(r), notes.command(r)]
            )
    header = ["date (UTC)", "model", "image", "request", "grid", "depth", "median ms", "max ms", "requests"]
    header += ["threads", "machine", "record", "command"]
    return count(records) + "\n\n" + markdown(header, rows, "lllllrrrrr") + notes.render()


def serve_agreement(src: Sources) -> str:
    """Do the web page and ``vitkit predict`` classify the same files the same way?"""
    records, notes = src.records("serve_agreement"), Notes()
    rows = []
    for r in records:
        c, m = r["config"], r["metrics"]
        n = c["images"]
        rows.append(
            [when(r), f"`{c['checkpoint']}`", num(n), f"{m['top1_agree_page_vs_predict']:,} / {n:,}"]
            + [pct(m["accuracy_predict"]), pct(m["accuracy_page"]), pct(m["accuracy_former_page_path"])]
            + [
                f"{m['top1_agree_former_page_vs_predict']:,} / {n:,}",
                split_words(c.get("scored_on"), c.get("best_chosen_on")),
            ]
            + [machine(r), ref(r), notes.command(r)]
        )
    header = ["date (UTC)", "checkpoint", "test images", "page = predict", "accuracy, predict", "accuracy, page"]
    header += ["accuracy, the page's former path", "former path = predict", "split", "machine", "record", "command"]
    return count(records) + "\n\n" + markdown(header, rows, "llrrrrrr") + notes.render()


# ============================================================================ transfer, processes, GPU
def probe(src: Sources) -> str:
    """``vitkit probe`` of the fine-tuning benchmark's upstream model and of its random twin, and
    ``--lr-grid`` on 10 images per class."""
    records, notes = src.records("probe"), Notes()
    rows, grid = [], []
    for r in records:
        m = r["metrics"]
        random = {row["shots"]: row for row in m["probe_random_weights"]["summary"]}
        for row in m["probe_upstream"]["summary"]:
            twin = random.get(row["shots"], {})
            rows.append(
                [when(r), str(row["shots"]), str(row["seeds"]), _mean_std(row, "ridge"), _mean_std(row, "knn")]
                + [_mean_std(twin, "ridge"), _mean_std(twin, "knn"), machine(r), ref(r), notes.command(r)]
            )
        for seed, g in enumerate(m["lr_grid_10_per_class"]):
            chosen = g["lr_grid"]["chosen"]
            grid.append([when(r), str(seed), rate(chosen), pct(g["accuracy"]), machine(r), ref(r), notes.command(r)])
    header = ["date (UTC)", "shots per class", "draws", "pre-trained: ridge", "pre-trained: 20-NN"]
    header += ["random weights: ridge", "random weights: 20-NN", "machine", "record", "command"]
    text = count(records) + " Test accuracy on classes 5-9 (mean ± std over the draws); the ridge penalty is "
    text += "chosen by leave-one-out on the k images of each class alone, never on the test split.\n\n"
    text += markdown(header, rows, "lrrrrrr") + "\n\n"
    text += "`vitkit train --init --per-class 10 --lr-grid 0.0003,0.001,0.003,0.01` (AdamW, 200 steps): the rate "
    text += "chosen on one held-out training image per class, then scored on the test split of classes 5-9.\n\n"
    header = ["date (UTC)", "seed", "rate chosen", "test accuracy", "machine", "record", "command"]
    return text + markdown(header, grid, "lrrr") + notes.render()


def _mean_std(row: dict, key: str) -> str:
    if f"{key}_mean" not in row:
        return "—"
    return f"{100 * row[f'{key}_mean']:.2f} ± {100 * row[f'{key}_std']:.2f} %"


def finetune(src: Sources) -> str:
    """Fine-tuning variants from one upstream model, each run's rate chosen on held-out images."""
    records, notes = src.records("finetune"), Notes()
    rows = []
    for r in records:
        runs = r["metrics"]["runs"]
        for name in dict.fromkeys(run["name"] for run in runs):
            mine = [run for run in runs if run["name"] == name]
            full = next((run for run in mine if run.get("data") != "10 per class"), None)
            shots = [run["accuracy"] for run in mine if run.get("data") == "10 per class"]
            lr = rate(full["lr"]) if full and "lr" in full else "fixed (in its command)"
            rows.append(
                [when(r), name, lr, pct(full.get("val_accuracy") if full and "lr" in full else None)]
                + [pct(full["accuracy"]) if full else "—", _seeds(shots), machine(r), ref(r), notes.command(r)]
            )
    header = ["date (UTC)", "variant", "rate chosen", "its held-out accuracy", "test accuracy, all 30,000"]
    header += ["test accuracy, 10 per class (seeds)", "machine", "record", "command"]
    text = count(records) + " Upstream: classes 0-4, scored on their test images; downstream: classes 5-9. "
    text += "Each variant's rate is chosen on a held-out tenth of the downstream training images (never the test "
    text += "split) and reused for the 10-per-class runs.\n\n"
    return text + markdown(header, rows, "llrrrr") + notes.render()


def _seeds(values: list[float]) -> str:
    if not values:
        return "—"
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)) ** 0.5
    return f"{100 * mean:.2f} ± {100 * std:.2f} % ({len(values)})"


def ddp(src: Sources) -> str:
    """Training throughput with 1 and 2 processes (torchrun, gloo) against 1 process with 2 threads."""
    records, notes = src.records("ddp_scaling"), Notes()
    rows = []
    for r in records:
        c = r["config"]
        for row in r["metrics"]["rows"]:
            rows.append(
                [when(r), f"`{c['model']}`, {c['limit_train']:,} images, {c['epochs']} epochs"]
                + [str(row["processes"]), str(row["threads_per_process"]), num(row["images_per_s"], 1)]
                + [load(r), f"{r['load_end'][0]:.2f}" if r.get("load_end") else "—", machine(r), ref(r)]
                + [notes.command(r)]
            )
    header = ["date (UTC)", "training", "processes", "threads each", "images/s", "load at start", "load after"]
    return (
        count(records) + "\n\n" + markdown(header + ["machine", "record", "command"], rows, "llrrrrr") + notes.render()
    )


def gpu(src: Sources) -> str:
    """What the lent GPUs measured: ``vitkit bench`` timings and ``gpu_checks.sh``'s tests and training."""
    benches = [r for r in src.records("bench") if r.get("device") == "cuda"]
    notes = Notes()
    rows = []
    for r in benches:
        c, m = r["config"], r["metrics"]
        rows.append(
            [
                when(r),
                f"`{c['model']}` {c['mode']} {c['dtype']} b{c['batch_size']}",
                "yes" if c.get("compile") else "no",
            ]
            + [num(m["images_per_s"]), pct(m["mfu"], 1), num(m["peak_tflops"]), machine(r), ref(r), notes.command(r)]
        )
    header = ["date (UTC)", "`vitkit bench`", "compiled", "images/s", "MFU", "peak probe TFLOP/s", "GPU", "record"]
    text = count(benches) + "\n\n" + markdown(header + ["command"], rows, "lllrrr")
    checks = src.records("gpu_checks")
    rows = [
        [when(r), r["config"].get("part", "—"), _check_result(r, notes), machine(r), ref(r), notes.command(r)]
        for r in checks
    ]
    text += f"\n\n`benchmarks/gpu_checks.sh`: {count(checks)}\n\n"
    return text + markdown(["date (UTC)", "part", "result", "GPU", "record", "command"], rows) + notes.render()


def _check_result(r: Record, notes: Notes) -> str:
    m = r["metrics"]
    if "tests" in m:  # a session's summary, written by hand before the records existed
        return "; ".join(f"{k}: {v}" for k, v in {**m["tests"], **m["training"]}.items())
    if "accuracy" in m:
        return (
            f"exit {m['exit_status']}: {m.get('eval_split', '?')} accuracy {pct(m['accuracy'])}, "
            f"{m.get('epochs_done')} epochs, {num(m.get('images_per_s'))} images/s"
        )
    return f"exit {m['exit_status']}: {m.get('last_line', '')}"


# ============================================================================ the README's one table
def headline(src: Sources) -> str:
    """The current results: the newest record of the main job, the hour recipe and the CNN
    reference, and vitkit's speed against timm in the newest run of each case."""
    notes = Notes()
    rows = []
    job = src.records("main_job")
    if job:
        r, t = job[0], job[0]["metrics"]["train"]
        rows.append(["main job: `fmnist-10m`, 10 minutes", pct(t["accuracy"]), str(t["epochs_done"])])
        rows[-1] += [num(t["images_per_s"]), *_headline_tail(r, notes, len(job))]
    hour = [r for r in src.records("train_fmnist") if r["config"]["recipe"] == "fmnist-60m"]
    if hour:
        r, m = hour[0], hour[0]["metrics"]
        rows.append(["`fmnist-60m`, one hour", pct(m["test_accuracy"]), str(m["epochs_done"]), num(m["images_per_s"])])
        rows[-1] += _headline_tail(r, notes, len(hour))
    cnn = src.records("cnn_reference")
    if cnn:
        r, m = cnn[0], cnn[0]["metrics"]
        rows.append(["CNN reference: a ResNet, 10 minutes", pct(m["test_top1"]), f"{m['epochs']:.1f}"])
        rows[-1] += [num(m["images_per_s"]), *_headline_tail(r, notes, len(cnn))]
    header = ["", "test accuracy", "epochs", "images/s", "seed", "split", "runs recorded", "machine", "date (UTC)"]
    text = markdown(header + ["record", "command"], rows, "lrrrrlr")
    return text + "\n\n" + _speed_headline(src) + notes.render()


def _headline_tail(r: Record, notes: Notes, runs: int) -> list[str]:
    c = r["config"]
    split = split_words(c.get("scored_on"), c.get("best_chosen_on", c.get("chosen_on")))
    return [str(c.get("seed", "—")), split, str(runs), machine(r), when(r), ref(r), notes.command(r)]


def _speed_headline(src: Sources) -> str:
    """vitkit over timm in the newest run of each (device, case): the same dtype (bf16, eager), and
    vitkit's fastest variant over timm's fastest eager one where that run timed it."""
    newest: dict[tuple[str, str], tuple[Record, dict]] = {}
    for r in src.records("vs_timm"):  # newest first: the first seen of each case wins
        for row in r["metrics"]["cases"]:
            if row["dtype"] == "bf16" and not row["compiled"]:
                newest.setdefault((r.get("device", "cpu"), _case(row)), (r, row))
    rows = []
    order = {m: i for i, m in enumerate(("vit_tiny_28", "vit_ti16", "vit_s16", "vit_b16"))}
    for (device, case), (r, row) in sorted(
        newest.items(), key=lambda kv: (kv[0][0], order.get(kv[1][1]["model"], 9), kv[0][1])
    ):
        v = r["metrics"].get("fastest_vs_timm_fp32", {}).get(f"{row['model']}:{row['mode']}", {})
        best = times(v.get("vitkit_fastest_vs_timm_best_eager"))
        rows.append([case, device, times(row["ratio"]), best, machine(r), when(r), ref(r)])
    header = ["vitkit against timm", "device", "vitkit / timm, bf16 eager", "vitkit's fastest / timm's fastest eager"]
    return markdown(header + ["machine", "date (UTC)", "record"], rows, "llrr")


# ============================================================================ the experiments' stores
def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1), as the experiments' ``common.mean_std``."""
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return mean, std


def pm(values: list[float]) -> str:
    """Mean ± std of accuracies, in per cent."""
    if not values:
        return "—"
    m, s = mean_std(values)
    return f"{100 * m:.2f} ± {100 * s:.2f} %" if len(values) > 1 else pct(m)


def store_caption(src: Sources, *names: str) -> str:
    """Where a table's runs are kept, when they finished, on what machine, by which command."""
    runs = [r for n in names for r in src.store(n)["runs"].values()]
    if not runs:
        return "No runs recorded yet."
    done = sorted(r["finished"][:16] for r in runs if "finished" in r)
    metas = [src.store(n)["meta"] for n in names]
    machines = sorted({_store_machine(m) for m in metas})
    commands = ", ".join(sorted({f"`{m.get('command', '?')}`" for m in metas}))
    files = ", ".join(f"`docs/experiments/{n}.json`" for n in names)
    return (
        f"{len(runs)} runs in {files}, finished {done[0]} to {done[-1]} UTC, on {'; '.join(machines)}, by {commands}."
    )


def _store_machine(meta: dict) -> str:
    """A store's machine: the record schema's environment, or what a store written before said."""
    if "environment" in meta:
        return machine(meta["environment"]) + _threads(meta.get("threads"))
    m = meta.get("machine", {})
    return f"CPU unrecorded ({m.get('cpu', '?')}), {m.get('cores', '?')} cores" + _threads(m.get("threads"))


def _threads(n: int | None) -> str:
    return "" if n is None else f", {n} thread{'' if n == 1 else 's'}"


def exp_posemb(src: Sources) -> str:
    """Experiment 1: test accuracy of each position embedding, over seeds."""
    store = src.store("posemb")
    rows = []
    for label, option in store["meta"].get("variants", {}).items():
        runs = sorted((r for r in store["runs"].values() if r["posemb"] == option), key=lambda r: r["seed"])
        accs = [r["test_top1"] for r in runs]
        params = num(runs[0]["params"]) if runs else "—"
        rows.append([label, f'`posemb="{option}"`', params, pm(accs), ", ".join(f"{100 * a:.2f}" for a in accs)])
    header = ["position embedding", "vitkit option", "params", "test accuracy, mean ± std", "each seed (0, 1, 2)"]
    note = "Scored on the 10,000 test images; nothing chosen (one fixed budget and learning rate for every run). "
    return markdown(header, rows, "llrr") + "\n\n" + note + store_caption(src, "posemb")


def exp_pooling(src: Sources) -> str:
    """Experiment 2: each pooling at each learning rate, and the rate that scored best."""
    store = src.store("pooling")
    lrs = store["meta"].get("lrs", [])
    rows = []
    for pool, label in (("cls", 'class token (`pool="cls"`)'), ("gap", 'average pooling (`pool="gap"`)')):
        runs = {r["lr"]: r["test_top1"] for r in store["runs"].values() if r["pool"] == pool}
        if not runs:
            continue
        best = max(runs, key=runs.get)
        cells = [f"**{pct(runs[lr])}**" if lr == best else pct(runs.get(lr)) for lr in lrs]
        rows.append([label, *cells, rate(best)])
    header = ["peak learning rate", *(rate(lr) for lr in lrs), "best rate, chosen on the test split"]
    note = (
        "Every cell is scored on the 10,000 test images, one seed. The bold cell, the best rate of each "
        "pooling, is chosen on those same test images: there is no validation split in these runs. "
    )
    return markdown(header, rows, "l" + "r" * (len(lrs) + 1)) + "\n\n" + note + store_caption(src, "pooling")


def exp_patch_size(src: Sources) -> str:
    """Experiment 3: accuracy against compute for patch sizes 7, 4 and 2."""
    store = src.store("patch_size")
    rows = []
    for patch, mult in store["meta"].get("runs", []):
        r = store["runs"].get(f"patch{patch}/x{mult}")
        if r:
            rows.append(
                [str(patch), str(r["tokens"]), num(r["params"]), f"{r['gflops_forward']:.3f}", num(r["steps"])]
                + [f"{r['train_pflops']:.3f}", f"{r['train_s']:.0f} s", num(r["images_per_s"]), pct(r["test_top1"])]
            )
    header = ["patch", "tokens", "params", "GFLOPs / image", "steps", "training PFLOP", "wall", "images/s"]
    note = "Scored on the 10,000 test images, seed 0; nothing chosen. "
    return markdown(header + ["test accuracy"], rows, "rrrrrrrrr") + "\n\n" + note + store_caption(src, "patch_size")


def _by_size(runs: dict, model: str) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for r in runs.values():
        if r["model"] == model:
            out.setdefault(r["size"], []).append(r)
    return out


def exp_data_efficiency(src: Sources) -> str:
    """Experiment 4: the ViT and the ResNet on 1k to 60k images, under both budgets."""
    scaled, fixed = src.store("data_efficiency_data")["runs"], src.store("data_efficiency")["runs"]
    sizes = sorted({r["size"] for r in [*scaled.values(), *fixed.values()]})
    vit, resnet = _by_size(scaled, "ViT"), _by_size(scaled, "ResNet")
    vit500, resnet500 = _by_size(fixed, "ViT"), _by_size(fixed, "ResNet")

    def cells(by: dict, bold: bool = False) -> list[str]:
        return [
            (f"**{pm([r['test_top1'] for r in by[n]])}**" if bold else pm([r["test_top1"] for r in by[n]]))
            if n in by
            else "—"
            for n in sizes
        ]

    gap = [
        f"{100 * (resnet[n][0]['test_top1'] - vit[n][0]['test_top1']):.1f}" if n in vit and n in resnet else "—"
        for n in sizes
    ]
    rows = [
        ["steps (data-scaled budget)", *(num(vit[n][0]["steps"]) if n in vit else "—" for n in sizes)],
        ["ViT, data-scaled budget", *cells(vit)],
        ["ResNet, data-scaled budget", *cells(resnet)],
        ["ResNet − ViT, points", *gap],
        [f"ViT, 500 steps ({_seed_count(vit500)} seeds)", *cells(vit500)],
        [f"ResNet, 500 steps ({_seed_count(resnet500)} seeds)", *cells(resnet500)],
    ]
    note = "Scored on the 10,000 test images; nothing chosen (fixed budgets, one learning rate). "
    caption = store_caption(src, "data_efficiency_data") + " " + store_caption(src, "data_efficiency")
    return (
        markdown(["training images", *(num(n) for n in sizes)], rows, "l" + "r" * len(sizes)) + "\n\n" + note + caption
    )


def _seed_count(by: dict) -> int:
    return max((len(v) for v in by.values()), default=0)


def exp_attention_distance(src: Sources) -> str:
    """Experiment 5: the mean attention distance of each block, over heads (and its smallest head)."""
    store = src.store("attention_distance")
    runs = [store["runs"][k] for k in ("n60000", "n1000", "n0") if k in store["runs"]]
    depth = max((len(r["distance"]) for r in runs), default=0)
    rows = []
    for r in runs:
        label = r["label"] + (f", test accuracy {pct(r['test_top1'])}" if "test_top1" in r else "")
        cells = [f"{sum(d) / len(d):.1f} ({min(d):.1f})" for d in r["distance"]]
        rows.append([label, *cells])
    header = ["block: mean over heads (smallest head), px", *(str(i + 1) for i in range(depth))]
    uniform = f"Uniform attention over the grid: {runs[0]['uniform']:.1f} px. " if runs else ""
    note = "The distances are measured on 500 test images; the accuracies scored on all 10,000; nothing chosen. "
    return (
        markdown(header, rows, "l" + "r" * depth) + "\n\n" + uniform + note + store_caption(src, "attention_distance")
    )


def exp_registers(src: Sources) -> str:
    """Experiment 6: 0, 1 and 4 registers: accuracy, sinks, and the registers' norms and attention."""
    store = src.store("registers")
    rows = []
    for key in ("r0", "r1", "r4"):
        r = store["runs"].get(key)
        if r is None:
            continue
        top = max(range(len(r["max_patch_ratio"])), key=lambda i: r["max_patch_ratio"][i])
        taken = [v for v in r["absorbed"] if v is not None]
        regs = r.get("max_register_ratio")
        reg_taken = [v for v in r.get("register_absorbed", []) if v is not None]
        tokens = 1 + r["register_tokens"] + len(r["rollout"][0]) * len(r["rollout"][0][0])  # class, registers, patches
        uniform = f" (uniform: {pct(r['register_tokens'] / tokens, 1)})"
        rows.append(
            [
                str(r["register_tokens"]),
                num(r.get("params")),
                pct(r.get("test_top1")),
                f"{r['steps']} ({r['train_s']:.0f} s)" if "steps" in r else "—",
                f"{r['images_with_sinks']} of {r['images']}",
                f"{r['max_patch_ratio'][top]:.1f}× (layer {top + 1})",
                pct(sum(taken) / len(taken), 1) if taken else "—",
                f"{max(regs):.1f}×" if regs else "—",
                pct(sum(reg_taken) / len(reg_taken), 1) + uniform if reg_taken else "—",
            ]
        )
    header = [
        "registers",
        "params",
        "test accuracy",
        "steps (training time)",
        "images with a sink patch",
        "largest patch norm ÷ median",
        "attention the sinks take",
        "largest register norm ÷ median",
        "attention the registers take",
    ]
    note = (
        "A sink: a patch token over 10× its layer's median patch norm. Attention taken: the share of the other "
        "tokens' attention (mean of heads) that the next block pays them, averaged over layers (and, for sinks, "
        "over the images and layers that have one). Sinks measured on 500 test images; accuracy scored on all "
        "10,000; nothing chosen. "
    )
    return markdown(header, rows, "rrrrrrrrr") + "\n\n" + note + store_caption(src, "registers")


# ============================================================================ the transfer study
TRANSFER_STORES = ("transfer", "transfer-ViT", "transfer-ResNet")
ARCHS = ("ViT", "ResNet")
INIT_LABEL = {"scratch": "random init", "n1000": "1k", "n5000": "5k", "n30000": "30k"}


def _rate_choice(src: Sources) -> str:
    lrs = next((src.store(n)["meta"]["lrs"] for n in TRANSFER_STORES if src.store(n)["meta"].get("lrs")), [])
    return (
        f"Each fine-tuning and scratch run's learning rate is chosen from {{{', '.join(rate(x) for x in lrs)}}} on "
        "a held-out 2 % of each class of its own training images (one image per class in the 10-shot sets), never "
        "on the test split; the upstream models train at a fixed rate; every number is scored on the test split of "
        "its task. "
    )


def transfer_runs(src: Sources) -> dict[str, dict]:
    runs: dict[str, dict] = {}
    for name in TRANSFER_STORES:
        runs |= src.store(name)["runs"]
    return runs


def _transfer_caption(src: Sources) -> str:
    return store_caption(src, *(n for n in TRANSFER_STORES if src.store(n)["runs"]))


def _inits(runs: dict, arch: str) -> list[str]:
    found = {r["init"] for r in runs.values() if r.get("arch") == arch and r["part"] == "probe"}
    return sorted(found, key=lambda i: -1 if i == "scratch" else int(i[1:]))


def _accs(runs: dict, part: str, arch: str, init: str) -> list[float]:
    return [r["test_top1"] for r in runs.values() if r["part"] == part and r["arch"] == arch and r["init"] == init]


def transfer_upstream(src: Sources) -> str:
    """The upstream models, on classes 0-4."""
    runs = transfer_runs(src)
    rows = [
        [
            r["arch"],
            num(r["size"]),
            num(r["steps"]),
            f"{r['epochs']:.0f}",
            f"{r['train_loss_end']:.2f}",
            pct(r["test_top1"]),
        ]
        for r in runs.values()
        if r["part"] == "upstream"
    ]
    header = ["model", "upstream images", "steps", "epochs", "final training loss", "test accuracy, classes 0-4"]
    rates = ", ".join(sorted({rate(r["lr"]) for r in runs.values() if r["part"] == "upstream"}))
    note = f"Scored on the 5,000 test images of classes 0-4; nothing chosen (rate {rates}, a budget set by the data). "
    return markdown(header, rows, "lrrrrr") + "\n\n" + note + _transfer_caption(src)


def transfer_probe(src: Sources) -> str:
    """The few-shot ridge probe (and 20-NN) of each model's frozen features on classes 5-9."""
    runs = transfer_runs(src)
    rows = []
    for arch in ARCHS:
        for init in _inits(runs, arch):
            by_shots = {row["shots"]: row for row in runs[f"probe/{arch}/{init}"]["summary"]}
            cells = [_mean_std(by_shots[k], "ridge") if k in by_shots else "—" for k in (1, 5, 10, 25)]
            rows.append([arch, INIT_LABEL.get(init, init), *cells, _mean_std(by_shots.get(10, {}), "knn")])
    header = ["model", "pre-trained on", *(f"{k}-shot ridge" for k in (1, 5, 10, 25)), "10-shot 20-NN"]
    note = (
        "Scored on the 5,000 test images of classes 5-9, mean ± std over 3 seeded draws of the shots; the ridge "
        "penalty is chosen by leave-one-out on the shots alone. "
    )
    return markdown(header, rows, "llrrrrr") + "\n\n" + note + _transfer_caption(src)


def transfer_finetune(src: Sources) -> str:
    """Fine-tuning each upstream model against training the same network from scratch."""
    runs = transfer_runs(src)
    rows = []
    for arch in ARCHS:
        few0, full0 = _accs(runs, "few", arch, "scratch"), _accs(runs, "full", arch, "scratch")
        for init in _inits(runs, arch):
            few, full = _accs(runs, "few", arch, init), _accs(runs, "full", arch, init)
            if not few or not full:
                continue
            gain = "" if init == "scratch" else f"{100 * (mean_std(few)[0] - mean_std(few0)[0]):+.1f}"
            gain_full = "" if init == "scratch" else f"{100 * (full[0] - full0[0]):+.1f}"
            label = "scratch" if init == "scratch" else f"pre-trained on {INIT_LABEL.get(init, init)}"
            rows.append([arch, label, pm(few), gain, pct(full[0]), gain_full])
    header = ["model", "start", "10 images per class (3 seeds)", "gain over scratch", "all 30k (1 seed)", "gain"]
    return markdown(header, rows, "llrrrr") + "\n\n" + _rate_choice(src) + _transfer_caption(src)


def transfer_digits(src: Sources) -> str:
    """From the 30k upstream models to handwritten digits: fine-tuning, scratch, the probe."""
    runs = transfer_runs(src)
    rows = []
    for arch in ARCHS:
        scratch = _accs(runs, "digits", arch, "scratch")
        tuned = [
            r["test_top1"]
            for r in runs.values()
            if r["part"] == "digits" and r["arch"] == arch and r["init"] != "scratch"
        ]
        probes = [r for r in runs.values() if r["part"] == "digits-probe" and r["arch"] == arch]
        if scratch and tuned and probes:
            by_shots = {row["shots"]: row for row in probes[0]["summary"]}
            rows.append(
                [
                    arch,
                    pct(scratch[0]),
                    pct(tuned[0]),
                    _mean_std(by_shots.get(10, {}), "ridge"),
                    _mean_std(by_shots.get(25, {}), "ridge"),
                ]
            )
    header = ["model", "digits: scratch", "fine-tuned from 30k", "10-shot ridge probe", "25-shot ridge probe"]
    note = _rate_choice(src) + "Digits: scikit-learn's 359 test images; probes over 3 draws. "
    return markdown(header, rows, "lrrrr") + "\n\n" + note + _transfer_caption(src)


def transfer_resolution(src: Sources) -> str:
    """The 30k ViT fine-tuned at 56x56 against 28x28."""
    runs = transfer_runs(src)
    rows = []
    for part, label in (("few", "10 images per class (3 seeds)"), ("full", "all 30k (1 seed)")):
        high = [r for r in runs.values() if r["part"] == f"{part}56"]
        low = _accs(runs, part, "ViT", high[0]["init"]) if high else []
        if low and high:
            rows.append([label, pm(low), pm([r["test_top1"] for r in high])])
    note = (
        "The 56x56 runs reuse the rate their 28x28 twin chose on its held-out images (never the test split); "
        "scored on the test split of classes 5-9. "
    )
    return (
        markdown(["ViT pre-trained on 30k", "28x28 (49 tokens)", "56x56 (196 tokens)"], rows, "lrr")
        + "\n\n"
        + note
        + _transfer_caption(src)
    )


def transfer_rates(src: Sources) -> str:
    """The learning rate each fine-tuning and scratch run chose, and on how many held-out images."""
    runs = transfer_runs(src)
    rows = []
    for part, what in (("few", "10 per class"), ("full", "all 30k"), ("digits", "digits")):
        for arch in ARCHS:
            for init in _inits(runs, arch):
                mine = sorted(
                    (r for r in runs.values() if r["part"] == part and r["arch"] == arch and r["init"] == init),
                    key=lambda r: r.get("seed", 0),
                )
                if mine:
                    held = re.search(r"on (\d[\d,]*) training images", mine[0].get("chosen_by", ""))
                    rows.append(
                        [
                            what,
                            arch,
                            INIT_LABEL.get(init, init),
                            ", ".join(rate(r["lr"]) for r in mine),
                            held.group(1) if held else "—",
                        ]
                    )
    header = ["downstream", "model", "start", "rate chosen (each seed)", "held-out images it was chosen on"]
    note = "Chosen by `vitkit.train.lr_grid`: the best held-out accuracy (ties: the lower held-out loss). "
    return markdown(header, rows, "lllrr") + "\n\n" + note + _transfer_caption(src)


# ============================================================================ numbers inside sentences
def points(a: float, b: float) -> str:
    """``a - b`` in percentage points, one decimal."""
    return f"{100 * (a - b):.1f}"


def span(values: Iterable[float], fmt: Callable[[float], str], unit: str = "") -> str:
    values = sorted(values)
    return f"{fmt(values[0])}–{fmt(values[-1])}{unit}" if values else "—"


def values_records(src: Sources) -> dict[str, str]:
    """The newest main job, hour recipe and CNN reference (for sentences in the README and the
    reports), and what the fine-tuning benchmark measured at 56 px."""
    out = {}
    if src.records("main_job"):
        r = src.records("main_job")[0]
        t = r["metrics"]["train"]
        out |= {"main-job.accuracy": pct(t["accuracy"]), "main-job.epochs": str(t["epochs_done"])}
        out |= {"main-job.images-per-s": num(t["images_per_s"]), "main-job.date": when(r)[:10]}
    hour = [r for r in src.records("train_fmnist") if r["config"]["recipe"] == "fmnist-60m"]
    if hour:
        out["recipes.fmnist-60m"] = pct(hour[0]["metrics"]["test_accuracy"])
    if src.records("cnn_reference"):
        out["cnn-reference.accuracy"] = pct(src.records("cnn_reference")[0]["metrics"]["test_top1"])
    if src.records("finetune"):
        runs = {r["name"]: r for r in src.records("finetune")[0]["metrics"]["runs"] if r.get("data") == "all"}
        if "sgd at 56 px" in runs and "sgd (finetune recipe)" in runs:
            out["finetune.56px-gain"] = points(
                runs["sgd at 56 px"]["accuracy"], runs["sgd (finetune recipe)"]["accuracy"]
            )
    return out


def values_posemb(src: Sources) -> dict[str, str]:
    runs = src.store("posemb")["runs"].values()
    accs: dict[str, list[float]] = {}
    for r in sorted(runs, key=lambda r: r["seed"]):
        accs.setdefault(r["posemb"], []).append(r["test_top1"])
    if not accs:
        return {}
    mean = {k: mean_std(v)[0] for k, v in accs.items()}
    out = {f"posemb.{k}": pm(v) for k, v in accs.items()}
    out |= {f"posemb.{r['posemb']}.seed{r['seed']}": pct(r["test_top1"]) for r in runs}
    out["posemb.none-loss"] = points(mean["learned"], mean["none"])
    out["posemb.sincos-lead"] = points(mean["sincos2d"], max(mean["learned"], mean["learned2d"]))
    out["posemb.1d-2d"] = f"{abs(100 * (mean['learned'] - mean['learned2d'])):.2f}"
    out["posemb.max-std"] = f"{max(100 * mean_std(v)[1] for v in accs.values()):.2f}"
    learned = next(r for r in runs if r["posemb"] == "learned")
    out["setup.vit-params"] = num(learned["params"])
    out["setup.vit-gflops"] = f"{learned['gflops_forward']:.3f}"
    return out


def values_pooling(src: Sources) -> dict[str, str]:
    runs = list(src.store("pooling")["runs"].values())
    if not runs:
        return {}
    by = {(r["pool"], r["lr"]): r["test_top1"] for r in runs}
    out = {f"pooling.{pool}-lr{rate(lr)}": pct(acc) for (pool, lr), acc in by.items()}
    for pool in ("cls", "gap"):
        best = max((lr for p, lr in by if p == pool), key=lambda lr: by[pool, lr])
        out[f"pooling.{pool}-best"], out[f"pooling.{pool}-best-lr"] = pct(by[pool, best]), rate(best)
    low = min(lr for _, lr in by)
    out["pooling.low-lr"], out["pooling.low-gap"] = rate(low), points(by["cls", low], by["gap", low])
    return out


def values_patch(src: Sources) -> dict[str, str]:
    runs = src.store("patch_size")["runs"]
    if not runs:
        return {}
    out = {
        f"patch.{r['patch_size']}" + ("" if r["budget_multiple"] == 1 else f"x{r['budget_multiple']}"): pct(
            r["test_top1"]
        )
        for r in runs.values()
    }
    one = {r["patch_size"]: r for r in runs.values() if r["budget_multiple"] == 1}
    for a, b in ((2, 7), (4, 7), (2, 4)):
        out[f"patch.flops-{a}-over-{b}"] = f"{one[a]['gflops_forward'] / one[b]['gflops_forward']:.1f}×"
    for a, b in ((7, 4), (4, 2)):
        out[f"patch.speed-{a}-over-{b}"] = f"{one[a]['images_per_s'] / one[b]['images_per_s']:.1f}×"
    return out


def values_data(src: Sources) -> dict[str, str]:
    scaled, fixed = src.store("data_efficiency_data")["runs"], src.store("data_efficiency")["runs"]
    if not scaled or not fixed:
        return {}
    acc = {
        (m, n): mean_std([r["test_top1"] for r in rs])[0]
        for m in ("ViT", "ResNet")
        for n, rs in _by_size(scaled, m).items()
    }
    acc500 = {
        (m, n): mean_std([r["test_top1"] for r in rs])[0]
        for m in ("ViT", "ResNet")
        for n, rs in _by_size(fixed, m).items()
    }
    sizes = sorted({n for _, n in acc})
    out = {f"data.{m.lower()}-{n}": pct(acc[m, n]) for m, n in acc}
    out["data.vit-gain"] = points(acc["ViT", sizes[-1]], acc["ViT", sizes[0]])
    out["data.resnet-gain"] = points(acc["ResNet", sizes[-1]], acc["ResNet", sizes[0]])
    out["data.vit-gain500"] = points(acc500["ViT", sizes[-1]], acc500["ViT", sizes[0]])
    out["data.gap-range"] = span((100 * (acc["ResNet", n] - acc["ViT", n]) for n in sizes), lambda v: f"{v:.1f}")
    out["data.gap500-range"] = span(
        (100 * (acc500["ResNet", n] - acc500["ViT", n]) for n in sizes), lambda v: f"{v:.1f}"
    )
    for m in ("ViT", "ResNet"):
        losses = [r["train_loss_end"] for r in scaled.values() if r["model"] == m and r["size"] >= 5000]
        out[f"data.{m.lower()}-loss-range"] = span(losses, lambda v: f"{v:.2f}")
    out["data.resnet-gflops"] = f"{next(r for r in scaled.values() if r['model'] == 'ResNet')['gflops_forward']:.3f}"
    return out


def values_attention(src: Sources) -> dict[str, str]:
    runs = src.store("attention_distance")["runs"]
    if "n60000" not in runs:
        return {}
    trained = runs["n60000"]["distance"]
    heads = [d for block in trained for d in block]
    out = {f"attention.acc-{k[1:]}": pct(r["test_top1"]) for k, r in runs.items() if "test_top1" in r}
    out["attention.range"] = span(heads, lambda v: f"{v:.1f}", " px")
    out["attention.block1-range"] = span(trained[0], lambda v: f"{v:.1f}", " px")
    out["attention.min"] = f"{min(heads):.1f} px"
    out["attention.min-block"] = str(next(i + 1 for i, block in enumerate(trained) if min(heads) in block))
    out["attention.uniform"] = f"{runs['n60000']['uniform']:.1f} px"
    vit_runs = [
        r for n in ("posemb", "pooling", "patch_size", "attention_distance") for r in src.store(n)["runs"].values()
    ]
    vit_runs += [r for r in src.store("data_efficiency_data")["runs"].values() if r["model"] == "ViT"]
    out["exp.vit-range"] = span(
        (r["test_top1"] for r in vit_runs if "test_top1" in r), lambda v: f"{100 * v:.2f}", " %"
    )
    return out


def signed_span(values: Iterable[float]) -> str:
    values = sorted(values)
    return f"{values[0]:+.1f} to {values[-1]:+.1f}" if values else "—"


def values_transfer(src: Sources) -> dict[str, str]:
    """Section 1 of docs/transfer.md: fine-tuning against scratch, and the probe, by upstream size."""
    runs = transfer_runs(src)
    if not runs:
        return {}
    out: dict[str, str] = {}
    few = {(a, i): _accs(runs, "few", a, i) for a in ARCHS for i in _inits(runs, a)}
    full = {(a, i): _accs(runs, "full", a, i) for a in ARCHS for i in _inits(runs, a)}
    for (a, i), accs in few.items():
        out[f"transfer.few.{a}.{i}"] = pm(accs)
        out[f"transfer.few-gain.{a}.{i}"] = points(mean_std(accs)[0], mean_std(few[a, "scratch"])[0])
        out[f"transfer.full.{a}.{i}"] = pct(full[a, i][0])
        out[f"transfer.full-gain.{a}.{i}"] = f"{100 * (full[a, i][0] - full[a, 'scratch'][0]):+.1f}"
    for a in ARCHS:
        pre = [i for i in _inits(runs, a) if i != "scratch"]
        gains = [100 * (mean_std(few[a, i])[0] - mean_std(few[a, "scratch"])[0]) for i in pre]
        out[f"transfer.few-gain-range.{a}"] = span(gains, lambda v: f"{v:.1f}")
        out[f"transfer.few-rise.{a}"] = points(mean_std(few[a, pre[-1]])[0], mean_std(few[a, pre[0]])[0])
    gains = [100 * (full[a, i][0] - full[a, "scratch"][0]) for a in ARCHS for i in _inits(runs, a) if i != "scratch"]
    out["transfer.full-gain-range"] = signed_span(gains)
    big = max(_inits(runs, "ViT"), key=lambda i: -1 if i == "scratch" else int(i[1:]))
    out["transfer.lead.few"] = points(mean_std(few["ResNet", big])[0], mean_std(few["ViT", big])[0])
    return out | _values_probe(runs)


def _values_probe(runs: dict) -> dict[str, str]:
    out: dict[str, str] = {}
    ridge: dict[tuple[str, str, int], float] = {}
    stds = []
    for a in ARCHS:
        for i in _inits(runs, a):
            for row in runs[f"probe/{a}/{i}"]["summary"]:
                k = row["shots"]
                ridge[a, i, k] = row["ridge_mean"]
                out[f"transfer.probe.{a}.{i}.{k}"] = pct(row["ridge_mean"])
                stds += [row["ridge_std"]] if k == 1 else []
        pre = [i for i in _inits(runs, a) if i != "scratch"]
        for k in (5, 25):
            out[f"transfer.probe-rise.{a}.{k}"] = points(ridge[a, pre[-1], k], ridge[a, pre[0], k])
    big = [i for i in _inits(runs, "ViT") if i != "scratch"][-1]
    out["transfer.lead.probe25"] = points(ridge["ResNet", big, 25], ridge["ViT", big, 25])
    out["transfer.probe1-maxstd"] = f"{100 * max(stds):.1f}"
    return out


def values_transfer_more(src: Sources) -> dict[str, str]:
    """Sections 2 and 3 of docs/transfer.md, the upstream models and the training time."""
    runs = transfer_runs(src)
    if not runs:
        return {}
    out: dict[str, str] = {}
    digits = {(r["arch"], r["init"]): r["test_top1"] for r in runs.values() if r["part"] == "digits"}
    for (a, i), acc in digits.items():
        out[f"transfer.digits.{a}.{'scratch' if i == 'scratch' else 'tuned'}"] = pct(acc)
    for a in ARCHS:
        tuned = [acc for (arch, i), acc in digits.items() if arch == a and i != "scratch"]
        if tuned and (a, "scratch") in digits:
            out[f"transfer.digits-gain.{a}"] = points(tuned[0], digits[a, "scratch"])
        probe = [r for r in runs.values() if r["part"] == "digits-probe" and r["arch"] == a]
        for row in probe[0]["summary"] if probe else []:
            out[f"transfer.digits-probe.{a}.{row['shots']}"] = pct(row["ridge_mean"])
    if "transfer.digits-probe.ResNet.25" in out:
        probe25 = {
            a: next(
                row["ridge_mean"]
                for r in runs.values()
                if r["part"] == "digits-probe" and r["arch"] == a
                for row in r["summary"]
                if row["shots"] == 25
            )
            for a in ARCHS
        }
        out["transfer.digits-lead.probe25"] = points(probe25["ResNet"], probe25["ViT"])
        tuned = {a: acc for (a, i), acc in digits.items() if i != "scratch"}
        out["transfer.digits-lead.tuned"] = points(tuned["ResNet"], tuned["ViT"])
    upstream = [r for r in runs.values() if r["part"] == "upstream"]
    out |= {f"transfer.params.{r['arch']}": num(r["params"]) for r in upstream}
    out["transfer.upstream-loss-range"] = span((r["train_loss_end"] for r in upstream), lambda v: f"{v:.2f}")
    by = {(r["arch"], r["size"]): r["test_top1"] for r in upstream}
    leads = [100 * (by["ResNet", n] - by["ViT", n]) for a, n in by if a == "ViT" and ("ResNet", n) in by]
    out["transfer.upstream-lead-range"] = span(leads, lambda v: f"{v:.1f}")
    out["transfer.train-minutes"] = num(sum(r.get("train_s", 0) for r in runs.values()) / 60)
    return out | _values_resolution(runs)


def _values_resolution(runs: dict) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in ("few", "full"):
        high = sorted((r for r in runs.values() if r["part"] == f"{part}56"), key=lambda r: r.get("seed", 0))
        if not high:
            continue
        low = sorted(
            (r for r in runs.values() if r["part"] == part and r["arch"] == "ViT" and r["init"] == high[0]["init"]),
            key=lambda r: r.get("seed", 0),
        )
        lo, hi = [r["test_top1"] for r in low], [r["test_top1"] for r in high]
        out[f"transfer.res.{part}28"], out[f"transfer.res.{part}56"] = pm(lo), pm(hi)
        out[f"transfer.res.gain-{part}"] = points(mean_std(hi)[0], mean_std(lo)[0])
        out[f"transfer.res.seeds-{part}28"] = "/".join(f"{100 * v:.2f}" for v in lo)
        out[f"transfer.res.seeds-{part}56"] = "/".join(f"{100 * v:.2f}" for v in hi)
        out["transfer.res.flops-ratio"] = f"{high[0]['gflops_forward'] / low[0]['gflops_forward']:.1f}"
    return out


# ============================================================================ the registry and the files
TABLES: dict[str, Callable[[Sources], str]] = {
    "headline": headline,
    "main-job": main_job,
    "recipes": recipes,
    "pipeline": pipeline,
    "cnn-reference": cnn_reference,
    "data-hunger": data_hunger,
    "data-hunger-step": data_hunger_step,
    "recipe-search": recipe_search,
    "vs-timm": vs_timm,
    "vs-timm-fastest": vs_timm_fastest,
    "profile": profile,
    "ab-train-speed": ab_train_speed,
    "process-settings": process_settings,
    "attention-path": attention_path,
    "faithfulness": faithfulness,
    "int8": int8,
    "data-path": data_path,
    "memory-limit": memory_limit,
    "serve": serve,
    "serve-agreement": serve_agreement,
    "probe": probe,
    "finetune": finetune,
    "ddp": ddp,
    "gpu": gpu,
    "exp-posemb": exp_posemb,
    "exp-pooling": exp_pooling,
    "exp-patch-size": exp_patch_size,
    "exp-data-efficiency": exp_data_efficiency,
    "exp-attention-distance": exp_attention_distance,
    "exp-registers": exp_registers,
    "transfer-upstream": transfer_upstream,
    "transfer-probe": transfer_probe,
    "transfer-finetune": transfer_finetune,
    "transfer-digits": transfer_digits,
    "transfer-resolution": transfer_resolution,
    "transfer-rates": transfer_rates,
}


DATA_HUNGER_ROWS = {  # value names of the study's rows: data-hunger.<labels>.<key>
    "cnn": ("CNN teacher (resnet_fmnist)", "CNN (resnet_fmnist)"),
    "plain": ("plain ViT",),
    "hard": ("plain ViT, hard distillation",),
    "token": ("plain ViT, hard distillation, distillation token",),
    "soft": ("plain ViT, soft distillation",),
    "mpp": ("plain ViT, mpp pre-trained",),
    "mae": ("plain ViT, mae pre-trained",),
}


def values_data_hunger(src: Sources) -> dict[str, str]:
    """The newest record of each row of the data-hunger study: ``data-hunger.60000.hard`` is the
    hard-distilled plain ViT's test accuracy on all the labels, ``....images-per-s`` its speed."""
    out: dict[str, str] = {}
    for r in reversed(src.records("data_hunger")):  # oldest first: the newest overwrites
        c, m = r["config"], r["metrics"]
        for key, names in DATA_HUNGER_ROWS.items():
            if c["row"] in names:
                out[f"data-hunger.{c['labels']}.{key}"] = pct(m["test_top1"])
                out[f"data-hunger.{c['labels']}.{key}.images-per-s"] = num(m["images_per_s"])
    return out


VALUE_GROUPS: tuple[Callable[[Sources], dict[str, str]], ...] = (
    values_records,
    values_data_hunger,
    values_posemb,
    values_pooling,
    values_patch,
    values_data,
    values_attention,
    values_transfer,
    values_transfer_more,
)


class Values:
    """The numbers quoted inside sentences, by name, computed when first asked for."""

    def __init__(self, src: Sources) -> None:
        self.src = src
        self._values: dict[str, str] | None = None

    def _all(self) -> dict[str, str]:
        if self._values is None:
            self._values = {k: v for group in VALUE_GROUPS for k, v in group(self.src).items()}
        return self._values

    def __contains__(self, name: str) -> bool:
        return name in self._all()

    def __getitem__(self, name: str) -> str:
        return self._all()[name]

    def names(self) -> list[str]:
        return sorted(self._all())


def render(text: str, src: Sources) -> tuple[str, list[str]]:
    """``text`` with every generated block rewritten, and the problems found: unknown names,
    blocks opened and never closed."""
    problems: list[str] = []
    values = Values(src)
    closed = {m.start() for m in BLOCK.finditer(text)}
    problems += [
        f"{m.group(1)}:{m.group(2)} is never closed" for m in OPENING.finditer(text) if m.start() not in closed
    ]

    def fill(m: re.Match) -> str:
        kind, name = m.group(1), m.group(2)
        if kind == "table" and name in TABLES:
            body = "\n" + TABLES[name](src) + "\n"
        elif kind == "value" and name in values:
            body = values[name]
        else:
            problems.append(f"unknown {kind} {name!r}")
            return m.group(0)
        return f"<!-- {kind}:{name} -->{body}<!-- /{kind}:{name} -->"

    return BLOCK.sub(fill, text), problems


def stale(path: Path, src: Sources) -> list[str]:
    """What ``--check`` says of one file: each block that differs from its generated text, each problem."""
    text = path.read_text()
    new, problems = render(text, src)
    messages = [f"{path}: {p}" for p in problems]
    if new != text:
        old = {(m.group(1), m.group(2)): m.group(3) for m in BLOCK.finditer(text)}
        for m in BLOCK.finditer(new):
            if old.get((m.group(1), m.group(2))) != m.group(3):
                messages.append(f"{path}: {m.group(1)}:{m.group(2)} is out of date")
    return messages


def update(path: Path, src: Sources) -> bool:
    """Rewrite ``path``'s generated blocks (atomically); False when nothing changed."""
    text = path.read_text()
    new, problems = render(text, src)
    if problems:
        raise SystemExit(f"{path}: {problems[0]}")
    if new == text:
        return False
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(new)
    os.replace(tmp, path)
    return True


def markdown_files(root: Path = ROOT) -> list[Path]:
    """The files whose blocks are generated: README.md and every Markdown file under docs/."""
    return [p for p in [root / "README.md", *sorted((root / "docs").rglob("*.md"))] if p.is_file()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*", type=Path, help="Markdown files (default: README.md and docs/**/*.md)")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 naming each stale block")
    p.add_argument("--list", action="store_true", help="print the table and value names, and where each is used")
    p.add_argument("--results", type=Path, default=RESULTS, help="the records' folder")
    p.add_argument("--stores", type=Path, default=STORES, help="the experiments' stores")
    args = p.parse_args(argv)
    src, files = Sources(args.results, args.stores), args.files or markdown_files()
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise SystemExit(f"tables.py: {missing[0]} not found")
    if args.list:
        return list_names(files, src)
    if args.check:
        messages = [m for f in files for m in stale(f, src)]
        print("\n".join(messages) or f"{len(files)} files: every generated block is up to date")
        return 1 if messages else 0
    for f in files:
        if update(f, src):
            print(f"rewrote {f}")
    return 0


def list_names(files: list[Path], src: Sources) -> int:
    used: dict[str, list[str]] = {}
    for f in files:
        for m in BLOCK.finditer(f.read_text()):
            used.setdefault(f"{m.group(1)}:{m.group(2)}", []).append(
                str(f.relative_to(ROOT) if f.is_relative_to(ROOT) else f)
            )
    names = [f"table:{n}" for n in TABLES] + [f"value:{n}" for n in Values(src).names()]
    for name in names:
        print(f"{name:<40} {', '.join(sorted(set(used.get(name, [])))) or '(unused)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

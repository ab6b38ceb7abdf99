"""How faithful is each explanation? Deletion and insertion areas of rollout, grad-rollout and a
random ranking, on a trained run's test images.

    python benchmarks/faithfulness.py RUN --images 1000

Runs ``vitkit.explain.write_faithfulness`` (what ``vitkit explain --faithfulness`` runs) on the
first ``--images`` images of the test split of the run's dataset, each explained for the class the
model predicts, and appends a record to ``benchmarks/results/faithfulness.jsonl``. A faithful map
has the lower deletion area and the higher insertion area; random is the baseline to beat.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import record
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vitkit.data import resolve_source  # noqa: E402
from vitkit.evaluate import load_for_inference  # noqa: E402
from vitkit.explain import write_faithfulness  # noqa: E402
from vitkit.runtime import set_threads  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run folder (its best/) or a checkpoint folder")
    p.add_argument("--images", type=int, default=1000, help="the first N test images")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--note", default="", help="what the run is, for the record")
    args = p.parse_args(argv)
    set_threads(args.threads)
    env = record.environment()
    classifier = load_for_inference(args.run, torch.device("cpu"))
    pre = classifier.preprocess
    source = resolve_source(pre.dataset)
    ds = source.load("test", pre)
    inputs = pre.normalize(ds.images[: args.images])
    with tempfile.TemporaryDirectory() as tmp:
        _, summary = write_faithfulness(classifier.model, inputs, tmp, args.steps)
    config = {"run": str(args.run), "dataset": pre.dataset, "split": "test", "images": int(inputs.shape[0])}
    config |= {"steps": args.steps, "note": args.note, "model": classifier.model.config.to_dict()}
    record.append("faithfulness", config, {"summary": summary}, env=env)
    for method, s in summary.items():
        print(f"{method:<13} deletion {s['deletion_auc']:.4f}  insertion {s['insertion_auc']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

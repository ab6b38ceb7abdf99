"""Do the web page and ``vitkit predict`` classify the same files the same way?

    .venv/bin/python benchmarks/serve_agreement.py runs/main-DATE --images 300

Saves the first N Fashion-MNIST test images as PNG files, classifies each through ``vitkit
predict``'s code (files -> top-5) and through the web page's endpoint (``POST /api/predict``
with the file's bytes), and counts the files whose top-1 class agrees. For comparison it also
runs the preparation the page used before it shared ``Preprocess`` with ``predict`` (a straight
resize to the padded input size). Appends a record to ``benchmarks/results/serve_agreement.jsonl``.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from pathlib import Path

import record
import torch
from PIL import Image
from starlette.testclient import TestClient

from vitkit.data import load_dataset
from vitkit.evaluate import predict_files
from vitkit.serve import Explorer, create_app


def _png(pixels: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels[0].numpy(), "L").save(buf, format="PNG")
    return buf.getvalue()


def former_page_top1(explorer: Explorer, data: bytes) -> int:
    """The page's old preparation: resize straight to the model's input size, no border."""
    from vitkit.images import decode_image

    pre = explorer.preprocess
    old = pre.replace(image_size=pre.input_size, pad=0)
    with torch.inference_mode():
        return int(explorer.model(old(decode_image(io.BytesIO(data)))[None]).argmax())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run folder or checkpoint of a Fashion-MNIST model")
    p.add_argument("--images", type=int, default=300)
    args = p.parse_args(argv)
    env = record.environment()
    test = load_dataset("fashion-mnist", "test").subset(torch.arange(args.images))
    explorer = Explorer(args.run)
    client = TestClient(create_app(explorer))
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i in range(len(test)):
            files.append(Path(tmp) / f"test{i:05d}.png")
            files[-1].write_bytes(_png(test.images[i]))
        predicted = predict_files(explorer.classifier, files, top_k=1)
        page, former = [], []
        for f in files:
            data = f.read_bytes()
            page.append(client.post("/api/predict", content=data).json()["top"][0]["index"])
            former.append(former_page_top1(explorer, data))
    names = list(explorer.preprocess.class_names)
    by_predict = [names.index(r["predictions"][0]["class"]) for r in predicted]
    labels = test.labels.tolist()

    def accuracy(pred: list[int]) -> float:
        return sum(a == b for a, b in zip(pred, labels, strict=True)) / len(labels)

    checkpoint = Path(explorer.checkpoint)
    config = {
        "checkpoint": str(checkpoint),
        "images": len(files),
        "scored_on": "test",
        "best_chosen_on": record.best_chosen_on(checkpoint.parent) if checkpoint.name == "best" else None,
    }
    metrics = {
        "top1_agree_page_vs_predict": sum(a == b for a, b in zip(page, by_predict, strict=True)),
        "accuracy_predict": accuracy(by_predict),
        "accuracy_page": accuracy(page),
        "accuracy_former_page_path": accuracy(former),
        "top1_agree_former_page_vs_predict": sum(a == b for a, b in zip(former, by_predict, strict=True)),
    }
    record.append("serve_agreement", config, metrics, env=env)
    print(json.dumps(config | metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does a photo model's resize rule (shorter side, then the centre) survive in timm and Hugging Face?

    .venv/bin/python benchmarks/crop_agreement.py --size 64 --crop-fraction 1.0 --interpolation bilinear

Writes 300 random crops of scikit-image's sample photos (tests/conftest.py's ``write_photo_crops``:
every shape, JPEG and PNG, grey, RGBA), and a ViT at ``--size`` px with ``fit="crop"`` twice: its
weights perturbed from a random start, and trained for 150 small steps to name the photo each crop
came from (15 classes). For each model it counts the crops whose top-1 class agrees with ``vitkit
predict``:

- ``timm``: what ``vitkit convert --to timm`` writes, prepared by timm's own eval transform
  (``create_transform(**resolve_data_config(model=...))`` on ``Image.open(f).convert("RGB")``);
- ``hf``: the folder ``--to hf`` would write if it accepted the rule: ``preprocessor_config.json``
  a stock ``BitImageProcessor`` (``size={"shortest_edge": S / crop_fraction}``, ``crop_size`` S),
  run through ``transformers.pipeline("image-classification")``.

The numbers decide ``--to hf``: vitkit writes a format only where at least 299 of 300 answers
agree. Appends a record to ``benchmarks/results/crop_agreement.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import record
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from conftest import PHOTOS, perturbed, write_photo_crops  # noqa: E402

import vitkit  # noqa: E402
from vitkit.cli import main as vitkit_main  # noqa: E402
from vitkit.evaluate import load_for_inference, predict_files  # noqa: E402
from vitkit.interop import to_hf  # noqa: E402
from vitkit.preprocess import Preprocess  # noqa: E402

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


def model_at(size: int, trained_on: torch.Tensor | None, labels: torch.Tensor) -> vitkit.VisionTransformer:
    """A small ViT, perturbed, or trained for 150 steps (batch 32, AdamW 2e-3) on ``trained_on``."""
    torch.manual_seed(0)
    shape = dict(image_size=size, patch_size=8, width=64, depth=2, num_heads=4, mlp_dim=128, pool="cls")
    model = vitkit.create_model("vit_tiny_32", num_classes=len(PHOTOS), class_names=list(PHOTOS), **shape)
    if trained_on is None:
        return perturbed(model)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(150):
        i = torch.randint(0, len(labels), (32,))
        loss = torch.nn.functional.cross_entropy(model(trained_on[i]), labels[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def bit_processor(pre: Preprocess) -> dict:
    """BitImageProcessor's settings for ``pre``'s rule: the nearest Hugging Face has."""
    resample = {"nearest": 0, "bilinear": 2, "bicubic": 3}[pre.interpolation]
    h, w = pre.image_size
    return {
        "image_processor_type": "BitImageProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"shortest_edge": math.floor(h / pre.crop_fraction)},
        "resample": resample,
        "do_center_crop": True,
        "crop_size": {"height": h, "width": w},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(pre.mean),
        "image_std": list(pre.std),
    }


def agreement(folder: Path, files: list[Path], model: vitkit.VisionTransformer, pre: Preprocess) -> dict:
    """Top-1 agreement with ``vitkit predict`` of timm's and Hugging Face's preparation."""
    import timm
    import transformers
    from PIL import Image

    vitkit.save(model, folder / "vitkit")
    pre.save(folder / "vitkit")
    ours = [r["predictions"][0]["class"] for r in predict_files(load_for_inference(folder / "vitkit"), files, top_k=1)]
    assert vitkit_main(["convert", str(folder / "vitkit"), str(folder / "timm"), "--to", "timm"]) == 0
    timm_model = timm.create_model(f"local-dir:{folder / 'timm'}", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=timm_model))
    with torch.no_grad():
        logits = timm_model(torch.stack([transform(Image.open(f).convert("RGB")) for f in files]))
    by_timm = [PHOTOS[i] for i in logits.argmax(1).tolist()]
    to_hf(model, folder / "hf")
    (folder / "hf" / "preprocessor_config.json").write_text(json.dumps(bit_processor(pre)))
    pipe = transformers.pipeline("image-classification", model=str(folder / "hf"), device="cpu")
    by_hf = [r[0]["label"] for r in pipe([str(f) for f in files], top_k=1)]
    return {
        "distinct_answers": len(set(ours)),
        "top1_agree_timm": sum(a == b for a, b in zip(ours, by_timm, strict=True)),
        "top1_agree_hf_bit_processor": sum(a == b for a, b in zip(ours, by_hf, strict=True)),
        "hf_backend": pipe.image_processor.backend,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--crop-fraction", type=float, default=1.0)
    p.add_argument("--interpolation", default="bilinear", choices=("bilinear", "bicubic"))
    p.add_argument("--photos", type=int, default=300)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    env = record.environment()
    pre = Preprocess(args.size, 3, fit="crop", crop_fraction=args.crop_fraction, interpolation=args.interpolation)
    pre = pre.replace(mean=MEAN, std=STD, class_names=PHOTOS)
    config = {"size": args.size, "crop_fraction": args.crop_fraction, "interpolation": args.interpolation}
    config |= {"photos": args.photos, "photo_seed": 0, "model": "width 64, depth 2, patch 8, 15 classes"}
    metrics = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = write_photo_crops(Path(tmp), args.photos)
        labels = torch.tensor([PHOTOS.index(f.stem.split("_", 1)[1].rsplit("_", 1)[0]) for f in files])
        pixels = pre.files(files)
        for kind, trained_on in (("perturbed", None), ("trained", pixels)):
            model = model_at(args.size, trained_on, labels)
            (Path(tmp) / kind).mkdir()
            for key, value in agreement(Path(tmp) / kind, files, model, pre).items():
                metrics[f"{kind}_{key}"] = value
    record.append("crop_agreement", config, metrics, env=env)
    print(json.dumps(config | metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

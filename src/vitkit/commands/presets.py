"""``vitkit presets``: the preset table with sizes and compute, the CNN reference last."""

from __future__ import annotations

import argparse
import json

from .. import cnn
from ..config import get_config, list_presets, preset_description
from ..model import count_params


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("presets", help="list the model presets (paper Table 1, DeiT, small-image; the CNN reference)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def preset_rows() -> list[dict]:
    rows = []
    for name in list_presets():
        c = get_config(name)
        rows.append(
            dict(
                name=name,
                image=f"{c.image_size[0]}x{c.image_size[1]}x{c.in_channels}",
                patch=c.patch_size,
                width=c.width,
                depth=c.depth,
                heads=c.num_heads,
                mlp=c.mlp_dim,
                params=count_params(c),
                gflops=c.flops() / 1e9,
                note=preset_description(name),
            )
        )
    return rows + cnn_rows()


def cnn_rows() -> list[dict]:
    """The CNN presets (:mod:`vitkit.cnn`): width is the stages' widths, depth their blocks."""
    rows = []
    for name in cnn.PRESETS:
        c = cnn.get_config(name)
        rows.append(
            dict(
                name=name,
                architecture=cnn.ARCHITECTURE,
                image=f"{c.image_size[0]}x{c.image_size[1]}x{c.in_channels}",
                patch=None,
                width="/".join(str(w) for w in c.widths),
                depth=sum(c.blocks),
                heads=None,
                mlp=None,
                params=cnn.count_params(c),
                gflops=c.flops() / 1e9,
                note=cnn.DESCRIPTIONS[name],
            )
        )
    return rows


def run(args: argparse.Namespace) -> int:
    rows = preset_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    w = max(len(r["name"]) for r in rows)
    header = f"{'name':<{w}} {'image':>10} {'patch':>5} {'width':>9} {'depth':>5} {'heads':>5} {'MLP':>5} {'params':>12} {'GFLOPs':>8}  note"
    print(header)
    print("-" * len(header))
    for r in rows:
        r = {k: "-" if v is None else v for k, v in r.items()}
        print(
            f"{r['name']:<{w}} {r['image']:>10} {r['patch']:>5} {r['width']:>9} {r['depth']:>5} {r['heads']:>5} "
            f"{r['mlp']:>5} {r['params']:>12,} {r['gflops']:>8.2f}  {r['note']}"
        )
    print("GFLOPs: forward, one image, 2 FLOPs per multiply-add; params with the default head.")
    return 0

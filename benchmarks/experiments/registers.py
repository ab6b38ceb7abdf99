"""Experiment 6: registers and attention sinks (Darcet et al. 2024, "Vision Transformers Need Registers").

Large ViTs store global information in a few low-information background patches, whose norms
then stand an order of magnitude above the rest and which soak up attention; a few extra learned
tokens without a position ("registers") take that role over and clean the attention maps. Here:
the experiments' ViT with 0, 1 and 4 registers (``register_tokens``), each trained briefly on all
60,000 Fashion-MNIST images, then on 500 test images the sink detector of ``vitkit explain
--sinks`` (:func:`vitkit.explain.analysis.find_sinks`: patch tokens over 10x their layer's median
norm, the attention the next block gives them, the registers' norms and attention) and the
rollout maps.

    python benchmarks/experiments/registers.py   # 3 short runs (300 steps, about a minute each on one core) + analysis
"""

from __future__ import annotations

import common
import torch

from vitkit import load, save
from vitkit.explain.analysis import concat_sinks, find_sinks, rollout_map, sink_verdict
from vitkit.preprocess import normalize

REGISTERS = (0, 1, 4)
SHOWN = 4  # test images whose rollout maps the figure draws


def analyse(model, images: torch.Tensor, pixels: torch.Tensor) -> dict:
    """Sink statistics per layer over ``images`` and the rollout maps of the first few."""
    sinks = concat_sinks(
        [find_sinks(model, images[i : i + 100], pixels[i : i + 100]) for i in range(0, len(images), 100)]
    )
    p, r = sinks.num_prefix_tokens, sinks.register_tokens
    with torch.no_grad():
        _, attn = model(images[:SHOWN], return_attention=True)
    has = sinks.is_sink.any(dim=-1)  # (B, L): a layer of an image with a sink
    absorbed = sinks.absorbed.clone()
    absorbed[~has] = float("nan")
    record = {
        "verdict": sink_verdict(sinks),
        "images": len(images),
        "images_with_sinks": int(has.any(dim=1).sum()),
        "sinks_per_image": float(sinks.is_sink.any(dim=1).sum(dim=-1).float().mean()),  # distinct patches, any layer
        "max_patch_ratio": sinks.norm_ratio[..., p:].amax(dim=(0, 2)).tolist(),  # per layer
        "absorbed": absorbed.nanmean(dim=0).tolist(),  # per layer, over the images with a sink there
        "low_information": float(
            (sinks.variance_rank[:, None].expand_as(sinks.is_sink)[sinks.is_sink] < 0.5).float().mean()
        )
        if sinks.is_sink.any()
        else None,
        "rollout": rollout_map(attn, sinks.grid, p, "cls").tolist(),  # (SHOWN, gh, gw)
    }
    if r:
        record["max_register_ratio"] = sinks.norm_ratio[..., p - r : p].amax(dim=(0, 2)).tolist()
        record["register_absorbed"] = sinks.register_absorbed.nanmean(dim=0).tolist()
    return {k: _no_nan(v) for k, v in record.items()}


def _no_nan(v):  # noqa: ANN001, ANN202
    """NaN (a share no block measures: the last layer, a layer without sinks) as JSON's null."""
    if isinstance(v, list):
        return [_no_nan(x) for x in v]
    return None if isinstance(v, float) and v != v else v


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=500, help="test images the sink statistics are taken over")
    p.add_argument(
        "--models",
        type=common.Path,
        default=common.ROOT / "runs" / "experiments" / "registers",
        help="folder the trained models are saved in (read back when the script runs again)",
    )
    args = p.parse_args(argv)
    budget = common.budget(args, 300)
    res = common.setup(args, "registers", {"budget": vars(budget), "vit": common.VIT_BASE, "registers": REGISTERS})
    train, test = common.data(args)
    mean, std = train.mean_std()
    pixels = test.images[: args.images].float() / 255
    images = normalize(test.images[: args.images], mean, std)
    for registers in REGISTERS:
        key = f"r{registers}"
        if res.done(key):
            continue
        folder = args.models / (f"tiny-{key}" if args.tiny else key)
        record: dict = {"register_tokens": registers}
        if (folder / "config.json").is_file():
            model = load(folder)
        else:
            torch.manual_seed(0)
            model = common.vit(register_tokens=registers, **(common.TINY_VIT if args.tiny else {}))
            record |= common.fit(model, train, test, budget, seed=0, device=args.device)
            save(model, folder)
        res.add(key, record | analyse(model.eval(), images, pixels))
        common.log(f"{key}: {res.runs[key]['verdict']}")
    draw(res, test, args)


def draw(res: common.Results, test, args) -> None:  # noqa: ANN001
    """Rows: 0, 1, 4 registers. Columns: the rollout of a few test images, then each layer's
    largest patch norm (and register norm) in multiples of the median."""
    runs = [res.runs[f"r{r}"] for r in REGISTERS if f"r{r}" in res.runs]
    fig, axes = common.figure(len(runs), SHOWN + 1, size=(2.0 * (SHOWN + 1) + 1.5, 2.1 * len(runs)))
    for row, r in zip(axes, runs, strict=True):
        for i in range(SHOWN):
            ax = row[i]
            ax.imshow(test.images[i, 0].numpy(), cmap="gray")
            grid = torch.tensor(r["rollout"][i])
            up = torch.nn.functional.interpolate(grid[None, None], size=test.images.shape[-2:], mode="bilinear")[0, 0]
            ax.imshow((up / up.max()).numpy(), cmap="inferno", alpha=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                acc = f"\n{100 * r['test_top1']:.1f} %" if "test_top1" in r else ""
                ax.set_ylabel(f"{r['register_tokens']} register(s){acc}", fontsize=9)
        ax = row[SHOWN]
        layers = range(1, len(r["max_patch_ratio"]) + 1)
        ax.plot(layers, r["max_patch_ratio"], "o-", label="largest patch")
        if "max_register_ratio" in r:
            ax.plot(layers, r["max_register_ratio"], "^-", color="tab:green", label="largest register")
        ax.axhline(10, color="k", ls="--", lw=1, label="sink threshold (10x)")
        ax.set_yscale("log")
        ax.set_xticks(list(layers))
        ax.set_xlabel("layer", fontsize=8)
        ax.set_ylabel("norm / median patch norm", fontsize=8)
        ax.legend(fontsize=6)
    axes[0, 0].set_title("rollout of test images", fontsize=9, loc="left")
    common.save_figure(fig, args.out / "registers.png")


if __name__ == "__main__":
    main()

"""``vitkit serve``: a local web page that classifies an image and shows where the model looks.

A small ASGI app (Starlette, served by uvicorn) rather than Gradio: the page is one static HTML
file with plain JavaScript, so it works offline with nothing fetched from a CDN, and the whole
server is a few endpoints that a test can call directly. The numbers come from
:mod:`vitkit.explain.analysis`, the same code as ``vitkit explain``; the model-wide figures come
from :mod:`vitkit.explain.figures`.

Endpoints:
    GET  /                   the page (and /static/app.js, /static/style.css)
    GET  /api/model          the model card
    POST /api/predict        raw image bytes in the body; ``?patch=K`` adds the attention of
                             patch K (as query) over the image, for every layer and head;
                             ``?sinks=1`` adds the token norms and attention sinks of every layer
    GET  /api/figure/NAME    model-wide PNGs: posemb, distance, filters
Nothing uploaded is written to disk; no path in a request reaches the file system.
"""

from __future__ import annotations

import io
import json
import logging
import threading
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import require_vit
from ..data import resolve_source
from ..errors import DataError, ServeError
from ..evaluate import SUMMARY_NAME, load_for_inference
from ..explain import analysis, figures
from ..images import decode_image

log = logging.getLogger(__name__)

STATIC_FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
FIGURES = ("posemb", "distance", "filters")


def _static(name: str) -> bytes:
    return resources.files("vitkit.serve").joinpath("static", name).read_bytes()


def _run_accuracy(checkpoint: Path) -> float | None:
    """The final accuracy ``vitkit train`` recorded in the run folder holding ``checkpoint``."""
    path = checkpoint.parent / SUMMARY_NAME
    try:
        value = json.loads(path.read_text()).get("accuracy")
    except (OSError, ValueError, AttributeError):  # no run folder around this checkpoint
        return None
    return float(value) if isinstance(value, (int, float)) else None


class Explorer:
    """The loaded model and everything the endpoints compute with it (no web code here)."""

    def __init__(
        self,
        checkpoint: str | Path,
        max_upload_bytes: int = 20 * 1024 * 1024,
        assume_preprocess: str | Path | None = None,
    ) -> None:
        # the same model and preparation as `vitkit predict`
        self.classifier = load_for_inference(checkpoint, assume_preprocess=assume_preprocess)
        self.model = require_vit(
            self.classifier.model, "serve (attention with every answer)", self.classifier.checkpoint
        )
        self.preprocess = self.classifier.preprocess
        self.checkpoint = self.classifier.checkpoint
        self.max_upload_bytes = max_upload_bytes
        self.lock = threading.Lock()  # one forward at a time: the CPU has few cores to share
        self._stats = threading.Lock()  # the running attention-distance sum, which requests add to
        self._figures: dict[str, bytes] = {}
        self._distance_sum = torch.zeros(self.model.config.depth, self.model.config.num_heads)
        self._distance_count = 0
        c = self.model.config
        self.card = {
            "checkpoint": str(self.checkpoint),
            "image_size": list(c.image_size),
            "channels": c.in_channels,
            "patch_size": c.patch_size,
            "grid": list(c.grid_size),
            "width": c.width,
            "depth": c.depth,
            "heads": c.num_heads,
            "mlp_dim": c.mlp_dim,
            "posemb": c.posemb,
            "pool": c.pool,
            "class_token": c.class_token,
            "stem": c.stem,
            "params": self.model.num_params(),
            "gflops": c.flops() / 1e9,
            "classes": list(self.preprocess.class_names),
            "dataset": self.preprocess.dataset,
            "accuracy": _run_accuracy(self.checkpoint),
        }

    # ------------------------------------------------------------------ per image
    def decode(self, data: bytes) -> torch.Tensor:
        """Upload bytes -> (C, H, W) uint8 as training saw its images, or a one-line ServeError."""
        if not data:
            raise ServeError("the upload is empty (0 bytes); choose an image file")
        if len(data) > self.max_upload_bytes:
            raise ServeError(f"the upload is {len(data) / 2**20:.1f} MB, over the {self._limit_text()} limit", 413)
        try:
            return self.preprocess.pixels(decode_image(io.BytesIO(data), name="the upload"))
        except DataError as e:
            raise ServeError(str(e)) from None

    def _limit_text(self) -> str:
        return f"{self.max_upload_bytes / 2**20:g} MB"

    def predict(self, data: bytes, patch: int | None = None, top: int = 5, sinks: bool = False) -> dict[str, Any]:
        """Top classes, the image as the model saw it, rollout and per-layer/head attention maps;
        with ``sinks``, also :meth:`sinks` of the image."""
        image = self.decode(data)
        c = self.model.config
        n = c.num_patches
        if patch is not None and not 0 <= patch < n:
            raise ServeError(f"patch={patch} is outside the {c.grid_size[0]}x{c.grid_size[1]} grid (0..{n - 1})")
        x = self.preprocess.normalize(image[None])
        with self.lock, torch.inference_mode():
            logits, attn = self.model(x, return_attention=True)
        attn = tuple(a.float() for a in attn)
        grid, p = c.grid_size, c.num_prefix_tokens
        query = analysis.default_query(p, c.pool)
        probs = logits.float().softmax(-1)[0]
        k = min(top, probs.numel())
        values, index = probs.topk(k)
        names = self.preprocess.class_names
        distance = analysis.mean_attention_distance(attn, grid, c.patch_size, p)
        with self._stats:
            self._distance_sum += distance
            self._distance_count += 1
        out: dict[str, Any] = {
            "top": [{"label": names[i], "index": int(i), "prob": float(v)} for v, i in zip(values, index, strict=True)],
            "image": image.tolist(),  # (C, H, W) uint8 as the model saw it
            "grid": list(grid),
            "query": query,
            "rollout": _rounded(analysis.rollout_map(attn, grid, p, query)[0]),
            "maps": _rounded(analysis.attention_maps(attn, grid, p, query)[0]),  # (L, heads, gh, gw)
        }
        if patch is not None:
            # Row p + patch of every layer's attention: where that patch looks, (L, heads, N) -> grid.
            rows = torch.stack([a[0, :, p + patch, p:] for a in attn])
            out["patch"] = patch
            out["patch_maps"] = _rounded(rows.reshape(len(attn), c.num_heads, *grid))
        if sinks:
            out["sinks"] = self.sinks(image, x)
        return out

    def sinks(self, image: torch.Tensor, x: torch.Tensor) -> dict[str, Any]:
        """Token norms and attention sinks of one image (the numbers of ``vitkit explain --sinks``):
        per layer the patch norms over the median (gh, gw), the sinks among them, the share of the
        next block's attention they take, and the prefix tokens' norms; the verdict line."""
        with self.lock:
            s = analysis.find_sinks(self.model, x, image[None].float() / 255)
        grid = s.grid
        absorbed = [None if v != v else round(float(v), 4) for v in s.absorbed[0]]  # NaN (last layer) -> null
        return {
            "verdict": analysis.sink_verdict(s),
            "ratio": s.ratio,
            "norms": _rounded(s.norm_ratio[0, :, s.num_prefix_tokens :].reshape(-1, *grid)),  # (L, gh, gw)
            "sinks": [row.nonzero().flatten().tolist() for row in s.is_sink[0]],  # patch indices per layer
            "absorbed": absorbed,
            "prefix": analysis.prefix_kinds(self.model.config),
            "prefix_norms": _rounded(s.norm_ratio[0, :, : s.num_prefix_tokens]),  # (L, prefix)
        }

    # ------------------------------------------------------------------ model-wide figures
    def figure(self, name: str) -> bytes:
        if name not in FIGURES:
            raise ServeError(f"unknown figure {name!r}; choose one of {', '.join(FIGURES)}", 404)
        if name == "distance" or name not in self._figures:
            self._figures[name] = self._render(name)
        return self._figures[name]

    def _render(self, name: str) -> bytes:
        c = self.model.config
        if name == "posemb":
            pos = analysis.model_posemb(self.model)
            sim = None if pos is None else analysis.posemb_similarity(pos, c.grid_size)
            fig = figures.plot_posemb_similarity(sim, reason="this model has no position embedding (posemb='none')")
        elif name == "filters":
            try:
                filters = analysis.patch_filters_pca(analysis.model_patch_filters(self.model))
                fig = figures.plot_patch_filters(filters)
            except ValueError as e:
                fig = figures.plot_patch_filters(None, reason=str(e))
        else:
            if self._distance_count == 0:
                self._seed_distance()
            with self._stats:
                mean, count = self._distance_sum / max(self._distance_count, 1), self._distance_count
            fig = figures.plot_mean_attention_distance(
                mean, c.grid_size, c.patch_size, count, title="Mean attention distance"
            )
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=figures.DPI)
        return buf.getvalue()

    def _seed_distance(self, count: int = 64) -> None:
        """Average the attention distance over test images of the training set, when available."""
        dataset = self.preprocess.dataset
        if not dataset:
            return
        try:
            source = resolve_source(dataset)
            images = source.load(source.examples_split, self.preprocess, download=False).images[:count]
        except (DataError, OSError) as e:  # the figure then covers the uploaded images only
            log.info("no %s test images for the distance figure: %s", dataset, e)
            return
        c = self.model.config
        with self.lock, torch.inference_mode():
            _, attn = self.model(self.preprocess.normalize(images), return_attention=True)
        batch_mean = analysis.mean_attention_distance(attn, c.grid_size, c.patch_size, c.num_prefix_tokens)
        with self._stats:
            self._distance_sum += batch_mean * len(images)  # a running sum over images
            self._distance_count += len(images)


def _rounded(t: torch.Tensor, digits: int = 4) -> list:
    return torch.round(t.float(), decimals=digits).tolist()


# ---------------------------------------------------------------------------------- the web app
def create_app(explorer: Explorer):  # noqa: ANN201 - a Starlette app
    """The Starlette app around ``explorer``: every error is JSON ``{"error": "one line"}``."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    def error(message: str, status: int = 400) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def index(request: Request) -> Response:
        return Response(_static("index.html"), media_type="text/html")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC_FILES:  # a fixed list: no request path reaches the file system
            return error(f"no such file: {name}", 404)
        return Response(_static(name), media_type=STATIC_FILES[name])

    async def model_card(request: Request) -> Response:
        return JSONResponse(explorer.card)

    async def read_body(request: Request) -> bytes:
        """The body, refused as soon as it passes the size limit (never held whole beyond it)."""
        limit = explorer.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise ServeError(
                f"the upload is {int(declared) / 2**20:.1f} MB, over the {explorer._limit_text()} limit", 413
            )
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise ServeError(f"the upload is over the {explorer._limit_text()} limit", 413)
            chunks.append(chunk)
        return b"".join(chunks)

    async def predict(request: Request) -> Response:
        try:
            patch_arg = request.query_params.get("patch")
            patch = None
            if patch_arg not in (None, ""):
                try:  # int() itself decides: "--5" and "²" pass str.isdigit() tests and then raise
                    patch = int(patch_arg)
                except ValueError:
                    raise ServeError(f"patch={patch_arg[:20]!r} is not a patch number") from None
            sinks = request.query_params.get("sinks") in ("1", "true")
            data = await read_body(request)
            result = await run_in_threadpool(explorer.predict, data, patch, 5, sinks)
        except ServeError as e:
            return error(str(e), e.status)
        return JSONResponse(result)

    async def figure(request: Request) -> Response:
        try:
            png = await run_in_threadpool(explorer.figure, request.path_params["name"])
        except ServeError as e:
            return error(str(e), e.status)
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    routes = [
        Route("/", index),
        Route("/static/{name}", static),
        Route("/api/model", model_card),
        Route("/api/predict", predict, methods=["POST"]),
        Route("/api/figure/{name}", figure),
    ]
    return Starlette(routes=routes)


def run_server(app, host: str = "127.0.0.1", port: int = 7860) -> None:  # noqa: ANN001
    """Serve ``app`` with uvicorn until Ctrl-C (uvicorn shuts down cleanly on SIGINT/SIGTERM)."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    uvicorn.Server(config).run()

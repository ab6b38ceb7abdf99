"""How `vitkit serve` holds up under load: concurrent clients posting good images mixed with bad ones.

Starts `vitkit serve` as a subprocess on 127.0.0.1 (a free port) with a trained checkpoint
(--checkpoint, or a small ViT trained here on Fashion-MNIST in about half a minute), then runs
the clients twice: a warm-up (--warmup seconds), then the measurement (--seconds). Each client
posts to /api/predict, drawing each request from a fixed, seeded mix of cases in three kinds:

  good       real images the page must classify (200): test images of --data as PNG and JPEG,
             scikit-learn's two photographs, and one of them enlarged to a 12-megapixel JPEG
  oversized  a file over the server's upload limit, sent whole and streamed (413); a PNG and a
             JPEG whose headers claim 20000x20000 pixels (decompression bombs, 400)
  garbage    random bytes, an empty body, JSON, a multipart form, a truncated PNG, a garbled
             ?patch= (400)

It prints requests/s and p50/p99 latency (all requests, and the good ones) and the statuses per
case, and checks what a user of the page relies on: no 5xx and no unanswered request on good
input, every bad one answered with a 4xx carrying a one-line JSON error, and the server's
resident memory (VmRSS) at the end within 10 % of its value after the warm-up (a leak per
request shows there). One record goes to results/serve_load.jsonl through record.py, the
checks' outcomes among its metrics; the exit status is 1 when a check fails.

Bounded: every request has a timeout, clients start no request after the deadline, a client
that does not finish in time is left behind (and counted), and the server is killed at the end
whatever happens. Clients and server share this machine's cores, so the numbers are those of
one machine serving itself.

    python benchmarks/serve_load.py                        # trains a checkpoint; 8 clients, 60 s
    python benchmarks/serve_load.py --checkpoint runs/main --seconds 10
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import record
from PIL import Image

import vitkit
from vitkit.data import load_dataset

RSS_TOLERANCE = 0.10  # resident memory at the end within 10 % of its value after the warm-up
BOMB_SIDE = 20000  # 400 M pixels: over Pillow's refusal limit (2 x 89.5 M); 400 MB if decoded in gray
# Fashion-MNIST: the hybrid conv stem learns fastest on a small budget (tests/test_serve.py's run);
# digits (8x8): patches of 2 pixels, 16 tokens (tests/conftest.py's TINY).
MODELS = {
    "fashion-mnist": dict(
        width=64, depth=2, num_heads=2, mlp_dim=128, stem="conv", stem_channels=16, pool="gap", class_token=False
    ),
    "digits": dict(width=64, depth=2, num_heads=2, mlp_dim=128, patch_size=2, pool="gap"),
}


@dataclass
class Case:
    """One kind of request: its bodies (one drawn per request), how it is sent, and its share."""

    name: str
    kind: str  # good | oversized | garbage
    bodies: list[bytes]
    weight: float
    content_type: str = "application/octet-stream"
    params: dict[str, str] = field(default_factory=dict)
    chunked: bool = False  # streamed without a Content-Length, so the server must count


@dataclass
class Result:
    case: str
    kind: str
    status: str  # "200", "413", ... or the transport error's name ("ReadTimeout")
    seconds: float
    message: bool  # the body is JSON {"error": one non-empty line}


# ---------------------------------------------------------------------------------- request bodies
def encode(image: np.ndarray, fmt: str, **kw: object) -> bytes:
    """(H, W) or (H, W, 3) uint8 -> the bytes of an image file."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_bomb(side: int) -> bytes:
    """A valid 1x1 PNG whose header claims side x side pixels."""
    raw = encode(np.zeros((1, 1), np.uint8), "PNG")
    chunk = b"IHDR" + struct.pack(">II", side, side) + raw[24:29]  # width, height, then depth, colour, ...
    return raw[:12] + chunk + struct.pack(">I", zlib.crc32(chunk)) + raw[33:]


def jpeg_bomb(side: int) -> bytes:
    """A valid 8x8 JPEG whose frame header claims side x side pixels."""
    data, i = bytearray(encode(np.zeros((8, 8), np.uint8), "JPEG")), 2
    while data[i + 1] not in (0xC0, 0xC1, 0xC2):  # walk the markers to the start of frame
        i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    data[i + 5 : i + 9] = struct.pack(">HH", side, side)
    return bytes(data)


def multipart(filename: str, body: bytes) -> tuple[bytes, str]:
    """An image inside an HTML form, as a browser posts a form (the page posts the bytes alone)."""
    boundary = "vitkit-load-boundary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
    form = head.encode() + b"Content-Type: image/png\r\n\r\n" + body + f"\r\n--{boundary}--\r\n".encode()
    return form, f"multipart/form-data; boundary={boundary}"


def make_cases(data: str, limit_bytes: int, seed: int = 0) -> list[Case]:
    """The mix: about 60 % good requests, 15 % oversized, 25 % garbage."""
    import sklearn.datasets

    test = load_dataset(data, "test", download=False)
    images = [img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy() for img in test.images[:64]]
    pngs = [encode(a, "PNG") for a in images]
    photos = sorted((Path(sklearn.datasets.__file__).parent / "images").glob("*.jpg"))  # china, flower
    china = np.asarray(Image.open(photos[0]).convert("RGB"))
    large = encode(
        np.asarray(Image.fromarray(china).resize((4032, 3024), Image.Resampling.BICUBIC)), "JPEG", quality=90
    )
    over = large + bytes(max(0, limit_bytes + 2**20 - len(large)))  # an image file padded past the limit
    rng = np.random.default_rng(seed)
    form, form_type = multipart("image.png", pngs[0])
    return [
        Case("dataset_png", "good", pngs, 0.20, "image/png"),
        Case("dataset_jpeg", "good", [encode(a, "JPEG", quality=90) for a in images], 0.15, "image/jpeg"),
        Case("photo_jpeg", "good", [p.read_bytes() for p in photos], 0.18, "image/jpeg"),
        Case("photo_12mp_jpeg", "good", [large], 0.02, "image/jpeg"),
        Case("dataset_png_patch", "good", pngs, 0.05, "image/png", params={"patch": "3"}),
        Case("over_limit", "oversized", [over], 0.04, "image/jpeg"),
        Case("over_limit_streamed", "oversized", [over], 0.03, "image/jpeg", chunked=True),
        Case("png_bomb", "oversized", [png_bomb(BOMB_SIDE)], 0.04, "image/png"),
        Case("jpeg_bomb", "oversized", [jpeg_bomb(BOMB_SIDE)], 0.04, "image/jpeg"),
        Case("random_bytes", "garbage", [rng.bytes(n) for n in (100, 10_000, 300_000)], 0.06),
        Case("empty", "garbage", [b""], 0.04),
        Case("json", "garbage", [b'{"image": "cat.png"}'], 0.04, "application/json"),
        Case("form", "garbage", [form], 0.04, form_type),
        Case("truncated_png", "garbage", [p[: len(p) // 2] for p in pngs[:8]], 0.04, "image/png"),
        Case("bad_patch", "garbage", pngs[:8], 0.03, "image/png", params={"patch": "--5"}),
    ]


# ---------------------------------------------------------------------------------- the server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid: int, field_name: str = "VmRSS") -> int:
    """A memory figure of a live process from /proc/PID/status (VmRSS now, VmHWM its peak), kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field_name} in /proc/{pid}/status")


def start_server(command: list[str], log: Path, url: str, wait: float = 120.0) -> subprocess.Popen:
    """The server, once it answers /api/model. Its output goes to a file, never a pipe: a pipe
    nobody reads fills up (libjpeg warns on every damaged JPEG) and then blocks the server."""
    env = dict(os.environ)
    src = str(Path(vitkit.__file__).resolve().parents[1])  # the server runs this very vitkit
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"serve_load: the server exited ({proc.returncode}): {last_line(log)}")
        try:
            if httpx.get(f"{url}/api/model", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_server(proc)
    raise SystemExit(f"serve_load: the server did not answer within {wait:.0f} s: {last_line(log)}")


def last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


# ---------------------------------------------------------------------------------- the clients
def one_line_error(response: httpx.Response) -> bool:
    try:
        message = response.json().get("error")
    except (ValueError, AttributeError):
        return False
    return isinstance(message, str) and bool(message.strip()) and "\n" not in message


def send(http: httpx.Client, case: Case, rng: random.Random) -> Result:
    body = rng.choice(case.bodies)
    content = (body[i : i + 2**16] for i in range(0, len(body), 2**16)) if case.chunked else body
    start = time.perf_counter()
    try:
        r = http.post("/api/predict", content=content, params=case.params, headers={"content-type": case.content_type})
        status, message = str(r.status_code), one_line_error(r)
    except httpx.HTTPError as e:  # unanswered: a timeout, a reset connection
        status, message = type(e).__name__, False
    return Result(case.name, case.kind, status, time.perf_counter() - start, message)


def client(
    url: str,
    cases: list[Case],
    seed: int,
    deadline: float,
    timeout: float,
    stop: threading.Event,
    out: list,
    tour: bool,
) -> None:
    """Requests drawn from the mix until the deadline. With ``tour``, one of every case first (in a
    shuffled order), so that a warm-up has met every case, all clients at once, before the
    server's memory is read."""
    rng = random.Random(seed)
    first = rng.sample(cases, len(cases)) if tour else []
    weights = [c.weight for c in cases]
    with httpx.Client(base_url=url, timeout=timeout) as http:
        while not stop.is_set() and (first or time.perf_counter() < deadline):
            case = first.pop() if first else rng.choices(cases, weights)[0]
            out.append(send(http, case, rng))


def run_phase(
    url: str,
    cases: list[Case],
    clients: int,
    seconds: float,
    timeout: float,
    seed: int,
    server: subprocess.Popen,
    tour: bool = False,
) -> tuple[list[Result], float, int]:
    """``clients`` threads posting for ``seconds``; -> (results, wall seconds, clients left behind).

    Every client finishes within ``timeout`` of the deadline (its last request's limit); one
    that does not, or a server that dies, stops the phase there."""
    stop, outs = threading.Event(), [[] for _ in range(clients)]
    start = time.perf_counter()
    deadline = start + seconds
    threads = [
        threading.Thread(target=client, args=(url, cases, seed + i, deadline, timeout, stop, out, tour), daemon=True)
        for i, out in enumerate(outs)
    ]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads) and time.perf_counter() < deadline + timeout + 5:
        if server.poll() is not None:
            stop.set()
        time.sleep(0.1)
    stop.set()
    left = sum(t.is_alive() for t in threads)
    return [r for out in outs for r in out], time.perf_counter() - start, left


# ---------------------------------------------------------------------------------- the numbers
def latency_ms(results: list[Result]) -> dict[str, float | None]:
    if not results:
        return {"p50": None, "p99": None, "max": None}
    ms = 1000 * np.array([r.seconds for r in results])
    return {
        "p50": round(float(np.percentile(ms, 50)), 1),
        "p99": round(float(np.percentile(ms, 99)), 1),
        "max": round(float(ms.max()), 1),
    }


def summarize(results: list[Result], seconds: float) -> dict:
    """Throughput and latency, overall and for good requests; statuses per kind and per case."""
    by = {}
    for key in ("kind", "case"):
        groups: dict[str, list[Result]] = {}
        for r in results:
            groups.setdefault(getattr(r, key), []).append(r)
        by[key] = {
            name: {"kind": rs[0].kind, "requests": len(rs)}
            | {"statuses": dict(sorted(Counter(r.status for r in rs).items()))}
            | {f"{k}_ms": v for k, v in latency_ms(rs).items()}
            for name, rs in sorted(groups.items())
        }
    good = [r for r in results if r.kind == "good"]
    return {
        "requests": len(results),
        "seconds": round(seconds, 2),
        "requests_per_s": round(len(results) / seconds, 1),
        "good_requests_per_s": round(len(good) / seconds, 1),
        "latency_ms": latency_ms(results),
        "good_latency_ms": latency_ms(good),
        "kinds": by["kind"],
        "cases": by["case"],
    }


def checks(results: list[Result], rss_warm: int, rss_end: int, alive: bool, left: int) -> tuple[dict, list]:
    """The checks' outcomes, and up to five failing requests as examples."""
    good = [r for r in results if r.kind == "good"]
    bad = [r for r in results if r.kind != "good"]
    answered = [r for r in good if r.status.isdigit() and not r.status.startswith("5")]
    rejected = [r for r in bad if r.status.startswith("4") and r.message]
    outcome = {
        "good_no_5xx": len(answered) == len(good) > 0,  # unanswered counts as worse than a 5xx
        "good_all_200": all(r.status == "200" for r in good) and len(good) > 0,
        "bad_4xx_with_message": len(rejected) == len(bad) > 0,
        "rss_flat": abs(rss_end - rss_warm) <= RSS_TOLERANCE * rss_warm,
        "server_alive": alive,
        "clients_finished": left == 0,
    }
    failing = [r for r in good if r.status != "200"] + [r for r in bad if not (r.status.startswith("4") and r.message)]
    return outcome, [{"case": r.case, "status": r.status, "message": r.message} for r in failing[:5]]


def report(metrics: dict) -> None:
    print(f"{'case':<22} {'kind':<10} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8}  statuses")
    for name, c in metrics["cases"].items():
        statuses = " ".join(f"{s}:{n}" for s, n in c["statuses"].items())
        print(f"{name:<22} {c['kind']:<10} {c['requests']:>8} {c['p50_ms']:>8} {c['p99_ms']:>8}  {statuses}")
    lat, good = metrics["latency_ms"], metrics["good_latency_ms"]
    print(
        f"{metrics['requests']} requests in {metrics['seconds']} s: {metrics['requests_per_s']} req/s "
        f"(good {metrics['good_requests_per_s']}); p50 {lat['p50']} ms, p99 {lat['p99']} ms "
        f"(good: p50 {good['p50']} ms, p99 {good['p99']} ms)"
    )
    rss = metrics["rss_kb"]
    print(
        f"server RSS: {rss['warm'] / 1024:.0f} MB after warm-up, {rss['end'] / 1024:.0f} MB at the end "
        f"({100 * metrics['rss_change']:+.1f} %), peak {rss['peak'] / 1024:.0f} MB"
    )
    for name, ok in metrics["checks"].items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")


# ---------------------------------------------------------------------------------- main
def train_checkpoint(data: str, out: Path, epochs: int) -> Path:
    """A small ViT trained on ``data`` for ``epochs`` (5000 images at most): a real model, in seconds."""
    from vitkit.train import TrainConfig, train

    cfg = TrainConfig(
        out=str(out),
        data=data,
        model="vit_tiny_28",
        model_overrides=MODELS[data],
        epochs=epochs,
        batch_size=64,
        lr=3e-3,
        limit_train=5000,
        limit_val=500,
        seed=0,
        threads=2,
        label_smoothing=0.0,
        warmup_epochs=0.5,
    )
    train(cfg, progress=False)
    return out


def measure(args: argparse.Namespace, checkpoint: Path, tmp: Path) -> tuple[dict, dict]:
    """Start the server, warm it up, measure, stop it: -> (config, metrics)."""
    limit = int(args.max_upload_mb * 2**20)
    cases = make_cases(args.data, limit)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "vitkit", "serve", str(checkpoint), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--max-upload-mb", f"{args.max_upload_mb:g}"]
    log = tmp / "server.log"
    proc = start_server(command, log, url)
    try:
        card = httpx.get(f"{url}/api/model", timeout=10).json()
        warm, _, left_warm = run_phase(url, cases, args.clients, args.warmup, args.timeout, 1000, proc, tour=True)
        if proc.poll() is not None:
            raise SystemExit(f"serve_load: the server died in the warm-up ({proc.returncode}): {last_line(log)}")
        rss_warm = rss_kb(proc.pid)
        results, seconds, left = run_phase(url, cases, args.clients, args.seconds, args.timeout, 0, proc)
        alive = proc.poll() is None
        rss_end, rss_peak = (rss_kb(proc.pid), rss_kb(proc.pid, "VmHWM")) if alive else (0, 0)
    finally:
        stop_server(proc)
    metrics = summarize(results, seconds)
    metrics["rss_kb"] = {"warm": rss_warm, "end": rss_end, "peak": rss_peak}
    metrics["rss_change"] = round((rss_end - rss_warm) / rss_warm, 4)
    server_log = log.read_text(errors="replace")
    metrics["server_tracebacks"] = server_log.count("Traceback")
    if metrics["server_tracebacks"]:  # what went wrong, kept with the numbers: the last traceback's end
        metrics["last_traceback"] = server_log[server_log.rindex("Traceback") :].splitlines()[-12:]
    # The numbers are the measurement's; the checks cover every request, the warm-up's too.
    metrics["checks"], metrics["failing_examples"] = checks(warm + results, rss_warm, rss_end, alive, left_warm + left)
    metrics["warmup_requests"] = len(warm)
    metrics["passed"] = all(metrics["checks"].values())
    model = {k: card[k] for k in ("image_size", "patch_size", "width", "depth", "heads", "params", "accuracy")}
    config = {
        "checkpoint": str(args.checkpoint) if args.checkpoint else f"trained here: {args.data}, {args.epochs} epochs",
        "model": model | {"dataset": card["dataset"]},
        "clients": args.clients,
        "seconds": args.seconds,
        "warmup_s": args.warmup,
        "request_timeout_s": args.timeout,
        "max_upload_mb": args.max_upload_mb,
        "server": "python -m vitkit serve CHECKPOINT " + " ".join(command[5:]),
        "cases": {c.name: case_config(c) for c in cases},
    }
    return config, metrics


def case_config(case: Case) -> dict:
    sizes = [len(b) for b in case.bodies]
    return {"kind": case.kind, "weight": case.weight, "bodies": len(sizes), "bytes": [min(sizes), max(sizes)]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", type=Path, help="a trained run or checkpoint folder (default: train one here)")
    p.add_argument("--data", default="fashion-mnist", choices=sorted(MODELS), help="the good images; the training data")
    p.add_argument("--epochs", type=int, default=2, help="training epochs when no --checkpoint is given")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients")
    p.add_argument("--seconds", type=float, default=60.0, help="length of the measurement")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds of the same load before it")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, seconds")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="the server's upload limit (its default)")
    p.add_argument("--results", type=Path, default=record.RESULTS, help="folder of the results/NAME.jsonl records")
    args = p.parse_args(argv)
    if args.clients < 1 or args.seconds <= 0 or args.warmup <= 0 or args.timeout <= 0:
        p.error("--clients, --seconds, --warmup and --timeout must be positive")
    if args.checkpoint is not None and not args.checkpoint.exists():
        p.error(f"--checkpoint {args.checkpoint} does not exist")
    env = record.environment()
    with tempfile.TemporaryDirectory(prefix="serve_load-") as tmp:
        checkpoint = args.checkpoint or train_checkpoint(args.data, Path(tmp) / "run", args.epochs)
        config, metrics = measure(args, checkpoint, Path(tmp))
    report(metrics)
    record.append("serve_load", config, metrics, env=env, results=args.results)
    print(f"appended to {args.results / 'serve_load.jsonl'}")
    if not metrics["passed"]:
        print(f"serve_load: failed: {json.dumps(metrics['failing_examples'])}", file=sys.stderr)
    return 0 if metrics["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

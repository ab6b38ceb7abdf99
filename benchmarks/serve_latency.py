"""How fast `vitkit serve` answers: one POST /api/predict, end to end through the ASGI app.

Times the whole request (upload bytes -> decode -> forward with attention -> rollout and maps ->
JSON) for a trained Fashion-MNIST checkpoint (28x28) and for ViT-B/16 at 224x224 (random
weights: the time does not depend on them), with and without a clicked patch. Prints a table and
appends a record to benchmarks/results/serve_latency.jsonl. With --screenshot PATH it also opens the page in
headless Chromium on the first checkpoint, uploads a test image, clicks a patch and saves a
screenshot (the one in the README).

    python benchmarks/serve_latency.py runs/main            # a run folder or checkpoint folder
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import record
import torch
from PIL import Image
from starlette.testclient import TestClient

import vitkit
from vitkit.serve import Explorer, create_app


def png(size: tuple[int, int], seed: int = 0) -> bytes:
    rgb = (np.random.default_rng(seed).random((*size, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def time_requests(client: TestClient, body: bytes, query: str, repeats: int) -> list[float]:
    client.post(f"/api/predict{query}", content=body)  # warm-up
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        r = client.post(f"/api/predict{query}", content=body)
        out.append(time.perf_counter() - t)
        assert r.status_code == 200, r.text
    return out


def screenshot(checkpoint: str, path: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from vitkit.data import load_dataset

    port = 7861
    server = subprocess.Popen([sys.executable, "-m", "vitkit", "serve", checkpoint, "--port", str(port)])
    try:
        time.sleep(6)
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        with tempfile.TemporaryDirectory() as profile:
            for flag in (
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--window-size=1180,820",
                f"--user-data-dir={profile}",
            ):
                options.add_argument(flag)
            driver = webdriver.Chrome(options=options, service=webdriver.ChromeService("/usr/bin/chromedriver"))
            try:
                driver.get(f"http://127.0.0.1:{port}/")
                wait = WebDriverWait(driver, 30)
                test = load_dataset("fashion-mnist", "test")
                image = Path(profile) / "boot.png"
                Image.fromarray(test.images[0, 0].numpy()).save(image)
                driver.find_element(By.ID, "file").send_keys(str(image))
                wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#top li")) == 5)
                canvas = driver.find_element(By.ID, "canvas")
                webdriver.ActionChains(driver).move_to_element_with_offset(canvas, 60, 40).click().perform()
                wait.until(lambda d: "where patch" in d.find_element(By.ID, "caption").text)
                path.parent.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(str(path))
            finally:
                driver.quit()
    finally:
        server.terminate()
        server.wait(timeout=10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a trained run or checkpoint folder (28x28 Fashion-MNIST)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--screenshot", type=Path, help="also save a browser screenshot of the page here")
    args = p.parse_args()

    env = record.environment()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        vitkit.save(vitkit.create_model("vit_b16"), Path(tmp) / "vit_b16")
        for name, ckpt, size in [
            ("trained checkpoint", args.checkpoint, (28, 28)),
            ("ViT-B/16", str(Path(tmp) / "vit_b16"), (224, 224)),
        ]:
            explorer = Explorer(ckpt)
            client = TestClient(create_app(explorer))
            body = png(size)
            for query, what in [("", "upload"), ("?patch=3", "upload + clicked patch")]:
                times = time_requests(client, body, query, args.repeats if size[0] < 100 else max(3, args.repeats // 4))
                c = explorer.model.config
                rows.append(
                    dict(
                        model=name,
                        image=f"{size[0]}x{size[1]}",
                        request=what,
                        grid=list(c.grid_size),
                        depth=c.depth,
                        median_ms=round(1000 * statistics.median(times), 1),
                        max_ms=round(1000 * max(times), 1),
                        repeats=len(times),
                    )
                )
    print(f"{'model':<20} {'image':>8} {'request':<24} {'median ms':>10} {'max ms':>8}")
    for r in rows:
        print(f"{r['model']:<20} {r['image']:>8} {r['request']:<24} {r['median_ms']:>10.1f} {r['max_ms']:>8.1f}")
    config = {"checkpoint": args.checkpoint, "repeats": args.repeats, "threads": torch.get_num_threads()}
    record.append("serve_latency", config, {"rows": rows}, env=env)
    print(f"appended to {record.RESULTS / 'serve_latency.jsonl'}")
    if args.screenshot:
        screenshot(args.checkpoint, args.screenshot)
        print(f"wrote {args.screenshot}")


if __name__ == "__main__":
    main()

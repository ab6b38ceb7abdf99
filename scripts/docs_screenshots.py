"""Screenshots of the built documentation site in headless Chromium, to look at what a reader sees.

    bash scripts/docs.sh && .venv/bin/python scripts/docs_screenshots.py [--site site] [--out /tmp/docs-shots]

Opens the home page, a guide, a tutorial and the API reference from ``site/`` (file:// URLs: the
site needs no server), waits for each to load, and saves a PNG of each. It also says, per page,
which images failed to load and whether its code blocks were highlighted, the two things a
Markdown page can get wrong without a build warning, and exits 1 if either went wrong.
``docs/site.png`` is a shot of the tutorial page at its "Patches" section, scaled to 960 px and
128 colours to stay small. Needs Debian's ``chromium`` and
``chromium-driver`` (as the browser test of ``vitkit serve``) and selenium (the dev extra).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

PAGES = {
    "home": "index.html",
    "guide": "guides/explain.html",
    "tutorial": "tutorials/5-paper-in-code.html",
    "api": "api.html",
}

# Per page: images that did not load, and code blocks the highlighter coloured.
CHECK = """
const images = [...document.querySelectorAll('article img')];
return {
  images: images.length,
  broken: images.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.getAttribute('src')),
  code: document.querySelectorAll('article pre code').length,
  highlighted: document.querySelectorAll('article .highlight pre code span').length > 0,
};
"""


def browser(profile: Path, width: int, height: int):  # noqa: ANN201 - a selenium WebDriver
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--allow-file-access-from-files",
        f"--window-size={width},{height}",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    return webdriver.Chrome(options=options, service=service)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=Path, default=Path(__file__).resolve().parents[1] / "site")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "vitkit-docs-shots")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--scroll", type=float, default=0.0, help="scroll this share of each page before the shot")
    args = parser.parse_args(argv)
    if not (args.site / "index.html").is_file():
        print(f"no built site in {args.site}: run bash scripts/docs.sh first", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    failed = False
    with tempfile.TemporaryDirectory() as profile:
        driver = browser(Path(profile), args.width, args.height)
        try:
            for name, page in PAGES.items():
                driver.get((args.site / page).resolve().as_uri())
                driver.execute_script("return document.readyState")
                found = driver.execute_script(CHECK)
                if args.scroll:
                    driver.execute_script(f"window.scrollTo(0, document.body.scrollHeight * {args.scroll})")
                shot = args.out / f"{name}.png"
                driver.save_screenshot(str(shot))
                failed |= bool(found["broken"]) or (found["code"] > 0 and not found["highlighted"])
                print(
                    f"{name:8s} {page:32s} images {found['images']} (not loaded: {found['broken'] or 'none'}), "
                    f"code blocks {found['code']} (highlighted: {found['highlighted']}) -> {shot}"
                )
        finally:
            driver.quit()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

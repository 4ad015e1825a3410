"""The evaluation's viewer report (``report.html``) in a REAL headless Chromium (Debian's
``chromium`` package, driven by Playwright-for-Python through ``executable_path``; no
``playwright install``): it loads with zero network requests, each canvas shows an image,
switching the window preset / overlay / subject changes the picture, and the console stays
clean. Without a Chromium the test fails under CI (``CI=true``) and is skipped, with the reason,
elsewhere. ``MEDGAN_UPDATE_SCREENSHOT=1`` also writes the page's screenshot to
``docs/img/viewer.png`` (the README's picture)."""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# WebGL2 without a GPU: Chromium's software renderer (SwiftShader through ANGLE)
CHROMIUM_ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--no-sandbox",
                 "--disable-dev-shm-usage"]


def _not_run(reason: str) -> None:
    """Fail under CI (the browser test must run there), skip with the reason elsewhere."""
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI=true: the viewer's browser test must run; .ci/run installs "
                    "Debian's chromium)", pytrace=False)
    pytest.skip(f"{reason}; the viewer's browser test did not run (install one: "
                "`apt-get install -y chromium`)")


@pytest.fixture(scope="module")
def chromium() -> str:
    path = os.environ.get("MEDGAN_CHROMIUM") or next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    if not path:
        _not_run(f"no Chromium binary found (looked for {', '.join(CHROMIUM_NAMES)} on PATH and "
                 "$MEDGAN_CHROMIUM)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _not_run("Playwright-for-Python is not installed (pip install -e '.[test]')")
    return str(path)


@pytest.fixture(scope="module")
def report(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``medgan evaluate`` of a tiny pix2pix (a few real steps) on the cohort's train split
    (its subjects): the report.html it writes."""
    from gan_core.cli import main
    from gan_core.engine import train
    from gan_core.presets import apply_overrides, preset

    root = tmp_path_factory.mktemp("viewer")
    cfg = apply_overrides(preset("tiny", "pix2pix"), {"optim.steps_constant": 2, "optim.steps_decay": 1})
    train(cfg, tiny_shards, root / "train", progress=False)
    assert main(["evaluate", "--model", f"pix2pix={root / 'train' / 'model.pt'}", "--data", str(tiny_shards),
                 "--split", "train", "--out", str(root / "eval"), "--figures", "3"]) == 0
    return root / "eval" / "report.html"


def _page_data(html: str) -> dict:
    m = re.search(r'<script id="medgan-data" type="application/json">(.*?)</script>', html, re.S)
    assert m, "report.html has no embedded data block"
    return json.loads(m.group(1))


def test_report_is_self_contained_with_compact_volumes(report: Path):
    import nibabel as nib

    html = report.read_text()
    data = _page_data(html)
    assert len(data["subjects"]) >= 2
    assert "BSD 2-Clause License" in html and "Copyright (c) 2021, Niivue" in html  # its licence travels
    # nothing outside the page: no src=/href= to anything, no http(s) in our own markup/script
    assert not re.search(r'\s(src|href)\s*=', html)
    own = html.split('<script id="niivue-gz"')[0]
    assert "http://" not in own and "https://" not in own
    s = data["subjects"][0]
    assert set(s["volumes"]) == {"input", "prediction", "target", "error"} and "audit" in s["overlays"]
    for b64 in [*s["volumes"].values(), *s["overlays"].values()]:
        img = nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(b64)))
        assert img.shape == tuple(s["shape"]) and img.get_data_dtype() in (np.int16, np.uint8)
    ct = nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(s["volumes"]["target"])))
    assert np.asanyarray(ct.dataobj).min() < -500 < 0 < np.asanyarray(ct.dataobj).max()  # HU
    assert report.stat().st_size < 3_000_000


def _stats(png: bytes) -> tuple[float, float, np.ndarray]:
    """(std of the gray levels, fraction of non-black pixels, RGB array) of a screenshot."""
    from io import BytesIO

    from PIL import Image

    rgb = np.asarray(Image.open(BytesIO(png)).convert("RGB"), dtype=np.float32)
    gray = rgb.mean(axis=2)
    return float(gray.std()), float((gray > 20).mean()), rgb


def test_report_in_headless_chromium(report: Path, chromium: str, tmp_path: Path):
    from playwright.sync_api import sync_playwright

    url = report.resolve().as_uri()
    requests: list[str] = []
    blocked: list[str] = []
    problems: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 950})

            def route(r):  # the page itself may load; anything else would be a network request
                if r.request.url == url:
                    r.continue_()
                else:
                    blocked.append(r.request.url)
                    r.abort()

            page.route("**/*", route)
            page.on("request", lambda r: requests.append(r.url))
            page.on("console", lambda m: problems.append(f"console.{m.type}: {m.text}")
                    if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.goto(url)
            page.wait_for_function("document.body.dataset.ready", timeout=150_000)
            assert page.evaluate("document.body.dataset.ready") == "1", page.inner_text("#status")

            def settled() -> None:
                page.wait_for_function("document.body.dataset.busy === '0'", timeout=60_000)

            def canvases() -> dict[str, bytes]:
                return {k: page.locator(f"#cv-{k}").screenshot()
                        for k in ("input", "prediction", "target", "error")}

            first = canvases()
            for key, png in first.items():
                std, frac, _ = _stats(png)
                assert std > 8 and frac > 0.05, f"canvas {key} looks blank (std {std:.1f}, {frac:.1%} lit)"
            assert "pix2pix" in page.inner_text("#subject-metrics")
            assert "baseline" in page.inner_text("#subject-metrics")
            page.screenshot(path=str(tmp_path / "viewer.png"))

            def diff(a: bytes, b: bytes) -> float:
                return float(np.abs(_stats(a)[2] - _stats(b)[2]).mean())

            page.click("#presets button[data-preset='bone']")
            settled()
            bone = canvases()
            assert diff(first["target"], bone["target"]) > 2, "the bone window did not change the CT"
            assert diff(first["prediction"], bone["prediction"]) > 2
            assert diff(first["input"], bone["input"]) < 0.5, "a window preset must not touch the MR"

            # the overlay's share of the canvas depends on what the audit found: compare the
            # change with the screenshot noise of an unchanged page, not with a fixed amount
            noise = diff(bone["target"], page.locator("#cv-target").screenshot())
            page.uncheck("#ov-audit")
            settled()
            change = diff(bone["target"], page.locator("#cv-target").screenshot())
            assert change > max(10 * noise, 0.02), \
                f"hiding the audit overlay did not change the picture ({change:.3f} vs noise {noise:.3f})"
            page.check("#ov-audit")
            settled()

            table = page.inner_text("#subject-metrics")
            page.select_option("#subject", "1")
            settled()
            other = canvases()
            assert diff(bone["input"], other["input"]) > 2, "switching subject did not change the MR"
            assert page.inner_text("#subject-metrics") != table
        finally:
            browser.close()
    assert blocked == [] and requests == [url], f"network requests: {requests}, blocked: {blocked}"
    assert problems == [], problems
    if os.environ.get("MEDGAN_UPDATE_SCREENSHOT") == "1":
        dst = ROOT / "docs" / "img" / "viewer.png"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_path / "viewer.png", dst)

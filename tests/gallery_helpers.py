"""For gallery tests: a real server on a free loopback port, Debian's Chromium, and a cache
ingested from generated images with tiny generated weights."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = os.environ.get("FARAMIR_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(app, host: str = "127.0.0.1"):
    """Serve `app` with uvicorn in a thread; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the gallery server did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def ingested_cache(root: Path, weights: Path, n: int = 36, size=(96, 72)) -> Path:
    """A cache at root/db ingested from `n` generated images (root/imgs) with tiny weights."""
    from faramir.store.ingestion import ingest_all
    from tests.conftest import write_images

    write_images(root / "imgs", n, size=size)
    db = root / "db"
    ingest_all([root / "imgs"], db=db, weights_dir=weights, device="cpu", workers=0, batch_size=12)
    return db


def middle_threshold(db, head: str = "faramir-v1") -> float:
    """A threshold (2 decimals) that splits the cache's confidences about evenly: generated
    weights put every confidence near one value, so the default 0.5 may accept none."""
    from faramir.store.queries.ranking import top

    conf = np.sort(top(db, head=head, limit=None).column("confidence").to_numpy())
    for t in np.round(np.linspace(0.0, 1.0, 101), 2):
        if (conf > np.float32(t)).mean() <= 0.5:
            return float(t)
    return 0.5


def not_blank(png: Path) -> bool:
    """Whether a screenshot shows something: more than a handful of distinct colours."""
    from PIL import Image

    with Image.open(png) as img:
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
    return colours is None or len(colours) > 50


def spread_head(db, weights: Path, name: str = "spread", scale: float = 2.5) -> str:
    """Register head `name`: the cache's faramir-v1 with its decision logit rescaled so confidences
    spread over (0, 1) (generated weights put them all near one value). Returns the name."""
    import torch

    from faramir.checkpoints import split_faramir_checkpoint
    from faramir.store.heads.rescore import rescore
    from faramir.store.queries.ranking import top
    from faramir.weights import FARAMIR_FILE

    decision = top(db, limit=None).column("decision").to_numpy().astype(np.float64)
    k = scale / max(decision.std(), 1e-12)
    state = torch.load(Path(weights) / FARAMIR_FILE, weights_only=True)
    head = dict(split_faramir_checkpoint(state)[1])
    head["head.linear_4.weight"] = head["head.linear_4.weight"] * k
    head["head.linear_4.bias"] = (head["head.linear_4.bias"] - float(np.median(decision))) * k
    path = Path(db).parent / f"{name}.pth"
    torch.save(head, path)
    rescore(path, name, db=db)
    return name


# -- the browser (fixtures for the test modules that drive the page; they import these) --------


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, headless, for a module's tests."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, tmp_path, request):
    """A fresh page; its screenshot is saved in the test's tmp dir, must not be blank, and the page
    must have thrown no error."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    shot = tmp_path / f"{request.node.name}.png"
    pg.screenshot(path=str(shot))
    context.close()
    assert not_blank(shot), f"blank screenshot {shot}"
    assert errors == [], errors


def wait_until(pg, expression: str, arg=None, timeout: float = 20.0):
    """Poll `expression` (a JavaScript function of `arg`) until it is truthy. Playwright's own
    wait_for_function evaluates strings with eval, which the page's CSP (rightly) forbids."""
    import time

    deadline = time.monotonic() + timeout
    while not pg.evaluate(expression, arg):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {expression} ({arg!r})")
        pg.wait_for_timeout(50)

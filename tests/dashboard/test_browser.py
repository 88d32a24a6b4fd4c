"""One real browser: the app served on a free port, a feature opened by its URL in headless Chromium."""

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode

import pytest

from factories import study_toml
from tiny_db import write_tiny_db

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def expect(locator: Any) -> Any:
    """Playwright's retrying assertions (imported late, like the browser itself)."""
    from playwright.sync_api import expect as playwright_expect
    return playwright_expect(locator)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve(config: Path) -> Iterator[str]:
    """The app on a free port with this study config; yields its URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "dashboard" / "app.py"), "--server.port", str(port),
         "--server.headless", "true", "--", "--config", str(config)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=1)
            break
        except OSError:
            time.sleep(0.25)
    try:
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a run mid forward pass on a loaded machine can outlast SIGTERM's grace
            process.kill()
            process.wait(timeout=10)


@contextmanager
def chromium_page(height: int = 1600) -> Iterator[Any]:
    """A page of headless Debian Chromium (Playwright drives it; never `playwright install`), closed after."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "install Debian's chromium (make test does: see the Makefile's browser target)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield browser.new_page(viewport={"width": 1400, "height": height})
        finally:
            browser.close()


@pytest.fixture
def server(tmp_path):
    arms = [{"name": name, "model": f"m/{name}", "sae_path": f"s/{name}"} for name in ("base", "finetuned")]
    config = tmp_path / "study.toml"
    config.write_text(study_toml(arms, features_db=str(tmp_path / "features.duckdb"),
                                 labels_db=str(tmp_path / "labels.duckdb")))
    write_tiny_db(tmp_path / "features.duckdb")
    with serve(config) as url:
        yield url


def test_a_feature_url_opens_its_page_in_chromium(server, tmp_path):
    with chromium_page() as page:
        page.goto(f"{server}/feature?arm=finetuned&feature=4")
        page.wait_for_selector("text=finetuned · feature 4", timeout=30_000)
        for expected in ("text=' blood'", "text=medical matches", "text=Top contexts"):  # chart, header, contexts
            page.wait_for_selector(expected, timeout=30_000)
        page.screenshot(path=str(tmp_path / "feature.png"))
    assert (tmp_path / "feature.png").stat().st_size > 10_000


def test_back_returns_to_the_previous_feature_in_chromium(server, tmp_path):
    """Streamlit pushes a history entry when a run changes the URL; the page must then follow the URL on Back."""
    with chromium_page() as page:
        page.goto(f"{server}/feature?arm=base&feature=1")
        page.wait_for_selector("text=base · feature 1", timeout=30_000)
        box = page.get_by_label("Feature (0 – 5)")
        box.fill("4")
        box.press("Enter")
        page.wait_for_selector("text=base · feature 4", timeout=30_000)
        page.wait_for_url("**/feature?arm=base&feature=4", timeout=10_000)
        page.go_back()
        page.wait_for_selector("text=base · feature 1", timeout=30_000)
        page.wait_for_timeout(2_000)  # the page must not write feature 4 back into the URL
        assert page.url.endswith("/feature?arm=base&feature=1")
        assert page.get_by_label("Feature (0 – 5)").input_value() == "1"
        page.goto(f"{server}/feature?arm=base&feature=999999")  # a link to no feature: one line, no feature
        page.wait_for_selector("text=base has no feature 999999 (0–5)", timeout=30_000)
        assert page.locator("[data-testid='stAlertContentError']").count() == 1
        assert page.locator("text=feature 0").count() == 0
        page.screenshot(path=str(tmp_path / "bad_link.png"))


def test_a_label_typed_and_saved_at_full_speed_is_stored_as_the_form_shows_it(server, tmp_path):
    """Click a choice, type a note, press Enter, click Save, with no waits: exactly that label and note are stored,
    once, and the header shows it."""
    from core import labels as labels_db

    with chromium_page() as page:
        page.goto(f"{server}/feature?arm=finetuned&feature=4&annotator=ann")  # labels are saved under a name
        page.wait_for_selector("text=Save label", timeout=30_000)
        page.get_by_text("not medical", exact=True).click()
        note = page.get_by_label("Note")
        note.click()
        page.keyboard.type("blood words, not a disease", delay=0)
        page.keyboard.press("Enter")
        page.get_by_role("button", name="Save label").click()
        page.wait_for_selector("[data-testid='stMetricValue']:has-text('not medical')", timeout=30_000)
        page.screenshot(path=str(tmp_path / "label.png"))
    events = labels_db.history(tmp_path / "labels.duckdb", "tiny")
    assert events[["arm", "feature", "label", "note"]].values.tolist() == [
        ["finetuned", 4, "not_medical", "blood words, not a disease"]]


def test_a_shared_inspect_url_opens_its_view_in_chromium(tmp_path):
    """/inspect?text=...&token=...&feature=... on a real tiny pair: the text runs through both models at once,
    the chosen token and the feature's strips are drawn, and the page keeps the URL it was opened with; clicking a
    token in a strip picks that token."""
    from inspect_study import TEXT, build_inspect_study

    config = build_inspect_study(tmp_path)
    query = urlencode({"text": TEXT, "token": 4, "feature": "base:0"})
    with serve(config) as url, chromium_page(height=1800) as page:
        page.goto(f"{url}/inspect?{query}")
        for expected in ("text=Token 4: ' heart'", "text=finetuned #0", "text=Why here"):
            page.wait_for_selector(expected, timeout=60_000)
        expect(page.locator("textarea")).to_have_value(TEXT, timeout=10_000)  # a fresh page fills it a moment late
        assert page.url.endswith(f"/inspect?{query}")
        page.screenshot(path=str(tmp_path / "inspect.png"), full_page=True)
        page.locator('a[href*="token=1"]').first.click()  # token 1 of a strip: its features are listed
        page.wait_for_selector("text=Token 1: ' kidney'", timeout=60_000)
        assert "token=1" in page.url and "feature=base%3A0" in page.url
    assert (tmp_path / "inspect.png").stat().st_size > 10_000


def test_a_divergent_row_opens_in_inspect_by_its_row_id_in_chromium(tmp_path):
    """The Model diff page's top divergent row (tiny_db: corpus row 3, peak at token 5) is a link; clicking it opens
    /inspect?row=3&... on that row's tokens, and that URL, opened afresh, shows the same view."""
    from core.config import load_config
    from core.corpus import corpus_row
    from core.loading import load_arm
    from core.words import new_token_texts
    from inspect_study import build_inspect_study

    config = build_inspect_study(tmp_path)
    study = load_config(str(config))
    tokenizer = load_arm(study.arms[0], "cpu").model.tokenizer
    ids = corpus_row(study.corpus, tokenizer, 3).tolist()
    row_text = "".join(new_token_texts(tokenizer, ids[:1], ids[1:]))
    with serve(config) as url, chromium_page(height=1800) as page:
        page.goto(f"{url}/diff")
        page.locator("a", has_text="Inspect ↗").first.click()
        # the click loads both models into a fresh server process: at load 8-10 on 2 cores that outlasted 60 s twice
        for expected in ("text=Corpus row 3 (corpus)", "text=Token 5:", "text=Why here"):
            page.wait_for_selector(expected, timeout=150_000)
        expect(page.locator("textarea")).to_have_value(row_text, timeout=10_000)
        shared = page.url
        assert "row=3" in shared and "token=5" in shared and "text=" not in shared
        page.goto(shared)
        page.wait_for_selector("text=Corpus row 3 (corpus)", timeout=60_000)
        page.wait_for_selector("text=Token 5:", timeout=60_000)
        # a freshly opened page draws its text box empty for up to ~1.5 s under load (seen in CI) before its value
        expect(page.locator("textarea")).to_have_value(row_text, timeout=10_000)
        page.screenshot(path=str(tmp_path / "inspect_row.png"), full_page=True)
    assert (tmp_path / "inspect_row.png").stat().st_size > 10_000


def test_clicking_a_point_of_the_map_opens_its_feature_in_chromium(tmp_path):
    """The tiny map puts finetuned's feature f at (f, 1); a real click on finetuned 3 opens its Feature page."""
    arms = [{"name": name, "model": f"m/{name}", "sae_path": f"s/{name}"} for name in ("base", "finetuned")]
    config = tmp_path / "study.toml"
    config.write_text(study_toml(arms, features_db=str(tmp_path / "features.duckdb"),
                                 labels_db=str(tmp_path / "labels.duckdb")))
    write_tiny_db(tmp_path / "features.duckdb", pair=True)
    with serve(config) as url, chromium_page(height=1000) as page:
        page.goto(f"{url}/map")
        finetuned = page.locator("g.trace.scatter").nth(1)  # traces by arm: base, finetuned
        finetuned.locator("path.point").nth(3).wait_for(timeout=30_000)
        page.screenshot(path=str(tmp_path / "map.png"))
        finetuned.locator("path.point").nth(3).click(force=True)
        page.wait_for_selector("text=finetuned · feature 3", timeout=30_000)
        page.wait_for_url("**/feature?arm=finetuned&feature=3", timeout=10_000)
        page.screenshot(path=str(tmp_path / "after_click.png"))

"""Pictures of the review page for docs/ui/: the live list, a post with its correction form, the model page, each at
desktop and phone width, on a real pipeline (embedded broker + Redis, a classifier serving the packaged model,
real photos with generated captions). Emoji in captions need a colour emoji font (Debian: fonts-noto-color-emoji).

    .venv/bin/python scripts/ui_screenshots.py [docs/ui]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis
from selenium.webdriver.common.by import By

from serving.promotion import promote
from serving.registry import Registry, default_entry
from streamcore.embedded import EmbeddedStack, spawn, stop_processes
from streamcore.kafka import ensure_topics
from streamcore.metrics import StageMetrics
from streamcore.schemas import Feedback
from streamcore.settings import Settings
from training.guard import LiveGuard
from workers.launcher import produce_synthetic
from workers.ui.browser import DESKTOP, PHONE, headless_chromium
from workers.ui.server import serving

TOKEN = "demo-token"


def _until(check: Callable[[], bool], what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.5)


def _history(settings: Settings) -> None:
    """Two promotions of the packaged weights and a rollback by the live guard on made-up verdicts."""
    registry = Registry(settings.serving.model_dir)
    for version in ("v20261128-real", "v20261201-retrained"):
        registry.publish(default_entry().path, name=version)
    promote(settings, "v20261128-real", reason="first model: the packaged real-photo weights")
    promote(settings, "v20261201-retrained", reason="a trainer run passed the gate (120 new corrections)")
    client = redis.Redis.from_url(settings.redis.url)
    guard = LiveGuard(settings, client, StageMetrics("trainer"))
    corrections = []
    for n, (version, top, truth) in enumerate([("v20261128-real", "dresses", "dresses")] * 4
                                              + [("v20261128-real", "coats", "jackets")]
                                              + [("v20261201-retrained", "coats", "dresses")] * 3
                                              + [("v20261201-retrained", "dresses", "dresses")]):
        client.set(settings.redis.keys.label(f"past{n}"), json.dumps({"model_version": version,
                                                                "categories": [{"term": top, "score": 0.8}]}))
        corrections.append(Feedback(post_id=f"past{n}", categories=[truth]))
    guard.observe(corrections)
    guard.check()


def _shoot(browser, url: str, out: Path, size: tuple[int, int], tag: str) -> None:
    browser.set_window_size(*size)
    browser.get(url)
    _until(lambda: browser.find_element(By.ID, "live-state").text == "live", "the page to go live", 30)
    _until(lambda: browser.execute_script(
        "return [...document.querySelectorAll('.thumb')].filter((p) => p.getBoundingClientRect().top < innerHeight)"
        ".every((p) => p.matches('.loaded, .none'))"),  # photos are fetched for cards on screen only
        "photos", 30)
    browser.save_screenshot(str(out / f"live-{tag}.png"))
    browser.find_element(By.ID, "name").send_keys("Ana (merchandising)")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "signin-button").click()
    _until(lambda: browser.find_element(By.ID, "session-state").text == "signed in", "sign-in", 10)
    card = browser.find_elements(By.CSS_SELECTOR, "article.card")[1]
    card.find_element(By.CSS_SELECTOR, "button.correct").click()
    _until(lambda: card.find_elements(By.CSS_SELECTOR, "input.search-attributes"), "the form", 10)
    card.find_element(By.CSS_SELECTOR, "input.search-attributes").send_keys("den")
    form = card.find_element(By.CSS_SELECTOR, "form.correction")
    browser.execute_script("arguments[0].scrollIntoView({block: 'start'}); window.scrollBy(0, -arguments[1])",
                           card if size == DESKTOP else form, 120 if size == DESKTOP else 40)
    browser.save_screenshot(str(out / f"correction-{tag}.png"))
    browser.get(url + "model")
    _until(lambda: browser.find_element(By.ID, "serving").text.startswith("v2026"), "the model page", 30)
    browser.save_screenshot(str(out / f"model-{tag}.png"))


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with EmbeddedStack() as stack, tempfile.TemporaryDirectory() as models:
        settings = Settings.named(kafka=stack.bootstrap, redis_url=stack.redis_url, model_dir=Path(models), ui_port=0,
                            ui_token=TOKEN, metrics_port=0, trainer_guard_min_corrections=3)
        ensure_topics(settings)
        _history(settings)
        procs = [spawn([sys.executable, "-m", "workers.cli", "worker", stage], env=settings.child_env())
                 for stage in ("text", "classify")]
        try:
            labels = redis.Redis.from_url(settings.redis.url)
            produce_synthetic(settings, count=1, real=True, seed=2)  # once it is labelled, both stages run
            _until(lambda: labels.xlen(settings.redis.keys.labels_stream) >= 1, "the first label")
            produce_synthetic(settings, count=12, real=True, seed=3, rate=2.0)
            _until(lambda: labels.xlen(settings.redis.keys.labels_stream) >= 13, "12 more labels")
            with serving(settings) as url:
                browser = headless_chromium()
                try:
                    for size, tag in ((DESKTOP, "desktop"), (PHONE, "phone")):
                        _shoot(browser, url, out, size, tag)
                        browser.delete_all_cookies()
                finally:
                    browser.quit()
        finally:
            stop_processes(procs)
    print(f"screenshots in {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/ui"))

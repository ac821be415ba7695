"""Headless Chromium (Debian's ``chromium`` + ``chromium-driver``) driven by Selenium: the review page's tests,
its screenshots and its benchmark look at it the way a person's browser does."""

from __future__ import annotations

import shutil
from typing import Any

from streamcore.extras import install_hint, needs

#: Viewports the page is checked and pictured at.
DESKTOP, PHONE = (1280, 900), (390, 844)


def chromium_missing() -> str | None:
    """Why no headless browser can run here, or ``None``."""
    for binary, package in (("chromium", "chromium"), ("chromedriver", "chromium-driver")):
        if shutil.which(binary) is None:
            return f"{binary} not installed (Debian package {package}; scripts/bootstrap installs it)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return f"selenium not installed ({install_hint('bench')})"
    return None


def headless_chromium(size: tuple[int, int] = DESKTOP) -> Any:
    """A started Chrome WebDriver session; the caller quits it. Console messages are kept (``get_log``)."""
    with needs("bench"):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--disable-extensions", "--no-first-run", f"--window-size={size[0]},{size[1]}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=shutil.which("chromedriver")))
    driver.set_window_size(*size)
    return driver

"""Open report pages in a real browser: Debian's chromium driven by Playwright (which cannot download its own browser
on these machines). Records every request the page makes and checks the DOM for external URLs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
DOCS = Path(__file__).resolve().parent.parent / "docs"

EXTERNAL_URLS_JS = """() => {
  const found = [];
  for (const el of document.querySelectorAll('*')) {
    for (const attr of ['src', 'href', 'xlink:href', 'action', 'data', 'poster', 'srcset']) {
      const v = el.getAttribute(attr);
      if (v && /^\\s*(https?:)?\\/\\//i.test(v)) found.push(el.tagName + ' ' + attr + '=' + v);
    }
    const style = el.getAttribute('style');
    if (style && /url\\(/i.test(style)) found.push(el.tagName + ' style=' + style);
  }
  for (const sheet of document.styleSheets) {
    for (const rule of sheet.cssRules) {
      if (/url\\(|@import|@font-face/i.test(rule.cssText)) found.push('css ' + rule.cssText.slice(0, 80));
    }
  }
  return found;
}"""


@dataclass
class Opened:
    page: object
    requests: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)


@pytest.fixture(scope="session")
def chromium():
    """A headless chromium for the session; the tests skip where the machine has none (scripts/test.sh installs
    it in CI)."""
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium (apt-get install chromium fonts-noto-cjk; scripts/test.sh does it as root)")
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


def open_page(browser, path: Path, width: int = 1000) -> Opened:
    """Load a page from disk, recording every request (the page itself is the only one allowed)."""
    context = browser.new_context(viewport={"width": width, "height": 900}, device_scale_factor=1)
    page = context.new_page()
    opened = Opened(page=page)
    page.on("request", lambda request: opened.requests.append(request.url))
    page.on("requestfailed", lambda request: opened.failed.append(request.url))
    page.on("console", lambda message: opened.console.append(message.text))
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file://")
               else route.abort())
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    return opened


def assert_offline(opened: Opened, path: Path) -> None:
    """The page asked for nothing but itself, refers to no external URL, and broke no policy rule."""
    assert opened.requests == [path.as_uri()]
    assert opened.failed == []
    assert opened.page.evaluate(EXTERNAL_URLS_JS) == []
    assert [m for m in opened.console if "Content Security Policy" in m] == []
    csp = opened.page.get_attribute('meta[http-equiv="Content-Security-Policy"]', "content")
    assert csp.startswith("default-src 'none'; style-src 'unsafe-inline'; img-src data:")


def screenshot(opened: Opened, target: Path, docs_name: str | None = None, docs_height: int = 2000) -> Path:
    """A full-page PNG under the test's folder; with EVALCHEMY_DOCS_SCREENSHOTS=1 also the page's first
    ``docs_height`` pixels as docs/``docs_name``."""
    opened.page.screenshot(path=str(target), full_page=True)
    assert target.stat().st_size > 10_000
    if docs_name and os.environ.get("EVALCHEMY_DOCS_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        size = opened.page.evaluate("() => [document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
        opened.page.screenshot(path=str(DOCS / docs_name), full_page=True,
                               clip={"x": 0, "y": 0, "width": size[0], "height": min(size[1], docs_height)})
    return target


def chart_bars(opened: Opened) -> dict[str, int]:
    """Per chart id: the number of bars with a positive width and height."""
    return opened.page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('svg.chart')].map(svg =>
        [svg.id, [...svg.querySelectorAll('rect.bar')].filter(r => {
            const b = r.getBBox(); return b.width > 0 && b.height > 0; }).length]))""")

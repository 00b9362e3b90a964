"""The dashboard in a real headless Chromium (Debian's chromium, driven by Playwright with the system browser) against
the running stack: every worker listed, completed rounds shown, charts drawn with data, nothing fetched from
elsewhere; screenshots under build/artifacts/.

Needs the Python package playwright (the test extra) and /usr/bin/chromium (apt-get install chromium; `make
chromium`). Without them the test skips, saying what is missing — except under CI=true, where it fails.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

from observability.helpers import ROUNDS
from services.data.sources import load_node
from support import Stack, get_json

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("FEDAD_ARTIFACTS", REPO / "build" / "artifacts"))
CHROMIUM = os.environ.get("FEDAD_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# As the machine notes say: without the background-networking flags Chromium keeps calling out, and is refused.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                 "--disable-dev-shm-usage"]
# The loss chart draws valve1 (first worker) in the palette's first colour, #2f6fde.
SERIES_PIXELS_JS = """(id) => {
  const canvas = document.querySelector('#' + id + ' canvas');
  if (!canvas) return -1;
  const px = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let n = 0;
  for (let i = 0; i < px.length; i += 4) {
    if (Math.abs(px[i] - 0x2f) < 24 && Math.abs(px[i + 1] - 0x6f) < 24 && Math.abs(px[i + 2] - 0xde) < 24
        && px[i + 3] > 200) n++;
  }
  return n;
}"""


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@pytest.fixture(scope="module")
def browser():
    missing = []
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing.append("the Python package playwright (pip install -e '.[test]')")
    if not Path(CHROMIUM).exists():
        missing.append(f"Chromium at {CHROMIUM} (apt-get install chromium, or make chromium)")
    if missing:
        message = "the dashboard browser test needs " + " and ".join(missing)
        if _in_ci():
            pytest.fail(message + " — CI=true, so this is a failure, not a skip")
        pytest.skip(message)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Page:
    """One page with everything it requested and every console error, for asserting afterwards."""

    def __init__(self, browser, url: str):
        self.url = url
        self.context = browser.new_context(viewport={"width": 1360, "height": 900})
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(f"console: {m.text}"))
        self.page.goto(url)

    def wait_for(self, expression: str, what: str, timeout: float = 30):
        """Poll with page.evaluate: the page's Content-Security-Policy forbids the eval that wait_for_function uses."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            result = self.page.evaluate(expression)
            if result:
                return result
            time.sleep(0.25)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; errors: {self.errors}")

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / name
        self.page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 10_000, f"{path} is suspiciously small"
        return path

    def assert_self_contained(self) -> None:
        origin = self.url.rstrip("/")
        foreign = [u for u in self.requests if not (u.startswith(origin + "/") or u.startswith("data:"))]
        assert not foreign, f"the page fetched from elsewhere (no CDN allowed): {foreign}"
        assert not self.errors, self.errors

    def close(self) -> None:
        self.context.close()


def test_dashboard_lists_workers_rounds_and_draws_charts(observed_stack, browser):
    page = Page(browser, observed_stack.agg_url + "/")
    try:
        page.wait_for("() => window.fedad && window.fedad.updates >= 2", "the dashboard to load its data twice")
        p = page.page
        listed = p.eval_on_selector_all("#workers tbody tr", "rows => rows.map(r => r.dataset.worker)")
        assert listed == observed_stack.workers, f"workers table lists {listed}"
        for w in observed_stack.workers:
            row = p.inner_text(f'#workers tbody tr[data-worker="{w}"]')
            assert "online" in row, row
            assert f"{observed_stack.traffic[w]['rows']}" in row.replace(",", ""), row
            precision = get_json(f"{observed_stack.worker_url(w)}/v1/status")["precision"]  # served int8 or fp32, why
            assert f"· {precision['served']}" in row and precision["reason"] in row, row
        rounds = p.eval_on_selector_all("#rounds tbody tr[data-round]", "rows => rows.map(r => +r.dataset.round)")
        assert len(rounds) >= 1 and rounds[0] == ROUNDS, f"closed rounds shown: {rounds}"
        assert p.inner_text("#rounds-done") == str(ROUNDS)
        assert p.inner_text("#phase") in ("idle", "done")  # idle: continual rounds (the default) follow
        # Charts: uPlot drew a canvas holding data points, and the first worker's colour is on the loss chart.
        loss_points = page.wait_for("() => window.fedad.pointsWithData('loss-chart')", "loss chart data")
        assert loss_points >= ROUNDS * len(observed_stack.workers)
        assert page.wait_for("() => window.fedad.pointsWithData('anomaly-chart')", "anomaly chart data") > 0
        # A short run spans a few seconds: the time axis still covers a minute, so its ticks are seconds, not ms.
        span = p.evaluate("() => { const x = window.fedad.charts['anomaly-chart'].plot.scales.x; return x.max - x.min; }")
        assert span >= 60, f"anomaly chart spans {span} s"
        size = p.evaluate("() => { const c = document.querySelector('#loss-chart canvas'); "
                          "return c ? [c.width, c.height] : null; }")
        assert size and size[0] > 200 and size[1] > 100, size
        assert p.evaluate(SERIES_PIXELS_JS, "loss-chart") > 50, "no line of valve1's colour on the loss chart"
        shot = page.screenshot("dashboard.png")
        print(f"dashboard screenshot: {shot}")
        page.assert_self_contained()
    finally:
        page.close()


def test_worker_page_shows_recent_scores_against_the_threshold(observed_stack, browser):
    worker = observed_stack.workers[0]
    page = Page(browser, observed_stack.worker_url(worker) + "/")
    try:
        page.wait_for("() => window.fedad && window.fedad.updates >= 1", "the worker page to load its data")
        p = page.page
        assert p.inner_text("#worker-id") == worker
        assert p.inner_text("#model-round") == str(ROUNDS)
        status = get_json(f"{observed_stack.worker_url(worker)}/v1/status")
        assert p.inner_text("#precision") == status["model"] and p.inner_text("#precision-why") == \
            status["precision"]["reason"]
        assert p.inner_text("#model-kind") == f"{status['shape']} as {status['model']}"
        points = page.wait_for("() => window.fedad.pointsWithData('score-chart')", "score chart data")
        shown = min(observed_stack.traffic[worker]["rows"], observed_stack.settings.dashboard.recent_scores)
        assert points >= shown, points  # every recent score, plus the threshold line
        assert p.evaluate(SERIES_PIXELS_JS, "score-chart") > 50, "no score drawn in the score colour"
        page.screenshot(f"worker-{worker}.png")
        page.assert_self_contained()
    finally:
        page.close()


def test_dashboard_while_waiting_for_a_missing_worker(tmp_path, browser):
    """What an operator sees when one edge node never comes up: the federation waiting, that node "never" seen, the
    others online, no round yet, charts empty but no script error; a worker's page before its first model too."""
    started = ["valve1", "valve2"]
    stack = Stack(tmp_path, workers=started, min_workers=3,
                  overrides={"FEDAD__DASHBOARD__TELEMETRY_INTERVAL_S": "1"}).start()
    try:
        page = Page(browser, stack.agg_url + "/")
        try:
            p = page.page
            page.wait_for("() => window.fedad && window.fedad.updates >= 1 && "
                          "document.querySelectorAll('#workers .pill.online').length === 2 && "
                          "[...document.querySelectorAll('#workers td:last-child')].filter("
                          "td => td.textContent.startsWith('waiting')).length === 2",
                          "both running workers to show online, with the phase their telemetry reports")
            states = p.eval_on_selector_all(
                "#workers tbody tr", "rows => rows.map(r => [r.dataset.worker, r.querySelector('.pill').textContent])")
            assert states == [["valve1", "online"], ["valve2", "online"], ["other", "never"]], states
            assert p.inner_text("#phase") == "waiting"
            assert "no round closed yet" in p.inner_text("#rounds")
            page.screenshot("dashboard-waiting.png")
            page.assert_self_contained()
        finally:
            page.close()
        page = Page(browser, stack.worker_url("valve1") + "/")
        try:
            page.wait_for("() => window.fedad && window.fedad.updates >= 1", "the worker page to load its data")
            assert page.page.inner_text("#worker-id") == "valve1"
            assert page.page.inner_text("#model-round") in ("–", "-", "")
            page.assert_self_contained()
        finally:
            page.close()
    finally:
        stack.stop()


def test_pages_show_an_open_alarm_with_its_sensors(observed_stack, browser):
    """A valve1 fault streamed to its worker until an alarm opens: the worker's page lists it (open, its stream, the
    top sensors of its peak row), the dashboard's workers table counts it for valve1 and for no other worker."""
    settings = observed_stack.settings
    node = load_node(settings, settings.worker("valve1"))
    run, mask = next((r, m) for r, m in zip(node.runs, node.masks) if r.name == "valve1/5.csv")
    url = observed_stack.worker_url("valve1")
    held_out, baseline = run.values[~mask].tolist(), run.values[mask].tolist()
    httpx.delete(f"{url}/v1/streams/pump-5")
    sent = observed_stack.traffic["valve1"]  # the stack is shared: later tests compare /metrics with this record
    for start in range(0, len(held_out), 25):
        body = {"stream": "pump-5", "samples": held_out[start:start + 25]}
        if start == 0:
            body["baseline"] = baseline
        r = httpx.post(f"{url}/detect", json=body, timeout=30)
        assert r.status_code == 200, r.text
        answer = r.json()
        sent["requests"] += 1
        sent["rows"] += len(answer["scores"])
        sent["anomalies"] += sum(answer["is_anomaly"])
        if httpx.get(f"{url}/v1/status").json()["alarms"]["open"]:
            break
    [alarm] = httpx.get(f"{url}/v1/status").json()["alarms"]["open"]
    page = Page(browser, url + "/")
    try:
        page.wait_for("() => window.fedad && window.fedad.updates >= 1 && "
                      "document.querySelectorAll('#alarms tr[data-alarm]').length >= 1", "the alarm on the worker page")
        row = page.page.inner_text(f'#alarms tr[data-alarm="{alarm["alarm_id"]}"]')
        assert "pump-5" in row and "open" in row and alarm["top_sensors"][0]["sensor"] in row, row
        page.screenshot("worker-valve1-alarm.png")
        page.assert_self_contained()
    finally:
        page.close()
    page = Page(browser, observed_stack.agg_url + "/")
    try:
        page.wait_for("() => window.fedad && window.fedad.updates >= 1 && "
                      "document.querySelector('#workers tr[data-worker=\"valve1\"] td.alarms.firing') !== null",
                      "valve1's open alarm on the dashboard")
        counts = page.page.eval_on_selector_all(
            "#workers tbody tr", "rows => rows.map(r => [r.dataset.worker, r.querySelector('td.alarms').textContent])")
        assert counts == [["valve1", "1"], ["valve2", "0"], ["other", "0"]], counts
        page.screenshot("dashboard-alarm.png")
        page.assert_self_contained()
    finally:
        page.close()

"""The MLflow UI in a real browser: `make ui`'s address opens the experiment's runs table.

A results tree of every kind (fixtures_results.py) is ingested, `mlflow server` serves its store on a
free port, and headless Chromium renders the address atlib.workflow.tracking.ui prints; the rendered
DOM must be the runs table with the source models' runs. Skipped only where no Chromium or Chrome
binary is installed (Debian: `apt-get install chromium`; .ci/run installs it).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
import requests
from fixtures_results import write_results

from atlib.workflow.tracking.ingest import default_uri, ingest
from atlib.workflow.tracking.ui import runs_address

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER = next((path for name in BROWSERS if (path := shutil.which(name))), None)
# Seconds `mlflow server` may take to answer /health (its first start migrates nothing here: the
# ingest made the store): a deadline for the fixture, not a timed assertion.
SERVER_START_S = 180

pytestmark = [pytest.mark.slow, pytest.mark.skipif(BROWSER is None, reason=f"no browser binary ({', '.join(BROWSERS)})")]


class _Text(HTMLParser):
    """The text of every element a user sees (scripts and styles left out), one string per text node."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag, attrs) -> None:
        self._hidden += tag in ("script", "style")

    def handle_endtag(self, tag) -> None:
        self._hidden -= tag in ("script", "style")

    def handle_data(self, data) -> None:
        if not self._hidden and data.strip():
            self.texts.append(data.strip())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path: Path):
    """`mlflow server` on a free port for an ingested results tree: (results, base address)."""
    results = write_results(tmp_path)
    ingest(results, default_uri(results), "atlib", None)
    port = _free_port()
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", default_uri(results),
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while not _healthy(base):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        yield results, base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn worker: the group it leads
        proc.wait(timeout=60)
        log.close()


def _healthy(base: str) -> bool:
    try:
        return requests.get(f"{base}/health", timeout=2).ok
    except requests.RequestException:
        return False


def rendered_text(url: str, profile: Path) -> list[str]:
    """The text nodes of `url` as headless Chromium renders it (15 s of virtual time for the app's requests)."""
    r = subprocess.run([BROWSER, "--headless=new", "--disable-gpu", "--no-sandbox", f"--user-data-dir={profile}",
                        "--virtual-time-budget=15000", "--dump-dom", url],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    parser = _Text()
    parser.feed(r.stdout)
    return parser.texts


def test_printed_address_opens_the_runs_table(server, tmp_path):
    results, base = server
    url = runs_address(results, "atlib", base)
    assert url.startswith(f"{base}/#/experiments/") and url.endswith("/runs")
    texts = rendered_text(url, tmp_path / "profile")
    assert any(t.startswith("Runs - Experiment") for t in texts), texts[:5]  # the title: not the GenAI overview
    assert {"Run Name", "Dataset"} <= set(texts), texts  # the runs table's columns
    # the top-level rows: the source models' runs (their transfers and analyses nest under them) and the report
    assert {"eps0 s0", "eps0.5 s0", "report"} <= set(texts), texts

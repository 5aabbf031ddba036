"""``report.html`` in a real headless Chromium (Debian's ``chromium``): every image loads, the
tables are there, and a screenshot is saved. Skipped, with the reason, where Chromium is not
installed (``make browser`` installs it where apt-get is available and we are root)."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not on PATH: the browser test needs Debian's chromium "
    "(`make browser`, or `apt-get install chromium`)",
)


def chromium(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Run headless Chromium on a local file, isolated (own profile, no network services);
    virtual time lets the page's load handler run before the DOM is dumped."""
    assert CHROMIUM is not None
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
        *args,
        page.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def image_check(page: Path, profile: Path) -> tuple[dict, str]:
    """The JSON the report's inline script wrote into ``#img-check`` after load, and the DOM."""
    dom = chromium(page, profile, "--dump-dom").stdout
    m = re.search(r'<span id="img-check">([^<]*)</span>', dom)
    assert m, "no #img-check element in the dumped DOM"
    text = html.unescape(m.group(1))
    assert text.startswith("{"), f"the load handler did not run: {text!r}"
    return json.loads(text), dom


def test_every_image_loads_and_the_tables_are_there(full_report, tmp_path):
    check, dom = image_check(full_report.html, tmp_path / "profile")
    n_figures = len(full_report.figures)
    assert check["total"] == n_figures == 10
    assert check["loaded"] == check["total"]
    # 2 headline tables, versions, packages, timings, 2 analysis summaries
    assert check["tables"] >= 7
    assert dom.count("<caption>Headline: ") == 2
    assert 'id="headline"' in dom and 'id="run"' in dom

    shot = tmp_path / "report.png"
    chromium(
        full_report.html, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,4000"
    )
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000  # a page, not a blank
    print(f"screenshot of report.html: {shot}")


def test_the_check_notices_a_broken_image(full_report, tmp_path):
    """The check itself can fail: one image with corrupt data is counted as not loaded."""
    text = full_report.html.read_text()
    broken = re.sub(
        r'src="data:image/png;base64,[^"]{20}', 'src="data:image/png;base64,AAAA', text, count=1
    )
    assert broken != text
    page = tmp_path / "broken.html"
    page.write_text(broken)
    check, _ = image_check(page, tmp_path / "profile")
    assert check["total"] == len(full_report.figures)
    assert check["loaded"] == check["total"] - 1

"""The ``medmtl diagnose`` report opened in headless Chromium (issue #14, item 4): every image
loads, the page requests nothing from the network and logs nothing to the console.

Skipped, with the reason, where no Chromium binary is on PATH (``.ci/run`` installs Debian's
``chromium`` when it can). The page itself holds no script; a copy of it gets a small probe
script that records, after the load event, how many ``<img>`` there are and which failed to
decode, and which resources the page fetched (Resource Timing), into ``<body>`` attributes that
``--dump-dom`` prints. The network check also reads Chromium's net log: every http(s) URL it
requested while showing the report must be one it requests for a blank page too (its own
update and account services), so a page request to any other host fails the test. A negative
control page (a remote image, a console error) proves that each check can fail.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
from click.testing import CliRunner

from medmtl.cli import main

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-headless-shell", "chromium-browser",
                                            "google-chrome") if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH (chromium, chromium-headless-shell, "
                                                         "chromium-browser or google-chrome); apt-get install chromium")

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-default-apps", "--disable-extensions", "--virtual-time-budget=5000", "--hide-scrollbars")
PROBE = ("<script>window.addEventListener('load',function(){var b=document.body,bad=[];"
         "document.querySelectorAll('img').forEach(function(i){if(!(i.complete&&i.naturalWidth>0))bad.push(i.alt);});"
         "b.setAttribute('data-images',document.images.length);b.setAttribute('data-broken',JSON.stringify(bad));"
         "b.setAttribute('data-fetched',JSON.stringify(performance.getEntriesByType('resource')"
         ".map(function(e){return e.name;})));});</script>")


def chromium(args: list[str], tmp: Path, name: str) -> tuple[str, str, set[str]]:
    """Run Chromium headless; ``(stdout, stderr, http(s) URLs in its net log)``."""
    assert CHROMIUM is not None
    net = tmp / f"{name}_net.json"
    res = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp / (name + '_profile')}", f"--log-net-log={net}",
                          *args], capture_output=True, text=True, errors="replace", timeout=120, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    urls = set(re.findall(r'"url":"(https?://[^"]+)"', net.read_text(encoding="utf-8"))) if net.is_file() else set()
    return res.stdout, res.stderr, urls


def open_page(page: Path, tmp: Path) -> dict[str, object]:
    """Load a copy of ``page`` with :data:`PROBE`: images, broken images, fetched resources,
    console lines and net-log hosts."""
    probe = page.with_name(page.stem + "_probe.html")
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom, err, urls = chromium(["--dump-dom", probe.as_uri()], tmp, page.stem)
    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:500]
    attrs = {k: html.unescape(v) for k, v in re.findall(r'data-(\w+)="([^"]*)"', body.group(1))}
    return {"images": int(attrs["images"]), "broken": json.loads(attrs["broken"]),
            "fetched": json.loads(attrs["fetched"]),
            "console": [ln for ln in err.splitlines() if "CONSOLE" in ln or "Uncaught" in ln],
            "hosts": {urlparse(u).hostname for u in urls}}


@pytest.fixture(scope="module")
def baseline_hosts(tmp_path_factory: pytest.TempPathFactory) -> set[str | None]:
    """Hosts Chromium itself contacts when it shows a blank page (no page request among them)."""
    tmp = tmp_path_factory.mktemp("blank")
    blank = tmp / "blank.html"
    blank.write_text("<!DOCTYPE html><html><head><title>blank</title></head><body></body></html>", encoding="utf-8")
    return open_page(blank, tmp)["hosts"]  # type: ignore[return-value]


def _cohorts(sample_data: Path, root: Path) -> tuple[Path, Path]:
    a, b = root / "a", root / "b"
    for src, dst in ((sample_data / "ct_site_a", a), (sample_data / "ct_site_b", b)):
        dst.mkdir(parents=True)
        for f in sorted(src.glob("*.nii.gz"))[:4]:
            shutil.copy(f, dst / f.name)
    return a, b


def test_report_in_headless_chromium(sample_data: Path, tmp_path: Path, baseline_hosts: set[str | None]) -> None:
    a, b = _cohorts(sample_data, tmp_path)
    out = tmp_path / "rep"
    res = CliRunner().invoke(main, ["diagnose", "--source", str(a), "--target", str(b), "-o", str(out),
                                    "--n-permutations", "50", "-q"])
    assert res.exit_code == 0, res.output
    page = out / "report.html"
    text = page.read_text(encoding="utf-8")
    links = re.findall(r'(?:src|href)="([^"]*)"', text)
    assert all(u.startswith("data:image/png;base64,") or u.startswith("#") for u in links), links
    seen = open_page(page, tmp_path)
    assert seen["images"] >= 5 and seen["broken"] == [], seen["broken"]
    assert seen["fetched"] == [], seen["fetched"]  # nothing but the page and its inline data
    assert seen["console"] == [], seen["console"]
    assert seen["hosts"] <= baseline_hosts, seen["hosts"] - baseline_hosts
    shot = tmp_path / "shot.png"
    chromium([f"--screenshot={shot}", "--window-size=1100,1600", page.as_uri()], tmp_path, "shot")
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_checks_can_fail(tmp_path: Path, baseline_hosts: set[str | None]) -> None:
    """A page with a remote image and a script error fails every check above."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><img src='http://medmtl-test.invalid/x.png' alt='remote'>"
                   "<script>console.error('boom'); notDefined();</script></body></html>", encoding="utf-8")
    seen = open_page(bad, tmp_path)
    assert seen["broken"] == ["remote"]
    assert any("medmtl-test.invalid" in u for u in seen["fetched"])  # type: ignore[attr-defined]
    assert "medmtl-test.invalid" in seen["hosts"] - baseline_hosts  # type: ignore[operator]
    assert any("boom" in ln for ln in seen["console"]) and any("Uncaught" in ln for ln in seen["console"])  # type: ignore[attr-defined]

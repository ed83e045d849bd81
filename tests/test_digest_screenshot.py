"""The HTML digest of the seeds as a phone shows it: headless Chromium at 375 px wide.

Uses Debian's chromium package (/usr/bin/chromium, installed by .ci/run); skipped with
a reason where it is absent. Chromium only opens a local file: no network is used.
"""

from __future__ import annotations

import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner

from monitor.cli import cli
from tests.conftest import CONFIG, SEEDS

CHROMIUM = Path("/usr/bin/chromium")
WIDTH, HEIGHT = 375, 2000
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--window-size={WIDTH},{HEIGHT}"]
# Added to a test-only copy of the page (the digest itself never contains a script).
# Headless Chromium lays a page out at its minimum window width first and at the asked
# width only when it takes the screenshot, so the verdict is measured on every resize
# and painted into the screenshot: three 20 px cells at the top left, green when
# (1) nothing is wider than the viewport, (2) the viewport is phone-sized, (3) the page
# is taller than 1000 px; red otherwise.
PROBE = """<div id="probe" style="position:fixed;top:0;left:0;z-index:99999;display:flex">
<div></div><div></div><div></div></div><script>
function verdict() {
  var e = document.documentElement;
  var ok = [e.scrollWidth <= e.clientWidth, e.clientWidth >= 300 && e.clientWidth <= 375,
            e.scrollHeight > 1000];
  var cells = document.getElementById("probe").children;
  for (var i = 0; i < 3; i++) {
    cells[i].style.cssText = "width:20px;height:20px;background:" + (ok[i] ? "#00ff00" : "#ff0000");
  }
}
verdict(); window.addEventListener("resize", verdict);
</script>"""
CHECKS = ("no horizontal scroll", "laid out at phone width", "taller than 1000 px")

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"Debian's chromium is not installed at {CHROMIUM} (.ci/run installs it)")


def _chromium(tmp_path: Path, *args: str) -> str:
    result = subprocess.run(
        [str(CHROMIUM), *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _png(path: Path) -> tuple[int, int, int, bytes]:
    """Width, height, bytes per pixel and the zlib-decompressed image data of a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    idat, position = b"", 8
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        if kind == b"IDAT":
            idat += data[position + 8:position + 8 + length]
        position += 12 + length
    return width, height, 3 if colour == 2 else 4, zlib.decompress(idat)


def _rows(width: int, bpp: int, raw: bytes, count: int) -> list[bytes]:
    """The first ``count`` rows of pixels, PNG filters undone."""
    stride, rows, previous = width * bpp, [], bytearray(width * bpp)
    for y in range(count):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for x in range(stride):
            left = line[x - bpp] if x >= bpp else 0
            up, corner = previous[x], previous[x - bpp] if x >= bpp else 0
            line[x] = (line[x] + _predict(kind, left, up, corner)) & 0xFF
        rows.append(bytes(line))
        previous = line
    return rows


def _predict(kind: int, left: int, up: int, corner: int) -> int:
    if kind == 0:
        return 0
    if kind in (1, 2):
        return left if kind == 1 else up
    if kind == 3:
        return (left + up) // 2
    p = left + up - corner
    pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
    return left if pa <= pb and pa <= pc else up if pb <= pc else corner


def _seed_digest(tmp_path: Path) -> Path:
    """The seeds backfilled, and the HTML digest of all of them."""
    runner, url = CliRunner(), f"sqlite:///{tmp_path / 'monitor.db'}"
    base = ["--config", str(CONFIG), "--database-url", url]
    assert runner.invoke(cli, [*base, "backfill", str(SEEDS)]).exit_code == 0
    out = tmp_path / "digest.html"
    result = runner.invoke(cli, [*base, "digest", "--dry-run", "--date", "2025-08-21",
                                 "--since", "2025-08-01", "--until", "2999-12-31",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_seed_digest_renders_on_a_narrow_screen_without_horizontal_scroll(
        tmp_path: Path) -> None:
    """At 375 px the page renders tall and readable, and nothing is wider than the screen."""
    html = _seed_digest(tmp_path)
    assert "<script" not in html.read_text(encoding="utf-8")
    png = tmp_path / "digest.png"
    _chromium(tmp_path, f"--screenshot={png}", html.as_uri())
    width, height, _, raw = _png(png)
    assert (width, height) == (WIDTH, HEIGHT) and len(set(raw)) > 10, "blank screenshot"
    probe = tmp_path / "probe.html"
    probe.write_text(html.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"),
                     encoding="utf-8")
    _chromium(tmp_path, f"--screenshot={tmp_path / 'probe.png'}", probe.as_uri())
    width, _, bpp, raw = _png(tmp_path / "probe.png")
    row = _rows(width, bpp, raw, 10)[9]
    for cell, check in enumerate(CHECKS):
        red, green, blue = row[(cell * 20 + 10) * bpp:(cell * 20 + 10) * bpp + 3]
        assert (red, green, blue) == (0, 255, 0), f"{check}: failed (pixel {red, green, blue})"

"""Open a local HTML file in headless Chromium: console messages, rendered DOM and a screenshot."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--enable-logging=stderr", "--v=0", "--window-size=1280,4000", "--virtual-time-budget=5000", "--dump-dom",
]
CONSOLE_LINE = re.compile(r":CONSOLE[:(]\d*\)?\]? ?(.*)")


@dataclass
class PageLoad:
    dom: str
    console: list[str]  # every console message and uncaught exception the page produced
    screenshot: Path


def chromium_path() -> str:
    """Debian's chromium; `make sysdeps` (a step of `make test`) installs it."""
    found = shutil.which("chromium")
    if not found:
        raise RuntimeError("chromium is not installed: run `make sysdeps` (apt-get install chromium)")
    return found


def open_page(html: Path, workdir: Path) -> PageLoad:
    """Load `html` with no network, return its rendered DOM and console output, write a screenshot."""
    workdir.mkdir(parents=True, exist_ok=True)
    screenshot = workdir / f"{html.stem}.png"
    done = subprocess.run(
        [chromium_path(), *CHROMIUM_FLAGS, f"--user-data-dir={workdir / 'profile'}", f"--screenshot={screenshot}",
         html.resolve().as_uri()],
        capture_output=True, text=True, timeout=180,
    )
    if done.returncode != 0:
        raise RuntimeError(f"chromium exited {done.returncode}: {done.stderr[-2000:]}")
    console = [m.group(1) for line in done.stderr.splitlines() if (m := CONSOLE_LINE.search(line))]
    return PageLoad(dom=done.stdout, console=console, screenshot=screenshot)

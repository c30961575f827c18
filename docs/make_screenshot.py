"""Retake docs/app-screenshot.png: start the app on the bundled default, generate a prompt in headless Chromium.

    python docs/make_screenshot.py ["a white snowman with a carrot nose"] [--out docs/app-screenshot.png]

Needs Debian's chromium and Playwright (as the browser test does); WebGL is software-rendered (SwiftShader).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, proc: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"the app did not answer at {url} within {seconds:.0f} s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt", nargs="?", default="a white snowman with a carrot nose")
    parser.add_argument("--out", default=str(ROOT / "docs" / "app-screenshot.png"))
    parser.add_argument("--azimuth", default="35", help="where to leave the view slider")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=ROOT)
    try:
        wait_until_up(url, proc)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium",
                                         args=["--no-sandbox", "--use-angle=swiftshader",
                                               "--enable-unsafe-swiftshader"])
            page = browser.new_page(viewport={"width": 1400, "height": 1250})
            page.goto(url)
            page.locator("#prompt textarea").fill(args.prompt)
            page.locator("#generate").click()
            page.wait_for_function("() => { const v = document.querySelector('#orbit video');"
                                   " return v && v.readyState >= 2 && v.duration > 0; }", timeout=120_000)
            page.wait_for_function("() => document.querySelector('#view img')", timeout=30_000)
            page.locator("#azimuth input[type=range]").fill(args.azimuth)
            page.wait_for_timeout(12_000)  # the 3D view loads the GLB and the video plays a little
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

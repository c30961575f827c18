"""The app's speed in a real browser, on the bundled default. Marked ``speed``, so it runs before every other test
(tests/conftest.py): after minutes of other tests the same measurement came out a third slower."""

import socket

import pytest

from instant3d_app.service import Instant3DService


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.speed
@pytest.mark.browser
def test_the_default_model_streams_to_a_browser(default_pipeline, tmp_path):
    """The bundled default at the app's real settings (48-frame 256^2 lit orbit, default export), in Chromium: the
    front view appears soon after the click on a new prompt, then the video plays, then the 3D view draws.
    Prints the three times."""
    import time

    from playwright.sync_api import sync_playwright

    import app as app_module

    service = Instant3DService(default_pipeline, tmp_path / "out")
    blocks = app_module.build_app(service)
    port = _free_port()
    app_module.launch(blocks, service, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                      share=False)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium",
                                         args=["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"])
            try:
                runs = []
                # The first prompt warms the server up; each prompt runs on a fresh page, closed after it: an open
                # 3D view, drawn by software WebGL on this machine's two cores, would slow the server the test
                # times (a user's browser runs on the user's machine). The median of five new prompts is judged.
                for prompt in ["a green cone", "a yellow duck with an orange beak", "a red cube on top of a blue "
                               "sphere", "a white snowman with a carrot nose", "a small purple torus",
                               "a blue house with a door"]:
                    page = browser.new_page(viewport={"width": 1400, "height": 1100})
                    page.goto(f"http://127.0.0.1:{port}/")
                    page.locator("#prompt textarea").fill(prompt)
                    page.wait_for_timeout(300)
                    times = {}
                    start = time.perf_counter()
                    page.locator("#generate").click()
                    page.wait_for_function("() => { const i = document.querySelector('#view img');"
                                           " return i && i.src; }", timeout=30_000)
                    times["first view"] = time.perf_counter() - start
                    page.wait_for_function("() => { const v = document.querySelector('#orbit video');"
                                           " return v && v.currentSrc && v.readyState >= 2; }", timeout=60_000)
                    times["video playing"] = time.perf_counter() - start
                    page.wait_for_function("() => document.querySelector('#glb_file a')"
                                           " && document.querySelector('#model3d canvas')", timeout=60_000)
                    times["3D view and downloads"] = time.perf_counter() - start
                    page.close()
                    runs.append(times)
                timed = runs[1:]
                median = {k: sorted(r[k] for r in timed)[len(timed) // 2] for k in timed[0]}
                print("default model in Chromium, seconds after the click (median of 5 new prompts):",
                      {k: round(v, 2) for k, v in median.items()}, "runs:",
                      [{k: round(v, 2) for k, v in r.items()} for r in timed])
                # The bar. On a quiet 2-core VM the median is 0.55-0.69 s, alone or first in the full suite;
                # the 0.8-1.0 s seen inside the suite before were measured with a training run beside it.
                assert median["first view"] <= 1.0, timed
            finally:
                browser.close()
    finally:
        blocks.close()

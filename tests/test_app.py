"""The app: handlers called directly, the launched server driven by gradio_client, and a real browser."""

import concurrent.futures
import socket
import subprocess
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from imageio_ffmpeg import get_ffmpeg_exe

from instant3d import Instant3DPipeline
from instant3d_app.service import Instant3DService, UserError, check_prompt, check_seed
from tests.test_export import validate

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
FAST_EXPORT = {"resolution": 32, "threshold": "auto", "target_faces": 500, "texture_size": 128}
FRAMES = 12

HOSTILE_PROMPTS = [
    "a" * 10_000,
    "a red\x00 cube\x01\x02\x1b[31m",
    "<script>alert('x')</script> a cube",
    "<img src=x onerror=alert(1)>",
    "مكعب أحمر على كرة زرقاء",  # right-to-left
    "\u202ea red cube\u202c",  # bidi override characters
    "🧊🔴 a cube 🐱‍👤",
    "'; DROP TABLE prompts; --",
    "{{7*7}} ${jndi:ldap://x} %s %n",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def service(tiny_checkpoint, tmp_path_factory):
    pipe = Instant3DPipeline.from_pretrained(tiny_checkpoint, device="cpu")
    return Instant3DService(pipe, tmp_path_factory.mktemp("app-out"), video_frames=FRAMES, video_size=64,
                            keep_requests=16)


@pytest.fixture(scope="module")
def server(service):
    import app as app_module

    blocks = app_module.build_app(service, export_defaults=FAST_EXPORT)
    port = _free_port()
    blocks.queue(max_size=64).launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                                     share=False)
    yield f"http://127.0.0.1:{port}/"
    blocks.close()


@pytest.fixture()
def client(server):
    from gradio_client import Client

    return Client(server, verbose=False)


def _video_info(path) -> tuple[str, int]:
    stderr = subprocess.run([get_ffmpeg_exe(), "-i", str(path)], capture_output=True, text=True).stderr
    frames = iio.imread(path, plugin="FFMPEG")
    return stderr, len(frames)


# -- handlers, called directly ---------------------------------------------------------------------------------
def test_generate_handler_makes_video_glb_zip_and_timings(service):
    result = service.generate("a red cube", 5, FAST_EXPORT)
    info, frames = _video_info(result.video)
    assert "h264" in info and "yuv420p" in info and frames == FRAMES
    assert result.glb.suffix == ".glb" and validate(result.glb)["issues"]["numErrors"] == 0
    assert result.obj_zip.suffix == ".zip" and result.obj_zip.stat().st_size > 0
    assert {"triplane", "video", "export grid", "export bake"} <= set(result.timings)
    assert result.preview.shape == (64, 64, 3)
    again = service.generate("  a red cube ", 5, FAST_EXPORT)
    assert again.video == result.video and again.timings == {"cached": 0.0}


def test_render_view_handler_changes_with_azimuth(service):
    service.generate("a blue sphere", 1, FAST_EXPORT)
    a = service.render_view("a blue sphere", 1, 0, 15)
    b = service.render_view("a blue sphere", 1, 90, 15)
    assert a.shape == (64, 64, 3) and not np.array_equal(a, b)
    with pytest.raises(UserError, match="Generate an object first"):
        service.render_view("", 0, 0, 0)


def test_lighting_changes_the_view_and_the_video_but_not_the_object(service):
    service.generate("a blue sphere", 1, FAST_EXPORT)
    lit = service.render_view("a blue sphere", 1, 30, 20, shading="lit")
    flat = service.render_view("a blue sphere", 1, 30, 20, shading="albedo")
    assert lit.shape == flat.shape and not np.array_equal(lit, flat)
    assert np.array_equal(service.render_view("a blue sphere", 1, 30, 20), lit)  # lit is the default
    flat_result = service.generate("a blue sphere", 1, FAST_EXPORT, shading="albedo")
    assert np.array_equal(flat_result.preview, service.render_view("a blue sphere", 1, 0, service.elevation,
                                                                   shading="albedo"))
    lit_result = service.generate("a blue sphere", 1, FAST_EXPORT)  # lit by default, a result of its own
    assert lit_result.video != flat_result.video and not np.array_equal(lit_result.preview, flat_result.preview)
    video = service.orbit_video("a blue sphere", 1, shading="albedo")
    assert video.exists() and _video_info(video)[1] == FRAMES
    with pytest.raises(UserError, match="Lighting must be one of"):
        service.render_view("a blue sphere", 1, 0, 15, shading="neon")
    with pytest.raises(UserError, match="Generate an object first"):
        service.orbit_video("", 0)


def test_reexport_uses_new_settings_without_regenerating(service):
    service.generate("a green cone", 2, FAST_EXPORT)
    calls = []
    hook = service.pipeline.model.generator.register_forward_hook(lambda *a: calls.append(1))
    try:
        glb, _, timings, notes = service.reexport("a green cone", 2, {**FAST_EXPORT, "resolution": 48})
    finally:
        hook.remove()
    assert calls == [] and glb.exists() and any("triangles" in n for n in notes)


def test_input_checks():
    with pytest.raises(UserError, match="Please type a prompt"):
        check_prompt("   ")
    text, notes = check_prompt("x" * 10_000)
    assert len(text) == 500 and "cut" in notes[0]
    assert check_seed(None) == (0, [])
    assert check_seed(-5)[0] == 0 and check_seed(2**40)[0] == 2**32 - 1 and check_seed(7.0) == (7, [])
    assert check_seed(-5)[1]  # clamping is reported
    with pytest.raises(UserError, match="whole number"):
        check_seed("seven")
    with pytest.raises(UserError, match="whole number"):
        check_seed(float("nan"))


def test_bad_export_settings_are_a_user_error(service):
    with pytest.raises(UserError, match="texture size"):
        service.generate("a cube", 0, {**FAST_EXPORT, "texture_size": 99999})


def test_request_folders_are_bounded(service):
    for _ in range(service.keep_requests + 5):
        service._request_folder()
    assert len(list(service.output_root.iterdir())) <= service.keep_requests


# -- the launched app, through gradio_client -----------------------------------------------------------------
def test_api_generate_and_render_view(client):
    video, model3d, glb, obj_zip, timings, view, *_ = client.predict("a red cube on a blue sphere", 3,
                                                                    api_name="/generate")
    info, frames = _video_info(video)
    assert "h264" in info and frames == FRAMES
    assert validate(Path(glb))["issues"]["numErrors"] == 0 and Path(model3d).suffix == ".glb"
    assert Path(obj_zip).suffix == ".zip" and "triplane" in timings
    a = iio.imread(client.predict(0, 20, api_name="/render_view"))
    b = iio.imread(client.predict(120, 20, api_name="/render_view"))
    assert a.shape[:2] == (64, 64) and not np.array_equal(a, b)


def test_only_files_the_app_produced_are_served(server):
    import httpx

    for path in ["gradio_api/file=/etc/passwd", "file=/etc/passwd", "gradio_api/file=" + str(ROOT / "app.py")]:
        r = httpx.get(server + path)
        assert r.status_code in (403, 404), path


@pytest.mark.slow
def test_the_launched_app_listens_on_localhost_only(tmp_path):
    """Start `python app.py` as a user would (random weights, so it needs no checkpoint) and read the socket it
    listens on from the operating system: 127.0.0.1, never every interface."""
    import os
    import sys
    import time

    import httpx
    import psutil

    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--random-weights", "--port", str(port),
                             "--output-dir", str(tmp_path)], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        listening = []
        while time.time() < deadline and not listening:
            assert proc.poll() is None, "the app exited during start-up"
            listening = [c.laddr for c in psutil.Process(proc.pid).net_connections(kind="inet")
                         if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
            time.sleep(0.5)
        assert listening, "the app did not start listening within 3 minutes"
        assert {addr.ip for addr in listening} == {"127.0.0.1"}
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=30).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_hostile_prompts_get_a_clear_error_or_a_result(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="Please type a prompt"):
        client.predict("", 0, api_name="/generate")
    with pytest.raises(AppError, match="Please type a prompt"):
        client.predict("\x00\x01 \t", 0, api_name="/generate")
    for prompt in HOSTILE_PROMPTS:
        video, _, glb, _, timings, *_ = client.predict(prompt, 0, api_name="/generate")
        assert Path(video).exists() and Path(glb).exists(), prompt
        if len(prompt) > 500:
            assert "cut" in timings
    assert client.predict("a red cube", 0, api_name="/generate")[0]  # still up


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@pytest.mark.slow
def test_load_8_clients_x_5_requests(server, service):
    from gradio_client import Client

    def worker(k):
        c = Client(server, verbose=False)
        return [c.predict(f"a cube number {k} {i}", k * 10 + i, api_name="/generate")[0] for i in range(5)]

    before = _rss_mb()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(worker, range(8)))
    assert sum(len(r) for r in results) == 40 and all(Path(v).exists() for r in results for v in r)
    # bounded caches: 40 distinct objects may not grow the process by more than a few hundred MB
    assert _rss_mb() - before < 400
    assert len(service.pipeline.cache) <= service.pipeline.cache.max_items
    assert len(list(service.output_root.iterdir())) <= service.keep_requests


# -- a real browser -----------------------------------------------------------------------------------------------
@pytest.mark.browser
@pytest.mark.slow
def test_in_a_real_browser(server, tmp_path):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",  # software WebGL
                  "--disable-background-networking", "--disable-component-update", "--no-first-run", "--disable-sync"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(server)
            page.locator("#prompt textarea").fill("a red cube on top of a blue sphere")
            page.locator("#generate").click()
            page.wait_for_function(
                "() => { const v = document.querySelector('#orbit video');"
                " return v && v.currentSrc && v.readyState >= 1 && v.duration > 0; }",
                timeout=90_000,
            )
            page.wait_for_function("() => document.querySelector('#view img')", timeout=30_000)
            before = page.locator("#view img").get_attribute("src")
            page.locator("#azimuth input[type=range]").fill("90")
            page.wait_for_function(
                "(old) => { const i = document.querySelector('#view img'); return i && i.src !== old; }",
                arg=before, timeout=30_000,
            )
            # switching the lighting re-renders the current object's view and orbit video
            view_src = page.locator("#view img").get_attribute("src")
            video_src = page.evaluate("() => document.querySelector('#orbit video').currentSrc")
            page.locator("#lighting label", has_text="albedo").click()
            page.wait_for_function(
                "([view, video]) => { const i = document.querySelector('#view img');"
                " const v = document.querySelector('#orbit video');"
                " return i && i.src !== view && v && v.currentSrc && v.currentSrc !== video; }",
                arg=[view_src, video_src], timeout=60_000,
            )
            with page.expect_download() as download:
                page.locator("#glb_file a").first.click()
            glb = tmp_path / "downloaded.glb"
            download.value.save_as(glb)
            # the interactive 3D view draws the GLB: its canvas shows more than the clear colour
            page.wait_for_function("() => document.querySelector('#model3d canvas')", timeout=30_000)
            for _ in range(30):
                shot = iio.imread(page.locator("#model3d canvas").screenshot())
                if shot[..., :3].astype(float).std(axis=(0, 1)).max() > 3:
                    break
                page.wait_for_timeout(1000)
            assert shot[..., :3].astype(float).std(axis=(0, 1)).max() > 3, "the 3D view stayed empty"
            page.screenshot(path=str(ARTIFACTS / "app.png"), full_page=True)
        finally:
            browser.close()
    assert validate(glb)["issues"]["numErrors"] == 0


def test_switching_models(tiny_checkpoint, tmp_path):
    import torch

    from instant3d.io.checkpoint import load_model, save_checkpoint

    model, _ = load_model(tiny_checkpoint)
    torch.manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    other = save_checkpoint(model, tmp_path / "other", text_encoder_path=str(tiny_checkpoint / "text_encoder"))
    pipe = Instant3DPipeline.from_pretrained(tiny_checkpoint, device="cpu")
    service = Instant3DService(pipe, tmp_path / "out", video_frames=4, video_size=64, name="tiny",
                               alternatives={"other": other})
    assert service.model_names() == ["tiny", "other"]
    a = service.render_view("a red cube", 0, 30, 15, model="tiny")
    b = service.render_view("a red cube", 0, 30, 15, model="other")
    assert not np.array_equal(a, b)
    result = service.generate("a red cube", 0, FAST_EXPORT, model="other")
    assert result.model == "other" and service.generate("a red cube", 0, FAST_EXPORT).model == "tiny"
    with pytest.raises(UserError, match="Unknown model 'huge'"):
        service.generate("a red cube", 0, FAST_EXPORT, model="huge")

    import app as app_module

    blocks = app_module.build_app(service)
    dropdowns = [c for c in blocks.blocks.values() if getattr(c, "elem_id", None) == "model"]
    assert dropdowns and dropdowns[0].visible and [c[0] for c in dropdowns[0].choices] == ["tiny", "other"]

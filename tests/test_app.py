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
from instant3d_app.service import GRADIO_CACHE_ENTRY, Instant3DService, UserError, check_prompt, check_seed
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
    app_module.launch(blocks, service, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
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


def test_a_streamed_request_comes_in_stages(service):
    """The page's three chained events: the view first (no files yet), then the video, then the files; the same
    request again is whole at once (cached), and an unknown job gets a message, not a traceback."""
    job, first = service.start_job("a yellow torus", 6, FAST_EXPORT)
    assert first.stage == "view" and first.preview is not None and first.video is None and first.glb is None
    video = service.advance_job(job)
    assert video.stage == "video" and video.video.exists() and video.glb is None
    done = service.advance_job(job)
    assert done.stage == "done" and done.glb.exists() and done.obj_zip.exists() and done.video == video.video
    assert service.advance_job(job) is done  # a finished job keeps its result
    job, again = service.start_job("a yellow torus", 6, FAST_EXPORT)
    assert again.stage == "done" and again.glb == done.glb
    with pytest.raises(UserError, match="Press Generate again"):
        service.advance_job("no-such-job")
    with pytest.raises(UserError):
        service.start_job("", 6, FAST_EXPORT)


def test_the_raw_field_switch_shows_the_field_as_generated(service):
    """By default the views show the object the GLB holds; the switch shows the raw field, haze and floaters
    included (the tiny random model's objects are mostly haze, so the two differ)."""
    clean_result = service.generate("a hazy cone", 4, FAST_EXPORT)
    raw_result = service.generate("a hazy cone", 4, FAST_EXPORT, raw=True)
    assert raw_result.video != clean_result.video and not np.array_equal(raw_result.preview, clean_result.preview)
    clean = service.render_view("a hazy cone", 4, 30, 20)
    raw = service.render_view("a hazy cone", 4, 30, 20, raw=True)
    assert not np.array_equal(clean, raw)
    assert np.array_equal(raw_result.preview, service.render_view("a hazy cone", 4, 0, service.elevation, raw=True))
    assert service.orbit_video("a hazy cone", 4, raw=True).exists()


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


def _request_folders(service) -> list[Path]:
    return [p for p in service.output_root.iterdir() if not GRADIO_CACHE_ENTRY.fullmatch(p.name)]


def test_request_folders_are_bounded(service):
    for _ in range(service.keep_requests + 5):
        service._request_folder()
    assert len(_request_folders(service)) <= service.keep_requests


def test_pruning_keeps_the_users_own_files(tiny_checkpoint, tmp_path):
    """--output-dir may be a folder that holds other things: only the app's request folders and Gradio's cache
    entries are ever deleted."""
    mine = [tmp_path / "notes.txt", tmp_path / "project" / "scene.blend", tmp_path / ("a" * 63)]
    for path in mine:
        path.parent.mkdir(exist_ok=True)
        path.write_text("keep me")
    pipe = Instant3DPipeline.from_pretrained(tiny_checkpoint, device="cpu")
    service = Instant3DService(pipe, tmp_path, video_frames=FRAMES, video_size=64, keep_requests=2)
    for i in range(12):
        (tmp_path / f"{i:064x}").mkdir()  # entries named as Gradio names its cache folders
        service._request_folder()
    assert all(path.read_text() == "keep me" for path in mine)
    assert len([p for p in tmp_path.iterdir() if GRADIO_CACHE_ENTRY.fullmatch(p.name)]) == 4 * 2


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
    assert len(_request_folders(service)) <= service.keep_requests


def _launch(service, **build):
    import app as app_module

    blocks = app_module.build_app(service, export_defaults=FAST_EXPORT, **build)
    port = _free_port()
    app_module.launch(blocks, service, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                      share=False)
    return blocks, f"http://127.0.0.1:{port}/"


def _bytes_under(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.mark.slow
def test_files_are_served_from_an_absolute_output_dir_anywhere_and_stay_bounded(tiny_checkpoint, tmp_path):
    """An --output-dir outside the working directory and the temp dir works, Gradio serves the files from it
    without copying them into its own cache, and 80 requests leave a bounded number of bytes on disk."""
    import tempfile

    import httpx
    from gradio_client import Client

    outside = Path(tempfile.mkdtemp(prefix="instant3d-test-", dir="/var/tmp"))
    gradio_default = Path(tempfile.gettempdir()) / "gradio"
    before = {p.name for p in gradio_default.iterdir()} if gradio_default.is_dir() else set()
    pipe = Instant3DPipeline.from_pretrained(tiny_checkpoint, device="cpu")
    service = Instant3DService(pipe, outside, video_frames=FRAMES, video_size=64, keep_requests=8)
    blocks, url = _launch(service)
    try:
        client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))  # not Gradio's temp dir
        sizes = []
        for i in range(40):
            video, _, glb, *_ = client.predict(f"a red cube number {i}", i, api_name="/generate")
            client.predict(i * 37 % 360 - 180, 20, api_name="/render_view")
            assert Path(video).stat().st_size > 0 and validate(Path(glb))["issues"]["numErrors"] == 0
            sizes.append(_bytes_under(outside))
        # served from where the service wrote it
        page = httpx.get(url + "gradio_api/file=" + str(sorted(outside.glob("*/orbit.mp4"))[-1]))
        assert page.status_code == 200 and page.content[4:8] == b"ftyp"
    finally:
        blocks.close()
    assert len(_request_folders(service)) <= service.keep_requests
    # Gradio's image entries: pruned at each request, so at most the images written since the last request on top
    assert len([p for p in outside.iterdir() if GRADIO_CACHE_ENTRY.fullmatch(p.name)]) <= 4 * service.keep_requests + 4
    # bounded: after the first keep_requests requests the bytes on disk stop growing with the request count
    per_request = max(sizes[: service.keep_requests]) / service.keep_requests
    assert max(sizes) <= 2 * service.keep_requests * per_request + 4 * service.keep_requests * 64 * 1024
    after = {p.name for p in gradio_default.iterdir()} if gradio_default.is_dir() else set()
    copied = [n for n in after - before if any((gradio_default / n).glob("*.glb"))]
    assert not copied, f"Gradio copied the app's files into its own cache: {copied}"


def test_an_unexpected_error_reaches_the_user_as_a_message_and_the_log_as_a_traceback(service, monkeypatch,
                                                                                          caplog):
    import app as app_module

    def broken(*args, **kwargs):
        raise RuntimeError("the renderer ran out of rays")

    monkeypatch.setattr(service, "render_view", broken)
    blocks = app_module.build_app(service, export_defaults=FAST_EXPORT)
    render_view = next(f.fn for f in blocks.fns.values() if f.name == "render_view")
    with caplog.at_level("ERROR", logger="instant3d.app"), pytest.raises(Exception) as info:
        render_view(0, 20, {"prompt": "a cube", "seed": 0}, "lit")
    message = str(info.value)
    assert "rendering the view failed on the server (RuntimeError)" in message and "Try again" in message
    assert "out of rays" not in message  # the details stay in the log
    assert "the renderer ran out of rays" in caplog.text and "Traceback" in caplog.text


def test_credentials_and_the_exposure_warning(tmp_path):
    import app as app_module

    assert app_module.parse_args([]).credentials == []
    assert app_module.parse_args(["--auth", "ann:s3cr:et"]).credentials == [("ann", "s3cr:et")]
    secrets = tmp_path / "users.txt"
    secrets.write_text("# who may use it\nann:one\nbob:two\n")
    assert app_module.parse_args(["--auth-file", str(secrets)]).credentials == [("ann", "one"), ("bob", "two")]
    assert (app_module.parse_args(["--video-frames", "12"]).video_frames, app_module.parse_args([]).video_size) == \
        (12, 256)
    for bad in (["--auth", "ann"], ["--auth", ":pw"], ["--auth-file", str(tmp_path / "none.txt")],
                ["--video-frames", "1"], ["--video-size", "5000"]):
        with pytest.raises(SystemExit):
            app_module.parse_args(bad)
    warn = app_module.exposure_warning
    assert warn("127.0.0.1", False, False) is None and warn("::1", False, False) is None
    assert "other machines can reach it" in warn("0.0.0.0", False, False)
    assert "gradio.live" in warn("127.0.0.1", True, False)
    assert warn("0.0.0.0", True, True) is None


@pytest.mark.slow
def test_concurrent_clients_get_their_own_objects(tmp_path):
    """--concurrency 2: generate and render_view on cache misses from several clients at once: no errors, and each
    client's view is its own object's (compared with a render made here, alone). The bundled default, so that the
    objects differ visibly (a tiny random model draws almost nothing)."""
    from gradio_client import Client

    pipe = Instant3DPipeline.from_pretrained(device="cpu", cache_items=2)
    service = Instant3DService(pipe, tmp_path, video_frames=FRAMES, video_size=64, keep_requests=32)
    blocks, url = _launch(service, model_concurrency=2)
    reference = Instant3DPipeline.from_pretrained(device="cpu")

    def worker(k):
        c = Client(url, verbose=False)
        views = []
        for i in range(3):
            colour = ["red", "blue", "green", "yellow"][k]
            prompt, seed = f"a {['small', 'large', ''][i]} {colour} {['cube', 'sphere', 'cone'][i]}".replace("  ", " "), k
            c.predict(prompt, seed, api_name="/generate")
            views.append((prompt, seed, iio.imread(c.predict(45 * (i + 1), 20, api_name="/render_view"))))
        return views

    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            results = [v for r in pool.map(worker, range(4)) for v in r]
    finally:
        blocks.close()
    assert len(results) == 12
    # the served views are WebP (lossy): each must match its own object's render far better than any other's
    expected = [reference(prompt, seed=seed).render(45 * (i + 1), 20, size=64, shading="lit").astype(float)
                for (prompt, seed, _), i in zip(results, [0, 1, 2] * 4)]
    for k, (prompt, seed, view) in enumerate(results):
        errors = [np.abs(view[..., :3].astype(float) - e).mean() for e in expected]
        assert int(np.argmin(errors)) == k and errors[k] < 2.0, (prompt, seed, errors[k], sorted(errors)[:3])


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


# -- the batch command line ---------------------------------------------------------------------------------------
def test_generate_cli_writes_a_folder_per_prompt_and_skips_bad_ones(tiny_checkpoint, tmp_path, capsys):
    from PIL import Image

    from instant3d_app.generate import main as generate

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\n\n# a comment\n   \na blue sphere\n", encoding="utf-8")
    out = tmp_path / "out"
    code = generate(["\x00\x01", "--prompts", str(prompts), "--out", str(out), "--checkpoint", str(tiny_checkpoint),
                     "--views", "--video", "--size", "32", "--frames", "4", "--seed", "5", "--device", "cpu"])
    assert code == 1  # one prompt failed
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "made 2 of 3 objects" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["001-a-red-cube-s5", "002-a-blue-sphere-s5"]
    for folder in out.iterdir():
        assert sorted(p.name for p in folder.iterdir()) == ["orbit.mp4", "view-back.png", "view-front.png",
                                                            "view-side.png"]
        assert len(iio.imread(folder / "orbit.mp4", plugin="FFMPEG")) == 4
        assert Image.open(folder / "view-front.png").size == (32, 32)
    front = np.asarray(Image.open(out / "001-a-red-cube-s5" / "view-front.png"))
    back = np.asarray(Image.open(out / "001-a-red-cube-s5" / "view-back.png"))
    assert not np.array_equal(front, back)
    # all good: exit 0; nothing asked for but a GLB: only the GLB
    assert generate(["a green cone", "--out", str(out), "--checkpoint", str(tiny_checkpoint), "--glb",
                     "--resolution", "32", "--texture-size", "128", "--device", "cpu"]) == 0
    glb_folder = out / "000-a-green-cone-s0"
    assert [p.name for p in glb_folder.iterdir()] == ["model.glb"]
    assert validate(glb_folder / "model.glb")["issues"]["numErrors"] == 0
    with pytest.raises(SystemExit):
        generate(["--out", str(out), "--checkpoint", str(tiny_checkpoint)])  # no prompt at all

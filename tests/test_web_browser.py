"""The Web SDK in a real browser: Debian's Chromium (driven by Selenium) with its fake camera
playing .y4m videos made from the real photos, the demo page and plugin served by a real adapter
(uvicorn), and a real vigil server with the real models behind it.

One server, one adapter, and one browser per video (Chromium's fake camera file is fixed at
launch). Screenshots of the plugin's states go to var/test-artifacts/web/.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FACES, ROOT, SPOOF, ServerThread, make_settings
from tests.gesture_videos import analyse_still
from tests.web_videos import gesture_clip, still_clip

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    pytest.skip(
        "Chromium is not installed (apt-get install -y chromium chromium-driver; .ci/run does)",
        allow_module_level=True,
    )
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (the dev extra) is missing")
uvicorn = pytest.importorskip("uvicorn", reason="uvicorn (the web extra) is missing")

from vigil.web.app import Adapter, create_app  # noqa: E402
from vigil.web.settings import WebSettings  # noqa: E402

ARTIFACTS = ROOT / "var" / "test-artifacts" / "web"
#: Every label is allowed by the test's adapter setting unless a test takes it away.
TRUSTED: list[str] = []


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def vigil(models_dir: Path) -> Iterator[ServerThread]:
    shutil.rmtree(ARTIFACTS, ignore_errors=True)  # this run's screenshots only
    running = ServerThread(make_settings(models_dir)).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def clips(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    # Chromium names its fake camera after the file: a path with "fake" in it, which the
    # service's virtual-camera list (VIRTUAL_CAMERAS) matches
    folder = tmp_path_factory.mktemp("chromium-fake-camera")
    obama = analyse_still(FACES / "obama.jpg", models_dir)
    return {
        # a different photo for each case: the server's replay memory declines frames it has seen
        "live": still_clip(FACES / "obama2.jpg", folder / "live.y4m", seed=1),
        "virtual": still_clip(FACES / "obama3.jpg", folder / "virtual.y4m", seed=2),
        "screen": still_clip(SPOOF / "image_F2.jpg", folder / "screen.y4m", seed=3),
        # smile, move closer, smile: either order of the two passes
        "gestures": gesture_clip(
            obama, ["smile", "move_closer", "smile"], folder / "gestures.y4m", lead=1.5
        ),
        # a face framed as a selfie that does nothing for 4 s
        "still": gesture_clip(
            analyse_still(FACES / "biden.jpg", models_dir), [], folder / "still.y4m", lead=4.0
        ),
    }


class AdapterThread:
    def __init__(self, settings: WebSettings) -> None:
        self.app = create_app(settings)
        self.adapter: Adapter = self.app.state.adapter
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=settings.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{settings.port}"

    def start(self) -> AdapterThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "the adapter did not start"
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def adapter(vigil: ServerThread) -> Iterator[AdapterThread]:
    settings = WebSettings(
        port=free_port(),
        server=vigil.address,
        api_key=vigil.new_key("SERVICE", company="web-sdk"),
        demo=True,
        gestures=["smile", "move_closer"],
        gesture_count=2,
        trusted_camera_labels=TRUSTED,
    )
    running = AdapterThread(settings).start()
    yield running
    running.stop()


Browser = Callable[[str], Any]


@pytest.fixture(scope="module")
def browser(clips: dict[str, Path]) -> Iterator[Browser]:
    """A Chromium whose camera plays ``clips[name]`` (one browser at a time, kept while the next
    test wants the same clip)."""
    from selenium.webdriver.chrome.service import Service

    opened: list[Any] = []
    playing: list[str] = []

    def launch(name: str) -> Any:
        if playing == [name]:
            return opened[0]  # already playing this clip: reuse the browser
        playing[:] = [name]
        for driver in opened:
            driver.quit()
        opened.clear()
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=720,900",
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-video-capture={clips[name]}",
        ):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        driver.set_script_timeout(60)
        opened.append(driver)
        return driver

    yield launch
    for driver in opened:
        driver.quit()


def screenshot(driver: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def plugin_state(driver: Any) -> str | None:
    state: str | None = driver.execute_script(
        "const r = document.querySelector('.vigil-web'); return r ? r.dataset.state : null"
    )
    return state


def events(driver: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = driver.execute_script("return window.vigilEvents || []")
    return found


def capture(
    driver: Any, adapter: AdapterThread, name: str, gestures: bool = False, lang: str = "en"
) -> tuple[str, dict[str, Any]]:
    """Runs the demo page's capture; screenshots the prompt and the end; returns the
    transaction_id and the events by kind."""
    transaction_id = f"web-{name}-{uuid.uuid4().hex[:8]}"
    flags = ("&gestures=1" if gestures else "") + f"&lang={lang}"
    driver.get(f"{adapter.url}/demo?auto=1&transaction_id={transaction_id}{flags}")
    prompt = "gesture_" if gestures else "hold_still"
    deadline = time.monotonic() + 30
    while not (plugin_state(driver) or "").startswith(prompt):
        assert time.monotonic() < deadline, f"no prompt; state {plugin_state(driver)}"
        assert not events(driver), events(driver)
        time.sleep(0.1)
    time.sleep(0.5)
    screenshot(driver, f"{name}-prompt")
    deadline = time.monotonic() + 90
    while not any(e["kind"] in ("complete", "error") for e in events(driver)):
        assert time.monotonic() < deadline, f"no answer; state {plugin_state(driver)}"
        time.sleep(0.2)
    time.sleep(0.5)  # the demo's backend lookup
    screenshot(driver, f"{name}-{plugin_state(driver)}")
    return transaction_id, {e["kind"]: e["value"] for e in events(driver)}


def folder(adapter: AdapterThread, vigil: ServerThread, transaction_id: str) -> Any:
    """The page's backend: the folder by transaction_id within the last hour, FULL."""
    return vigil.call(lambda: _find(adapter, transaction_id))


async def _find(adapter: AdapterThread, transaction_id: str) -> Any:
    # a service of its own on the server's loop (the adapter's channel lives on uvicorn's loop)
    from vigil.client.connection import Connection
    from vigil.web.service import VigilService

    service = VigilService(
        Connection(adapter.adapter.settings.server, api_key=adapter.adapter.settings.api_key), 30
    )
    try:
        return await service.find_folder(transaction_id)
    finally:
        await service.close()


def challenge(adapter: AdapterThread, vigil: ServerThread, challenge_id: str) -> Any:
    """The page's backend: an active session's challenge, with its resolution."""
    return vigil.call(lambda: _challenge(adapter, challenge_id))


async def _challenge(adapter: AdapterThread, challenge_id: str) -> Any:
    from vigil.client.connection import Connection
    from vigil.web.service import VigilService

    service = VigilService(
        Connection(adapter.adapter.settings.server, api_key=adapter.adapter.settings.api_key), 30
    )
    try:
        return await service.get_challenge(challenge_id)
    finally:
        await service.close()


def liveness_of(found: Any) -> Any:
    """The folder's one LIVENESS analysis (the adapter ran it; the result is the service's)."""
    from vigil.v1 import folders_pb2

    assert found is not None, "the backend found no folder for the transaction"
    (analysis,) = found.analyses
    assert analysis.type == folders_pb2.ANALYSIS_TYPE_LIVENESS
    assert analysis.state == folders_pb2.ANALYSIS_STATE_FINISHED, analysis.error
    return analysis


def resolution(analysis: Any) -> str:
    from vigil.v1 import folders_pb2

    return folders_pb2.Resolution.Name(analysis.resolution).removeprefix("RESOLUTION_")


def signal(analysis: Any, name: str) -> Any:
    (result,) = analysis.results
    return {s.name: s for s in result.signals}[name]


def trust(adapter: AdapterThread, *clips: Path) -> None:
    """The test setting: these fake camera labels are not sent to the virtual-camera check."""
    adapter.adapter.settings.trusted_camera_labels[:] = [str(c) for c in clips]


def meta_of(found: Any) -> dict[str, str]:
    assert found is not None, "the backend found no folder for the transaction"
    return dict(found.meta)


def test_a_live_face_gets_success_and_nothing_else(
    adapter: AdapterThread, vigil: ServerThread, browser: Browser, clips: dict[str, Path]
) -> None:
    """The page sees {"status": "SUCCESS"} and nothing else; the backend, by transaction_id and
    time, reads the folder's LIVENESS analysis (score, signals) and what the plugin sent."""
    trust(adapter, clips["live"])
    driver = browser("live")
    transaction_id, seen = capture(driver, adapter, "live")
    assert seen["complete"] == {"status": "SUCCESS"}, seen
    assert seen["result"] == {"status": "SUCCESS"}
    sent = seen["capture_complete"]
    assert sent["camera_label"] == str(clips["live"]) and sent["devices"] == [sent["camera_label"]]
    assert len(sent["frame_timestamps_ms"]) >= 20 and sent["type"] == "video/webm"
    assert "HeadlessChrome" in sent["user_agent"]

    found = folder(adapter, vigil, transaction_id)
    # the folder's meta: the page's and the origin, no result the adapter wrote
    assert set(meta_of(found)) == {"transaction_id", "web_origin"}
    analysis = liveness_of(found)
    assert resolution(analysis) == "SUCCESS", analysis
    (result,) = analysis.results
    assert result.score >= analysis.thresholds["liveness"] and result.face.box.width > 0
    assert not signal(analysis, "virtual_camera").triggered
    (media,) = found.media
    assert result.media_id == media.id
    assert list(media.tags) == ["video_selfie_blank"] and media.content_type == "video/webm"
    assert media.meta["capture_camera_label"] == str(clips["live"])
    assert media.meta["capture_label_trusted"] == "true"
    assert "vigil_capture" in media.meta  # what the analysis read: device, frame times
    # the demo's backend showed the same folder and analysis, FULL, on the page
    shown = driver.find_element("id", "full").text
    assert found.id in shown and analysis.id in shown and "ANALYSIS_TYPE_LIVENESS" in shown


def test_the_fake_camera_is_a_virtual_camera_by_default(
    adapter: AdapterThread, vigil: ServerThread, browser: Browser
) -> None:
    trust(adapter)  # no test setting: the service sees Chromium's own label
    driver = browser("virtual")
    transaction_id, seen = capture(driver, adapter, "virtual")
    assert seen["complete"] == {"status": "DECLINED"}, seen
    analysis = liveness_of(folder(adapter, vigil, transaction_id))
    assert resolution(analysis) == "DECLINED", analysis
    virtual = signal(analysis, "virtual_camera")
    assert virtual.triggered and virtual.declines, virtual
    assert "virtual_camera" in analysis.results[0].error


def test_a_screen_replay_is_declined(
    adapter: AdapterThread, vigil: ServerThread, browser: Browser, clips: dict[str, Path]
) -> None:
    trust(adapter, clips["screen"])
    driver = browser("screen")
    transaction_id, seen = capture(driver, adapter, "screen")
    assert seen["complete"] == {"status": "DECLINED"}, seen
    analysis = liveness_of(folder(adapter, vigil, transaction_id))
    assert resolution(analysis) == "DECLINED", analysis
    # declined for its score, not by a signal
    assert analysis.results[0].score < analysis.thresholds["liveness"]
    assert not analysis.results[0].error
    assert not signal(analysis, "virtual_camera").triggered


def test_a_performed_challenge_passes(
    adapter: AdapterThread, vigil: ServerThread, browser: Browser, clips: dict[str, Path]
) -> None:
    trust(adapter, clips["gestures"])
    driver = browser("gestures")
    transaction_id, seen = capture(driver, adapter, "gestures", gestures=True)
    found = folder(adapter, vigil, transaction_id)
    assert seen["complete"] == {"status": "SUCCESS"}, seen
    # the backend reads the verdict from the challenge; the video is in the folder, unanalysed
    # (it was judged once, by the challenge)
    read = challenge(adapter, vigil, meta_of(found)["web_challenge_id"])
    assert read.answered and read.resolution == "SUCCESS"
    (media,) = found.media
    assert not found.analyses and "vigil_capture" in media.meta


def test_a_still_face_fails_the_challenge(
    adapter: AdapterThread, vigil: ServerThread, browser: Browser, clips: dict[str, Path]
) -> None:
    trust(adapter, clips["still"])
    driver = browser("still")
    transaction_id, seen = capture(driver, adapter, "still", gestures=True, lang="de")
    assert seen["complete"] == {"status": "DECLINED"}, seen
    read = challenge(
        adapter, vigil, meta_of(folder(adapter, vigil, transaction_id))["web_challenge_id"]
    )
    assert read.answered and read.resolution == "DECLINED"
    # declined for the gestures it did not make (the demo's backend showed the challenge)
    shown = driver.find_element("id", "full").text
    assert '"resolution": "DECLINED"' in shown and read.id in shown
    # the German pack: the last prompt shown
    assert driver.find_element("class name", "vigil-web__prompt").text == "Nicht bestätigt"


OPEN = """
const [url, body, done] = arguments;
fetch(url + "/api/sessions", {method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify(body)})
  .then(async (r) => done({status: r.status, body: await r.json()}))
  .catch((e) => done({failed: String(e)}));
"""
POST = """
const [url, path, session, done] = arguments;
const form = new FormData();
form.append("video", new Blob([new Uint8Array(64)], {type: "video/webm"}), "capture.webm");
form.append("capture", JSON.stringify({camera_label: "x"}));
fetch(url + path, {method: "POST", headers: {"X-Vigil-Session": session}, body: form})
  .then(async (r) => done({status: r.status, body: await r.text()}))
  .catch((e) => done({failed: String(e)}));
"""


def test_forged_results_replays_foreign_origins_and_expired_sessions_are_refused(
    adapter: AdapterThread, vigil: ServerThread, browser: Browser
) -> None:
    driver = browser("still")
    driver.get(f"{adapter.url}/demo")
    url = adapter.url
    transaction_id = f"web-forged-{uuid.uuid4().hex[:8]}"
    opened = driver.execute_async_script(OPEN, url, {"meta": {"transaction_id": transaction_id}})
    assert opened["status"] == 201, opened
    session = opened["body"]["session_id"]
    assert set(opened["body"]) == {
        "session_id", "expires_in_s", "gestures", "gesture_window_ms", "max_video_bytes"
    }  # fmt: skip

    # a forged result: there is no route by which a page sets a result
    forged = driver.execute_async_script(POST, url, f"/api/sessions/{session}/result", session)
    assert forged["status"] in (404, 405), forged
    assert not folder(adapter, vigil, transaction_id).analyses

    # the session's one upload (not a video: the service refuses it), then a replay of it
    first = driver.execute_async_script(POST, url, f"/api/sessions/{session}/capture", session)
    assert first["status"] == 400 and "not a media type" in first["body"], first
    again = driver.execute_async_script(POST, url, f"/api/sessions/{session}/capture", session)
    assert again == {"status": 409, "body": again["body"]} and "already" in again["body"], again
    # nothing was judged: no media kept, no analysis
    refused = folder(adapter, vigil, transaction_id)
    assert not refused.media and not refused.analyses

    # a page of another origin (localhost is not 127.0.0.1): refused, the browser learns nothing
    foreign_id = f"web-foreign-{uuid.uuid4().hex[:8]}"
    driver.get(f"http://localhost:{url.rsplit(':', 1)[1]}/demo")
    refused = driver.execute_async_script(OPEN, url, {"meta": {"transaction_id": foreign_id}})
    assert "failed" in refused, refused  # no CORS grant: fetch rejects
    assert folder(adapter, vigil, foreign_id) is None

    # an expired session
    driver.get(f"{url}/demo")
    sessions = adapter.adapter.sessions
    ttl, sessions.ttl_s = sessions.ttl_s, 0.5
    try:
        late = driver.execute_async_script(OPEN, url, {"meta": {}})
    finally:
        sessions.ttl_s = ttl
    time.sleep(0.6)
    late_id = late["body"]["session_id"]
    expired = driver.execute_async_script(POST, url, f"/api/sessions/{late_id}/capture", late_id)
    assert expired["status"] == 410 and "expired" in expired["body"], expired


def test_hide_and_close(adapter: AdapterThread, browser: Browser) -> None:
    driver = browser("still")
    driver.get(f"{adapter.url}/demo")
    driver.execute_script("window.VigilLiveness.open({meta: {}})")
    assert plugin_state(driver) is not None
    driver.execute_script("window.VigilLiveness.hide()")
    assert driver.execute_script("return document.querySelector('.vigil-web').hidden") is True
    driver.execute_script("window.VigilLiveness.close()")
    assert driver.execute_script("return document.querySelector('.vigil-web')") is None

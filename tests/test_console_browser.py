"""The operator console in a real browser: Debian's Chromium (Selenium) against ``vigil web``'s
app (uvicorn) and a real vigil server with the real models, people of two companies signed in
with their passwords.

One server, one web app, one browser (cookies cleared between people). Screenshots of each screen
go to var/test-artifacts/console/.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.conftest import FACES, ROOT, ServerThread, make_settings
from tests.videos import encode, motion_frames

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    pytest.skip(
        "Chromium is not installed (apt-get install -y chromium chromium-driver; .ci/run does)",
        allow_module_level=True,
    )
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (the dev extra) is missing")
uvicorn = pytest.importorskip("uvicorn", reason="uvicorn (the web extra) is missing")

from vigil.client import VigilClient  # noqa: E402
from vigil.web.app import create_app  # noqa: E402
from vigil.web.settings import WebSettings  # noqa: E402

ARTIFACTS = ROOT / "var" / "test-artifacts" / "console"
PASSWORD = "correct horse battery staple"
WATCHLIST = "console-watch"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class World:
    """The server, the console's URL and what the tests look for."""

    vigil: ServerThread
    url: str
    photo_folder: Any
    video_folder: Any
    review_folder: Any
    people: dict[str, str]  # name → email
    key: str  # the SERVICE key that made the folders


def _person(vigil: ServerThread, email: str, role: str, mode: str, company: str) -> str:
    from vigil.storage import credentials, folders

    def work(session: Any) -> str:
        company_id = folders.ensure_company(company, session=session).id
        credentials.create_user(email, PASSWORD, role, mode, company_id=company_id, session=session)
        return email

    app = vigil.vigil.app
    return vigil.call(lambda: app.db(work))


@pytest.fixture(scope="module")
def world(models_dir: Path) -> Iterator[World]:
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    # a wide grey zone: obama against biden is a case for an operator
    running = ServerThread(make_settings(models_dir, biometry_grey_zone=5.0)).start()
    run = uuid.uuid4().hex[:6]
    people = {
        "admin": _person(running, f"admin-{run}@a.test", "CLIENT_ADMIN", "FULL", "console-a"),
        "operator": _person(running, f"op-{run}@a.test", "CLIENT_OPERATOR", "FULL", "console-a"),
        "safe": _person(running, f"safe-{run}@a.test", "CLIENT_OPERATOR", "SAFE", "console-a"),
        "root": _person(running, f"root-{run}@a.test", "ADMIN", "FULL", "console-a"),
        "other": _person(running, f"b-{run}@b.test", "CLIENT_ADMIN", "FULL", "console-b"),
    }
    key = running.new_key("SERVICE", company="console-a")
    video = encode(motion_frames(FACES / "obama2.jpg", 30), fmt="webm", codec="libvpx")
    with VigilClient(running.address, api_key=key, timeout=120) as client:
        photo = client.submit(
            [(FACES / "obama.jpg", ["photo_selfie"])],
            ["LIVENESS"],
            {"transaction_id": f"photo-{run}"},
        )
        moving = client.submit(
            [(video, ["video_selfie_blank"])], ["LIVENESS"], {"transaction_id": f"video-{run}"}
        )
        review = client.submit(
            [(FACES / "obama.jpg", ["photo_selfie"]), (FACES / "biden.jpg", ["photo_id_front"])],
            ["BIOMETRY"],
            {"transaction_id": f"review-{run}"},
        )
        client.create_collection(WATCHLIST)
        found = [client.wait(f.id, timeout=180) for f in (photo, moving, review)]
    port = free_port()
    app = create_app(WebSettings(port=port, server=running.address, api_key=key))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the web app did not start"
        time.sleep(0.05)
    photo, moving, review = found
    yield World(running, f"http://127.0.0.1:{port}", photo, moving, review, people, key)
    server.should_exit = True
    thread.join(10)
    running.stop()


@pytest.fixture(scope="module")
def driver(world: World) -> Iterator[Any]:
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield browser
    browser.quit()


def screenshot(driver: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # the whole page, not just the window (at most 2400 px)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    metrics = {"width": 1280, "height": min(int(height), 2400), "deviceScaleFactor": 1}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {**metrics, "mobile": False})
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def sign_in(driver: Any, world: World, who: str) -> None:
    driver.delete_all_cookies()
    driver.get(f"{world.url}/console/login")
    driver.find_element("id", "email").send_keys(world.people[who])
    driver.find_element("id", "password").send_keys(PASSWORD)
    click(driver, "form.login button")
    assert driver.current_url == f"{world.url}/console/", driver.page_source[:400]


def click(driver: Any, selector: str) -> None:
    """Click and wait for the next page (the old one's body goes stale)."""
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    body = driver.find_element("tag name", "body")
    driver.find_element("css selector", selector).click()
    WebDriverWait(driver, 10).until(expected_conditions.staleness_of(body))
    WebDriverWait(driver, 10).until(
        lambda d: d.execute_script("return document.readyState") == "complete"
    )


def text(driver: Any) -> str:
    body: str = driver.find_element("tag name", "body").text
    return body


def test_sign_in_refuses_a_wrong_password_and_needs_a_session(driver: Any, world: World) -> None:
    driver.delete_all_cookies()
    driver.get(f"{world.url}/console/")
    assert driver.current_url == f"{world.url}/console/login"  # signed out: the sign-in page
    driver.find_element("id", "email").send_keys(world.people["admin"])
    driver.find_element("id", "password").send_keys("not the password at all")
    click(driver, "form.login button")
    assert "Wrong email or password." in text(driver)
    screenshot(driver, "sign-in")
    # the tokens are HttpOnly, SameSite=Strict cookies, out of the page's reach
    sign_in(driver, world, "admin")
    cookies = {c["name"]: c for c in driver.get_cookies()}
    for name in ("vigil_console_access", "vigil_console_refresh", "vigil_console_csrf"):
        assert cookies[name]["httpOnly"] and cookies[name]["sameSite"] == "Strict"
    assert driver.execute_script("return document.cookie") == ""
    # an access token the service refuses (expired): the refresh token gets a new pair
    driver.delete_cookie("vigil_console_access")
    driver.add_cookie(
        {**cookies["vigil_console_access"], "value": "expired"}
        | {"sameSite": "Strict", "httpOnly": True}
    )
    driver.get(f"{world.url}/console/")
    assert driver.current_url == f"{world.url}/console/" and "Folders" in text(driver)
    renewed = driver.get_cookie("vigil_console_access")
    # a fresh access token (the same claims within one second give the same token)
    assert renewed is not None and renewed["value"] != "expired"
    # sign-out forgets them
    click(driver, "nav button")
    assert driver.current_url == f"{world.url}/console/login"
    assert "vigil_console_access" not in {c["name"] for c in driver.get_cookies()}


def test_find_a_folder_by_transaction_id_and_see_its_media_and_results(
    driver: Any, world: World
) -> None:
    sign_in(driver, world, "admin")
    transaction_id = world.photo_folder.meta["transaction_id"]
    driver.find_element("id", "f-value").send_keys(transaction_id)
    click(driver, "form.filters button")
    rows = driver.find_elements("css selector", "table.folders tbody tr")
    assert len(rows) == 1 and transaction_id in rows[0].text, text(driver)
    assert world.photo_folder.id in rows[0].text
    driver.find_element("id", "f-value").clear()
    click(driver, "form.filters button")
    listed = [r.text for r in driver.find_elements("css selector", "table.folders tbody tr")]
    assert len(listed) == 3 and world.review_folder.id in listed[0]  # newest first
    screenshot(driver, "folders")

    driver.get(f"{world.url}/console/folders/{world.photo_folder.id}")
    image = driver.find_element("css selector", ".media img")
    assert driver.execute_script("return arguments[0].naturalWidth", image) > 0
    score = float(driver.find_element("css selector", ".analysis td.score").text)
    (analysis,) = world.photo_folder.analyses
    assert score == pytest.approx(analysis.results[0].score, abs=1e-4)
    # the face box over the image, in the image's pixels
    overlay = driver.find_element("css selector", "svg.overlay")
    size = driver.execute_script(
        "return [arguments[0].naturalWidth, arguments[0].naturalHeight]", image
    )
    view = driver.execute_script("return arguments[0].getAttribute('viewBox')", overlay)
    assert view == f"0 0 {size[0]} {size[1]}"
    box = analysis.results[0].face.box
    rect = driver.find_element("css selector", "svg.overlay rect")
    assert box.width > 20
    assert float(rect.get_attribute("width")) == pytest.approx(box.width, abs=0.1)
    assert "SUCCESS" in text(driver) and transaction_id in text(driver)
    screenshot(driver, "folder-photo")
    # the media as the service stored them, through the console with the person's token
    cookies = {c["name"]: c["value"] for c in driver.get_cookies()}
    media = world.photo_folder.media[0]
    reply = httpx2.get(f"{world.url}/console/media/{media.id}", cookies=cookies)
    assert reply.status_code == 200 and reply.content == (FACES / "obama.jpg").read_bytes()
    assert reply.headers["content-type"] == "image/jpeg"
    assert reply.headers["content-disposition"] == "inline"
    policy = reply.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "form-action 'self'" in policy
    assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy


def test_a_video_analysis_plays_and_charts_its_frames(driver: Any, world: World) -> None:
    sign_in(driver, world, "admin")
    driver.get(f"{world.url}/console/folders/{world.video_folder.id}")
    video = driver.find_element("css selector", ".media video")
    deadline = time.monotonic() + 10
    while driver.execute_script("return arguments[0].readyState", video) < 1:
        assert time.monotonic() < deadline, "the video did not load"
        time.sleep(0.1)
    assert driver.execute_script("return arguments[0].duration", video) > 1.0
    (analysis,) = world.video_folder.analyses
    points = driver.find_element("css selector", ".chart polyline").get_attribute("points")
    assert len(points.split()) == len(analysis.results[0].frames) >= 2
    screenshot(driver, "folder-video")


def test_an_operator_resolves_a_case_and_the_audit_log_shows_it(driver: Any, world: World) -> None:
    (analysis,) = world.review_folder.analyses
    assert analysis.resolution == 4, analysis  # OPERATOR_REQUIRED
    sign_in(driver, world, "operator")
    driver.get(f"{world.url}/console/folders/{world.review_folder.id}")
    driver.find_element("id", f"c-{analysis.id}").send_keys("same person, older photo")
    screenshot(driver, "operator-decision")
    click(driver, "form.resolve button")
    assert f"Analysis {analysis.id} resolved: SUCCESS" in text(driver)
    heading = driver.find_element("css selector", f"#analysis-{analysis.id} h3").text
    assert heading.startswith("BIOMETRY · SUCCESS"), heading
    assert not driver.find_elements("css selector", "form.resolve")

    sign_in(driver, world, "admin")
    driver.get(f"{world.url}/console/folders/{world.review_folder.id}")
    trail = driver.find_element("css selector", "table.audit").text
    assert "ResolveAnalysis" in trail and "OK" in trail, trail
    screenshot(driver, "audit-trail")


def test_a_safe_person_sees_no_scores_anywhere(driver: Any, world: World) -> None:
    sign_in(driver, world, "safe")
    for found in (world.photo_folder, world.video_folder, world.review_folder):
        driver.get(f"{world.url}/console/folders/{found.id}")
        assert not driver.find_elements("css selector", ".score, .chart, svg.overlay, img, video")
        page = text(driver)
        for analysis in found.analyses:
            for result in analysis.results:
                assert f"{result.score:.4f}" not in page
        assert "not shown at SAFE" in page
    screenshot(driver, "folder-safe")
    # nor the media by URL: the service refuses a SAFE token
    media_id = world.photo_folder.media[0].id
    driver.get(f"{world.url}/console/media/{media_id}")
    assert "Error 403" in text(driver)


def test_another_company_cannot_open_a_folder_or_its_media_by_url(
    driver: Any, world: World
) -> None:
    sign_in(driver, world, "other")
    driver.get(f"{world.url}/console/")
    assert not driver.find_elements("css selector", "table.folders tbody tr")
    driver.get(f"{world.url}/console/folders/{world.photo_folder.id}")
    assert "Error 404" in text(driver) and "obama" not in driver.page_source
    driver.get(f"{world.url}/console/media/{world.photo_folder.media[0].id}")
    assert "Error 404" in text(driver)
    screenshot(driver, "other-company")


def test_a_post_without_the_csrf_token_is_refused(driver: Any, world: World) -> None:
    sign_in(driver, world, "operator")
    (analysis,) = world.review_folder.analyses
    driver.get(f"{world.url}/console/")
    # the page's own form with a forged token
    driver.execute_script("document.querySelector('nav input[name=csrf]').value = 'forged'")
    click(driver, "nav button")
    assert "CSRF token is missing or wrong" in text(driver)
    # still signed in: the sign-out was refused
    driver.get(f"{world.url}/console/")
    assert driver.current_url == f"{world.url}/console/"
    # a request with the person's cookies but no form token (what a forged page could send)
    cookies = {c["name"]: c["value"] for c in driver.get_cookies()}
    reply = httpx2.post(
        f"{world.url}/console/analyses/{analysis.id}/resolve",
        data={"resolution": "DECLINED", "comment": "forged"},
        cookies=cookies,
    )
    assert reply.status_code == 403 and "CSRF" in reply.text
    screenshot(driver, "folders-operator")


def test_a_person_added_to_a_watch_list_is_found_by_another_photo(
    driver: Any, world: World
) -> None:
    sign_in(driver, world, "admin")
    driver.get(f"{world.url}/console/watchlists")
    assert WATCHLIST in text(driver)
    click(driver, f"a[href$='/watchlists/{WATCHLIST}']")
    driver.find_element("id", "a-label").send_keys("Barack Obama")
    photos = "\n".join(str(FACES / name) for name in ("obama.jpg", "obama2.jpg"))
    driver.find_element("id", "a-photos").send_keys(photos)
    click(driver, "form[action$='/people'] button")
    assert "Barack Obama added with 2 face(s)" in text(driver)
    driver.find_element("id", "a-label").send_keys("Joe Biden")
    driver.find_element("id", "a-photos").send_keys(str(FACES / "biden.jpg"))
    click(driver, "form[action$='/people'] button")
    assert "People (2, 3 faces)" in text(driver)

    driver.find_element("id", "s-photo").send_keys(str(FACES / "obama3.jpg"))
    click(driver, "form[action$='/search'] button")
    rows = driver.find_elements("css selector", ".hits tbody tr")
    first = rows[0].find_elements("tag name", "td")
    assert first[0].text == "Barack Obama" and first[3].text == "match", rows[0].text
    assert float(first[1].text) > 0.3  # a similarity, not a distance
    assert all("Biden" not in r.text or "no match" in r.text for r in rows)
    screenshot(driver, "watch-list-search")

    # removing a face: the list shows one fewer
    click(driver, "form.inline button")
    assert "People (2, 2 faces)" in text(driver)
    # an operator may look but not change it: the service refuses, the console says so
    sign_in(driver, world, "operator")
    driver.get(f"{world.url}/console/watchlists/{WATCHLIST}")
    driver.find_element("id", "a-label").send_keys("Someone")
    driver.find_element("id", "a-photos").send_keys(str(FACES / "biden.jpg"))
    click(driver, "form[action$='/people'] button")
    assert "Error 403" in text(driver)


def test_administration_as_the_service_allows_each_role(driver: Any, world: World) -> None:
    sign_in(driver, world, "admin")
    driver.get(f"{world.url}/console/admin")
    page = text(driver)
    # a client-admin: people and keys of its company; companies are the ADMIN's
    assert "Companies" not in page and world.people["admin"] in page
    assert world.people["other"] not in page
    driver.find_element("id", "k-name").send_keys("console test key")
    click(driver, "form[action$='/admin/keys'] button")
    key = driver.find_element("id", "new-key").text
    screenshot(driver, "admin-new-key")
    with VigilClient(world.vigil.address, api_key=key) as client:
        client.create_folder({"made_by": "the new key"})  # the key works
    driver.get(f"{world.url}/console/admin")
    assert key not in driver.page_source  # shown once
    click(driver, "button[aria-label='Revoke console test key']")
    assert "key revoked" in text(driver)
    with (
        VigilClient(world.vigil.address, api_key=key) as client,
        pytest.raises(Exception) as refused,
    ):
        client.create_folder({"made_by": "a revoked key"})
    assert "UNAUTHENTICATED" in str(refused.value)
    # an ADMIN sees the companies too
    sign_in(driver, world, "root")
    driver.get(f"{world.url}/console/admin")
    companies = driver.find_element("css selector", "table.companies").text
    assert "console-a" in companies and "console-b" in companies
    # an operator has no administration
    sign_in(driver, world, "operator")
    driver.get(f"{world.url}/console/admin")
    assert "Administration is for ADMIN and CLIENT_ADMIN people." in text(driver)


def test_the_statistics_page_shows_the_company_numbers(driver: Any, world: World) -> None:
    sign_in(driver, world, "operator")
    driver.get(f"{world.url}/console/statistics")
    assert driver.find_element("id", "st-analyses").text == "3"
    with VigilClient(world.vigil.address, api_key=world.key) as client:
        waiting = client.get_folder(world.review_folder.id).analyses[0].resolution == 4
    assert driver.find_element("id", "st-backlog").text == ("1" if waiting else "0")
    assert driver.find_element("id", "st-decline").text == "0.0%"
    assert float(driver.find_element("id", "st-median").text.split()[0]) > 0
    cells = driver.find_elements("css selector", "table.stats tbody td:last-child")
    assert sum(int(c.text) for c in cells) == 3
    bars = driver.find_elements("css selector", ".days rect")
    assert len(bars) == len(
        {c.text for c in driver.find_elements("css selector", "table.stats tbody td:nth-child(3)")}
    )
    screenshot(driver, "statistics")
    # the other company's page counts nothing of company A's
    sign_in(driver, world, "other")
    driver.get(f"{world.url}/console/statistics")
    assert driver.find_element("id", "st-analyses").text == "0"

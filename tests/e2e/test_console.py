"""The web console (`anyanomaly serve --http-port`) in a real headless Chromium driven by Selenium:
the page loads, a detection started from it on a fixture clip (tiny CLIP, a ScriptedLVLM) draws
the chart and fills the segment table live; a screenshot is kept in out/test-artifacts/. Its
JSON/SSE gateway is also called directly, as a script would."""

from __future__ import annotations

import json
import shutil
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from services.common.auth import new_token, token_hash
from tests.helpers.cli import serving
from tests.helpers.fake_openai_server import FakeOpenAIServer
from tests.helpers.fixtures import REPO_ROOT, avenue_clip
from tests.helpers.scripted_lvlm import ScriptedLVLM

pytestmark = pytest.mark.slow
ARTIFACTS = REPO_ROOT / "out" / "test-artifacts"
VIDEO = avenue_clip("21")  # 76 frames: 4 segments


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    data = tmp_path_factory.mktemp("data")
    with FakeOpenAIServer(answer=ScriptedLVLM()) as lvlm, \
            serving("--models", "tiny", "--port", "0", "--lvlm-url", lvlm.url, "--lvlm-model", lvlm.model,
                    "--http-port", str(port), "--media-roots", str(VIDEO.parent), "--data-dir", str(data)) as addresses:
        assert addresses["console"] == f"http://127.0.0.1:{port}/"
        yield addresses["console"]


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "Chromium is missing: make system-packages (Debian's chromium, chromium-driver)"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1100"):
        options.add_argument(flag)
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield chrome
    finally:
        chrome.quit()


def test_a_detection_started_in_the_console_draws_its_chart_and_rows(console: str, browser: webdriver.Chrome) -> None:
    browser.get(console)
    wait = WebDriverWait(browser, 120)
    # The picker lists the videos under --media-roots.
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, f'#media option[value="{VIDEO}"]'))
    browser.find_element(By.ID, "source").send_keys(str(VIDEO))
    browser.find_element(By.ID, "texts").send_keys("bicycle, running")
    browser.find_element(By.ID, "start").click()
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "tr.segment-row"))  # the first row arrives live
    wait.until(lambda b: b.find_element(By.ID, "status").text.startswith(("done", "INVALID", "UN")))
    status = browser.find_element(By.ID, "status").text
    assert status == "done: 76 frames, 4 segments", status
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.segment-row")
    assert [row.find_elements(By.TAG_NAME, "td")[1].text for row in rows] == ["0-23", "24-47", "48-71", "72-75"]
    assert all(row.find_elements(By.TAG_NAME, "td")[3].text in ("bicycle", "running") for row in rows)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#chart polyline.text-curve")) == 2
    assert (browser.find_element(By.ID, "frame-curve").get_attribute("points") or "").count(",") == 76
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "console.png"))


def test_events_appear_live_and_open_their_evidence(console: str, browser: webdriver.Chrome) -> None:
    """A monitor (made through the gateway, looping the clip, a low threshold) opens events; the
    page's live event list shows them and a click brings the evidence images."""
    browser.get(console)
    status, text = post(console + "api/Monitors/CreateMonitor", json.dumps({"spec": {
        "source": {"path": str(VIDEO)}, "texts": ["bicycle"], "rules": [{"text": "", "threshold": 0.05}]}}).encode())
    assert status == 200, text
    monitor = json.loads(text)["monitor_id"]
    try:
        wait = WebDriverWait(browser, 120)
        link = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#events td.event"))[0]
        row = link.find_element(By.XPATH, "..").find_elements(By.TAG_NAME, "td")
        assert row[1].text == "bicycle" and row[4].text == monitor
        link.click()
        images = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#evidence img"))
        assert [image.get_attribute("alt") for image in images] == ["key frame", "position context",
                                                                     "temporal context"]
        assert all(browser.execute_script("return arguments[0].naturalWidth", image) > 0 for image in images)
    finally:
        assert post(console + "api/Monitors/DeleteMonitor", json.dumps({"monitor_id": monitor}).encode())[0] == 200


def post(url: str, body: bytes, token: str = "", **headers: str) -> tuple[int, str]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {}),
               **{name.replace("_", "-"): value for name, value in headers.items()}}
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_the_gateway_answers_scripts_too(console: str) -> None:
    status, text = post(console + "api/Orchestrator/Detect",
                        json.dumps({"source": {"path": str(VIDEO)}, "texts": ["bicycle"]}).encode())
    assert status == 200
    events = [block for block in text.split("\n\n") if block]
    kinds = [next(iter(json.loads(block.removeprefix("data: ")))) for block in events[:-1]]
    assert kinds == ["started", "segment", "segment", "segment", "segment", "summary"]
    assert events[-1].startswith("event: end")
    status, text = post(console + "api/Orchestrator/Detect", b'{"texts": ["bicycle"], "sauce": 1}')
    assert status == 400 and "is not a DetectRequest in JSON" in json.loads(text)["message"]
    status, text = post(console + "api/Orchestrator/Detect", b'{"texts": [" "], "source": {"path": "/x.mp4"}}')
    assert status == 200 and "event: error" in text and "INVALID_ARGUMENT" in text  # the service's own refusal
    status, text = post(console + "api/Orchestrator/DetectStream", b"{}")
    assert status == 404 and "unary and server-streaming" in json.loads(text)["message"]
    status, text = post(console + "api/Monitors/ListMonitors", b"{}")
    assert status == 200 and json.loads(text) == {}
    # Other web pages cannot drive it through a browser: a form-style POST, a foreign Origin, a
    # DNS-rebinding Host.
    assert post(console + "api/Monitors/ListMonitors", b"{}", Content_Type="text/plain")[0] == 415
    assert post(console + "api/Monitors/ListMonitors", b"{}", Origin="http://evil.example")[0] == 403
    port = console.rsplit(":", 1)[1].strip("/")
    status, text = post(console + "api/Monitors/ListMonitors", b"{}", Host=f"evil.example:{port}",
                        Origin=f"http://evil.example:{port}")
    assert status == 403 and "does not answer to 'evil.example" in json.loads(text)["message"]
    assert post(console + "api/Monitors/ListMonitors", b"{}", Host=f"localhost:{port}")[0] == 200


def test_the_console_is_behind_the_orchestrators_tokens(tmp_path: Path) -> None:
    token = new_token()
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{token_hash(token)} detect console-user\n")
    port = free_port()
    with serving("--models", "tiny", "--port", "0", "--http-port", str(port), "--auth-tokens-file", str(tokens),
                 "--media-roots", str(VIDEO.parent)):
        url = f"http://127.0.0.1:{port}/"
        with urllib.request.urlopen(url, timeout=30) as page:  # the page itself holds nothing secret
            assert b"AnyAnomaly console" in page.read()
        request = urllib.request.Request(url + "console/media")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 401 and "needs a token" in json.loads(refused.value.read())["message"]
        request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=30) as media:
            assert str(VIDEO) in [item["path"] for item in json.loads(media.read())["items"]]
        status, text = post(url + "api/Monitors/ListMonitors", b"{}")
        assert status == 401 and "needs a token" in json.loads(text)["message"]
        status, text = post(url + "api/Monitors/ListMonitors", b"{}", token)  # a token without that scope
        assert status == 403 and "needs the scope" in json.loads(text)["message"]

"""annotate: the store's files, the HTTP routes, a real headless Chromium drawing a box by mouse events, and the
command end to end (its masks are read back by the loaders `treat` uses)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from browser import REQUIRED, chromium, selenium_webdriver, skip_or_fail
from modeldoctor import cli
from modeldoctor.annotator.server import AnnotationServer, Item
from modeldoctor.annotator.store import AnnotationStore
from modeldoctor.core.errors import UserError
from modeldoctor.data.masks import load_boxes, load_masks

SIZE = 28


def _images(n: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.rand(1, SIZE, SIZE, generator=g) for _ in range(n)]


def _server(tmp_path: Path, n: int = 3) -> AnnotationServer:
    images = _images(n)
    items = [Item(f"img-{i}", str(i % 2), 0.3) for i in range(n)]
    return AnnotationServer(items, lambda i: images[i], AnnotationStore(tmp_path / "ann", SIZE))


def _request(url: str, body: dict | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _post(url: str, body: dict, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    code, answer = _request(url, body, headers)
    return code, json.loads(answer)


def _api(server_url: str, route: str) -> str:
    """``route`` (e.g. ``api/save``) at the tokenised address ``server_url`` the command prints."""
    root, _, query = server_url.partition("?")
    return f"{root}{route}?{query}"


def test_store_writes_boxes_masks_and_resumes(tmp_path: Path) -> None:
    store = AnnotationStore(tmp_path, SIZE)
    store.save("a", [[2, 3, 10, 12], [20, 20, 28, 28]], None, False)
    store.save("b", [[1, 1, 5, 5]], None, True)  # "no object" wins over boxes
    rows = json.loads((tmp_path / "boxes.json").read_text())
    assert rows == [{"id": "a", "x0": 2.0, "y0": 3.0, "x1": 10.0, "y1": 12.0},
                    {"id": "a", "x0": 20.0, "y0": 20.0, "x1": 28.0, "y1": 28.0}]
    boxes = load_boxes(tmp_path / "boxes.json", ["a", "b"], SIZE)
    masks = load_masks(tmp_path / "masks", ["a", "b"], SIZE)
    assert set(boxes) == set(masks) == {"a"} and torch.equal(boxes["a"], masks["a"])
    assert int(masks["a"].sum()) == 8 * 9 + 8 * 8
    again = AnnotationStore(tmp_path, SIZE)
    assert again.records["b"].no_object and again.records["a"].boxes[1] == [20.0, 20.0, 28.0, 28.0]
    again.save("a", [], None, False)  # cleared: no mask, no rows
    assert not (tmp_path / "masks" / "a.png").exists() and json.loads((tmp_path / "boxes.json").read_text()) == []
    with pytest.raises(UserError, match="empty"):
        store.save("a", [[5, 5, 5, 9]], None, False)


def test_routes_serve_state_images_and_refuse_bad_saves(tmp_path: Path) -> None:
    with _server(tmp_path) as server:
        with urllib.request.urlopen(_api(server.url, "api/state"), timeout=10) as response:
            state = json.loads(response.read())
        assert state["size"] == SIZE and [i["id"] for i in state["items"]] == ["img-0", "img-1", "img-2"]
        with urllib.request.urlopen(_api(server.url, "image/1"), timeout=10) as response:
            assert response.headers["Content-Type"] == "image/png" and response.read()[:4] == b"\x89PNG"
        assert _post(_api(server.url, "api/save"), {"id": "nope", "boxes": []})[0] == 400
        code, answer = _post(_api(server.url, "api/save"), {"id": "img-0", "boxes": [[1, 2]]})
        assert code == 400 and "x0, y0, x1, y1" in answer["error"]
        assert _post(_api(server.url, "api/save"), {"id": "img-0", "boxes": [[1, 2, 9, 9]]})[0] == 200
        assert _post(_api(server.url, "api/done"), {})[1] == {"done": True} and server.done.is_set()


def test_requests_without_the_session_token_or_from_elsewhere_change_nothing(tmp_path: Path) -> None:
    save = {"id": "img-0", "boxes": [[1, 2, 9, 9]]}
    with _server(tmp_path) as server:
        token = server.url.partition("token=")[2]
        with _server(tmp_path / "other") as other:
            assert len(token) >= 32 and token not in other.url  # random per session
        with_token = {"X-ModelDoctor-Token": token}
        refused = [
            _request(server.address + "api/save", save),  # no token at all
            _request(server.address + "api/save?token=guess", save),
            _request(server.address + "api/save", save, {"X-ModelDoctor-Token": token[:-1]}),
            _request(_api(server.url, "api/save"), save, {"Origin": "https://evil.example"}),
            _request(server.address + "api/save", save, {**with_token, "Host": "evil.example:80"}),
            _request(server.address + "api/done", {}),
            _request(server.address + "api/state"),
            _request(server.address),  # the page itself
            _request(server.address + "image/0"),
        ]
        assert [code for code, _ in refused] == [403] * len(refused)
        assert not (tmp_path / "ann").exists() or list((tmp_path / "ann").rglob("*")) == []
        assert not server.done.is_set() and server.store.records == {}
        assert _request(server.address + "api/save", save, {**with_token, "Origin": server.address[:-1]})[0] == 200
        assert json.loads((tmp_path / "ann" / "boxes.json").read_text())[0]["id"] == "img-0"


def _chrome():
    webdriver = selenium_webdriver()
    binary = chromium()
    driver_path = shutil.which("chromedriver")
    if driver_path is None:
        skip_or_fail("chromedriver is not installed (Debian: chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1200,900"):
        options.add_argument(flag)
    from selenium.webdriver.chrome.service import Service

    return webdriver.Chrome(service=Service(driver_path), options=options)


def test_browser_tests_fail_instead_of_skipping_where_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")  # no chromium, no chromedriver
    monkeypatch.setenv(REQUIRED, "1")
    with pytest.raises(pytest.fail.Exception, match=REQUIRED):
        chromium()
    monkeypatch.setitem(sys.modules, "selenium.webdriver", None)  # an import of it raises ImportError
    with pytest.raises(pytest.fail.Exception, match="selenium"):
        selenium_webdriver()
    monkeypatch.delenv(REQUIRED)
    with pytest.raises(pytest.skip.Exception):
        chromium()


def _wait(condition, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting in the browser")


def test_a_box_drawn_by_mouse_is_on_disk_and_back_after_reload(tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = _chrome()
    try:
        with _server(tmp_path) as server:
            driver.get(server.url)
            _wait(lambda: driver.execute_script("return document.body.dataset.ready") == "1")
            canvas = driver.find_element(By.ID, "canvas")
            width = canvas.size["width"]  # 512 CSS px for 28 image px; offsets are from the canvas centre
            start, end = (-width / 4, -width / 4), (width / 8, 0)
            ActionChains(driver).move_to_element_with_offset(canvas, *start).click_and_hold() \
                .move_by_offset(end[0] - start[0], end[1] - start[1]).release().perform()
            _wait(lambda: driver.execute_script("return document.body.dataset.saves") == "1")
            expected = [np.floor(SIZE / 4), np.floor(SIZE / 4), np.ceil(SIZE * 5 / 8), np.ceil(SIZE / 2)]
            rows = json.loads((tmp_path / "ann" / "boxes.json").read_text())
            assert [r["id"] for r in rows] == ["img-0"]
            assert [rows[0][k] for k in ("x0", "y0", "x1", "y1")] == pytest.approx(expected, abs=1)
            mask = load_masks(tmp_path / "ann" / "masks", ["img-0"], SIZE)["img-0"]
            assert mask.any() and not mask.all()

            driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)
            _wait(lambda: "image 2 /" in driver.find_element(By.ID, "progress").text)
            driver.find_element(By.TAG_NAME, "body").send_keys("0")  # no object for img-1, then on to img-2
            _wait(lambda: driver.execute_script("return document.body.dataset.saves") == "2")

            driver.refresh()
            _wait(lambda: driver.execute_script("return document.body.dataset.ready") == "1")
            boxes = driver.execute_script("return S.records['img-0'].boxes")
            assert boxes == [[rows[0][k] for k in ("x0", "y0", "x1", "y1")]]
            assert driver.execute_script("return S.records['img-1'].no_object") is True
            assert driver.execute_script("return S.index") == 2  # resumes at the first image without a record
            driver.find_element(By.TAG_NAME, "body").send_keys("z")  # nothing to undo on a fresh image
            _wait(lambda: "nothing to undo" in driver.find_element(By.ID, "status").text)
    finally:
        driver.quit()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_command_serves_the_annotate_list_until_finished(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    diagnosis = tmp_path / "diagnosis"
    diagnosis.mkdir()
    (diagnosis / "annotate.json").write_text(json.dumps(
        {"per_class": {"0": [{"id": "mnist5k-0003", "confidence": 0.2, "label": 0, "predicted": 3}]}}))
    port = _free_port()
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(cli.main(
        ["annotate", str(diagnosis), "--data", "mnist5k", "--port", str(port), "--no-browser", "--json"])))
    thread.start()
    printed: list[str] = []

    def printed_url() -> str | None:
        printed.append(capsys.readouterr().err)
        return next(iter(re.findall(r"http://127\.0\.0\.1:\d+/\?token=[\w-]+", "".join(printed))), None)

    url = _wait(printed_url, timeout=60)
    assert url.startswith(f"http://127.0.0.1:{port}/?token=")
    assert _request(_api(url, "api/state"))[0] == 200
    assert _post(_api(url, "api/save"), {"id": "mnist5k-0003", "boxes": [[4, 4, 20, 24]]})[0] == 200
    _post(_api(url, "api/done"), {})
    thread.join(30)
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert codes == [0] and result["annotated"] == 1 and result["images"] == 1
    assert Path(result["masks"], "mnist5k-0003.png").is_file() and result["out"] == str(diagnosis / "annotation")

"""The search page: its JSON API over real HTTP, and the page itself in headless Chromium.

The browser test drives the system's Chromium through its chromedriver (Debian packages
``chromium`` and ``chromium-driver``) with selenium; nothing is downloaded at run time. Without
them it is skipped, saying which is missing.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from mlflow_server import free_port
from PIL import Image
from test_search import SearchSetup, build_setup

from anet.search.served import png_bytes
from anet.search.web import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> SearchSetup:
    return build_setup(tmp_path_factory.mktemp("page"))


@pytest.fixture(scope="module")
def page_url(setup: SearchSetup) -> Iterator[str]:
    with running(create_app(setup.index, setup.predictor)) as url:
        yield url


@contextlib.contextmanager
def running(app: object) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread on a free loopback port; stop it afterwards."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.read()


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_the_api_searches_by_upload_and_by_gallery_item(setup, page_url):
    status, page = _get(page_url + "/")
    assert status == 200 and b'id="query-file"' in page and b'id="results"' in page
    info = json.loads(_get(page_url + "/api/info")[1])
    assert info["count"] == len(setup.index) and info["vocab"] == setup.prepared.manifest.vocab
    assert info["cameras"] == ["1", "2", "3"] and "anet-synthetic v1" in info["model"]
    status, thumb = _get(page_url + "/api/thumb/0")
    assert status == 200 and thumb.startswith(b"\x89PNG")
    image = base64.b64encode(png_bytes(setup.prepared.images[0])).decode()
    status, upload = _post(page_url + "/api/search", {"image": image, "k": 5})
    assert status == 200 and [h["rank"] for h in upload["hits"]] == [1, 2, 3, 4, 5]
    assert set(upload["query"]["attributes"]) == {"color", "type"}
    first = upload["hits"][0]
    status, again = _post(page_url + "/api/search", {"item": first["item"], "k": 3, "cameras": ["2"],
                                                     "filters": {"color": first["attributes"]["color"]["class"]}})
    assert status == 200 and all(h["camera"] == "2" for h in again["hits"])
    assert first["item"] not in [h["item"] for h in again["hits"]]  # a gallery item as query: the others
    assert all(h["attributes"]["color"]["class"] == first["attributes"]["color"]["class"] for h in again["hits"])


def test_api_mistakes_answer_400_with_one_line(page_url):
    status, body = _post(page_url + "/api/search", {"k": 5})
    assert status == 400 and "exactly one" in body["error"]
    status, body = _post(page_url + "/api/search", {"item": 0, "filters": {"color": "plaid"}})
    assert status == 400 and "not a class of color" in body["error"]
    status, body = _post(page_url + "/api/search", {"image": base64.b64encode(b"nope").decode()})
    assert status == 400 and "not a usable image" in body["error"]
    status, body = _post(page_url + "/api/search", {"item": 0, "k": 0})
    assert status == 400 and body["error"].startswith("k: ") and "takes JSON" in body["error"]
    jpeg = io.BytesIO()  # an upload sent as a form or as the raw file, not JSON: one line, never a 500
    Image.new("RGB", (8, 8)).save(jpeg, format="JPEG")
    form = (b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"q.jpg\"\r\n\r\n"
            + jpeg.getvalue() + b"\r\n--b--\r\n")
    for data, kind, expect in ((form, "multipart/form-data; boundary=b", "takes JSON"),
                               (jpeg.getvalue(), "application/json", "error parsing the body")):
        request = urllib.request.Request(page_url + "/api/search", data, {"Content-Type": kind})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=60)
        assert err.value.code == 400 and expect in json.loads(err.value.read())["error"]


@pytest.mark.slow
def test_the_page_in_headless_chromium_uploads_a_query_and_lists_hits(setup, page_url, tmp_path):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs the system Chromium and its driver: apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install selenium)")
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        wait = WebDriverWait(driver, 60, ignored_exceptions=(StaleElementReferenceException,))  # lists get replaced
        driver.get(page_url + "/")
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery img")) > 0)
        query = tmp_path / "query.png"
        query.write_bytes(png_bytes(setup.prepared.images[0]))
        driver.find_element(By.ID, "query-file").send_keys(str(query))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results li.hit")) == 20)
        hits = driver.find_elements(By.CSS_SELECTOR, "#results li.hit")
        scores = [float(h.get_attribute("data-score")) for h in hits]
        assert scores == sorted(scores, reverse=True) and "#1" in hits[0].text
        assert "query" in driver.find_element(By.ID, "query-attrs").text
        clicked = hits[1].get_attribute("data-item")
        hits[1].click()  # the hit becomes the next query
        wait.until(ec.text_to_be_present_in_element((By.ID, "query-attrs"), f"item {clicked}"))
        color = setup.index.table["color"].iloc[int(clicked)]
        Select(driver.find_element(By.ID, "filter-color")).select_by_value(color)
        wait.until(lambda d: {h.get_attribute("data-color") for h in d.find_elements(By.CSS_SELECTOR, "#results li.hit")}
                   == {color})
    finally:
        driver.quit()



def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (80, 80, 80)).save(buffer, format="PNG")
    return buffer.getvalue()


def _raw_post(url: str, body: bytes | Iterator[bytes], chunked: bool = False) -> tuple[int, dict, dict]:
    """POST ``body`` to /api/search with http.client (chunked: no Content-Length, sent as it comes)."""
    import http.client
    from urllib.parse import urlparse

    where = urlparse(url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
    try:
        conn.request("POST", "/api/search", body, {"Content-Type": "application/json"}, encode_chunked=chunked)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read())
    finally:
        conn.close()


def test_uploads_over_the_pixel_or_body_cap_answer_413_with_one_line(setup):
    from anet.search.limits import Limits

    limits = Limits(max_body_bytes=256 << 10, max_pixels=512 * 512)
    with running(create_app(setup.index, setup.predictor, limits)) as url:
        status, body = _post(url + "/api/search", {"image": base64.b64encode(_png(600, 500)).decode()})
        assert status == 413 and "600 x 500 px" in body["error"] and "0.3 MP" in body["error"], body
        status, body = _post(url + "/api/search", {"image": base64.b64encode(_png(512, 512)).decode(), "k": 3})
        assert status == 200 and len(body["hits"]) == 3  # at the cap: searched
        status, _h, body = _raw_post(url, b'{"image": "' + b"A" * (300 << 10) + b'"}')
        assert status == 413 and body["error"].startswith("body: more than"), body
        chunks = iter([b'{"image": "'] + [b"A" * (64 << 10)] * 5 + [b'"}'])  # no Content-Length to go by
        status, _h, body = _raw_post(url, chunks, chunked=True)
        assert status == 413 and body["error"].startswith("body: more than"), body
        assert _get(url + "/api/info")[0] == 200


class _Held:
    """The predictor, holding every embedding until ``release`` is set (a search kept in flight)."""

    def __init__(self, inner: object):
        self.inner, self.entered, self.release = inner, threading.Event(), threading.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def embed_arrays(self, images: object) -> object:
        self.entered.set()
        self.release.wait(30)
        return self.inner.embed_arrays(images)


def test_searches_beyond_the_bound_answer_503_with_retry_after(setup):
    from anet.search.limits import Limits

    held = _Held(setup.predictor)
    upload = {"image": base64.b64encode(_png(64, 64)).decode(), "k": 3}
    with running(create_app(setup.index, held, Limits(max_searches=1, retry_after_s=2))) as url:
        first: list[tuple[int, dict]] = []
        thread = threading.Thread(target=lambda: first.append(_post(url + "/api/search", upload)))
        thread.start()
        try:
            assert held.entered.wait(30)
            status, headers, body = _raw_post(url, json.dumps(upload).encode())
            assert status == 503 and headers.get("retry-after") == "2" and "retry in 2 s" in body["error"], body
            assert _get(url + "/api/info")[0] == 200  # other routes are not held back
        finally:
            held.release.set()
            thread.join(30)
        assert first[0][0] == 200
        assert _post(url + "/api/search", upload)[0] == 200  # the slot is free again

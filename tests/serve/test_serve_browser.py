"""The web page in headless Chromium (Debian `chromium`, driven by Playwright): load, submit a query, see the grid."""

from __future__ import annotations

import os
import shutil

import pytest
from PIL import Image

from attnhash.index import create_index
from attnhash.serve import BackgroundServer, create_app
from index_fixtures import FakeEncoder, fmnist_images

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("ATTNHASH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        pytest.skip("Debian chromium not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def server(tmp_path):
    data = fmnist_images(60)
    if data is None:
        pytest.skip("Fashion-MNIST (Debian dataset-fashion-mnist) not installed")
    pics, labels = data
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    enc = FakeEncoder(64)
    metas = []
    for i in range(50):
        path = tmp_path / f"{i}.png"
        Image.fromarray(pics[i]).save(path)
        metas.append({"path": str(path), "labels": [int(labels[i])]})
    index = create_index("faiss", 64, fingerprint=enc.fingerprint, info={"class_names": names})
    index.add(enc.encode_images(list(pics[:50])), metadata=metas)
    index.save(str(tmp_path / "w.idx"))
    query = tmp_path / "query.png"
    Image.fromarray(pics[7]).save(query)  # an indexed image: found first, at distance 0
    with BackgroundServer(create_app(str(tmp_path / "w.idx"), encoder=enc)) as srv:
        yield srv, str(query), names[labels[7]]


def test_page_search_shows_result_grid(browser, server):
    srv, query, label = server
    page = browser.new_page()
    failed: list[str] = []
    page.on("requestfailed", lambda req: failed.append(req.url))
    page.on("pageerror", lambda err: failed.append(str(err)))
    page.goto(srv.url + "/")
    page.wait_for_function("document.getElementById('stats').textContent.includes('50 items')")
    assert "64-bit codes" in page.text_content("#stats")

    page.select_option("#k", "5")
    page.set_input_files("#file-input", query)
    page.wait_for_selector("#results .result")
    cards = page.locator("#results .result")
    assert cards.count() == 5
    distances = [int(cards.nth(i).get_attribute("data-distance")) for i in range(5)]
    assert distances == sorted(distances)
    first = cards.nth(0)
    assert first.get_attribute("data-id") == "7" and first.locator(".distance").text_content() == "d = 0"
    assert first.locator(".labels").text_content() == label
    assert "5 results" in page.text_content("#status")
    # every thumbnail was served and decoded by the browser
    page.wait_for_function("[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)")
    assert page.is_visible("#query-preview")

    # clicking a result searches with that item; the k selector re-runs the query
    page.select_option("#k", "10")
    cards.nth(2).click()
    page.wait_for_function("document.getElementById('status').textContent.includes('for item #')")
    assert page.locator("#results .result").count() == 10

    # a file that is not an image shows the server's error instead of results
    bad = os.path.join(os.path.dirname(query), "notes.txt")
    with open(bad, "w") as f:
        f.write("not an image")
    page.set_input_files("#file-input", bad)
    page.wait_for_selector("#status.error")
    assert "415" in page.text_content("#status") and page.locator("#results .result").count() == 0
    assert not failed, failed
    page.close()

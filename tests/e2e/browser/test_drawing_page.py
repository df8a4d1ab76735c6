"""The drawing page in headless Chromium: draw digits with real pointer input, read the answer.

Strokes go through WebDriver's pointer actions (real pointerdown/move/up events, a mouse and
a touch pointer), so the page's own event handling, throttling, preprocessing and V2 calls
all run. Any SEVERE browser console message fails the test; a screenshot is saved to
tests/artifacts/drawing_page.png (its path is printed).
"""

from __future__ import annotations

import base64
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.e2e.browser.conftest import PageServer

# chromium_installed first: it fails or skips before page_server starts a server.
pytestmark = [pytest.mark.usefixtures("chromium_installed"), pytest.mark.timeout(240)]

ARTIFACTS_DIR = Path(__file__).resolve().parents[2] / "artifacts"
SCREENSHOT = ARTIFACTS_DIR / "drawing_page.png"
WAIT_S = 30.0
STROKE_STEP_MS = 15
STEPS_PER_SEGMENT = 8
FEATURE_CHANNELS = 32
MNIST_PIXELS = 28 * 28
# The page's preprocessing mirrors the server's (core/images.py) in JavaScript: the same
# steps, float arithmetic instead of Pillow's fixed point, so a grey level may differ by one
# or two here and there.
PREPROCESSING_MAX_DIFF = 8
PREPROCESSING_MEAN_DIFF = 0.5

# Digits as strokes, in fractions of the drawing pad (x right, y down).
STROKES: dict[str, list[list[tuple[float, float]]]] = {
    "1": [[(0.52, 0.15), (0.50, 0.50), (0.48, 0.86)]],
    "7": [[(0.25, 0.20), (0.75, 0.20), (0.60, 0.50), (0.45, 0.86)]],
    "0": [
        [
            (0.50, 0.15),
            (0.30, 0.25),
            (0.25, 0.50),
            (0.30, 0.75),
            (0.50, 0.86),
            (0.70, 0.75),
            (0.75, 0.50),
            (0.70, 0.25),
            (0.50, 0.15),
        ]
    ],
}

PAGE_IDLE = """
const page = window.mnistPage;
if (!page) return null;
const s = page.state;
if (s.inFlight || s.pending || s.timer !== null || s.lastAnswer === null) return null;
const prediction = document.getElementById('prediction');
return {
  prediction: prediction.textContent,
  index: prediction.dataset.index,
  inferences: s.inferences,
  scores: s.lastAnswer.map((c) => [c.index, c.label, c.score]),
  pixels: Array.from(s.lastPixels),
  status: document.getElementById('status').textContent,
};
"""

FEATURES_RENDERED = """
const grid = document.getElementById('feature-maps');
const canvases = Array.from(grid.querySelectorAll('canvas'));
return {
  rendered: grid.dataset.rendered === 'true',
  count: canvases.length,
  maxima: canvases.map((c) => Number(c.dataset.max || 0)),
  lit: canvases.map((c) => {
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let sum = 0; for (let i = 0; i < d.length; i += 4) sum += d[i] + d[i + 1] + d[i + 2];
    return sum;
  }),
};
"""

PREVIEW_PIXELS = """
const c = document.getElementById('preview');
const d = c.getContext('2d').getImageData(0, 0, 28, 28).data;
const out = []; for (let i = 0; i < d.length; i += 4) out.push(d[i]);
return out;
"""


def _wait(driver: Any, script: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(
        lambda d: d.execute_script(script)
    )


def _draw(driver: Any, strokes: list[list[tuple[float, float]]], pointer: str) -> None:
    """Draw `strokes` on the pad with WebDriver pointer actions (pointer: mouse or touch)."""
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput

    pad = driver.find_element("id", "pad")
    rect = driver.execute_script(
        "const r = arguments[0].getBoundingClientRect();"
        "return {x: r.left, y: r.top, w: r.width, h: r.height};",
        pad,
    )
    kind = interaction.POINTER_TOUCH if pointer == "touch" else interaction.POINTER_MOUSE
    # Selenium's action classes are partly untyped: Any keeps mypy --strict quiet here.
    pointer_input: Any = PointerInput
    builder = ActionBuilder(driver, mouse=pointer_input(kind, pointer), duration=STROKE_STEP_MS)
    actions: Any = builder.pointer_action

    def at(point: tuple[float, float]) -> tuple[int, int]:
        return round(rect["x"] + point[0] * rect["w"]), round(rect["y"] + point[1] * rect["h"])

    for stroke in strokes:
        actions.move_to_location(*at(stroke[0]))
        actions.pointer_down()
        for start, end in itertools.pairwise(stroke):
            for step in range(1, STEPS_PER_SEGMENT + 1):
                f = step / STEPS_PER_SEGMENT
                x, y = start[0] + f * (end[0] - start[0]), start[1] + f * (end[1] - start[1])
                actions.move_to_location(*at((x, y)))
        actions.pointer_up()
    builder.perform()


def _clear(driver: Any) -> None:
    driver.find_element("id", "clear-button").click()


def _severe_console_messages(driver: Any) -> list[dict[str, Any]]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def _server_preprocessing(driver: Any) -> np.ndarray:
    """What the server's core/images.py makes of the pad as a PNG (the Classify path)."""
    from mnist_serving_server.core.images import decode_image

    url = driver.execute_script("return document.getElementById('pad').toDataURL('image/png');")
    png = base64.b64decode(url.split(",", 1)[1])
    return decode_image(png).astype(np.int16).ravel()


@pytest.fixture
def page(browser: Any, page_server: PageServer) -> Any:
    browser.get(page_server.base_url + "/")
    _wait(
        browser,
        "return document.getElementById('status').textContent.startsWith('Ready') && "
        "document.getElementById('model-select').value;",
    )
    return browser


def test_page_lists_ready_models_and_is_self_contained(page: Any, page_server: PageServer) -> None:
    options = page.execute_script(
        "return Array.from(document.querySelectorAll('#model-select option'))"
        ".map((o) => [o.value, o.textContent, o.disabled]);"
    )
    assert options == [["mnist/1", "mnist · version 1", False]]  # the companion is not offered
    assert page.find_element("id", "model-select").get_attribute("value") == "mnist/1"
    # No external resource: every script, stylesheet and image comes from the server itself.
    resources = page.execute_script(
        "return performance.getEntriesByType('resource').map((r) => r.name);"
    )
    assert resources
    assert all(url.startswith(page_server.base_url + "/") for url in resources), resources
    # Accessible names for the controls and the pictures.
    for element_id in ("pad", "preview", "feature-maps", "probabilities"):
        assert page.find_element("id", element_id).get_attribute("aria-label")
    assert page.find_element("css selector", "label[for='model-select']").text == "Model"
    assert _severe_console_messages(page) == []


@pytest.mark.parametrize(("digit", "pointer"), [("1", "mouse"), ("7", "touch"), ("0", "mouse")])
def test_drawn_digit_is_classified(
    page: Any, page_server: PageServer, digit: str, pointer: str
) -> None:
    before = page_server.http_inferences()
    _draw(page, STROKES[digit], pointer)
    answer = _wait(page, PAGE_IDLE)

    # The prediction and the class name come from the model (classification extension).
    assert answer["prediction"] == digit, answer
    scores = {index: score for index, _, score in answer["scores"]}
    assert sorted(scores) == list(range(10))
    assert scores[int(digit)] == max(scores.values())
    assert sum(scores.values()) == pytest.approx(1.0, abs=1e-4)
    bars = page.execute_script(
        "return Array.from(document.querySelectorAll('#probabilities li'))"
        ".map((li) => [li.querySelector('.name').textContent,"
        " li.querySelector('.fill').style.width]);"
    )
    assert [name for name, _ in bars] == [str(d) for d in range(10)]
    assert float(bars[int(digit)][1].rstrip("%")) > 50

    # The 28x28 preview is the image that was sent; it holds a digit.
    pixels = np.asarray(answer["pixels"], dtype=np.int16)
    assert pixels.size == MNIST_PIXELS
    assert pixels.max() == 255
    assert np.array_equal(np.asarray(page.execute_script(PREVIEW_PIXELS)), pixels)

    # It is what the server itself makes of the same drawing (core/images.py).
    server = _server_preprocessing(page)
    difference = np.abs(server - pixels)
    assert int(difference.max()) <= PREPROCESSING_MAX_DIFF, difference.reshape(28, 28)
    assert float(difference.mean()) <= PREPROCESSING_MEAN_DIFF

    # What the network sees: 32 feature maps of the first convolution, rendered.
    features = _wait(page, FEATURES_RENDERED)
    assert features["rendered"]
    assert features["count"] == FEATURE_CHANNELS
    assert max(features["maxima"]) > 0
    assert sum(1 for lit in features["lit"] if lit > 0) == FEATURE_CHANNELS

    # The strokes reached the server as HTTP inferences, counted on /metrics.
    after = page_server.http_inferences()
    # Each answer is one classification and one features request.
    assert after - before >= 2 * answer["inferences"], (before, after)

    assert _severe_console_messages(page) == []


def test_clear_resets_and_screenshot(page: Any, page_server: PageServer) -> None:
    _draw(page, STROKES["7"], "mouse")
    first = _wait(page, PAGE_IDLE)
    assert first["prediction"] == "7"
    _clear(page)
    assert page.find_element("id", "prediction").text == "–"
    assert page.execute_script("return window.mnistPage.state.hasInk;") is False
    _draw(page, STROKES["1"], "mouse")
    second = _wait(page, PAGE_IDLE)
    assert second["prediction"] == "1"
    _wait(page, FEATURES_RENDERED)
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    assert page.save_screenshot(str(SCREENSHOT))
    print(f"\nscreenshot of the drawing page (real server): {SCREENSHOT}")
    assert SCREENSHOT.stat().st_size > 10_000
    assert _severe_console_messages(page) == []


def test_a_failed_request_is_shown_not_thrown(page: Any) -> None:
    """A server error reaches the status line (the {"error"} text), not the console."""
    page.execute_script("window.mnistPage.state.model.name = 'no_such_model';")
    _draw(page, STROKES["1"], "mouse")
    status = _wait(
        page,
        "const s = document.getElementById('status');"
        "return s.dataset.kind === 'error' && !window.mnistPage.state.inFlight"
        " ? s.textContent : null;",
    )
    assert "404" in status
    assert "no_such_model" in status
    # Chromium itself logs each failed HTTP status as a network message; nothing else.
    severe = _severe_console_messages(page)
    assert severe
    assert all(entry["source"] == "network" and "404" in entry["message"] for entry in severe)

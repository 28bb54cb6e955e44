"""The evaluation report in a real browser (Debian's chromium, headless, through
selenium): the page `autosafe report` wrote renders with its title, tables and every
embedded plot decoded, hostile model text stays text, and a screenshot is not blank.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image
from selenium.webdriver.common.by import By
from typer.testing import CliRunner

from autosafe_core.store import StorageConfig
from flows.cli import app
from tests.support.browser import chrome, screenshot_is_blank  # noqa: F401 - fixture
from tests.support.report_rows import RUN_ID, agent_rows, commit_eval, rjudge_rows

runner = CliRunner()
TITLE = f"AutoSafe evaluation: run {RUN_ID}"


def write_report(tmp_path: Path) -> Path:
    storage = StorageConfig(uri=str(tmp_path / "store"))
    commit_eval(storage, [*agent_rows(), *rjudge_rows()])
    result = runner.invoke(app, ["report", RUN_ID, "--storage", storage.uri, "--resamples", "300"])
    assert result.exit_code == 0, result.stderr
    return Path(result.stdout.splitlines()[-1])


def test_report_renders_in_chromium(chrome, tmp_path):
    chrome.get(write_report(tmp_path).as_uri())
    assert chrome.title == TITLE
    assert chrome.find_element(By.TAG_NAME, "h1").text == TITLE
    overall = chrome.find_element(By.CSS_SELECTOR, "#benchmark-synthetic table.overall").text
    assert "base 12 11 1 45.5%" in overall and "tuned 12 11 1 81.8%" in overall
    assert chrome.find_element(By.ID, "judge-errors").text == "2"
    agreement = chrome.find_element(By.CSS_SELECTOR, "#benchmark-rjudge table.agreement").text
    assert "87.5%" in agreement
    shown = chrome.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.alt])"
    )
    assert len(shown) == 4
    assert all(complete and width > 0 and height > 0 for complete, width, height, _ in shown), shown


def test_hostile_model_text_is_shown_not_run(chrome, tmp_path):
    chrome.get(write_report(tmp_path).as_uri())
    assert chrome.title == TITLE  # the rows' scripts would have set it to 'pwned'
    assert chrome.find_elements(By.CSS_SELECTOR, 'img[src="x"]') == []
    assert "onerror=\"document.title='pwned'\"" in chrome.find_element(By.TAG_NAME, "body").text


def test_report_screenshot_is_not_blank(chrome, tmp_path):
    chrome.get(write_report(tmp_path).as_uri())
    png = chrome.get_screenshot_as_png()
    assert Image.open(io.BytesIO(png)).size[0] > 0
    assert not screenshot_is_blank(png)


def test_a_blank_page_screenshot_is_blank(chrome):
    chrome.get("data:text/html,<html><body style='background:%23ffffff'></body></html>")
    assert screenshot_is_blank(chrome.get_screenshot_as_png())


def test_blank_means_one_colour_everywhere():
    def png(image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    white = Image.new("RGB", (40, 30), "white")
    assert screenshot_is_blank(png(white))
    white.putpixel((39, 29), (250, 250, 250))
    assert not screenshot_is_blank(png(white))

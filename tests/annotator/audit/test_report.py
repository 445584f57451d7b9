"""The audit report in headless Chromium (Debian's, driven by Playwright): it loads without
console errors, lists the rows, plays the clips, and never runs model text as markup."""

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from annotator.audit import AuditConfig, audit
from tests.builders.synthetic_runs import PLANTED, write_synthetic_run
from annotator.core.files import write_parquet
from annotator.core.store import Store

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


@pytest.fixture(scope="module")
def report(tmp_path_factory, clips):
    if not Path(CHROMIUM).exists():
        pytest.fail("the report test needs Debian's chromium: `make /usr/bin/chromium` "
                    "(apt-get install chromium)")
    root = tmp_path_factory.mktemp("report")
    media = [str(clips["real_astronaut"]), str(clips["audio_only"])]
    out = write_synthetic_run(root / "run", 20, media=media)
    # the model wrote markup into a description: it must show as text
    part = Store(out).files()[0]
    table = pq.read_table(part).to_pylist()
    table[1]["description"]["summary"] = HOSTILE
    table[2]["audio_path"] = str(clips["tone_220"])  # a dataset with separate audio files
    import pyarrow as pa

    from annotator.core.rows import ROW_SCHEMA

    write_parquet(pa.Table.from_pylist(table, schema=ROW_SCHEMA), part)
    metrics = audit(AuditConfig(out=out))
    return Path(metrics["report"]), metrics


@pytest.fixture(scope="module")
def page(report):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        problems = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda err: problems.append(str(err)))
        page.goto(report[0].as_uri())
        page.wait_for_selector("#rows tbody tr")
        page.problems = problems
        yield page
        browser.close()


def test_page_loads_without_console_errors(page):
    assert page.problems == []
    assert "vaemo audit" in page.title()


def test_table_lists_every_row_and_filters(page, report):
    _, metrics = report
    assert metrics["rows"] == 20 + len(PLANTED)
    assert page.locator("#count").inner_text() == f"{metrics['rows']} rows"
    assert page.locator("#rows tbody tr").count() == metrics["rows"]
    page.select_option("#flag-filter", "face_without_face")
    assert page.locator("#rows tbody tr").count() == 1
    assert page.locator("#rows tbody tr").first.get_attribute("data-clip") == \
        "zz_face_without_face"
    page.select_option("#flag-filter", "")


def test_clips_are_playable_from_the_report(page, report):
    path, _ = report
    video = page.locator("video").first
    src = video.get_attribute("src")
    assert src and (path.parent / src).resolve().is_file()
    assert page.locator("audio").count() > 0  # the audio-only clip gets an audio player
    separate = page.locator("audio[src$='tone_220.mp4']")
    assert separate.count() == 1  # a separate audio file plays beside its video
    assert (path.parent / separate.first.get_attribute("src")).resolve().is_file()


def test_model_text_never_runs_as_markup(page):
    assert page.evaluate("window.__pwned") is None
    assert page.get_by_text(HOSTILE).count() == 1  # shown literally, as text
    assert page.locator("#rows img").count() == 0


def test_report_is_self_contained(report):
    html = report[0].read_text()
    assert "http://" not in html and "https://" not in html
    data = html.split('<script id="rows-data" type="application/json">')[1].split("</script>")[0]
    assert "<script>" not in data and json.loads(data)


def test_media_outside_the_manifest_folder_are_never_linked(tmp_path):
    from annotator.audit.report import _relative

    root = tmp_path / "corpus"
    (root / "clips").mkdir(parents=True)
    (root / "clips" / "a.mp4").write_bytes(b"x")
    (root / "clips" / "escape.mp4").symlink_to("/etc/passwd")
    report = tmp_path / "run" / "audit"
    assert _relative(str(root / "clips" / "a.mp4"), report, root) == "../../corpus/clips/a.mp4"
    assert _relative("/etc/passwd", report, root) is None
    assert _relative(str(root / "clips" / ".." / ".." / "x.mp4"), report, root) is None
    assert _relative(str(root / "clips" / "escape.mp4"), report, root) is None
    assert _relative(str(root / "clips" / "a.mp4"), report, None) is None

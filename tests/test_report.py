"""report.html: one self-contained page a user opens, checked as a browser would read it."""
from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess

import pytest
from PIL import Image

from harness.config.paths import RunPaths
from harness.submit.page import WORST

IMG = re.compile(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)">')


def embedded_images(page: str) -> dict:
    """alt → decoded PIL image, for every image of the page (each must be an embedded PNG)."""
    assert page.count("<img") == len(IMG.findall(page)), "an image is not an embedded PNG"
    images = {}
    for alt, data in IMG.findall(page):
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        image.load()  # decodes it: a truncated PNG raises here
        images.setdefault(alt, image)
    return images


def assert_self_contained(page: str) -> None:
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "an external request"
    assert "<script" not in page and "<link" not in page


@pytest.fixture
def reported(class_folder_competition, cli, tmp_path):
    comp = class_folder_competition(search={"steps": [6], "lr": [1e-3, 3e-2]})
    run_dir = tmp_path / "run"
    cli("search", comp, "--run-dir", run_dir, "--trials", "3")
    cli("submit", comp, "--run-dir", run_dir)
    return comp, run_dir


def test_submit_writes_one_self_contained_page_with_what_a_competitor_looks_at(reported):
    _, run_dir = reported
    page = RunPaths(run_dir).report_html.read_text()
    assert_self_contained(page)
    images = embedded_images(page)
    assert {"Optimisation history", "learning curves", "confusion matrix", "ROC and precision-recall"} <= set(images)
    # the worst OOF mistakes: a heading that counts them, then their thumbnails, or "none" under it
    mistakes = re.search(r"<h3>(The (\d+) most confident OOF mistakes \(of (\d+)\))</h3>", page)
    assert mistakes, "no section of the worst OOF mistakes"
    heading, shown, wrong = mistakes.group(1), int(mistakes.group(2)), int(mistakes.group(3))
    assert shown == min(wrong, WORST)
    if wrong:
        assert heading in images
    else:
        assert page[mistakes.end():].startswith("<p>none</p>")
    assert all(image.width > 100 and image.height > 100 for image in images.values())
    assert len(re.findall(r"<p>cut-off [0-9.]+ \(", page)) == 1  # said once, under its head
    assert "true cat" in page and "predicted dog" in page  # class names, not indices
    assert not (run_dir / "roc.png").exists()


def test_report_command_writes_the_page_and_leaves_the_submission_alone(reported, cli):
    comp, run_dir = reported
    RunPaths(run_dir).report_html.unlink()
    submission = (run_dir / "submission.csv").read_bytes()
    assert "wrote" in cli("report", comp, "--run-dir", run_dir).output
    assert RunPaths(run_dir).report_html.is_file() and (run_dir / "submission.csv").read_bytes() == submission


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_the_page_loads_in_a_headless_browser_with_every_image_decoded_and_no_request_out(reported, tmp_path):
    _, run_dir = reported
    page = RunPaths(run_dir).report_html.read_text()
    # a copy that writes into its title how many images loaded and how many did not decode
    probe = page.replace("</body>", "<script>addEventListener('load',()=>{const i=[...document.images];"
                         "document.title='images '+i.length+' broken '+i.filter(x=>!x.complete||!x.naturalWidth)"
                         ".length})</script></body>")
    (tmp_path / "probe.html").write_text(probe)
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                          "--host-resolver-rules=MAP * ~NOTFOUND",  # nothing outside can be fetched
                          "--virtual-time-budget=5000", "--dump-dom", f"file://{tmp_path / 'probe.html'}"],
                         capture_output=True, text=True, timeout=120).stdout
    title = re.search(r"<title>(.*?)</title>", dom).group(1)
    assert title == f"images {page.count('<img')} broken 0", title

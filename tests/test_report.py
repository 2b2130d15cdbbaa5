"""report.html: one self-contained page a user opens, checked as a browser would read it."""
from __future__ import annotations

import base64
import html
import io
import re
import shutil
import subprocess
from datetime import datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import optuna
import pytest
from PIL import Image
from sklearn.metrics import classification_report

from conftest import load_study
from harness import open_run
from harness.config.paths import RunPaths
from harness.submit.page import WORST
from harness.submit.submission import run_ensemble
from harness.submit.timeline import timeline
from harness.submit.trials import FEW_TRIALS, importance_parts

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


class Tables(HTMLParser):
    """Each <table> of a page by its class: its rows, each a list of cell texts (the header row first)."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.found, self.rows, self.name = {}, None, None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.name, self.rows = dict(attrs).get("class", ""), []
        elif tag == "tr" and self.rows is not None:
            self.rows.append([])
        elif tag in ("td", "th") and self.rows is not None:
            self.rows[-1].append("")

    def handle_data(self, data):
        if self.rows and self.rows[-1]:
            self.rows[-1][-1] += data.strip()

    def handle_endtag(self, tag):
        if tag == "table":
            self.found[self.name], self.rows = self.rows, None


def table(page: str, name: str) -> dict:
    """The page's table of class `name` as {row name: {column: cell text}}."""
    (rows,) = [rows for cls, rows in Tables(page).found.items() if name in cls.split()]
    header = rows[0][1:]
    return {row[0]: dict(zip(header, row[1:])) for row in rows[1:] if row[0]}


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
    comp, run_dir = reported
    page = RunPaths(run_dir).report_html.read_text()
    assert_self_contained(page)
    images = embedded_images(page)
    assert {"Optimisation history", "learning curves", "confusion matrix", "ROC and precision-recall"} <= set(images)
    # the worst OOF mistakes: a heading that counts them, then their thumbnails, or "none" under it
    mistakes = re.search(r"<h3>The (\d+) most confident OOF mistakes \(of (\d+)\)</h3>", page)
    assert mistakes, "no section of the worst OOF mistakes"
    shown, wrong = int(mistakes.group(1)), int(mistakes.group(2))
    assert shown == min(wrong, WORST)
    # each a thumbnail with a caption that ends its name; the whole path on hover (a title)
    gallery = re.findall(r'<figure title="([^"]+)"><img alt="mistake: [^"]*" src="[^"]+"><figcaption>([^<]*)<', page)
    assert len(gallery) == shown
    for path, caption in gallery:
        path = Path(html.unescape(path))
        assert path.is_absolute() and path.is_file() and path.name in html.unescape(caption)
    if not wrong:
        assert page[mistakes.end():].startswith("<p>none</p>")
    assert all(image.width > 100 and image.height > 100 for image in images.values())
    assert len(re.findall(r"<p>cut-off [0-9.]+ \(", page)) == 1  # said once, under its head
    assert "true cat" in page and "predicted dog" in page  # class names, not indices
    assert not (run_dir / "roc.png").exists()
    assert_per_class_table_is_scikit_learns_and_the_row_normalised_matrix_sums_to_one(comp, run_dir, page)
    assert_search_section_warns_of_few_trials_and_draws_every_trial_over_time(run_dir, page)


def assert_per_class_table_is_scikit_learns_and_the_row_normalised_matrix_sums_to_one(comp, run_dir, page):
    """The figures of the head's section, against scikit-learn's on the ensemble's OOF labels."""
    data, _, _, ens = run_ensemble(open_run(comp, run_dir=str(run_dir)))
    classes = data.task.heads[0].classes
    truth, predicted = data.y[:, 0], data.task.labels(ens.oof, ens.thresholds)[:, 0]
    expected = classification_report(truth, predicted, labels=range(len(classes)), target_names=classes,
                                     output_dict=True, zero_division=0)
    assert "<h2>animal</h2>" in page  # named after the target column, not a generic "label"
    per_class = table(page, "per-class")
    assert set(per_class) == {*classes, "macro avg", "weighted avg"}
    for row, cells in per_class.items():
        for column, key in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            assert float(cells[column]) == pytest.approx(expected[row][key], abs=5e-4), (row, column)
        assert int(cells["support"]) == expected[row]["support"]
    counts, shares = table(page, "counts"), table(page, "row-normalised")
    for c in classes:
        assert sum(map(int, counts[f"true {c}"].values())) == expected[c]["support"]
        assert sum(map(float, shares[f"true {c}"].values())) == pytest.approx(1, abs=1e-3 * len(classes))
        assert float(shares[f"true {c}"][f"predicted {c}"]) == pytest.approx(expected[c]["recall"], abs=5e-4)


def assert_search_section_warns_of_few_trials_and_draws_every_trial_over_time(run_dir, page):
    images = embedded_images(page)
    assert {"Parameter importances", "Parameters against the CV (slices)", "learning curves of the top trials"} \
        <= set(images)
    assert re.search(r'alt="Parameter importances" src="[^"]+"><p class="warning">Only 3 finished trials', page)
    assert "<h2>Learning curves of the top 3 trials</h2>" in page
    (svg,) = re.findall(r'<h2>Trials over time</h2><svg class="timeline".*?</svg>', page)
    bars = re.findall(r'<rect class="trial (\w+)" data-trial="(\d+)"', svg)
    assert sorted(int(n) for _, n in bars) == [t.number for t in load_study(run_dir).trials]
    assert {state for state, _ in bars} == {"complete"}


def finished_trial(number: int, state, worker: str, start: float, seconds: float) -> optuna.trial.FrozenTrial:
    """A trial as a search records it: its worker's host and pid, its start and end (`number` orders the
    CVs: the last complete one is the best)."""
    trial = optuna.trial.create_trial(
        state=state, value=0.5 + number / 100 if state == optuna.trial.TrialState.COMPLETE else None,
        params={"lr": 1e-3}, distributions={"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)},
        user_attrs={"host": worker, "pid": 7}, intermediate_values={0: 0.1})
    origin = datetime(2026, 1, 1, 12)
    trial.datetime_start = origin + timedelta(seconds=start)
    trial.datetime_complete = origin + timedelta(seconds=start + seconds)
    return trial


def test_the_timeline_has_a_bar_per_trial_on_its_workers_row_in_its_states_colour():
    states = optuna.trial.TrialState
    study = optuna.create_study(direction="maximize")
    for trial in (finished_trial(0, states.COMPLETE, "gpu1", 0, 30), finished_trial(1, states.PRUNED, "gpu2", 2, 10),
                  finished_trial(2, states.FAIL, "gpu2", 14, 5), finished_trial(3, states.COMPLETE, "gpu1", 31, 20)):
        study.add_trial(trial)
    svg = timeline(study.trials, best=study.best_trial.number)
    bars = re.findall(r'<rect class="trial (\w+)" data-trial="(\d+)" x="([\d.]+)" y="(\d+)" width="([\d.]+)" '
                      r'height="\d+" rx="2" fill="([^"]+)"([^>]*)>', svg)
    assert [(state, int(n)) for state, n, *_ in bars] == [("complete", 0), ("pruned", 1), ("failed", 2),
                                                          ("complete", 3)]
    fills = {state: fill for state, *_, fill, _ in bars}
    assert len(set(fills.values())) == 3  # complete, pruned and failed apart
    rows = {n: y for _, n, _, y, *_ in bars}
    assert rows["0"] == rows["3"] != rows["1"] == rows["2"]  # one row a worker
    assert "gpu1 pid 7" in svg and "gpu2 pid 7" in svg
    widths = {n: float(w) for _, n, _, _, w, *_ in bars}
    assert widths["0"] == pytest.approx(3 * widths["1"], rel=0.01)  # as long as the trial took
    assert [n for n, *_, edge in ((b[1], b[-1]) for b in bars) if "stroke" in edge] == ["3"]  # the best marked
    assert "trial #1, pruned" in svg and "trial #2, failed" in svg  # on hover


@pytest.mark.parametrize("finished, warned", [(FEW_TRIALS - 1, True), (FEW_TRIALS + 2, False)])
def test_parameter_importances_carry_a_warning_below_about_ten_finished_trials(finished, warned):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: -np.log10(t.suggest_float("lr", 1e-4, 1e-1, log=True) / 1e-2) ** 2
                   + 0.01 * t.suggest_int("depth", 1, 4), n_trials=finished)
    parts = importance_parts(study, ["depth", "lr"])
    assert parts[0].startswith('<img alt="Parameter importances"')
    assert any(f"Only {finished} finished trials" in part for part in parts) == warned


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

"""The Snakemake HTML report opens on the findings: report/workflow.rst (the Snakefile's `report:`)
describes the run and repeats each model's findings, and every report.md is a result of it."""

import base64
import html
import json
import re
import shutil
import subprocess
import tempfile
import zipfile

import pytest

from conftest import WORKFLOW_BASE, copy_tree, run_workflow

pytestmark = pytest.mark.slow

MODEL = "tiny-llama"
CONFIG = WORKFLOW_BASE
DESCRIPTION = f"This run measured every weight matrix of {len(CONFIG['models'])} models"


@pytest.fixture
def finished(finished_run):
    return finished_run


def embedded(page, name):
    """The JSON the report's page holds in `<script id=...> var name = ...; </script>` (the data its
    JavaScript renders)."""
    script = name.replace("_", "-")
    return json.loads(re.search(rf'<script id="{script}">\s*var {name} = (.*);\s*</script>', page).group(1))


def findings(report_md):
    """The bullets of a report.md's Findings section, as Markdown."""
    section = report_md.split("## Findings", 1)[1].split("\n## ", 1)[0]
    return [line[2:] for line in section.splitlines() if line.startswith("- ")]


def as_text(markdown):
    """What a finding reads as once its Markdown links are rendered: their text alone."""
    return re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", markdown)


def rendered_dom(page):
    """The report's DOM after its JavaScript ran, from headless chromium."""
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_front_page_shows_the_findings_and_every_report_is_a_result(finished, tmp_path):
    run_workflow(finished, CONFIG, "--report", str(tmp_path / "report.zip"))
    with zipfile.ZipFile(tmp_path / "report.zip") as archive:
        archive.extractall(tmp_path / "unzipped")
    index = tmp_path / "unzipped/report/report.html"
    page = index.read_text(encoding="utf-8")
    description = embedded(page, "workflow_desc")
    assert DESCRIPTION in description and "precision sweep" in description
    bullets = findings((finished / f"results/{MODEL}/report.md").read_text(encoding="utf-8"))
    assert bullets  # the tiny model has findings to show
    shown = html.unescape(re.sub(r"<[^>]+>", "", description))  # the front page's text
    for bullet in bullets:
        assert as_text(bullet) in shown, bullet
    # links open the results: the model's report, the cross-model one, a figure a finding names
    linked = [f"results/{MODEL}/report.md", "results/summary/report.md", f"results/{MODEL}/plots/alpha_by_layer.png"]
    for path in linked:
        assert f"javascript:app.showResultInfo('{path}')" in description, path
    results, categories = embedded(page, "results"), embedded(page, "categories")
    assert set(categories["Findings"]["Other"]) == {*(f"results/{m}/report.md" for m in CONFIG["models"]),
                                                   "results/summary/report.md"}
    assert results[f"results/{MODEL}/report.md"]["labels"] == {"model": MODEL}
    assert MODEL in results[f"results/{MODEL}/report.md"]["caption"]
    for path in categories["Findings"]["Other"]:  # the file in the zip is the report.md the run wrote
        assert (index.parent / results[path]["data_uri"]).read_bytes() == (finished / path).read_bytes(), path
    if shutil.which("chromium"):  # CI installs no browser: the data above is what it would render
        body = re.sub(r"<script\b.*?</script>", "", rendered_dom(index), flags=re.S)  # not the data: what it drew
        text = html.unescape(re.sub(r"<[^>]+>", "", body))
        assert DESCRIPTION in text and as_text(bullets[0]) in text


def test_partial_run_reports_what_finished(finished, tmp_path):
    """After a partial run (here: a model never run), target finished_reports builds the report of
    what finished: the unfinished model is named on the front page as such, each finished model's
    report embeds its findings, and the cross-model report (which needs every model) is left out."""
    work = tmp_path / "work"
    copy_tree(finished, work)
    unfinished = {"source": "local", "path": str(tmp_path / "nowhere")}
    config = {**CONFIG, "models": {**CONFIG["models"], "unfinished": unfinished}}
    run_workflow(work, config, "--report", str(tmp_path / "report.html"), "finished_reports")
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    description = embedded(page, "workflow_desc")
    assert f"This run measured every weight matrix of {len(CONFIG['models']) + 1} models" in description
    assert "unfinished (no report)" in description and "No report.md in this HTML report" in description
    assert "results/summary/report.md" not in description  # not built for this target
    data = embedded(page, "results")[f"results/{MODEL}/report.md"]["data_uri"]
    assert base64.b64decode(data.split("base64,", 1)[1]) == (work / f"results/{MODEL}/report.md").read_bytes()

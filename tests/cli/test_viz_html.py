"""``trilevel report``'s self-contained ``report.html``, and the final console line of each command.

The page is parsed (every PNG of the run folder embedded as a ``data:`` URI that decodes to the
same file) and, where Debian's ``chromium`` is installed, rendered headless to a screenshot that
must not be blank.
"""

from __future__ import annotations

import base64
import html.parser
import io
import json
import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from trilevel.cli import main
from trilevel.viz import REPORT_FILES, write_report_html

from _runs import TINY_RUN_FLAGS, needs_fmnist as needs_data

TINY_FLAGS = [*TINY_RUN_FLAGS, "--train-subset", "128", "--val-subset", "100", "--epochs", "2"]


class _Page(html.parser.HTMLParser):
    """The ``<img src>``, external references and table rows of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.external: list[str] = []
        self.rows = 0
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag == "script":
            self.scripts += 1
        if tag == "tr":
            self.rows += 1
        for key in ("href", "src"):
            value = attrs.get(key) or ""
            if value and not value.startswith("data:"):
                self.external.append(value)


@pytest.fixture(scope="module")
def reported_run(tmp_path_factory):
    """A tiny tri-level run, its ``trilevel visualize`` picture and ``trilevel report``, with final lines."""
    out = tmp_path_factory.mktemp("html") / "run"
    lines = {}
    handler = logging.Handler()
    handler.emit = lambda record: lines.__setitem__(command, record.getMessage())  # last line per command
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    try:
        command = "train"
        assert main(["train", *TINY_FLAGS, "--output-dir", str(out)]) == 0
        command = "visualize"
        assert main(["visualize", "--checkpoint", str(out / "checkpoint.pt"), "--images", "3"]) == 0
        command = "report"
        assert main(["report", str(out)]) == 0
        command = "eval"
        assert main(["eval", "--checkpoint", str(out / "checkpoint.pt"), "--val-subset", "50"]) == 0
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    return out, lines


@needs_data
def test_every_command_ends_with_where_its_outputs_are(reported_run):
    out, lines = reported_run
    assert lines["train"] == f"outputs in {out} (summary.json, metrics.jsonl, checkpoint.pt, config.yaml, train.log)"
    assert lines["visualize"] == f"outputs in {out} (pruning.png)"
    assert lines["report"] == f"outputs in {out} (report.html, {', '.join(REPORT_FILES)})"
    assert lines["eval"] == "outputs: none written (the result is printed above)"


@needs_data
def test_report_html_embeds_every_png_of_the_run_and_they_decode(reported_run):
    from PIL import Image

    out, _ = reported_run
    page_text = (out / "report.html").read_text(encoding="utf-8")
    page = _Page()
    page.feed(page_text)
    pngs = sorted(out.glob("*.png"))
    assert {p.name for p in pngs} == set(REPORT_FILES) | {"pruning.png"}
    assert len(page.images) == len(pngs)
    embedded = []
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # decodes the whole picture
            assert img.width > 100 and img.height > 100
        embedded.append(data)
    assert sorted(embedded) == sorted(p.read_bytes() for p in pngs)  # byte for byte, each once
    # self-contained: nothing to fetch, no script
    assert page.external == [] and page.scripts == 0
    # the resolved config, the summary and one table row per epoch (plus the header)
    assert html.unescape((out / "config.yaml").read_text(encoding="utf-8")) in html.unescape(page_text)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert html.unescape(json.dumps(summary, indent=2)) in html.unescape(page_text)
    assert page.rows == 1 + 2


@needs_data
@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed (apt-get install chromium)")
def test_report_html_renders_in_headless_chromium(reported_run, tmp_path):
    from PIL import Image

    out, _ = reported_run
    shot = tmp_path / "report.png"
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           f"--screenshot={shot}", "--window-size=1200,2000", (out / "report.html").resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    with Image.open(shot) as img:
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.shape[:2] == (2000, 1200)
    not_white = (pixels < 240).any(axis=2).mean()
    colours = len(np.unique(pixels.reshape(-1, 3)[::7], axis=0))
    assert not_white > 0.05 and colours > 50, (not_white, colours)  # the plots drew, not a blank page


def _metrics(folder: Path, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_a_run_in_progress_gets_a_page_that_says_what_is_missing(tmp_path):
    run = tmp_path / "run"
    _metrics(run, [{"epoch": 1, "train_loss": 2.0, "val_top1": 10.0, "note": "<b>x</b>"}])
    page = write_report_html(run).read_text(encoding="utf-8")
    assert "No summary.json" in page and "No config.yaml" in page and "No PNG" in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page  # values are escaped


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        write_report_html(tmp_path / "nowhere")
    run = tmp_path / "run"
    _metrics(run, [{"epoch": 1}])
    (run / "fake.png").write_text("not a png")
    with pytest.raises(ValueError, match="fake.png"):
        write_report_html(run)
    (run / "fake.png").unlink()
    (run / "summary.json").write_text("{oops")
    with pytest.raises(ValueError, match="summary.json"):
        write_report_html(run)
    (run / "summary.json").unlink()
    with pytest.raises(FileNotFoundError, match="gone.png"):
        write_report_html(run, [run / "gone.png"])

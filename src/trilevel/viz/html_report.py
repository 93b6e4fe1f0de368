"""One self-contained HTML page of a run folder: ``report.html`` (``trilevel report`` writes it).

The page holds the run's PNGs (embedded as base64 ``data:`` URIs, so the single file can be
mailed, attached or opened offline), a headline from ``summary.json``, the per-epoch metrics of
``metrics.jsonl`` as a table, and the resolved ``config.yaml`` and ``summary.json`` as text. It
loads nothing from anywhere: no scripts, fonts, style sheets or images outside the file.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import logging
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from .figures import PathLike
from .report import REPORT_FILES, read_metrics

__all__ = ["HTML_NAME", "PICTURE_NOTES", "report_pictures", "write_report_html"]

logger = logging.getLogger(__name__)

#: File name of the page, inside the run folder.
HTML_NAME = "report.html"

#: What each known PNG of a run folder shows (captions on the page); other PNGs get their name only.
PICTURE_NOTES = {
    **REPORT_FILES,
    "pruning.png": "patch tokens kept at each pruning stage and one query's kept connections (trilevel visualize)",
}

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Pictures wider than this (e.g. the pruning grid) span the page; the 640-pixel plots go two a row.
_WIDE_PIXELS = 800

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1150px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
.headline { background: #f3f6fa; padding: 0.6em 0.9em; border-radius: 4px; }
.pictures { display: grid; grid-template-columns: repeat(auto-fill, minmax(480px, 1fr)); gap: 12px; }
figure { margin: 0; border: 1px solid #ddd; padding: 6px; }
figure.wide { grid-column: 1 / -1; }
figure img { width: 100%; height: auto; display: block; }
figcaption { font-size: 0.85em; color: #555; margin-top: 4px; }
.table { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.8em; }
th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; position: sticky; top: 0; }
pre { background: #f7f7f7; padding: 0.6em; font-size: 0.8em; overflow-x: auto; }
"""


def report_pictures(run_dir: PathLike) -> list[Path]:
    """The PNGs of a run folder, in page order: :data:`REPORT_FILES` first, then the rest by name.

    Args:
        run_dir: A run folder (only its top level is searched).

    Returns:
        Paths of the ``*.png`` files (case-insensitive suffix) directly in ``run_dir``.
    """
    run_dir = Path(run_dir)
    found = {p.name: p for p in run_dir.iterdir() if p.is_file() and p.suffix.lower() == ".png"}
    first = [found.pop(name) for name in REPORT_FILES if name in found]
    return first + [found[name] for name in sorted(found)]


def _png(path: Path) -> tuple[str, int]:
    """``(data URI, width in pixels)`` of a PNG file (the width from its IHDR chunk)."""
    data = path.read_bytes()
    if not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise ValueError(f"{path} is not a PNG file (no PNG signature and header)")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii"), int.from_bytes(data[16:20], "big")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return html.escape(json.dumps(value))
    return html.escape(str(value))


def _metrics_table(rows: Sequence[Mapping[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "\n".join("<tr>" + "".join(f"<td>{_cell(row.get(c))}</td>" for c in columns) + "</tr>" for row in rows)
    return f'<div class="table"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table></div>'


def _headline(summary: Optional[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]) -> str:
    if summary is None:
        last = rows[-1]
        top1 = last.get("val_top1")
        return (f"No summary.json yet (the run is in progress or was stopped): last epoch {last['epoch']}, "
                f"val top-1 {'n/a' if top1 is None else f'{top1:.2f}%'}.")
    parts = []
    top1 = summary.get("val_top1")
    if isinstance(top1, (int, float)):
        parts.append(f"val top-1 <b>{top1:.2f}%</b>")
    for key, text, fmt in (("epochs_done", "epochs", "{}"), ("train_seconds", "s of training", "{:.1f}"),
                           ("relative_train_flops", "relative training FLOPs", "{:.3f}"),
                           ("train_images", "training images", "{}")):
        value = summary.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            parts.append(f"{fmt.format(value)} {text}")
    mode = "dense" if summary.get("dense") else "tri-level"
    state = "finished" if summary.get("finished") else "paused (resume to finish)"
    return f"{html.escape(str(summary.get('model', '?')))}, {mode}, {state}: " + ", ".join(parts) + "."


def _read_text(path: Path) -> Optional[str]:
    return path.read_text(encoding="utf-8") if path.is_file() else None


def _pre(text: Optional[str], missing: str) -> str:
    return f"<pre>{html.escape(text)}</pre>" if text is not None else f"<p><i>{html.escape(missing)}</i></p>"


def write_report_html(run_dir: PathLike, pictures: Optional[Iterable[PathLike]] = None) -> Path:
    """Write ``<run_dir>/report.html``: one self-contained page of a run folder.

    Sections: a headline (model, dense or tri-level, finished or paused, val top-1, epochs,
    training seconds, relative training FLOPs, from ``summary.json``); the pictures, each PNG
    embedded as a base64 ``data:image/png`` URI with its caption (:data:`PICTURE_NOTES`); the
    per-epoch metrics of ``metrics.jsonl`` (:func:`~trilevel.viz.report.read_metrics`: one row per
    epoch, one column per key, floats to 4 significant digits); ``summary.json`` and the resolved
    ``config.yaml`` verbatim. A missing ``summary.json`` or ``config.yaml`` (a run in progress) is
    said so on the page.

    Args:
        run_dir: A run folder written by ``trilevel train``.
        pictures: The PNGs to embed, in order; None: every PNG directly in ``run_dir``
            (:func:`report_pictures`), e.g. the plots of :func:`~trilevel.viz.report.report_run`
            and ``pruning.png`` of ``trilevel visualize``.

    Returns:
        The path of ``report.html``.

    Raises:
        FileNotFoundError: If ``run_dir``, its ``metrics.jsonl`` or a named picture does not
            exist (named).
        ValueError: If ``metrics.jsonl`` is empty or malformed, ``summary.json`` is not valid
            JSON, or a picture is not a PNG file (the path is named).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    rows = read_metrics(run_dir / "metrics.jsonl")
    summary_text = _read_text(run_dir / "summary.json")
    summary = None
    if summary_text is not None:
        try:
            summary = json.loads(summary_text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{run_dir / 'summary.json'} is not valid JSON: {e}") from None
        summary_text = json.dumps(summary, indent=2)
    paths = report_pictures(run_dir) if pictures is None else [Path(p) for p in pictures]
    figures = []
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"picture {path} does not exist")
        note = PICTURE_NOTES.get(path.name)
        caption = html.escape(path.name) + (f": {html.escape(note)}" if note else "")
        uri, width = _png(path)
        wide = ' class="wide"' if width > _WIDE_PIXELS else ""
        figures.append(f'<figure{wide}><img src="{uri}" alt="{html.escape(path.name)}">'
                       f"<figcaption>{caption}</figcaption></figure>")
    name = html.escape(run_dir.resolve().name)
    made = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>trilevel run {name}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>trilevel run {name}</h1>
<p class="headline">{_headline(summary, rows)}</p>
<h2>Pictures ({len(figures)})</h2>
<div class="pictures">
{chr(10).join(figures) if figures else "<p><i>No PNG in the run folder.</i></p>"}
</div>
<h2>Per-epoch metrics (metrics.jsonl, {len(rows)} epochs)</h2>
{_metrics_table(rows)}
<h2>summary.json</h2>
{_pre(summary_text, "No summary.json: the run has not finished an invocation yet.")}
<h2>config.yaml (the resolved configuration)</h2>
{_pre(_read_text(run_dir / "config.yaml"), "No config.yaml in the run folder.")}
<p><small>Written by trilevel report on {made} from {html.escape(str(run_dir.resolve()))}.</small></p>
</body>
</html>
"""
    out = run_dir / HTML_NAME
    out.write_text(page, encoding="utf-8")
    logger.info("wrote %s (%d pictures embedded)", out, len(figures))
    return out

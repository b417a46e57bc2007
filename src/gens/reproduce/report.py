"""The report folder: ``report.md`` and a self-contained ``report.html`` built from the parts' sections.

Each part (Table 1, Table 2, Fig. 1, Table 3) returns a :class:`Section`: text, tables whose cells may
carry a verdict against the paper (``cell(text, ok)``: ✓ reproduces, ✗ does not), and figures (PNG files
in the report folder). Sections are saved as ``DIR/sections/<part>.json``, so running the parts one at a
time into the same folder still yields one report with all of them. In the HTML every figure is embedded
as a base64 data URI; the markdown links the PNGs next to it.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import os
import platform
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["Section", "cell", "environment", "write_report", "save_section", "load_sections", "render_markdown",
           "render_html", "fmt_pm"]

MARK = {True: "✓", False: "✗", None: ""}


def cell(text: str, ok: bool | None = None) -> dict:
    """A table cell with an optional verdict: True = reproduces (✓), False = does not (✗), None = no check."""
    return {"text": str(text), "ok": ok}


def fmt_pm(values, digits: int = 3) -> str:
    """'mean ± sd' of a list of numbers (sample sd; just the mean for one value; '-' for none)."""
    import statistics

    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


@dataclass
class Section:
    """One part of the report. ``blocks``: {"type": "text" | "table" | "figure", ...} in order."""

    part: str
    title: str
    command: str = ""
    date: str = ""
    wall_s: float = 0.0  # wall time of the invocation that wrote this section
    unit_s: float = 0.0  # compute time of its units, summed (reused units count their original time)
    reused: int = 0
    computed: int = 0
    skipped: bool = False
    misses: list = field(default_factory=list)  # one line per "does not reproduce"
    blocks: list = field(default_factory=list)

    def text(self, markdown: str) -> "Section":
        self.blocks.append({"type": "text", "text": markdown})
        return self

    def table(self, header, rows, caption: str = "") -> "Section":
        norm = [[c if isinstance(c, dict) else cell(c) for c in row] for row in rows]
        self.blocks.append({"type": "table", "caption": caption, "header": [str(h) for h in header], "rows": norm})
        return self

    def figure(self, path, caption: str = "") -> "Section":
        """``path``: a PNG relative to the report folder."""
        self.blocks.append({"type": "figure", "path": str(path), "caption": caption})
        return self

    def miss(self, what: str) -> None:
        self.misses.append(what)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Section":
        return cls(**d)


# ------------------------------------------------------------------------------------------ storage

def save_section(out, section: Section) -> Path:
    from gens.runs import write_json

    return write_json(Path(out) / "sections" / f"{section.part}.json", section.to_dict())


def load_sections(out, order) -> list[Section]:
    """Saved sections of ``out`` in the order of ``order`` (part names); missing parts are left out."""
    found = []
    for part in order:
        path = Path(out) / "sections" / f"{part}.json"
        if path.is_file():
            found.append(Section.from_dict(json.loads(path.read_text())))
    return found


def environment() -> dict:
    """Versions and machine, for the report header."""
    import numpy
    import torch

    import gens

    try:
        import lightning

        lightning_version = lightning.__version__
    except ImportError:  # pragma: no cover
        lightning_version = "-"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "gens": gens.__version__,
            "python": platform.python_version(), "torch": torch.__version__, "lightning": lightning_version,
            "numpy": numpy.__version__, "platform": platform.platform(), "processor": platform.processor() or "-",
            "cpus": os.cpu_count(), "gpu": gpu, "command": " ".join(["gens", *sys.argv[1:]])
            if Path(sys.argv[0]).name in ("gens", "__main__.py") else " ".join(sys.argv)}


# ---------------------------------------------------------------------------------------- markdown

def _md_cell(c: dict) -> str:
    mark = MARK[c.get("ok")]
    return (c["text"] + (f" {mark}" if mark else "")).replace("|", "\\|").replace("\n", " ")


def _duration(s: float) -> str:
    s = float(s or 0.0)
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.2f} h"


def _section_meta(s: Section) -> str:
    units = f"{s.computed} units computed, {s.reused} reused from an earlier run" if s.computed or s.reused else ""
    return (f"`{s.command}` on {s.date}: wall time {_duration(s.wall_s)}"
            + (f"; compute time of all its units {_duration(s.unit_s)}" if s.unit_s else "")
            + (f" ({units})" if units else "") + ".")


def _checked(s: Section) -> bool:
    return any(c.get("ok") is not None for b in s.blocks if b["type"] == "table" for row in b["rows"] for c in row)


def _verdict(s: Section) -> str:
    if s.skipped:
        return "**Skipped** (see below)."
    if s.misses:
        return "**Does not reproduce:**\n\n" + "\n".join(f"- {m}" for m in s.misses)
    if not _checked(s):
        return "No value here is checked against the paper's (see below)."
    return "Every checked value is within the paper's error (✓)."


def _short_verdict(s: Section) -> str:
    if s.skipped:
        return "skipped"
    if s.misses:
        return f"✗ {len(s.misses)} miss(es)"
    return "✓" if _checked(s) else "not checked"


def render_markdown(sections: list[Section], env: dict) -> str:
    lines = ["# gens: reproduction of the paper's tables and figures", "",
             f"Command: `{env['command']}`  ", f"Date: {env['date']}  ",
             f"Versions: gens {env['gens']}, Python {env['python']}, torch {env['torch']}, lightning "
             f"{env['lightning']}, numpy {env['numpy']}  ",
             f"Machine: {env['platform']}, {env['cpus']} CPUs ({env['processor']}), GPU: {env['gpu']}", "",
             "✓: within the paper's error; ✗: **does not reproduce** (see each part for the rule).", "",
             "| part | wall time | compute time of its units | verdict |", "|---|---|---|---|"]
    for s in sections:
        verdict = _short_verdict(s)
        lines.append(f"| [{s.title}](#{_anchor(s.title)}) | {_duration(s.wall_s)} | {_duration(s.unit_s)} | {verdict} |")
    for s in sections:
        lines += ["", f"## {s.title}", "", _section_meta(s), "", _verdict(s)]
        for b in s.blocks:
            lines.append("")
            if b["type"] == "text":
                lines.append(b["text"])
            elif b["type"] == "table":
                if b["caption"]:
                    lines += [b["caption"], ""]
                lines.append("| " + " | ".join(h.replace("|", "\\|") for h in b["header"]) + " |")
                lines.append("|" + "---|" * len(b["header"]))
                lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b["rows"]]
            elif b["type"] == "figure":
                lines.append(f"![{Path(b['path']).stem}]({b['path']})")
                if b["caption"]:
                    lines += ["", f"*{b['caption']}*"]
    return "\n".join(lines) + "\n"


def _anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", title.lower()).strip().replace(" ", "-")


# -------------------------------------------------------------------------------------------- HTML

CSS = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 0.6rem 0 1.2rem; font-size: 0.92rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.55rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
td.ok { background: #e8f6e8; }
td.miss { background: #fbe3e3; }
.verdict.miss { color: #a00; }
code { background: #f4f4f4; padding: 0 0.2rem; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9rem; color: #555; }
.meta { color: #555; font-size: 0.9rem; }
"""


def _inline(text: str) -> str:
    """Escape, then **bold**, `code` and the markdown \\| escape."""
    t = html.escape(text).replace("\\|", "|")
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", t)


def _html_text(markdown: str) -> str:
    out = []
    for para in re.split(r"\n\s*\n", markdown.strip()):
        lines = para.splitlines()
        if lines and all(ln.lstrip().startswith("- ") for ln in lines):
            out.append("<ul>" + "".join(f"<li>{_inline(ln.lstrip()[2:])}</li>" for ln in lines) + "</ul>")
        else:
            out.append(f"<p>{_inline(' '.join(ln.strip() for ln in lines))}</p>")
    return "\n".join(out)


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(sections: list[Section], env: dict, root) -> str:
    root = Path(root)
    e = html.escape
    parts = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
             "<title>gens: reproduction report</title>", f"<style>{CSS}</style></head><body>",
             "<h1>gens: reproduction of the paper's tables and figures</h1>",
             f"<p class='meta'>Command: <code>{e(env['command'])}</code><br>Date: {e(env['date'])}<br>"
             f"Versions: gens {e(env['gens'])}, Python {e(env['python'])}, torch {e(env['torch'])}, "
             f"lightning {e(env['lightning'])}, numpy {e(env['numpy'])}<br>"
             f"Machine: {e(env['platform'])}, {env['cpus']} CPUs ({e(env['processor'])}), GPU: {e(env['gpu'])}</p>",
             "<p>✓: within the paper's error; ✗: <b>does not reproduce</b> (see each part for the rule).</p>",
             "<table><tr><th>part</th><th>wall time</th><th>compute time of its units</th><th>verdict</th></tr>"]
    for s in sections:
        verdict = _short_verdict(s)
        cls = " class='miss'" if s.misses else " class='ok'" if verdict == "✓" else ""
        parts.append(f"<tr><td><a href='#{_anchor(s.title)}'>{e(s.title)}</a></td><td>{_duration(s.wall_s)}</td>"
                     f"<td>{_duration(s.unit_s)}</td><td{cls}>{verdict}</td></tr>")
    parts.append("</table>")
    for s in sections:
        parts.append(f"<h2 id='{_anchor(s.title)}'>{e(s.title)}</h2>")
        parts.append(f"<p class='meta'>{_inline(_section_meta(s))}</p>")
        parts.append(f"<div class='verdict{' miss' if s.misses else ''}'>{_html_text(_verdict(s))}</div>")
        for b in s.blocks:
            if b["type"] == "text":
                parts.append(_html_text(b["text"]))
            elif b["type"] == "table":
                if b["caption"]:
                    parts.append(f"<p>{_inline(b['caption'])}</p>")
                rows = ["<tr>" + "".join(f"<th>{_inline(h)}</th>" for h in b["header"]) + "</tr>"]
                for row in b["rows"]:
                    tds = []
                    for c in row:
                        ok = c.get("ok")
                        cls = "" if ok is None else " class='ok'" if ok else " class='miss'"
                        mark = f" {MARK[ok]}" if ok is not None else ""
                        tds.append(f"<td{cls}>{_inline(c['text'])}{mark}</td>")
                    rows.append("<tr>" + "".join(tds) + "</tr>")
                parts.append("<table>" + "\n".join(rows) + "</table>")
            elif b["type"] == "figure":
                path = root / b["path"]
                img = (f"<img src='{_data_uri(path)}' alt='{e(b['caption'])}'>" if path.is_file()
                       else f"<p><i>missing figure {e(b['path'])}</i></p>")
                parts.append(f"<figure>{img}<figcaption>{_inline(b['caption'])}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(out, sections: list[Section], env: dict | None = None) -> tuple[Path, Path]:
    """Write ``out/report.md`` and ``out/report.html`` (atomically); returns both paths."""
    out = Path(out)
    env = env or environment()
    md, page = out / "report.md", out / "report.html"
    for path, text in ((md, render_markdown(sections, env)), (page, render_html(sections, env, out))):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return md, page

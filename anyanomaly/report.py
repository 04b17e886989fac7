"""`anyanomaly detect --report FILE.html`: one self-contained page (images inlined, no scripts,
nothing fetched) with the detection's summary, its score plot, the evidence pictures and the
best segments."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from anyanomaly.pictures import EvidencePicture

STYLE = """body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
img{max-width:100%;border:1px solid #ddd}figure{margin:12px 0}figcaption{font-size:13px;color:#444}
.warn{color:#a40;font-size:13px}"""


def _image(data: bytes, alt: str) -> str:
    kind = "png" if data.startswith(b"\x89PNG") else "jpeg"
    return f'<img alt="{html.escape(alt)}" src="data:image/{kind};base64,{base64.b64encode(data).decode()}">'


def _row(*cells: object, header: bool = False) -> str:
    tag = "th" if header else "td"
    return "<tr>" + "".join(f"<{tag}>{html.escape(str(c))}</{tag}>" for c in cells) + "</tr>"


def write_html_report(document: dict[str, Any], plot_png: bytes, pictures: list[EvidencePicture], path: Path,
                      top: int = 10) -> None:
    usage, timings = document.get("lvlm_usage", {}), document.get("timings", {})
    facts = [("source", document["source"]), ("texts", ", ".join(document["texts"])),
             ("frames", f"{document['num_frames']} at {document.get('fps', 0):g} fps"),
             ("segments", len(document["segments"])), ("LVLM calls", usage.get("calls", "")),
             ("time", f"{timings.get('total_seconds', '')} s"),
             ("models", f"CLIP {document['models']['clip']['name']}, LVLM {document['models']['lvlm']['name']}")]
    best = sorted(document["segments"], key=lambda s: s["score"], reverse=True)[:top]
    rows = []
    for segment in best:
        text, score = max(segment["scores"].items(), key=lambda item: item[1]["fused"])
        rows.append(_row(segment["index"], f"{segment['start_frame']}-{segment['end_frame'] - 1}",
                         f"{segment['score']:.3f}", text, f"{score['frame']:.2f} / {score['position']:.2f} / "
                         f"{score['temporal']:.2f}", score["reason"]))
    figures = [f"<figure>{_image(p.path.read_bytes(), f'{p.kind} segment {p.segment}')}<figcaption>"
               f"{html.escape(p.kind)}: segment {p.segment}, {html.escape(p.text)}, fused {p.score:.2f}"
               f"</figcaption></figure>" for p in pictures]
    warning = document["models"].get("warning")
    page = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>AnyAnomaly: {html.escape(Path(str(document['source'])).name)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>AnyAnomaly detection: {html.escape(Path(str(document['source'])).name)}</h1>",
        f'<p class="warn">{html.escape(warning)}</p>' if warning else "",
        "<table>", *(_row(name, value) for name, value in facts), "</table>",
        "<h2>Scores</h2>", _image(plot_png, "score plot"),
        "<h2>Evidence</h2>",
        *(figures or ["<p>No evidence pictures (the detection sent no images).</p>"]),
        f"<h2>Best {len(best)} segments</h2>", "<table>",
        _row("segment", "frames", "score", "text", "frame / position / temporal", "reason", header=True),
        *rows, "</table>", "</body></html>",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(line for line in page if line) + "\n")

"""A trace report for people: a process tree with a timeline (terminal), or a self-contained HTML page."""

from __future__ import annotations

import html
import json

from rich.console import Console, Group
from rich.text import Text
from rich.tree import Tree

from vgpu.trace.report import Call, Report, TracedProcess, is_gpu_library

TIMELINE_WIDTH = 40
_KIND_STYLE = {"vgpu": "green", "driver": "yellow", "runtime": "cyan"}


def _offset_ms(report: Report, t: float) -> float:
    return (t - report.start) * 1000


def _bar(report: Report, process: TracedProcess, width: int = TIMELINE_WIDTH) -> str:
    span = max(report.end - report.start, 1e-6)
    first = int((process.start - report.start) / span * (width - 1))
    last = max(first, int((process.end - report.start) / span * (width - 1)))
    return " " * first + "█" * (last - first + 1) + " " * (width - 1 - last)


def _call(call: Call) -> str:
    """cuDeviceGetCount(4) -> CUDA_SUCCESS: arguments as recorded, outputs as received."""
    return f"{call.call}({', '.join(json.dumps(arg) for arg in call.args)}) -> {call.result_name}"


def _node(report: Report, process: TracedProcess) -> Text:
    text = Text()
    text.append(_bar(report, process), style="magenta")
    text.append(f" {process.pid} ", style="bold")
    text.append(process.title[:80])
    ended = "" if process.exited else ", no exit recorded (crashed, killed or _exit)"
    if not process.traced:
        ended = ", not traced (static or setuid)"
    text.append(f"  +{_offset_ms(report, process.start):.1f} ms, lived {process.lifetime_ms:.1f} ms{ended}",
                style="dim")
    return text


def _add(report: Report, tree: Tree, process: TracedProcess) -> None:
    branch = tree.add(_node(report, process))
    for search in process.searches:
        if is_gpu_library(search.name):
            tried = branch.add(Text(f"searched {search.name}: {len(search.candidates)} paths tried, "
                                    + (f"loaded {search.found}" if search.found else "none loaded"), style="dim"))
            for candidate in search.candidates:
                if candidate["problem"] != "missing" or len(search.candidates) <= 4:
                    problem = candidate["problem"] or "usable"
                    target = f" to {candidate['target']}" if candidate["target"] else ""
                    tried.add(Text(f"{candidate['path']} ({candidate['via']}): {problem}{target}", style="dim"))
    for load in process.gpu_loads():
        resolved = f" -> {load.file}" if load.file != load.path else ""
        branch.add(Text(f"loaded {load.name or load.path}: {load.path}{resolved} [{load.kind}]",
                        style=_KIND_STYLE.get(load.kind, "")))
    for call in process.calls[:8]:
        branch.add(Text(_call(call), style="green" if call.result == 0 else "red"))
    for failure in process.failures:
        branch.add(Text(failure.text, style="red"))
    for child in report.children(process):
        _add(report, branch, child)


def terminal(report: Report, console: Console) -> None:
    tree = Tree(Text(f"timeline 0 .. {(report.end - report.start) * 1000:.1f} ms, one column "
                     f"{(report.end - report.start) * 1000 / TIMELINE_WIDTH:.2f} ms", style="dim"))
    for root in report.roots:
        _add(report, tree, root)
    diagnosis = Text("\n".join(f"• {line}" for line in report.diagnosis()))
    console.print(Group(tree, Text("\nDiagnosis", style="bold"), diagnosis))


def to_json(report: Report) -> str:
    return json.dumps(report.to_json(), indent=2)


_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>vgpu trace</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
svg text {{ font: 12px monospace; }}
.vgpu {{ color: #116329; }} .driver {{ color: #9a6700; }} .failure {{ color: #cf222e; }}
td, th {{ text-align: left; padding: 2px 8px; vertical-align: top; font-family: monospace; font-size: 12px; }}
</style></head><body>
<h1>vgpu trace</h1>
<h2>Diagnosis</h2><ul>{diagnosis}</ul>
<h2>Timeline</h2>
<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">{rows}</svg>
<h2>Processes</h2>
<table><tr><th>pid</th><th>parent</th><th>command</th><th>start</th><th>lived</th><th>GPU libraries, calls, failures</th></tr>
{table}</table>
</body></html>
"""


def to_html(report: Report) -> str:
    """One page, no external resources: a row per process on a shared time axis."""
    label_width, plot_width, row = 360, 640, 22
    span = max(report.end - report.start, 1e-6)
    rows, table = [], []
    ordered = report.depth_first()
    for index, process in enumerate(ordered):
        y = 30 + index * row
        x = label_width + (process.start - report.start) / span * plot_width
        width = max(2.0, (process.end - process.start) / span * plot_width)
        colour = "#1a7f37" if process.gpu_loads() else "#8c959f"
        program = " ".join([process.exe.rsplit("/", 1)[-1], *process.argv[1:]])
        label = html.escape(f"{process.pid} {program}"[:48])
        rows.append(f'<text x="4" y="{y + 13}">{label}</text>'
                    f'<rect x="{x:.1f}" y="{y}" width="{width:.1f}" height="16" fill="{colour}">'
                    f'<title>{html.escape(process.title)}: {process.lifetime_ms:.1f} ms</title></rect>')
        for load in process.gpu_loads():
            mark = label_width + (load.t - report.start) / span * plot_width
            rows.append(f'<line x1="{mark:.1f}" x2="{mark:.1f}" y1="{y - 2}" y2="{y + 18}" stroke="#0969da" '
                        f'stroke-width="2"><title>{html.escape(load.path)}</title></line>')
        details = [f'<span class="{load.kind}">loaded {html.escape(load.path)} -&gt; {html.escape(load.file)} '
                   f'[{load.kind}]</span>' for load in process.gpu_loads()]
        details += [html.escape(_call(call)) for call in process.calls[:8]]
        details += [f'<span class="failure">{html.escape(f.text)}</span>' for f in process.failures]
        table.append(f"<tr><td>{process.pid}</td><td>{process.ppid}</td><td>{html.escape(process.title)}</td>"
                     f"<td>+{_offset_ms(report, process.start):.1f} ms</td><td>{process.lifetime_ms:.1f} ms</td>"
                     f"<td>{'<br>'.join(details)}</td></tr>")
    axis = (f'<text x="{label_width}" y="14">0 ms</text>'
            f'<text x="{label_width + plot_width - 60}" y="14">{span * 1000:.1f} ms</text>')
    return _PAGE.format(diagnosis="".join(f"<li>{html.escape(line)}</li>" for line in report.diagnosis()),
                        width=label_width + plot_width + 10, height=40 + len(ordered) * row,
                        rows=axis + "".join(rows), table="\n".join(table))

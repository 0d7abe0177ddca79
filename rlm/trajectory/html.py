"""The HTML summary of a trajectory shown by Jupyter (``Trajectory._repr_html_``).

Every value from a log is escaped with :func:`html.escape`; long texts are cut
before they are rendered and only the first iterations are listed in full, so
the size of the page does not grow with the size of the run.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

from rlm.utils.text import truncate_middle

if TYPE_CHECKING:
    from rlm.trajectory.model import Block, SubCall, Trajectory

#: Longest text (code, output, response) shown in a notebook cell.
MAX_TEXT = 2_000
#: Iterations listed with their details; the rest are counted.
MAX_ITERATIONS = 40

_STYLE = (
    "<style>"
    ".rlm-traj{font-family:system-ui,sans-serif;font-size:13px;max-width:100%}"
    ".rlm-traj table{border-collapse:collapse;margin:4px 0}"
    ".rlm-traj td,.rlm-traj th{border:1px solid #ccc;padding:2px 6px;text-align:left}"
    ".rlm-traj pre{white-space:pre-wrap;margin:2px 0;padding:4px;background:#f6f6f6;"
    "max-height:300px;overflow:auto}"
    ".rlm-traj .err{color:#b00020}.rlm-traj .err pre{background:#fdecee}"
    ".rlm-traj .final{border-left:4px solid #2e7d32;padding:4px 8px;background:#edf7ed}"
    ".rlm-traj details{margin:2px 0}"
    "</style>"
)


def _pre(text: str, css: str = "") -> str:
    cls = f' class="{css}"' if css else ""
    return f"<pre{cls}>{escape(truncate_middle(text, MAX_TEXT))}</pre>"


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}s"


def _call(call: SubCall) -> str:
    usage = call.usage
    err = f' <span class="err">{escape(call.error)}</span>' if call.error else ""
    child = ""
    if call.child is not None:
        child = (
            f"<div style='margin-left:16px'>child run: {len(call.child.iterations)} iterations, "
            f"answer: {escape(truncate_middle(call.child.final_answer or '', 200))}</div>"
        )
    return (
        f"<li>depth {call.depth} · <b>{escape(call.model)}</b> · "
        f"{usage.total_input_tokens}+{usage.total_output_tokens} tokens{err}"
        f"<details><summary>{escape(truncate_middle(call.prompt_text, 120))}</summary>"
        f"prompt{_pre(call.prompt_text)}response{_pre(call.response)}</details>{child}</li>"
    )


def _block(block: Block) -> str:
    parts = [f"<div{' class=err' if block.failed else ''}>"]
    parts.append(
        f"<b>block {block.index}</b> {_seconds(block.execution_time)}"
        + (" · <b>error</b>" if block.failed else "")
    )
    parts.append(_pre(block.code))
    if block.stdout:
        parts.append("stdout" + _pre(block.stdout))
    if block.stderr:
        parts.append("stderr" + _pre(block.stderr, "err"))
    if block.error:
        parts.append(f"<div class='err'>error: {escape(block.error)}</div>")
    if block.calls:
        parts.append("<ul>" + "".join(_call(c) for c in block.calls) + "</ul>")
    parts.append("</div>")
    return "".join(parts)


def render_html(trajectory: Trajectory) -> str:
    t = trajectory
    out = [_STYLE, "<div class='rlm-traj'>"]
    out.append(
        f"<b>RLM trajectory</b> {escape(t.name)}<br>"
        f"model <b>{escape(t.root_model)}</b> · backend {escape(str(t.backend or '?'))} · "
        f"environment {escape(str(t.environment_type or '?'))} · "
        f"{len(t.iterations)} iterations · {len(t.blocks)} blocks · "
        f"{sum(1 for _ in t.subcalls())} sub-calls · "
        f"<span{' class=err' if t.errors else ''}>{len(t.errors)} errors</span> · "
        f"{_seconds(t.total_time) or 'time unknown'}"
    )
    answer = t.final_answer
    out.append(
        f"<div class='final'><b>Final answer</b>{_pre(answer)}</div>"
        if answer is not None
        else "<div class='err'>No final answer recorded.</div>"
    )
    usage = t.usage.model_usage_summaries
    if usage:
        scope = "" if t.usage_complete else " (sub-calls; the log does not record root calls)"
        out.append(
            f"<table><tr><th>model{escape(scope)}</th><th>calls</th><th>input tokens</th>"
            "<th>output tokens</th><th>cost (USD)</th></tr>"
        )
        for model, s in usage.items():
            cost = "" if s.total_cost is None else f"{s.total_cost:.6f}"
            out.append(
                f"<tr><td>{escape(model)}</td><td>{s.total_calls}</td>"
                f"<td>{s.total_input_tokens:,}</td><td>{s.total_output_tokens:,}</td>"
                f"<td>{cost}</td></tr>"
            )
        out.append("</table>")
    for iteration in t.iterations[:MAX_ITERATIONS]:
        flags = []
        if iteration.failed:
            flags.append("<span class='err'>error</span>")
        if iteration.final_answer is not None:
            flags.append("final answer")
        out.append(
            f"<details><summary>iteration {iteration.number} · "
            f"{_seconds(iteration.iteration_time)} · {len(iteration.blocks)} blocks · "
            f"{len(iteration.calls)} sub-calls {' · '.join(flags)}</summary>"
            f"response{_pre(iteration.response)}"
            + "".join(_block(b) for b in iteration.blocks)
            + "</details>"
        )
    hidden = len(t.iterations) - MAX_ITERATIONS
    if hidden > 0:
        out.append(f"<div>... {hidden} more iterations (use rlm view for the whole run)</div>")
    if t.warnings:
        out.append("<div class='err'>" + "<br>".join(escape(w) for w in t.warnings[:10]) + "</div>")
    out.append("</div>")
    return "".join(out)

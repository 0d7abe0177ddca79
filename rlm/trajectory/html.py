"""The HTML summary of a trajectory shown by Jupyter (``Trajectory._repr_html_``).

Every value from a log is escaped with :func:`html.escape`; long texts are cut
before they are rendered and only the first iterations are listed in full, so
the size of the page does not grow with the size of the run.

The colours are readable in light and dark notebook themes: text inherits the
theme's colour, backgrounds are translucent tints, and the dark variants apply
under ``prefers-color-scheme: dark`` and the dark themes of JupyterLab and VS
Code. :func:`run_facts` (the question, date, models, stop reason and call
count) is shared with the ``rlm view`` page, so both say the same thing.
"""

from __future__ import annotations

import re
from html import escape
from typing import TYPE_CHECKING, Any

from rlm.utils.text import truncate_middle

if TYPE_CHECKING:
    from rlm.trajectory.model import Block, SubCall, Trajectory

#: Longest text (code, output, response) shown in a notebook cell.
MAX_TEXT = 2_000
#: Iterations listed with their details; the rest are counted.
MAX_ITERATIONS = 40

_DARK = (
    "--rlm-line:#555;--rlm-code:rgba(255,255,255,.07);--rlm-err:#ff8a80;"
    "--rlm-errbg:rgba(255,82,82,.16);--rlm-ok:#81c784;--rlm-okbg:rgba(102,187,106,.16);"
    "--rlm-muted:#aaa"
)
_STYLE = (
    "<style>"
    ".rlm-traj{--rlm-line:#ccc;--rlm-code:rgba(127,127,127,.10);--rlm-err:#b00020;"
    "--rlm-errbg:rgba(211,47,47,.10);--rlm-ok:#2e7d32;--rlm-okbg:rgba(46,125,50,.10);"
    "--rlm-muted:#666;color:inherit;"
    "font-family:system-ui,sans-serif;font-size:13px;max-width:100%}"
    f"@media (prefers-color-scheme:dark){{.rlm-traj{{{_DARK}}}}}"
    "[data-jp-theme-light=false] .rlm-traj,body.vscode-dark .rlm-traj,"
    f"body.vscode-high-contrast .rlm-traj,.theme-dark .rlm-traj{{{_DARK}}}"
    "[data-jp-theme-light=true] .rlm-traj,body.vscode-light .rlm-traj{--rlm-line:#ccc;"
    "--rlm-code:rgba(127,127,127,.10);--rlm-err:#b00020;--rlm-errbg:rgba(211,47,47,.10);"
    "--rlm-ok:#2e7d32;--rlm-okbg:rgba(46,125,50,.10);--rlm-muted:#666}"
    ".rlm-traj table{border-collapse:collapse;margin:4px 0}"
    ".rlm-traj td,.rlm-traj th{border:1px solid var(--rlm-line);padding:2px 6px;"
    "text-align:left;color:inherit;background:transparent}"
    ".rlm-traj pre{white-space:pre-wrap;margin:2px 0;padding:4px;color:inherit;"
    "background:var(--rlm-code);max-height:300px;overflow:auto}"
    ".rlm-traj .err{color:var(--rlm-err)}.rlm-traj .err pre{background:var(--rlm-errbg)}"
    ".rlm-traj .final{border-left:4px solid var(--rlm-ok);padding:4px 8px;"
    "background:var(--rlm-okbg)}"
    ".rlm-traj .facts{color:var(--rlm-muted)}.rlm-traj .facts b{color:inherit}"
    ".rlm-traj .question{margin:4px 0;font-size:14px}"
    ".rlm-traj details{margin:2px 0}"
    "</style>"
)

_QUESTION = re.compile(r"^Question: (.+)$", re.MULTILINE)


def question_of(trajectory: Trajectory) -> str | None:
    """The run's question (``root_prompt``) as the first prompt shows it, if it does."""
    for iteration in trajectory.iterations[:1]:
        prompt = iteration.prompt
        texts = (
            [str(m.get("content", "")) for m in prompt if isinstance(m, dict)]
            if isinstance(prompt, list)
            else [str(prompt)]
        )
        for text in texts:
            match = _QUESTION.search(text)
            if match:
                return match.group(1).strip()
    return None


def model_calls(trajectory: Trajectory) -> int:
    """Every model call of the run tree, as ``rlm run`` counts them (root calls included:
    logs of the public ``rlms`` package do not record those, one per iteration)."""
    if not trajectory.usage_complete:
        return len(trajectory.iterations) + sum(1 for _ in trajectory.subcalls())
    usage = trajectory.usage
    return sum(s.total_calls for s in usage.model_usage_summaries.values())


def stop_reason(trajectory: Trajectory) -> str:
    """Why the run ended, as far as its log says."""
    t = trajectory
    if t.final_answer is not None:
        last = next((it.number for it in t.iterations if it.final_answer is not None), None)
        return f"final answer (iteration {last})" if last else "final answer"
    limit = t.metadata.get("max_iterations")
    if isinstance(limit, int) and len(t.iterations) >= limit:
        return f"max_iterations reached ({limit})"
    if not t.iterations:
        return "no iteration recorded"
    return (
        f"stopped after iteration {len(t.iterations)} without a final answer "
        "(a limit, an error or an interrupt; the log does not say which)"
    )


def run_facts(trajectory: Trajectory) -> dict[str, Any]:
    """What the top of a run's page says: question, date, models, stop reason, counts."""
    t = trajectory
    models = [t.root_model] + [m for m in t.usage.model_usage_summaries if m != t.root_model]
    return {
        "question": question_of(t),
        "date": t.timestamp,
        "models": models,
        "stop_reason": stop_reason(t),
        "model_calls": model_calls(t),
        "subcalls": sum(1 for _ in t.subcalls()),
        "iterations": len(t.iterations),
    }


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
    """The notebook summary of ``trajectory`` (escaped, bounded in size)."""
    t = trajectory
    facts = run_facts(t)
    out = [_STYLE, "<div class='rlm-traj'>"]
    out.append(f"<b>RLM trajectory</b> {escape(t.name)}")
    if facts["question"]:
        out.append(f"<div class='question'>Q: <b>{escape(facts['question'])}</b></div>")
    out.append(
        "<div class='facts'>"
        f"{escape(str(facts['date'] or 'date unknown'))} · models "
        f"<b>{escape(', '.join(facts['models']))}</b> · backend "
        f"{escape(str(t.backend or '?'))} · environment {escape(str(t.environment_type or '?'))}"
        f"<br>stopped: <b>{escape(facts['stop_reason'])}</b> · "
        f"{len(t.iterations)} iterations · {len(t.blocks)} blocks · "
        f"{facts['model_calls']} model calls ({facts['subcalls']} sub-calls) · "
        f"<span{' class=err' if t.errors else ''}>{len(t.errors)} errors</span> · "
        f"{_seconds(t.total_time) or 'time unknown'}</div>"
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

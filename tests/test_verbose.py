"""VerbosePrinter renders every event to a plain-text console we can read back."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from rlm.core.types import (
    CodeBlock,
    ModelUsageSummary,
    REPLResult,
    RLMChatCompletion,
    RLMIteration,
    RLMMetadata,
    UsageSummary,
)
from rlm.logger.verbose import VerbosePrinter


def make_printer(**kwargs) -> tuple[VerbosePrinter, io.StringIO]:
    buffer = io.StringIO()
    console = Console(file=buffer, width=100, force_terminal=False, color_system=None)
    return VerbosePrinter(console=console, **kwargs), buffer


def sub_call(
    response: str = "sub answer", *, prompt: object = "sub prompt", error: str | None = None
) -> RLMChatCompletion:
    return RLMChatCompletion(
        root_model="sub-model",
        prompt=prompt,
        response=response,
        usage_summary=UsageSummary(),
        execution_time=0.25,
        error=error,
    )


def block(
    code: str = "print('hi')",
    stdout: str = "",
    stderr: str = "",
    *,
    error: str | None = None,
    calls: list[RLMChatCompletion] | None = None,
    execution_time: float | None = 0.5,
) -> CodeBlock:
    result = REPLResult(
        stdout=stdout,
        stderr=stderr,
        locals={},
        execution_time=execution_time,
        rlm_calls=calls,
        error=error,
    )
    return CodeBlock(code=code, result=result)


def usage() -> UsageSummary:
    return UsageSummary(
        model_usage_summaries={
            "gpt-priced": ModelUsageSummary(
                total_calls=3,
                total_input_tokens=12_345,
                total_output_tokens=678,
                total_cost=0.0421,
                total_cached_tokens=2_048,
            ),
            "local-free": ModelUsageSummary(
                total_calls=7, total_input_tokens=900, total_output_tokens=55
            ),
        }
    )


# --------------------------------------------------------------------------
# Header
# --------------------------------------------------------------------------


def test_header_shows_every_field():
    printer, out = make_printer()
    printer.print_header(
        backend="openai",
        model="gpt-5-mini",
        environment="subprocess",
        max_iterations=30,
        max_depth=2,
        context_type="list",
        context_length=1_234_567,
        other_backends=["anthropic", "vllm"],
    )
    text = out.getvalue()
    for expected in (
        "openai",
        "gpt-5-mini",
        "subprocess",
        "30",
        "2",
        "list",
        "1,234,567 characters",
        "anthropic, vllm",
    ):
        assert expected in text


def test_header_leaves_out_missing_optional_fields():
    printer, out = make_printer()
    printer.print_header(
        backend="openai", model="m", environment="local", max_iterations=5, max_depth=1
    )
    text = out.getvalue()
    assert "Context" not in text
    assert "Other backends" not in text


def test_metadata_prints_a_header():
    printer, out = make_printer()
    metadata = RLMMetadata(
        root_model="root-model",
        max_depth=3,
        max_iterations=17,
        backend="scripted",
        backend_kwargs={"api_key": "secret"},
        environment_type="docker",
        environment_kwargs={},
        other_backends=["openai"],
    )
    printer.print_metadata(metadata)
    text = out.getvalue()
    for expected in ("root-model", "17", "scripted", "docker", "openai"):
        assert expected in text
    assert "secret" not in text


# --------------------------------------------------------------------------
# Model output is text, never markup
# --------------------------------------------------------------------------


def test_markup_in_model_output_is_printed_literally():
    printer, out = make_printer()
    response = "Look: [bold]loud[/bold] and [/] and [red]x[/red] and [link=http://x]y[/link]"
    printer.print_completion(response, iteration_time=1.5)
    text = out.getvalue()
    assert "[bold]loud[/bold]" in text
    assert "[/]" in text
    assert "[red]x[/red]" in text
    assert "[link=http://x]y[/link]" in text
    assert "1.50s" in text


def test_markup_in_names_and_program_output_is_printed_literally():
    printer, out = make_printer()
    printer.print_header(
        backend="[b]openai",
        model="model[/]",
        environment="local",
        max_iterations=1,
        max_depth=1,
    )
    printer.print_code_execution(block("x = '[/]'", stdout="[green]ok[/green]\n", stderr="[/]"))
    printer.print_subcall("[i]m", "[/]prompt", "[bold]reply")
    printer.print_limit_exceeded("[red]tokens", "[/] too many")
    printer.print_final_answer("[bold]42[/bold]")
    text = out.getvalue()
    for literal in (
        "[b]openai",
        "model[/]",
        "x = '[/]'",
        "[green]ok[/green]",
        "[i]m",
        "[/]prompt",
        "[bold]reply",
        "[red]tokens",
        "[/] too many",
        "[bold]42[/bold]",
    ):
        assert literal in text


def test_markup_is_not_applied_on_a_colour_terminal():
    buffer = io.StringIO()
    console = Console(file=buffer, width=100, force_terminal=True, color_system="standard")
    printer = VerbosePrinter(console=console)
    printer.print_completion("before [reverse]inverted[/reverse] after")
    text = buffer.getvalue()
    assert "[reverse]inverted[/reverse]" in text
    assert "\x1b[7m" not in text  # the ANSI code Rich would emit for "reverse"


def test_terminal_control_characters_are_made_visible():
    printer, out = make_printer()
    printer.print_completion("red \x1b[31mtext\x07 done")
    printer.print_code_execution(block(stdout="\x1b]0;title\x07\n"))
    text = out.getvalue()
    assert "\x1b" not in text
    assert "\x07" not in text
    assert "\\x1b[31mtext\\x07 done" in text
    assert "\\x1b]0;title\\x07" in text


# --------------------------------------------------------------------------
# Code execution
# --------------------------------------------------------------------------


def test_code_execution_shows_code_stdout_and_time():
    printer, out = make_printer()
    printer.print_code_execution(
        block("chunk = context[:100]\nprint(len(chunk))", stdout="100\n", execution_time=0.125)
    )
    text = out.getvalue()
    assert "chunk = context[:100]" in text
    assert "print(len(chunk))" in text
    assert "stdout" in text
    assert "100" in text
    assert "0.12s" in text or "0.13s" in text
    assert "stderr" not in text


def test_code_execution_shows_stderr_and_error():
    printer, out = make_printer()
    printer.print_code_execution(
        block(
            "1/0",
            stderr="Traceback (most recent call last):\nZeroDivisionError: division by zero",
            error="ZeroDivisionError: division by zero",
        )
    )
    text = out.getvalue()
    assert "stderr" in text
    assert "Traceback (most recent call last):" in text
    assert "error" in text
    assert text.count("ZeroDivisionError: division by zero") == 2


def test_stderr_is_styled_as_an_error():
    buffer = io.StringIO()
    console = Console(file=buffer, width=100, force_terminal=True, color_system="standard")
    VerbosePrinter(console=console).print_code_execution(block(stderr="warning: careful"))
    text = buffer.getvalue()
    assert "\x1b[31m" in text  # red
    assert "warning: careful" in text


def test_ten_megabyte_stdout_is_cut_and_the_cut_is_announced():
    limit = 4000
    printer, out = make_printer(max_display_chars=limit)
    stdout = "HEAD-MARK" + "x" * 10_000_000 + "TAIL-MARK"
    printer.print_code_execution(block("print(big)", stdout=stdout))
    text = out.getvalue()
    assert "HEAD-MARK" in text
    assert "TAIL-MARK" in text
    assert "characters cut" in text
    assert len(text) < 4 * limit


def test_many_line_stdout_and_huge_stderr_stay_bounded():
    limit = 1000
    printer, out = make_printer(max_display_chars=limit)
    stdout = "line of output\n" * 700_000
    stderr = "E" * 5_000_000
    printer.print_code_execution(block(stdout=stdout, stderr=stderr, error=stderr))
    text = out.getvalue()
    assert text.count("characters cut") == 3
    # Three bounded sections plus borders and the code: far below the 15 MB given.
    assert len(text) < 12 * limit


def test_long_response_code_and_final_answer_are_cut():
    limit = 500
    printer, out = make_printer(max_display_chars=limit)
    printer.print_completion("r" * 1_000_000)
    printer.print_code_execution(block("# " + "c" * 1_000_000))
    printer.print_final_answer("a" * 1_000_000)
    printer.print_limit_exceeded("tokens", "d" * 1_000_000)
    text = out.getvalue()
    assert text.count("characters cut") == 4
    assert len(text) < 4 * 4 * limit


# --------------------------------------------------------------------------
# Sub-calls
# --------------------------------------------------------------------------


def test_subcall_is_one_line_with_bounded_previews():
    printer, out = make_printer()
    printer.print_subcall(
        model="gpt-5-nano",
        prompt_preview="summarise\nthis chunk " + "p" * 10_000,
        response_preview="the summary " + "s" * 10_000,
        execution_time=1.25,
        depth=1,
    )
    text = out.getvalue()
    assert text.count("↳") == 1
    assert text.count("\n") <= 4  # one line of text, wrapped at width 100
    assert "gpt-5-nano" in text
    assert "1.25s" in text
    assert "depth 1" in text
    words = " ".join(text.split())  # undo the wrapping
    assert "summarise this chunk" in words
    assert "-> the summary" in words
    assert "characters cut" in text
    assert len(text) < 400


def test_subcall_error_is_shown():
    printer, out = make_printer()
    printer.print_subcall("m", "prompt", "", error="Error: rate limited")
    text = out.getvalue()
    assert "error" in text
    assert "Error: rate limited" in text


def test_code_execution_prints_one_line_per_subcall():
    printer, out = make_printer()
    calls = [
        sub_call("first reply", prompt="plain prompt"),
        sub_call("second reply", prompt=[{"role": "user", "content": "message prompt"}]),
        sub_call("", prompt="failing prompt", error="Error: boom"),
    ]
    printer.print_code_execution(block(calls=calls))
    text = out.getvalue()
    subcall_lines = [line for line in text.splitlines() if "sub-call" in line]
    assert len(subcall_lines) == 3
    assert "plain prompt" in subcall_lines[0] and "first reply" in subcall_lines[0]
    assert "message prompt" in subcall_lines[1] and "second reply" in subcall_lines[1]
    assert "Error: boom" in subcall_lines[2]
    assert all("sub-model" in line for line in subcall_lines)


def test_a_huge_subcall_prompt_object_is_not_rendered_whole():
    printer, out = make_printer()
    huge_list = [{"x": "y" * 1000}] * 10_000
    printer.print_code_execution(block(calls=[sub_call(prompt=huge_list)]))
    text = out.getvalue()
    assert "<list of 10000 items>" in text
    assert len(text) < 2000


def test_very_many_subcalls_are_summarised():
    printer, out = make_printer()
    printer.print_code_execution(block(calls=[sub_call() for _ in range(1000)]))
    text = out.getvalue()
    subcall_lines = [line for line in text.splitlines() if "↳ sub-call" in line]
    assert 0 < len(subcall_lines) < 100
    assert f"{1000 - len(subcall_lines):,} more sub-calls" in text


# --------------------------------------------------------------------------
# Iterations, limits, compaction, final answer
# --------------------------------------------------------------------------


def test_iteration_prints_start_response_and_blocks():
    printer, out = make_printer()
    iteration = RLMIteration(
        prompt=[{"role": "user", "content": "q"}],
        response="I will look.\n```repl\nprint(len(context))\n```",
        code_blocks=[block("print(len(context))", stdout="42\n"), block("x = 1")],
        iteration_time=2.0,
    )
    printer.print_iteration(iteration, 4)
    text = out.getvalue()
    assert "Iteration 4" in text
    assert "I will look." in text
    assert "2.00s" in text
    assert text.count("Code execution") == 2
    assert "42" in text
    assert "x = 1" in text
    assert text.index("Iteration 4") < text.index("I will look.") < text.index("x = 1")


def test_iteration_start():
    printer, out = make_printer()
    printer.print_iteration_start(1)
    assert "Iteration 1" in out.getvalue()


def test_budget_and_limit_messages():
    printer, out = make_printer()
    printer.print_budget_exceeded(spent=1.2345, budget=1.0)
    printer.print_limit_exceeded("timeout", "ran 31.0s of a 30s limit")
    text = out.getvalue()
    assert "Budget exceeded" in text
    assert "$1.2345" in text
    assert "$1.0000" in text
    assert "timeout" in text
    assert "ran 31.0s of a 30s limit" in text


def test_compaction_status_and_compaction():
    printer, out = make_printer()
    printer.print_compaction_status(
        current_tokens=90_000, threshold_tokens=85_000, max_tokens=100_000
    )
    printer.print_compaction_status(current_tokens=10, threshold_tokens=8, max_tokens=0)
    printer.print_compaction()
    printer.print_history_trimmed(7, 8192)
    printer.print_history_trimmed(2, None)
    text = out.getvalue()
    assert "90,000" in text
    assert "85,000" in text
    assert "100,000" in text
    assert "90%" in text
    assert "Compacting" in text
    flat = " ".join(text.split())
    assert "too long for the window (8,192 tokens): dropped the 7 oldest messages" in flat
    assert "too long for the window: dropped the 2 oldest messages" in flat


def test_final_answer_accepts_any_object():
    printer, out = make_printer()
    printer.print_final_answer({"answer": 42})
    printer.print_final_answer("plain text answer")
    text = out.getvalue()
    assert "Final answer" in text
    assert "{'answer': 42}" in text
    assert "plain text answer" in text


# --------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------


def summary_rows(text: str) -> dict[str, str]:
    rows = {}
    for line in text.splitlines():
        for name in ("gpt-priced", "local-free", "Total"):
            if f" {name} " in line:
                rows[name] = line
    return rows


def test_summary_table_has_per_model_usage_and_totals():
    printer, out = make_printer()
    printer.print_summary(total_iterations=6, total_time=42.5, usage_summary=usage())
    text = out.getvalue()
    assert "Iterations: 6" in text
    assert "42.50s" in text
    for heading in ("Calls", "Input tokens", "Output tokens", "Cached tokens", "Cost"):
        assert heading in text
    rows = summary_rows(text)
    priced = rows["gpt-priced"].split()
    for cell in ("3", "12,345", "678", "2,048", "$0.0421"):
        assert cell in priced
    free = rows["local-free"].split()
    for cell in ("7", "900", "55", "0", "unknown"):
        assert cell in free
    assert "$0" not in rows["local-free"]
    total = rows["Total"].split()
    for cell in ("10", "13,245", "733", "2,048", "$0.0421"):
        assert cell in total
    assert "unknown" in rows["Total"]  # part of the total cost is unknown


def test_summary_accepts_the_dict_form():
    from_object, out_object = make_printer()
    from_dict, out_dict = make_printer()
    from_object.print_summary(2, 1.0, usage())
    from_dict.print_summary(2, 1.0, usage().to_dict())
    assert out_dict.getvalue() == out_object.getvalue()


def test_summary_total_cost_is_unknown_when_no_model_is_priced():
    printer, out = make_printer()
    unpriced = UsageSummary(
        model_usage_summaries={"local-free": ModelUsageSummary(1, 10, 2, None, 0)}
    )
    printer.print_summary(1, 0.5, unpriced)
    rows = summary_rows(out.getvalue())
    assert "unknown" in rows["Total"]
    assert "$" not in out.getvalue()


def test_summary_with_no_usage():
    printer, out = make_printer()
    printer.print_summary(0, 0.0, {})
    assert "Total" in out.getvalue()


# --------------------------------------------------------------------------
# Disabled printer and construction
# --------------------------------------------------------------------------


def call_every_event(printer: VerbosePrinter) -> None:
    printer.print_header(
        backend="openai",
        model="m",
        environment="local",
        max_iterations=1,
        max_depth=1,
        context_type="str",
        context_length=5,
        other_backends=["x"],
    )
    printer.print_metadata(RLMMetadata("m", 1, 1, "openai", {}, "local", {}))
    printer.print_iteration_start(1)
    printer.print_completion("response", 0.1)
    printer.print_code_execution(block(stdout="out", stderr="err", calls=[sub_call()]))
    printer.print_subcall("m", "p", "r", 0.1, None, error=None, depth=1)
    printer.print_iteration(RLMIteration("p", "r", [block()]), 1)
    printer.print_budget_exceeded(2.0, 1.0)
    printer.print_limit_exceeded("tokens", "details")
    printer.print_compaction_status(1, 2, 3)
    printer.print_compaction()
    printer.print_history_trimmed(1, None)
    printer.print_final_answer("answer")
    printer.print_summary(1, 1.0, usage())


def test_disabled_printer_prints_nothing():
    printer, out = make_printer(enabled=False)
    assert isinstance(printer, VerbosePrinter)
    assert printer.enabled is False
    call_every_event(printer)
    assert out.getvalue() == ""


def test_disabled_printer_replaces_every_event_method():
    printer = VerbosePrinter(enabled=False)
    event_methods = [name for name in vars(VerbosePrinter) if name.startswith("print_")]
    assert len(event_methods) == 14
    for name in event_methods:
        assert name in vars(printer), f"{name} still runs on a disabled printer"


def test_enabled_printer_prints_every_event():
    printer, out = make_printer()
    assert printer.enabled is True
    call_every_event(printer)
    assert len(out.getvalue()) > 0


def test_default_console_writes_to_stdout(capsys):
    VerbosePrinter().print_iteration_start(3)
    captured = capsys.readouterr()
    assert "Iteration 3" in captured.out
    assert captured.err == ""


def test_max_display_chars_must_be_positive():
    with pytest.raises(ValueError, match="max_display_chars"):
        VerbosePrinter(max_display_chars=0)


# --------------------------------------------------------------------------
# rlms' signatures
# --------------------------------------------------------------------------


def test_header_takes_rlms_positional_arguments():
    printer, out = make_printer()
    printer.print_header("openai", "gpt-5-nano", "local", 30, 2, ["anthropic"])
    text = out.getvalue()
    for value in ("openai", "gpt-5-nano", "local", "30", "2", "anthropic"):
        assert value in text


def test_subcall_with_rlms_metadata_is_an_rlm_subcall():
    printer, out = make_printer()
    trajectory = {"run_metadata": {"depth": 1}, "iterations": [{}, {}, {}]}
    printer.print_subcall("child-model", "question", "answer", 0.5, metadata=trajectory)
    text = out.getvalue()
    assert "RLM sub-call" in text
    assert "3 iterations" in text
    assert "depth 1" in text
    plain, plain_out = make_printer()
    plain.print_subcall("m", "q", "a", 0.5, None)
    assert "RLM sub-call" not in plain_out.getvalue()


def test_summary_without_usage_as_rlms_allows():
    printer, out = make_printer()
    printer.print_summary(4, 2.5)
    text = out.getvalue()
    assert "Iterations: 4" in text
    assert "Input tokens" not in text


def test_registered_secrets_never_reach_the_terminal():
    import io

    from rich.console import Console

    from rlm.logger.verbose import VerbosePrinter
    from rlm.utils.rlm_utils import register_secrets

    register_secrets("sk-verbose-test-secret-9f2")
    printer = VerbosePrinter(enabled=True)
    out = io.StringIO()
    printer.console = Console(file=out, force_terminal=False, width=100)
    printer.print_final_answer("leaked sk-verbose-test-secret-9f2 here")
    assert "sk-verbose-test-secret-9f2" not in out.getvalue()
    assert "[REDACTED]" in out.getvalue()

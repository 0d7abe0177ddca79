"""Logs that grow linearly (issue 15): the default file is rlms' format, produced without
re-serialising the history; the compact format stores each iteration's new messages only,
reads back as the same trajectory, and exports to the default file.

Every run is real: the scripted model through a real handler and LocalREPL. A second
logger in the compact format hears the same run's events (``RLM.subscribe``), so both
files record the same iterations and differ only where the format does, and in the
time at which each line was written.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from rlm import RLM, load_trajectory
from rlm.cli import main
from rlm.logger import RLMLogger
from rlm.logger.rlm_logger import LogFormatError, read_runs
from rlm.trajectory import load_trajectories
from rlm.trajectory.export import export_log
from rlm.utils.exceptions import ConfigurationError
from rlm.viewer.server import LogLibrary

CONTEXT = "The code word is PELICAN. " + "filler. " * 300
ANSWER = "```repl\nanswer['content'] = 'PELICAN'\nanswer['ready'] = True\n```"
SCRIPT = [
    "Look first.\n```repl\nhead = context[:30]\nprint(head)\nw = llm_query('word in: ' + head)\n```",
    "```repl\nprint(undefined_name)\n```",
    "Two blocks.\n```repl\nnums = list(range(5))\nprint(nums)\n```\n```repl\nprint('é' * 300)\n```",
    ANSWER,
]
TIMESTAMP = re.compile(r'"timestamp": "[^"]*"')


def both_formats(tmp_path: Path, script, context: str = CONTEXT, **kwargs):
    """One real run logged by a default logger and by a compact one: (result, default
    logger, compact logger)."""
    default = RLMLogger(log_dir=tmp_path / "default")
    compact = RLMLogger(log_dir=tmp_path / "compact", format="compact")
    engine = RLM(
        backend="scripted",
        backend_kwargs={"responses": script, "sub_responses": lambda m: "PELICAN"},
        logger=default,
        **kwargs,
    )
    engine.subscribe(compact.handle_event)
    result = engine.completion(context)
    return result, default, compact


def lines_of(path: str | Path) -> list[str]:
    return Path(path).read_text(encoding="utf-8").splitlines(keepends=True)


def without_timestamps(value):
    if isinstance(value, dict):
        return {k: without_timestamps(v) for k, v in value.items() if k != "timestamp"}
    if isinstance(value, list):
        return [without_timestamps(v) for v in value]
    return value


def printing_script(iterations: int, size: int = 1000) -> list[str]:
    return [f"```repl\nprint('x' * {size - 1})\n```"] * (iterations - 1) + [ANSWER]


# ---------------------------------------------------------------------------
# The default format
# ---------------------------------------------------------------------------


def test_default_lines_are_json_dumps_of_the_trajectory(tmp_path):
    """Each line is exactly ``json.dumps`` of its record (the format rlms' readers parse),
    however the writer assembled it."""
    result, default, _ = both_formats(tmp_path, list(SCRIPT))
    assert result.response == "PELICAN"
    lines = lines_of(default.log_file_path)
    trajectory = result.metadata
    records = trajectory["iterations"]
    assert len(lines) == 1 + len(records) == 5
    for line, record in zip(lines[1:], records, strict=True):
        assert line == json.dumps(record, ensure_ascii=False, default=repr) + "\n"
    metadata = json.loads(lines[0])
    assert line_keys(lines[0])[:2] == ["type", "timestamp"]
    expected = {"type": "metadata", "timestamp": metadata["timestamp"]}
    expected.update({k: v for k, v in trajectory["run_metadata"].items() if k != "isolation"})
    assert lines[0] == json.dumps(expected, ensure_ascii=False, default=repr) + "\n"
    # Every prompt is whole, and each one extends the one before it.
    prompts = [json.loads(line)["prompt"] for line in lines[1:]]
    for before, after in zip(prompts, prompts[1:], strict=False):
        assert after[: len(before)] == before and len(after) > len(before)


def line_keys(line: str) -> list[str]:
    return list(json.loads(line))


def test_the_logger_shares_each_message_between_iterations(tmp_path):
    """The in-memory trajectory holds one prompt list per iteration, as sent, but each
    message once: the snapshots share their message dicts."""
    result, _, _ = both_formats(tmp_path, printing_script(6))
    prompts = [it["prompt"] for it in result.metadata["iterations"]]
    for before, after in zip(prompts, prompts[1:], strict=False):
        assert all(a is b for a, b in zip(before, after, strict=False))
    assert len({id(p) for p in prompts}) == len(prompts)


def test_unknown_format_is_refused():
    with pytest.raises(ConfigurationError, match=r"format='jsonl'.*'rlms', 'compact'"):
        RLMLogger(format="jsonl")


# ---------------------------------------------------------------------------
# The compact format
# ---------------------------------------------------------------------------


def test_compact_log_loads_as_the_same_trajectory(tmp_path):
    result, default, compact = both_formats(tmp_path, list(SCRIPT))
    assert compact.format == "compact"
    compact_lines = [json.loads(line) for line in lines_of(compact.log_file_path)]
    assert compact_lines[0]["log_format"] == "compact"
    assert all("prompt" not in line for line in compact_lines[1:])
    assert [line["prompt_kept"] for line in compact_lines[1:]][0] == 0

    from_default = load_trajectory(default.log_file_path)
    from_compact = load_trajectory(compact.log_file_path)
    assert not from_compact.warnings
    assert without_timestamps(from_compact.to_dict()) == without_timestamps(from_default.to_dict())
    assert "log_format" not in from_compact.metadata

    def comparable(iteration):
        return dataclasses.replace(iteration, timestamp=None, raw=without_timestamps(iteration.raw))

    assert [comparable(i) for i in from_compact.iterations] == [
        comparable(i) for i in from_default.iterations
    ]
    assert from_compact.final_answer == "PELICAN"
    assert from_compact.iterations[0].calls[0].response == "PELICAN"
    assert from_compact.iterations[1].failed
    # What the model was sent, rebuilt exactly, and the in-memory trajectory the same in
    # both formats.
    assert [it.prompt for it in from_compact.iterations] == [
        it["prompt"] for it in result.metadata["iterations"]
    ]
    assert without_timestamps(compact.get_trajectory()) == without_timestamps(
        default.get_trajectory()
    )
    # read_runs (the logger's own reader) agrees.
    assert without_timestamps(read_runs(compact.log_file_path)) == without_timestamps(
        read_runs(default.log_file_path)
    )


def test_compact_log_of_several_completions_and_the_final_request(tmp_path):
    """Iteration numbers restart for each completion, and so does the prompt: a forced
    final answer (max_iterations reached) and a second completion read back whole."""
    script = iter([*printing_script(3)[:-1], "best guess", ANSWER])
    _, default, compact = both_formats(tmp_path, script, max_iterations=2)
    engine = RLM(
        backend="scripted",
        backend_kwargs={"responses": [ANSWER], "sub_responses": ["x"]},
        logger=compact,
    )
    engine.completion("second")
    runs = load_trajectories(compact.log_file_path)
    assert [len(run.iterations) for run in runs] == [3, 1]
    assert runs[0].final_answer == "best guess"
    first_default = load_trajectory(default.log_file_path)
    assert [it.prompt for it in runs[0].iterations] == [
        it.prompt for it in first_default.iterations
    ]
    assert runs[1].iterations[0].prompt[-1]["role"] == "user"
    assert json.loads(lines_of(compact.log_file_path)[-1])["prompt_kept"] == 0


def test_compact_log_grows_by_the_same_bytes_each_iteration(tmp_path):
    """Each compact line holds one iteration's new messages, so its size does not depend
    on how long the run has been going; each default line repeats the history."""
    _, default, compact = both_formats(
        tmp_path, printing_script(40), context="short", max_iterations=40
    )
    compact_sizes = [len(line.encode()) for line in lines_of(compact.log_file_path)]
    default_sizes = [len(line.encode()) for line in lines_of(default.log_file_path)]
    # Lines 2..39 are iterations of the same cell (the first has the system prompt, the
    # last the answer). Only numbers differ: the iteration number, times, timestamps.
    middle = compact_sizes[2:-1]
    assert len(middle) == 38
    assert max(middle) - min(middle) <= 64, middle
    assert min(middle) >= 2000  # the 1 KB printed, in the block and in the next message
    growth = [b - a for a, b in zip(default_sizes[2:-2], default_sizes[3:-1], strict=True)]
    assert min(growth) >= 1000  # the default line repeats everything before it
    assert sum(compact_sizes) < sum(default_sizes) / 5


def test_the_viewer_and_replay_read_a_compact_log(tmp_path):
    _, default, compact = both_formats(tmp_path, list(SCRIPT))
    views = {}
    for name, logger in (("default", default), ("compact", compact)):
        library = LogLibrary(logger.log_file_path)
        (run,) = library.runs()
        document = library.run_document(run["id"], "")
        del document["breadcrumbs"], document["name"]  # the file's name
        del document["facts"]["date"]  # the metadata line's timestamp
        views[name] = {
            "run": {k: v for k, v in run.items() if k not in ("file", "timestamp")},
            "document": without_timestamps(document),
            "prompts": [library.prompt_document(run["id"], "", i) for i in range(4)],
        }
    assert views["compact"] == views["default"]
    assert views["compact"]["prompts"][3]["messages"][0]["role"] == "system"
    assert (
        load_trajectory(compact.log_file_path).compare(context=CONTEXT, environment="local") is None
    )


def test_a_compact_log_with_a_missing_line_loads_with_a_warning(tmp_path):
    _, _, compact = both_formats(tmp_path, printing_script(5))
    lines = lines_of(compact.log_file_path)
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_text("".join(lines[:2] + lines[3:]), encoding="utf-8")
    trajectory = load_trajectory(damaged)
    assert len(trajectory.iterations) == 4
    assert any("a line before it is missing" in w for w in trajectory.warnings)


# ---------------------------------------------------------------------------
# rlm export
# ---------------------------------------------------------------------------


def test_export_of_a_compact_log_is_the_default_log(tmp_path):
    _, default, compact = both_formats(tmp_path, list(SCRIPT))
    out = tmp_path / "exported.jsonl"
    assert export_log(compact.log_file_path, out) == 5
    exported, expected = lines_of(out), lines_of(default.log_file_path)
    # Field for field...
    assert [without_timestamps(json.loads(x)) for x in exported] == [
        without_timestamps(json.loads(x)) for x in expected
    ]
    # ...and byte for byte but for the time each line was written.
    assert [TIMESTAMP.sub("T", x) for x in exported] == [TIMESTAMP.sub("T", x) for x in expected]
    assert out.stat().st_mode & 0o777 == 0o600
    # A default log exports to itself; and back to compact, to the compact log.
    again = tmp_path / "again.jsonl"
    export_log(default.log_file_path, again)
    assert again.read_bytes() == Path(default.log_file_path).read_bytes()
    recompacted = tmp_path / "compact-again.jsonl"
    export_log(default.log_file_path, recompacted, format="compact")
    assert [TIMESTAMP.sub("T", x) for x in lines_of(recompacted)] == [
        TIMESTAMP.sub("T", x) for x in lines_of(compact.log_file_path)
    ]


def test_export_reads_the_public_rlms_fixtures_unchanged(tmp_path):
    fixtures = Path(__file__).parent / "fixtures"
    for name in ("rlms_0_1_1.jsonl", "rlms_0_1_3.jsonl"):
        compact = tmp_path / f"compact-{name}"
        export_log(fixtures / name, compact, format="compact")
        back = tmp_path / f"back-{name}"
        export_log(compact, back)
        assert [json.loads(x) for x in lines_of(back)] == [
            json.loads(x) for x in lines_of(fixtures / name) if x.strip()
        ]


def test_cli_export(tmp_path, capsys):
    _, default, compact = both_formats(tmp_path, list(SCRIPT))
    out = tmp_path / "out.jsonl"
    assert main(["export", "--format", "rlms", compact.log_file_path, str(out)]) == 0
    assert "5 records" in capsys.readouterr().err
    assert [TIMESTAMP.sub("T", x) for x in lines_of(out)] == [
        TIMESTAMP.sub("T", x) for x in lines_of(default.log_file_path)
    ]
    assert main(["export", compact.log_file_path, "-"]) == 0
    assert capsys.readouterr().out.count('"type": "iteration"') == 4


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("hello, world\n", r"line 1 is not JSON .*not an RLM trajectory log"),
        ('{"type": "metadata"}\n[1, 2]\n', r"line 2 holds a JSON list, not a record"),
        ("\n\n", r"holds no metadata or iteration records"),
        ('{"some": "record"}\n', r"holds no metadata or iteration records"),
        (
            '{"type": "iteration", "iteration": 2, "prompt_kept": 3, "prompt_new": []}\n',
            r"line 1: iteration 2 repeats 3 messages of the previous prompt, which has 0",
        ),
        (
            '{"type": "iteration", "prompt_kept": "all", "prompt_new": []}\n',
            r"prompt_kept is 'all'",
        ),
    ],
)
def test_export_of_a_bad_file_says_what_is_wrong(tmp_path, capsys, content, message):
    source = tmp_path / "bad.jsonl"
    source.write_text(content, encoding="utf-8")
    out = tmp_path / "out.jsonl"
    with pytest.raises(LogFormatError, match=message):
        export_log(source, out)
    assert not out.exists() and list(tmp_path.iterdir()) == [source]
    assert main(["export", str(source), str(out)]) == 1
    assert re.search(message, capsys.readouterr().err)


def test_export_refuses_a_missing_file_binary_data_and_itself(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="no such log file"):
        export_log(tmp_path / "missing.jsonl", tmp_path / "out.jsonl")
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(LogFormatError, match="not UTF-8 text"):
        export_log(binary, tmp_path / "out.jsonl")
    _, default, _ = both_formats(tmp_path, [ANSWER])
    with pytest.raises(ValueError, match="is the log being exported"):
        export_log(default.log_file_path, default.log_file_path)
    assert main(["export", "--format", "xml", default.log_file_path, "x"]) == 2
    assert "invalid choice: 'xml'" in capsys.readouterr().err

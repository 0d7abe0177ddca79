"""benchmarks/longcontext: generators, scorers, the oracle through the real loop, the runner
(end to end, resume, bad arguments), and the rlms arm when an rlms interpreter is here."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.longcontext import arms, oracle, run, tasks  # noqa: E402
from benchmarks.longcontext.server import Tokens  # noqa: E402
from rlm import RLM  # noqa: E402
from rlm.logger import RLMLogger  # noqa: E402

RUNNER = ROOT / "benchmarks" / "longcontext" / "run.py"
SIZE = 20000


def _messages(context: str) -> list[tuple[str, str, str]]:
    return [(m.group(1), m.group(2), m.group(4)) for m in tasks.MESSAGE_RE.finditer(context)]


# -- generators ----------------------------------------------------------------------------


@pytest.mark.parametrize("family", tasks.FAMILIES)
def test_a_task_is_a_pure_function_of_family_size_and_seed(family):
    first, again = tasks.generate(family, SIZE, 3), tasks.generate(family, SIZE, 3)
    assert (first.context, first.question, first.gold) == (
        again.context,
        again.question,
        again.gold,
    )
    other = tasks.generate(family, SIZE, 4)
    assert other.context != first.context
    bigger = tasks.generate(family, 4 * SIZE, 3)
    for task, size in ((first, SIZE), (bigger, 4 * SIZE)):
        assert size - 700 <= len(task.context) <= size + 200, (family, size, len(task.context))
    # The spec is JSON and holds everything but the context.
    assert json.loads(json.dumps(first.spec()))["gold"] == json.loads(json.dumps(first.gold))


@pytest.mark.parametrize("seed", range(3))
def test_the_needle_is_in_the_haystack_once_with_its_distractors(seed):
    task = tasks.generate("niah", SIZE, seed)
    assert task.info["haystack"] == tasks.HAYSTACKS[seed]
    needle = tasks.NEEDLE.format(name=task.info["warehouse"], code=task.gold)
    assert task.context.count(needle) == 1
    assert task.info["warehouse"] in task.question and task.gold not in task.question
    for code in task.candidates:
        assert code in task.context and code != task.gold
    depth = task.context.index(needle) / len(task.context)
    assert abs(depth - task.info["depth"]) < 0.05


@pytest.mark.parametrize("seed", range(4))
def test_multihop_facts_are_linked_and_far_apart(seed):
    task = tasks.generate("multihop", 4 * SIZE, seed)
    chain = task.info["chain"]
    assert len(chain) == task.info["hops"] == (2 if seed % 2 == 0 else 3)
    positions = sorted(task.context.index(fact) for fact in chain)
    assert all(task.context.count(fact) == 1 for fact in chain)
    gaps = [b - a for a, b in zip(positions, positions[1:], strict=False)]
    assert min(gaps) > 0.25 * len(task.context) / len(chain)
    assert chain[-1].endswith(f" in {task.gold}.")
    person = chain[0].split(" works for ")[0].split(" leads the project ")[0]
    assert f" {person} " in task.question
    # Distractors of the same shape make a plain grep ambiguous.
    assert task.context.count("is headquartered in") > 3
    assert task.gold not in task.candidates


@pytest.mark.parametrize("seed", range(3))
def test_oolong_gold_is_what_reading_every_message_gives(seed):
    task = tasks.generate("oolong", SIZE, seed)
    found = _messages(task.context)
    assert len(found) == task.info["messages"] > 100
    counts = Counter(tasks.topic_of(text) for _, _, text in found)
    assert None not in counts
    assert counts == Counter(task.info["counts"])
    question = task.info["question"]
    if question == "count":
        assert (
            task.kind == "number"
            and counts[re.search(r"about (\w+)\?", task.question)[1]] == task.gold
        )
    elif question == "most":
        (top, n), (_, second) = counts.most_common(2)
        assert task.gold == top and n > second
    else:
        assert task.gold in tasks.COMPARISONS
    # The topic is implied, never written: no message names any topic.
    for _, _, text in found:
        assert not any(name in text.lower() for name in tasks.TOPIC_NAMES), text


@pytest.mark.parametrize("seed", range(4))
def test_pairs_gold_is_what_reading_every_message_gives(seed):
    task = tasks.generate("pairs", 4 * SIZE, seed)
    wrote: dict[str, set[str]] = {}
    for _, user, text in _messages(task.context):
        wrote.setdefault(user, set()).add(tasks.topic_of(text))
    x, y = task.info["x"], task.info["y"]
    users = sorted(wrote)
    expected = []
    for i, a in enumerate(users):
        for b in users[i + 1 :]:
            if task.info["condition"] == "both":
                keep = x in wrote[a] and x in wrote[b]
            else:
                keep = (x in wrote[a] and y in wrote[b]) or (y in wrote[a] and x in wrote[b])
            if keep:
                expected.append([a, b])
    assert expected == task.gold and task.gold


def test_every_message_template_reads_back_as_its_topic_and_names_none():
    import random

    rng = random.Random(0)
    for topic, (_, templates) in tasks.TOPICS.items():
        for template in templates:
            assert not any(name in template.lower() for name in tasks.TOPIC_NAMES), template
        for _ in range(60):
            assert tasks.topic_of(tasks.message_text(rng, topic)) == topic


def test_generate_refuses_an_unknown_family_and_a_tiny_size():
    with pytest.raises(ValueError, match="unknown task family 'haiku'; accepted: niah, multihop"):
        tasks.generate("haiku", SIZE, 0)
    with pytest.raises(ValueError, match="at least 2000"):
        tasks.generate("niah", 100, 0)


# -- scorers -------------------------------------------------------------------------------


def test_numbers_score_three_quarters_to_the_power_of_the_miss():
    assert tasks.score_number("42", 42) == 1.0
    assert tasks.score_number("There are 40 such messages.", 42) == pytest.approx(0.75**2)
    assert tasks.score_number("1,204", 1200) == pytest.approx(0.75**4)
    assert tasks.score_number("I cannot tell", 42) == 0.0
    assert tasks.score("number", 7, None) == 0.0


def test_pairs_score_f1_in_any_order_and_format():
    gold = [["u1000", "u2000"], ["u1000", "u3000"], ["u2000", "u3000"], ["u3000", "u4000"]]
    assert (
        tasks.score_pairs("(u2000, u1000)\n(u1000, u3000)\n(u2000, u3000)\n(u3000, u4000)", gold)
        == 1.0
    )
    assert tasks.score_pairs("[('u1000', 'u2000'), ('u3000', 'u4000')]", gold) == pytest.approx(
        2 / 3
    )
    # Half right, half wrong: precision 1/2, recall 1/4.
    assert tasks.score_pairs("u1000 and u2000\nu1000 - u4000", gold) == pytest.approx(1 / 3)
    assert tasks.score_pairs("(u1000, u1000)", gold) == 0.0
    assert tasks.score_pairs("no pairs", gold) == 0.0


def test_exact_answers_must_name_the_gold_and_no_wrong_candidate():
    assert tasks.score_exact("The code is 4821-kq.", "4821-KQ", ["1234-AB"]) == 1.0
    assert tasks.score_exact("4821-KQ or maybe 1234-AB", "4821-KQ", ["1234-AB"]) == 0.0
    assert tasks.score_exact("14821-KQ", "4821-KQ") == 0.0
    assert tasks.score_exact("Porto", "Porto", ["Lyon", "Turin"]) == 1.0
    assert tasks.score_exact("less common", "more common", ["less common"]) == 0.0
    with pytest.raises(ValueError, match="unknown score kind"):
        tasks.score("fuzzy", "a", "a")


# -- the oracle through the real loop --------------------------------------------------------


def test_the_oracle_finds_the_needle_by_running_code_in_the_repl(tmp_path):
    task = tasks.generate("niah", 4 * 32768, 1)
    rlm = RLM(
        backend="scripted",
        backend_kwargs={"responses": oracle.scripted_reply},
        logger=RLMLogger(log_dir=str(tmp_path)),
        max_iterations=4,
    )
    result = rlm.completion(task.context, root_prompt=task.question)
    assert result.response == task.gold
    first = result.metadata["iterations"][0]
    assert task.gold not in json.dumps(first["prompt"])  # it came from the REPL, not the prompt
    (block,) = first["code_blocks"]
    assert "def solve(" in block["code"] and block["result"]["stdout"].strip() == task.gold


def test_the_direct_cut_fits_the_window():
    task = tasks.generate("niah", 4 * 32768, 0)
    model = arms.Model("scripted", {}, 8192, "test")
    prompt, shown = arms.direct_prompt(task.context, task.question, model, Tokens(4.0))
    assert 0 < shown < len(task.context)
    assert f"<text>\n{task.context[:shown]}\n</text>" in prompt and prompt.endswith(task.question)
    assert len(prompt) / 4 <= 8192 - arms.DIRECT_ANSWER_TOKENS


# -- the runner ----------------------------------------------------------------------------


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(RUNNER), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
    )


def test_the_oracle_grid_scores_one_through_the_runner_and_resumes(tmp_path):
    out = tmp_path / "out"
    grid = ["--oracle", "--sizes", "1,4", "--seeds", "0,1", "--out", str(out)]
    first = _run(*grid)
    assert first.returncode == 0, first.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    cells = {(c["family"], c["size"], c["arm"]): c for c in data["cells"]}
    assert len(cells) == len(tasks.FAMILIES) * 2 * 2
    for (family, _, arm), cell in cells.items():
        assert cell["n"] == 2 and cell["failures"] == 0
        if arm == "rlm":
            assert cell["score"] == 1.0, (family, cell)
    # The direct arm sees only the window: it loses what was cut at 4x.
    assert all(cells[(f, 4.0, "direct")]["score"] < 1.0 for f in ("multihop", "oolong"))
    for record in map(json.loads, (out / "runs" / "rlm.jsonl").read_text().splitlines()):
        models = record["usage_summary"]["model_usage_summaries"]
        # Two root turns: the code, then the answer dict set in the REPL.
        assert models["oracle"]["total_calls"] == 2, record
        if record["metadata"]["family"] in ("oolong", "pairs"):
            assert models[f"oracle{arms.SUB}"]["total_calls"] >= 3  # real sub-calls read it
    assert "| family | size | arm | score |" in first.stdout
    assert (out / "results.md").read_text().count("| rlm |") == 8
    if "No plots" not in first.stderr:
        assert sorted(p.name for p in (out / "plots").iterdir()) == sorted(
            f"{f}.png" for f in tasks.FAMILIES
        )

    # A rerun skips everything; a lost record (a crash) is the only task run again.
    lines = (out / "runs" / "rlm.jsonl").read_text().splitlines()
    again = _run(*grid)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[direct] 0 of 16 tasks to run" in again.stderr
    assert "[rlm] 0 of 16 tasks to run" in again.stderr
    assert (out / "runs" / "rlm.jsonl").read_text().splitlines() == lines
    (out / "runs" / "rlm.jsonl").write_text("\n".join(lines[1:]) + "\n" + lines[0][:40])
    third = _run(*grid)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "[rlm] 1 of 16 tasks to run" in third.stderr
    assert re.search(rf"\[rlm\] {json.loads(lines[0])['id']}: score 1.00", third.stderr)

    def scores(cells):
        return [(c["family"], c["size"], c["arm"], c["score"], c["n"]) for c in cells]

    assert scores(json.loads((out / "results.json").read_text())["cells"]) == scores(data["cells"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--families", "niah,haiku"],
            "unknown family 'haiku'; accepted: niah, multihop, oolong, pairs",
        ),
        (["--arms", "direct,gpt"], "unknown arm 'gpt'; accepted: direct, rlm, rlms"),
        (["--sizes", "1,zero"], "--sizes: '1,zero' is not a comma-separated list of floats"),
        (["--sizes", "0"], "--sizes must be > 0"),
        (["--sizes", "0.01"], "the smallest task is 2,000"),
        (["--arms", "rlms"], "--oracle cannot drive the rlms arm"),
        (["--model", "gpt-4o"], "--oracle uses its scripted model"),
        (["--max-iterations", "0"], "--max-iterations must be >= 1"),
        (["--min-score", "rlm"], "--min-score wants ARM=SCORE with ARM one of ['direct', 'rlm']"),
        (["--min-score", "rlm=high"], "--min-score 'rlm=high': 'high' is not a number"),
        (["--min-score", "rlm=2"], "scores run from 0 to 1"),
        (["--kv-reuse", "off"], "--kv-reuse off turns reuse off in the embedded model's server"),
        (["--kv-reuse", "maybe"], "argument --kv-reuse: invalid choice: 'maybe'"),
    ],
)
def test_a_bad_argument_is_refused_with_a_clear_message(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--oracle", "--out", str(tmp_path), *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_min_score_fails_the_run_on_a_cell_below_it(tmp_path):
    grid = ["--oracle", "--families", "multihop", "--sizes", "4", "--seeds", "0"]
    passed = _run(*grid, "--min-score", "rlm=1", "--out", str(tmp_path / "a"))
    assert passed.returncode == 0, passed.stderr[-3000:]
    # The direct arm sees only the window, so the 4x two-hop question is lost.
    missed = _run(*grid, "--min-score", "direct=1", "--out", str(tmp_path / "b"))
    assert missed.returncode == 3, missed.stderr[-3000:]
    assert "below --min-score: multihop 4x direct: score 0.00 < 1" in missed.stderr


def test_report_only_tables_what_the_folder_holds_and_runs_nothing(tmp_path):
    out = str(tmp_path / "out")
    first = _run("--oracle", "--families", "niah", "--sizes", "1", "--seeds", "0", "--out", out)
    assert first.returncode == 0, first.stderr[-3000:]
    wider = ["--oracle", "--families", "niah", "--sizes", "1,4", "--seeds", "0,1", "--out", out]
    written = (tmp_path / "out" / "results.md").read_text()
    table = _run(*wider, "--report-only", "--timeout", "5")
    assert table.returncode == 0, table.stderr[-3000:]
    assert (tmp_path / "out" / "results.md").read_text() == written  # the run's, kept
    assert "[rlm] 0 of 4 tasks to run" in table.stderr and "score" not in table.stderr
    assert table.stdout.count("| niah | 1x |") == 2 and "| niah | 4x |" not in table.stdout


def test_kvcache_adds_up_the_servers_prefix_hits_and_evaluation_times(tmp_path, capsys):
    """The lines llama_cpp.server writes per request (CI also reads a real run's log)."""
    from benchmarks.longcontext import kvcache

    log = tmp_path / "llama-server.log"
    log.write_text(
        "llama_perf_context_print: prompt eval time =  1000.00 ms /   100 tokens "
        "(   10.00 ms per token,   100.00 tokens per second)\n"
        "Llama.generate: 90 prefix-match hit, remaining 10 prompt tokens to eval\n"
        "llama_perf_context_print: prompt eval time =   100.00 ms /    10 tokens "
        "(   10.00 ms per token,   100.00 tokens per second)\n"
    )
    assert kvcache.read(log.read_text()) == {
        "requests": 2,
        "reused": 90,
        "evaluated": 110,
        "eval_s": 1.1,
        "s_per_token": 0.01,
    }
    assert kvcache.main([str(log)]) == 0
    shown = capsys.readouterr().out
    assert "| reused from the slot's prefix | 90 (45%) |" in shown
    assert "| with reuse off, estimated | 2 s (+1 s) |" in shown
    (tmp_path / "empty.log").write_text("INFO: started\n")
    assert kvcache.main([str(tmp_path / "empty.log")]) == 1
    (tmp_path / "zero.log").write_text("prompt eval time =     0.00 ms /     0 tokens\n")
    assert kvcache.main([str(tmp_path / "zero.log")]) == 1  # no tokens: said, no crash


def test_kv_reuse_off_is_refused_where_it_would_mean_nothing_or_mix_runs(tmp_path, capsys):
    def refused(*argv: str) -> str:
        with pytest.raises(SystemExit) as exit_info:
            run.main(["--kv-reuse", "off", *argv])
        assert exit_info.value.code == 2
        return capsys.readouterr().err

    provider = ["--backend", "openai", "--model", "m", "--out", str(tmp_path / "p")]
    assert "no such server runs" in refused(*provider)
    cache = ["--server-arg=--cache", "--server-arg=True", "--out", str(tmp_path / "c")]
    assert "the RAM cache would save and load every prompt's state" in refused(*cache)
    # A folder whose server reused the prefix (its log has timings, and no mark of the
    # reuse-off server) is not resumed with reuse off: the two would mix.
    (tmp_path / "on").mkdir()
    (tmp_path / "on" / "llama-server.log").write_text("prompt eval time = 1.00 ms / 1 tokens\n")
    grid = ["--families", "niah", "--sizes", "1", "--seeds", "0", "--arms", "rlm"]
    err = refused(*grid, "--out", str(tmp_path / "on"))
    assert "holds a run with --kv-reuse on; resume it with --kv-reuse on" in err
    assert not (tmp_path / "on" / "runs").exists()  # refused before anything ran


@pytest.mark.real_model
def test_kv_reuse_off_evaluates_every_prompt_whole_on_the_real_server(tmp_path, capsys):
    """The two servers the runner starts (--kv-reuse on, off), each asked the same two
    prompts that share a long prefix: only the first reuses it, and kvcache.py tables
    both logs side by side."""
    try:
        from tests.llama_server import llama_server, real_model_or_skip
    except ImportError:  # tests/ is not a package: pytest put it on sys.path
        from llama_server import llama_server, real_model_or_skip
    from benchmarks.longcontext import kvcache
    from rlm.clients.openai import OpenAIClient

    path = real_model_or_skip("fastapi", "uvicorn", "sse_starlette", "pydantic_settings")
    shared = "Numbers: " + " ".join(str(n) for n in range(60)) + "."
    prompts = [f"{shared} Which number comes first?", f"{shared} Which number comes last?"]
    evaluated = {}
    for name, launcher in (("on", run.LLAMA_SERVER), ("off", run._NO_REUSE)):
        log = tmp_path / name / "llama-server.log"
        with llama_server(path, n_ctx=1024, log_path=log, launcher=launcher) as url:
            client = OpenAIClient(
                base_url=url,
                api_key="local",
                model_name="embedded",
                sampling_args={"temperature": 0, "max_tokens": 2},
                timeout=300,
            )
            try:
                for prompt in prompts:
                    client.completion(prompt)
            finally:
                client.close()
        totals = kvcache.read(log.read_text())
        assert totals["requests"] == 2, log.read_text()[-2000:]
        evaluated[name] = totals
    assert evaluated["on"]["reused"] > 60  # the shared numbers, evaluated once
    assert evaluated["off"]["reused"] == 0
    assert "prefix reuse is off" in (tmp_path / "off" / "llama-server.log").read_text()
    # Same prompts, same tokens: what one reused, the other evaluated.
    on, off = evaluated["on"], evaluated["off"]
    assert on["reused"] + on["evaluated"] == off["evaluated"]
    assert kvcache.main([str(tmp_path / "on" / "llama-server.log"),
                         str(tmp_path / "off" / "llama-server.log")]) == 0  # fmt: skip
    table = capsys.readouterr().out
    assert table.startswith("| measure | on | off |\n|---|---:|---:|\n")
    assert f"| reused from the slot's prefix | {on['reused']:,} (" in table
    assert "| 0 (0%) |" in table


def test_the_output_folder_is_required(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--oracle"])
    assert exit_info.value.code == 2
    assert "the following arguments are required: --out" in capsys.readouterr().err


def test_the_rlms_arm_needs_an_interpreter(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("RLM_RLMS_PYTHON", raising=False)
    with pytest.raises(SystemExit):
        run.main(["--arms", "rlms", "--backend", "openai", "--model", "m", "--out", str(tmp_path)])
    assert "the rlms arm needs --rlms-python PATH or RLM_RLMS_PYTHON" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run.main(["--arms", "rlms", "--model", "m", "--backend", "openai", "--rlms-python",
                  str(tmp_path / "nope"), "--out", str(tmp_path)])  # fmt: skip
    assert "does not exist" in capsys.readouterr().err


def _rlms_python() -> str | None:
    for candidate in (os.environ.get("RLM_RLMS_PYTHON"), "/tmp/rlms-venv/bin/python"):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def test_all_three_arms_on_one_scripted_server(tmp_path):
    """The oracle behind an OpenAI-compatible loopback server: every arm reaches it with
    backend "openai", and rlms 0.1.3 runs in its own interpreter through the driver."""
    python = _rlms_python()
    if python is None:
        pytest.skip(
            "no rlms 0.1.3 interpreter (RLM_RLMS_PYTHON or /tmp/rlms-venv/bin/python): "
            "python3 -m venv /tmp/rlms-venv && /tmp/rlms-venv/bin/pip install rlms==0.1.3"
        )
    try:
        from tests.scripted_openai_server import ScriptedOpenAIServer
    except ImportError:
        from scripted_openai_server import ScriptedOpenAIServer

    out = tmp_path / "out"
    with ScriptedOpenAIServer(lambda call: oracle.scripted_reply(call.messages)) as server:
        done = _run(
            "--backend", "openai", "--model", "oracle", "--base-url", server.base_url,
            "--families", "niah,oolong", "--sizes", "1", "--seeds", "0,1",
            "--arms", "direct,rlm,rlms", "--rlms-python", python, "--out", str(out),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        assert not server.errors, server.errors[0]
    data = json.loads((out / "results.json").read_text())
    assert "rlms 0.1.3" in data["settings"]["arms"]
    for cell in data["cells"]:
        assert cell["failures"] == 0, cell
        if cell["arm"] != "direct":
            assert cell["score"] == 1.0, cell
        if cell["arm"] != "direct" and cell["family"] == "oolong":
            assert cell["sub_calls"] >= 3 and cell["sub_tokens"] > 0, cell
    rlms_records = [
        json.loads(line) for line in (out / "runs" / "rlms.jsonl").read_text().splitlines()
    ]
    assert {r["rlms_version"] for r in rlms_records} == {"0.1.3"}
    # Both loop arms keep each task's trajectory; ours reads rlms' files too.
    from rlm import load_trajectory

    for arm in ("rlm", "rlms"):
        records = [
            json.loads(line) for line in (out / "runs" / f"{arm}.jsonl").read_text().splitlines()
        ]
        assert len(records) == 4
        for record in records:
            path = Path(record["log_file"])
            assert path.parent == out / "trajectories" / arm, record
            assert load_trajectory(path).final_answer == record["response"]

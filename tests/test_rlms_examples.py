"""Scenario tests for the examples of the public ``rlms`` repository (examples/*.py).

Each test builds what its example builds, with the example's own arguments
(backend, model name, environment, limits, logger, custom tools, compaction),
and points the client at a scripted OpenAI-compatible server on 127.0.0.1
(tests/scripted_openai_server.py) instead of the provider. The only argument
added is ``base_url``. The real ``openai`` / ``portkey-ai`` clients make real
HTTP calls.

The server plays a model that follows the RLM prompt: it looks at ``context``
first, then writes one ```repl block per turn that acts on the REPL output it
has been shown, submits through ``answer`` only after it has printed the
answer, summarises when asked to compact, and answers a plain sub-call plainly.
It never answers from a script of canned final answers: each reply is derived
from the request's messages, so if the library shows the model the wrong
thing, or gives it too few turns, the run ends with a different answer.
When a run is out of turns and asked for its best answer, the model answers
with what it has seen printed, or "unknown".

Expected answers were checked against rlms 0.1.3 itself: the same policies and
the same server, driven by ``rlms==0.1.3`` installed in a separate venv
(``/tmp/rlms-venv``), through the ``run_*`` functions below (which use only
names both packages share). rlms 0.1.3 answered, and ours answers the same:

- quickstart: the hidden number, ``"168297608"`` for the seeded haystack
  (3 root turns: look, search with a regex, submit);
- custom tools: ``"AAPL is $178.50 and GOOGL is $141.25; 100 shares of each are
  worth $31,975.00 (NYSE, USD)."`` (3 turns);
- compaction: ``"905.6"``, the value Python computes for seed 42, after compacting
  once (rlms compacts before turn 6, ours before turn 5: ours repeats the question
  in every turn prompt, so its history grows faster; 7 turns in both);
- compaction history: ``"1.786"`` (seed 99) after compacting twice, 10 turns;
- depth metadata: ``"2, 3, 5, 7, 11"``; the child's 3 iterations (``max_iterations``
  3 in its run metadata) nested in the ``rlm_calls`` of the parent's turn 2;
- logger: ``"15"`` with 3 iterations in ``metadata``;
- rlm_query_batched: ``"['2, 3, 5, 7, 11', '2, 4, 6, 8, 10', '1, 4, 9, 16, 25']"``,
  three children of 3 iterations each;
- lm_in_repl: stdout ``"4\\n<class 'str'>\\n" + context + "\\nSecret from setup
  code:  1424424\\n"``, and ``response`` is ``"4"``.

Before the fix that gives a child started by ``rlm_query`` the full
``max_iterations`` (commit 858ee6b), ours answered ``"unknown"`` and
``"['unknown', 'unknown', 'unknown']"`` for the two recursion examples: the child
got one turn, spent it looking at its context and had nothing to answer with.

To repeat the check: ``python3 -m venv /tmp/rlms-venv && /tmp/rlms-venv/bin/pip
install rlms==0.1.3 pytest``; then, from a folder outside this checkout (so that
``import rlm`` finds rlms), run with that venv's python a script that puts
``tests/`` on ``sys.path`` and calls each ``run_*`` function with a
``ScriptedOpenAIServer`` around the matching policy.

These tests do not need rlms; they assert that ours reaches the same answers.
"""

from __future__ import annotations

import ast
import json
import random
import re
import statistics
import string
from collections.abc import Callable, Iterator
from typing import Any

import pytest

try:
    from tests.scripted_openai_server import (
        FINAL,
        PLAIN,
        ROOT,
        SUMMARY,
        ModelCall,
        ScriptedOpenAIServer,
        repl_reply,
    )
except ImportError:  # pragma: no cover - tests/ itself on sys.path (the rlms cross-check)
    from scripted_openai_server import (
        FINAL,
        PLAIN,
        ROOT,
        SUMMARY,
        ModelCall,
        ScriptedOpenAIServer,
        repl_reply,
    )

MODEL = "@openai/gpt-5-nano"  # what the portkey examples use
FAKE_KEY = "sk-scripted-not-a-real-key"


# ---------------------------------------------------------------------------
# The server fixture
# ---------------------------------------------------------------------------


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[ModelCall], str]], ScriptedOpenAIServer]]:
    """Start a scripted server around a policy; every server started is stopped afterwards."""
    servers: list[ScriptedOpenAIServer] = []

    def start(policy: Callable[[ModelCall], str]) -> ScriptedOpenAIServer:
        server = ScriptedOpenAIServer(policy).start()
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


def assert_no_policy_errors(server: ScriptedOpenAIServer) -> None:
    errors = server.errors
    assert not errors, "the scripted model could not follow the run:\n" + "\n".join(errors)


def portkey_kwargs(server: ScriptedOpenAIServer) -> dict[str, Any]:
    return {"model_name": MODEL, "api_key": FAKE_KEY, "base_url": server.base_url}


# ---------------------------------------------------------------------------
# What every policy does the same way
# ---------------------------------------------------------------------------

PROBE = """print("CONTEXT_TYPE:", type(context).__name__)
print("CONTEXT_LENGTH:", len(context))
print(context[:2000])"""


def probed(call: ModelCall) -> bool:
    """Has the model looked at the context (or, after a compaction, noted that it had)?"""
    return call.last_seen("CONTEXT_LENGTH") is not None or "context inspected" in call.written


def probe() -> str:
    return repl_reply("First I look at the context: its type, its length and its beginning.", PROBE)


def submit(value_code: str, prose: str = "The output above has the answer; I submit it.") -> str:
    return repl_reply(prose, f'answer["content"] = {value_code}\nanswer["ready"] = True')


def unexpected(call: ModelCall) -> str:
    raise AssertionError(
        f"unexpected {call.kind} call (turn {call.turn}); last message: {call.prompt[:300]!r}"
    )


# ---------------------------------------------------------------------------
# quickstart.py: find SECRET_NUMBER in ~50k lines
# ---------------------------------------------------------------------------

QUICKSTART_TASK = (
    "The context contains ~50k lines of random text with a single line "
    "matching the pattern SECRET_NUMBER=<digits>. Find and return ONLY the "
    "numeric value.\n\n"
)


def quickstart_haystack(seed: int = 20240613) -> tuple[str, int]:
    """The example's haystack, from a seeded generator: (text, secret)."""
    rng = random.Random(seed)
    secret = rng.randint(100_000_000, 999_999_999)
    lines = ["".join(rng.choices(string.ascii_lowercase + " ", k=120)) for _ in range(50_000)]
    lines.insert(rng.randint(len(lines) // 3, 2 * len(lines) // 3), f"SECRET_NUMBER={secret}")
    return "\n".join(lines), secret


def quickstart_policy(call: ModelCall) -> str:
    if call.kind == FINAL:
        found = call.last_seen("SECRET_MATCHES")
        return ast.literal_eval(found)[0] if found else "unknown"
    if call.kind != ROOT:
        return unexpected(call)
    if not probed(call):
        return probe()
    if "SECRET_NUMBER=<digits>" not in call.shown:
        raise AssertionError("the probe did not show the task")
    found = call.last_seen("SECRET_MATCHES")
    if found is None:
        return repl_reply(
            "The task asks for the digits after SECRET_NUMBER=. A regular expression over the "
            "whole context finds the line without reading it.",
            'import re\nmatches = re.findall(r"SECRET_NUMBER=(\\d+)", context)\n'
            'print("SECRET_MATCHES:", matches)',
        )
    matches = ast.literal_eval(found)
    if len(matches) != 1:
        raise AssertionError(f"expected one match, saw {matches}")
    return submit(json.dumps(matches[0]), f"Exactly one line matches: {matches[0]}.")


def run_quickstart(base_url: str, log_dir: str) -> tuple[Any, int]:
    from rlm import RLM
    from rlm.logger import RLMLogger

    haystack, secret = quickstart_haystack()
    rlm = RLM(
        backend="openai",
        backend_kwargs={"model_name": "gpt-5-nano", "api_key": FAKE_KEY, "base_url": base_url},
        environment="local",
        max_iterations=10,
        logger=RLMLogger(log_dir=log_dir),
        verbose=True,
    )
    return rlm.completion(QUICKSTART_TASK + haystack), secret


def test_quickstart_finds_the_secret_number(serve, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the example logs to ./logs
    server = serve(quickstart_policy)
    result, secret = run_quickstart(server.base_url, "./logs")
    assert_no_policy_errors(server)
    assert result.response == str(secret) == "168297608"
    assert str(secret) in result.response  # the example's own check
    turns = server.calls_of(ROOT)
    assert [c.turn for c in turns] == [1, 2, 3]
    assert all(c.max_turns == 10 for c in turns)
    # the 6 MB context stays in the REPL: no request carries it
    assert all(len(json.dumps(c.messages)) < 100_000 for c in server.calls)
    logs = list((tmp_path / "logs").glob("*.jsonl"))
    assert len(logs) == 1
    lines = [json.loads(line) for line in logs[0].read_text().splitlines()]
    assert lines[0]["type"] == "metadata"
    assert [line["iteration"] for line in lines[1:]] == [1, 2, 3]


# ---------------------------------------------------------------------------
# custom_tools_example.py: tools with descriptions, and a data value
# ---------------------------------------------------------------------------


def fetch_stock_price(symbol: str) -> dict[str, Any]:
    prices = {
        "AAPL": {"price": 178.50, "change": 2.3, "volume": 52_000_000},
        "GOOGL": {"price": 141.25, "change": -0.8, "volume": 21_000_000},
        "MSFT": {"price": 378.90, "change": 1.5, "volume": 18_000_000},
        "AMZN": {"price": 178.75, "change": 0.2, "volume": 35_000_000},
    }
    return prices.get(symbol.upper(), {"error": f"Symbol {symbol} not found"})


def calculate_portfolio_value(holdings: dict[str, int]) -> float:
    total = 0.0
    for symbol, shares in holdings.items():
        data = fetch_stock_price(symbol)
        if "price" in data:
            total += data["price"] * shares
    return total


def format_currency(amount: float) -> str:
    return f"${amount:,.2f}"


MARKET_CONFIG = {
    "trading_hours": {"open": "09:30", "close": "16:00"},
    "currency": "USD",
    "exchange": "NYSE",
}

CUSTOM_TOOLS_TASK = (
    "What's the current price of AAPL and GOOGL? "
    "Calculate the total value of a portfolio with 100 shares of each. "
    "Format the result as currency."
)

TOOL_NAMES = ("fetch_stock_price", "calculate_portfolio_value", "format_currency", "MARKET_CONFIG")


def custom_tools_policy(call: ModelCall) -> str:
    if call.kind == FINAL:
        return call.last_seen("PORTFOLIO") or "unknown"
    if call.kind != ROOT:
        return unexpected(call)
    if not probed(call):
        return probe()
    missing = [name for name in TOOL_NAMES if name not in call.system]
    if missing:
        raise AssertionError(f"the system prompt does not describe the tools {missing}")
    if "Fetch current stock price data" not in call.system:
        raise AssertionError("the tool descriptions are not in the system prompt")
    portfolio = call.last_seen("PORTFOLIO")
    if portfolio is None:
        return repl_reply(
            "The system prompt lists fetch_stock_price, calculate_portfolio_value, "
            "format_currency and MARKET_CONFIG. I use them for the two prices and the total.",
            'aapl = fetch_stock_price("AAPL")\n'
            'googl = fetch_stock_price("GOOGL")\n'
            'print("AAPL:", aapl)\n'
            'print("GOOGL:", googl)\n'
            'print("MARKET:", MARKET_CONFIG["exchange"], MARKET_CONFIG["currency"])\n'
            'total = calculate_portfolio_value({"AAPL": 100, "GOOGL": 100})\n'
            'print("PORTFOLIO:", format_currency(total))',
        )
    aapl = ast.literal_eval(call.last_seen("AAPL"))["price"]
    googl = ast.literal_eval(call.last_seen("GOOGL"))["price"]
    exchange, currency = call.last_seen("MARKET").split()
    text = (
        f"AAPL is ${aapl:.2f} and GOOGL is ${googl:.2f}; 100 shares of each are worth "
        f"{portfolio} ({exchange}, {currency})."
    )
    return submit(json.dumps(text))


def run_custom_tools(base_url: str) -> Any:
    from rlm import RLM

    rlm = RLM(
        backend="portkey",
        backend_kwargs={"model_name": MODEL, "api_key": FAKE_KEY, "base_url": base_url},
        environment="local",
        custom_tools={
            "fetch_stock_price": {
                "tool": fetch_stock_price,
                "description": "Fetch current stock price data for a symbol (AAPL, GOOGL, MSFT, AMZN)",
            },
            "calculate_portfolio_value": {
                "tool": calculate_portfolio_value,
                "description": "Calculate total portfolio value from a dict of {symbol: shares}",
            },
            "format_currency": {
                "tool": format_currency,
                "description": "Format a number as USD currency string",
            },
            "MARKET_CONFIG": {
                "tool": MARKET_CONFIG,
                "description": "Market configuration including trading hours and exchange info",
            },
        },
        verbose=True,
    )
    return rlm.completion(CUSTOM_TOOLS_TASK)


def test_custom_tools_prices_a_portfolio(serve):
    server = serve(custom_tools_policy)
    result = run_custom_tools(server.base_url)
    assert_no_policy_errors(server)
    assert result.response == (
        "AAPL is $178.50 and GOOGL is $141.25; 100 shares of each are worth $31,975.00 (NYSE, USD)."
    )
    assert [c.turn for c in server.calls_of(ROOT)] == [1, 2, 3]
    assert all(c.model == MODEL for c in server.calls)


# ---------------------------------------------------------------------------
# compaction_example.py and compaction_history_retrieval_example.py
# ---------------------------------------------------------------------------

COMPACTION_TASK = (
    "Complete the following steps, each in its own REPL block (one block per message). "
    "Do NOT combine steps.\n\n"
    "Step 1: Use `import random; random.seed(42)` then generate a list of 50 random "
    "integers between 1 and 1000. Print ALL of them. Store as `data_a`.\n\n"
    "Step 2: Generate another 50 random integers (continuing the same RNG stream) "
    "between 1 and 1000. Print ALL of them. Store as `data_b`.\n\n"
    "Step 3: Compute and print the mean, median, min, max, and standard deviation "
    "of `data_a`. Store the mean as `mean_a`.\n\n"
    "Step 4: Compute and print the mean, median, min, max, and standard deviation "
    "of `data_b`. Store the mean as `mean_b`.\n\n"
    "Step 5: You previously computed `mean_a` and `mean_b`. "
    "Compute final_value = round(mean_a + mean_b, 2), then set answer['content'] = final_value "
    "and answer['ready'] = True."
)

HISTORY_TASK = (
    "Complete the following steps, each in its own REPL block (one block per message). "
    "Do NOT combine steps.\n\n"
    "Step 1: `import random; random.seed(99)`. Generate 40 random floats in [0, 100). "
    "Print all of them. Store as `group_1`.\n\n"
    "Step 2: Generate another 40 random floats (same RNG stream). Print all. "
    "Store as `group_2`.\n\n"
    "Step 3: Generate another 40 random floats. Print all. Store as `group_3`.\n\n"
    "Step 4: Generate another 40 random floats. Print all. Store as `group_4`.\n\n"
    "Step 5: Compute the mean of each group. Print all four means. "
    "Store as `m1`, `m2`, `m3`, `m4`.\n\n"
    "Step 6: Compute the standard deviation of each group. Print all four. "
    "Store as `s1`, `s2`, `s3`, `s4`.\n\n"
    "Step 7: You previously computed four means and four standard deviations. "
    "Compute final_value = round((m1 + m2 + m3 + m4) / (s1 + s2 + s3 + s4), 4). "
    "Print the full equation with values, then set answer['content'] = final_value and "
    "answer['ready'] = True."
)

_STATS = (
    'print("STATS_{L}:", "mean", mean_{l}, "median", statistics.median(data_{l}), '
    '"min", min(data_{l}), "max", max(data_{l}), "stdev", statistics.stdev(data_{l}))'
)

COMPACTION_STEPS = {
    1: "import random\nrandom.seed(42)\ndata_a = [random.randint(1, 1000) for _ in range(50)]\n"
    'print("STEP_1_DATA_A:", data_a)',
    2: 'data_b = [random.randint(1, 1000) for _ in range(50)]\nprint("STEP_2_DATA_B:", data_b)',
    3: "import statistics\nmean_a = statistics.mean(data_a)\n" + _STATS.format(L="A", l="a"),
    4: "import statistics\nmean_b = statistics.mean(data_b)\n" + _STATS.format(L="B", l="b"),
    5: 'final_value = round(mean_a + mean_b, 2)\nprint("FINAL_VALUE:", final_value)\n'
    'answer["content"] = final_value\nanswer["ready"] = True',
}

HISTORY_STEPS = {
    1: "import random\nrandom.seed(99)\ngroup_1 = [random.uniform(0, 100) for _ in range(40)]\n"
    'print("STEP_1_GROUP_1:", group_1)',
    2: 'group_2 = [random.uniform(0, 100) for _ in range(40)]\nprint("STEP_2_GROUP_2:", group_2)',
    3: 'group_3 = [random.uniform(0, 100) for _ in range(40)]\nprint("STEP_3_GROUP_3:", group_3)',
    4: 'group_4 = [random.uniform(0, 100) for _ in range(40)]\nprint("STEP_4_GROUP_4:", group_4)',
    5: "import statistics\nm1, m2, m3, m4 = (statistics.mean(g) for g in "
    '(group_1, group_2, group_3, group_4))\nprint("STEP_5_MEANS:", m1, m2, m3, m4)',
    6: "import statistics\ns1, s2, s3, s4 = (statistics.stdev(g) for g in "
    '(group_1, group_2, group_3, group_4))\nprint("STEP_6_STDEVS:", s1, s2, s3, s4)',
    7: "final_value = round((m1 + m2 + m3 + m4) / (s1 + s2 + s3 + s4), 4)\n"
    'print("STEP_7_EQUATION:", f"({m1} + {m2} + {m3} + {m4}) / ({s1} + {s2} + {s3} + {s4}) '
    '= {final_value}")\n'
    'answer["content"] = final_value\nanswer["ready"] = True',
}


def expected_compaction_value() -> float:
    rng = random.Random(42)
    a = [rng.randint(1, 1000) for _ in range(50)]
    b = [rng.randint(1, 1000) for _ in range(50)]
    return round(statistics.mean(a) + statistics.mean(b), 2)


def expected_history_value() -> float:
    rng = random.Random(99)
    groups = [[rng.uniform(0, 100) for _ in range(40)] for _ in range(4)]
    means = sum(statistics.mean(g) for g in groups)
    stdevs = sum(statistics.stdev(g) for g in groups)
    return round(means / stdevs, 4)


def _step_results(call: ModelCall) -> dict[int, str]:
    """Outputs of finished steps, from REPL output (``STEP_N_...: value``) and from summaries."""
    results: dict[int, str] = {}
    for match in re.finditer(r"^(STEP_(\d+)_\w+): ?(.*)$", call.shown, re.MULTILINE):
        results[int(match.group(2))] = f"{match.group(1)}: {match.group(3).strip()}"
    for match in call.wrote(r"^- (STEP_(\d+)_\w+): (.*)$"):  # a summary this model wrote
        results.setdefault(int(match.group(2)), f"{match.group(1)}: {match.group(3).strip()}")
    for match in re.finditer(r"^(STATS_([AB])): ?(.*)$", call.shown, re.MULTILINE):
        results[3 if match.group(2) == "A" else 4] = f"{match.group(1)}: {match.group(3).strip()}"
    for match in call.wrote(r"^- (STATS_([AB])): (.*)$"):
        results.setdefault(
            3 if match.group(2) == "A" else 4, f"{match.group(1)}: {match.group(3).strip()}"
        )
    return results


def _just_compacted(call: ModelCall) -> bool:
    """Is the latest thing the model wrote a summary (no turn of its own since)?"""
    own = [m for m in call.messages if m.get("role") == "assistant"]
    return bool(own) and str(own[-1].get("content", "")).startswith("Summary of progress")


def stepwise_policy(task: str, steps: dict[int, str]) -> Callable[[ModelCall], str]:
    """A careful model working through numbered steps, one block per message.

    Each reply restates the plan and recaps every result it has seen (verbose, as
    an orchestrating model is asked to be), so the history grows quickly and a low
    ``compaction_threshold_pct`` fires. After a compaction it checks SHOW_VARS() and
    ``history`` before going on.
    """
    plan = "\n".join(
        f"- {line}\n"
        "  How: one ```repl block for this step alone (the task forbids combining steps), "
        "using only names that earlier steps defined. I print the whole result, not a "
        "sample, because the task asks for every value to be shown.\n"
        "  Check: before moving on I read the printed output and confirm how many values "
        "there are, that they fall in the stated range and that the variable holds what "
        "the step asks for; if anything looks wrong I redo this step first.\n"
        "  Record: I copy the exact printed values into the recap below, so that they "
        "survive if the conversation is shortened, and can also be found in `history`."
        for line in task.splitlines()
        if line.startswith("Step ")
    )

    def policy(call: ModelCall) -> str:
        if task.splitlines()[0] not in call.shown:
            raise AssertionError("the task is not in the conversation")
        results = _step_results(call)
        if call.kind == FINAL:
            value = call.last_seen("FINAL_VALUE") or call.last_seen("STEP_7_EQUATION")
            return value.rsplit("= ", 1)[-1] if value else "unknown"
        if call.kind == SUMMARY:
            done = sorted(results)
            lines = [
                f"Summary of progress: context inspected (the task text, steps 1 to {max(steps)}).",
                f"Steps completed: {', '.join(map(str, done)) or 'none'}.",
                "Results so far, exactly as printed:",
                *(f"- {results[n]}" for n in done),
                f"Next action: step {(max(done) + 1) if done else 1}.",
            ]
            return "\n".join(lines)
        if call.kind != ROOT:
            return unexpected(call)
        if not probed(call):
            return probe()
        if _just_compacted(call):
            return repl_reply(
                "The conversation was compacted. Before going on I check which variables "
                "exist and that `history` holds the earlier turns.",
                'print("VARS:", SHOW_VARS())\nprint("HISTORY_ENTRIES:", len(history))\n'
                'summaries = [e for e in history if isinstance(e, dict) and e.get("type") == "summary"]\n'
                'print("HISTORY_SUMMARIES:", len(summaries))\n'
                'print("LATEST_SUMMARY_STARTS:", summaries[-1]["content"][:19] if summaries else None)',
            )
        step = max(results, default=0) + 1
        if step not in steps:
            raise AssertionError(f"no step {step} to run; results {results}")
        recap = "\n".join(results[n] for n in sorted(results)) or "(nothing yet)"
        prose = (
            f"Plan (one block per message):\n{plan}\n\nResults so far:\n{recap}\n\nNow step {step}."
        )
        return repl_reply(prose, f"# Step {step}\n{steps[step]}")

    return policy


def run_compaction(base_url: str) -> Any:
    from rlm import RLM
    from rlm.logger import RLMLogger

    logger = RLMLogger()
    rlm = RLM(
        backend="portkey",
        backend_kwargs={"model_name": MODEL, "api_key": FAKE_KEY, "base_url": base_url},
        environment="local",
        environment_kwargs={},
        max_depth=1,
        max_iterations=12,
        compaction=True,
        compaction_threshold_pct=0.02,
        verbose=True,
        logger=logger,
    )
    return rlm.completion(COMPACTION_TASK, root_prompt=COMPACTION_TASK)


def run_compaction_history(base_url: str) -> Any:
    from rlm import RLM
    from rlm.logger import RLMLogger

    logger = RLMLogger()
    rlm = RLM(
        backend="portkey",
        backend_kwargs={"model_name": MODEL, "api_key": FAKE_KEY, "base_url": base_url},
        environment="local",
        environment_kwargs={},
        max_depth=1,
        max_iterations=15,
        compaction=True,
        compaction_threshold_pct=0.02,
        verbose=True,
        logger=logger,
    )
    return rlm.completion(HISTORY_TASK, root_prompt=HISTORY_TASK)


def _history_checks(server: ScriptedOpenAIServer) -> tuple[list[int], list[int], set[str]]:
    """What the model saw in ``history`` after each compaction: entries, summaries, summary starts."""
    entries: set[int] = set()
    summaries: set[int] = set()
    starts: set[str] = set()
    for call in server.calls:
        entries.update(int(v) for v in call.seen("HISTORY_ENTRIES"))
        summaries.update(int(v) for v in call.seen("HISTORY_SUMMARIES"))
        starts.update(call.seen("LATEST_SUMMARY_STARTS"))
    return sorted(entries), sorted(summaries), starts


def assert_history_after_compaction(server: ScriptedOpenAIServer) -> None:
    """After the k-th compaction the model found ``history`` holding turns and k summaries."""
    compactions = len(server.calls_of(SUMMARY))
    assert compactions >= 1, "compaction never fired"
    entries, summaries, starts = _history_checks(server)
    assert entries and all(n > compactions for n in entries)
    assert summaries == list(range(1, compactions + 1))
    assert starts == {"Summary of progress"}


def test_compaction_example(serve):
    server = serve(stepwise_policy(COMPACTION_TASK, COMPACTION_STEPS))
    result = run_compaction(server.base_url)
    assert_no_policy_errors(server)
    assert result.response == str(expected_compaction_value()) == "905.6"
    assert not server.calls_of(FINAL)
    # After compacting, the model found its variables and its summary in `history`.
    assert_history_after_compaction(server)
    vars_seen = [c.last_seen("VARS") for c in server.calls if c.last_seen("VARS")]
    assert vars_seen and "data_a" in vars_seen[0]


def test_compaction_history_retrieval_example(serve):
    server = serve(stepwise_policy(HISTORY_TASK, HISTORY_STEPS))
    result = run_compaction_history(server.base_url)
    assert_no_policy_errors(server)
    assert result.response == str(expected_history_value()) == "1.786"
    assert not server.calls_of(FINAL)
    assert_history_after_compaction(server)


# ---------------------------------------------------------------------------
# depth_metadata_example.py and rlm_query_batched_example.py: child RLMs
# ---------------------------------------------------------------------------

DEPTH_TASK = (
    "Use rlm_query() to ask the sub-model: 'What are the first 5 prime numbers? "
    "Reply with just the numbers separated by commas.' "
    "Store the response in a variable called 'primes', then set answer['content'] = primes "
    "and answer['ready'] = True."
)

BATCHED_TASK = (
    "Use rlm_query_batched() to ask THREE different questions in parallel:\n"
    "  1. 'What are the first 5 prime numbers? Reply with just the numbers.'\n"
    "  2. 'What are the first 5 even numbers? Reply with just the numbers.'\n"
    "  3. 'What are the first 5 square numbers? Reply with just the numbers.'\n"
    "Store the list of responses in a variable called 'responses', "
    "then set answer['content'] = responses and answer['ready'] = True."
)

CHILD_CODE = {
    "prime": "found = []\nn = 2\nwhile len(found) < 5:\n"
    "    if all(n % d for d in range(2, int(n ** 0.5) + 1)):\n        found.append(n)\n"
    "    n += 1",
    "even": "found = [2 * k for k in range(1, 6)]",
    "square": "found = [k * k for k in range(1, 6)]",
}


def child_policy(call: ModelCall) -> str:
    """A child RLM: its context is one question; it computes the answer in code."""
    if call.kind == FINAL:
        return call.last_seen("RESULT") or "unknown"
    if not probed(call):
        return probe()
    kind = next((k for k in CHILD_CODE if f"first 5 {k} numbers" in call.shown), None)
    if kind is None:
        raise AssertionError(f"a child that cannot tell its question: {call.shown[-500:]!r}")
    result = call.last_seen("RESULT")
    if result is None:
        return repl_reply(
            f"The context asks for the first 5 {kind} numbers. I compute them and print them "
            "comma-separated before submitting.",
            CHILD_CODE[kind] + '\nresult = ", ".join(str(x) for x in found)\n'
            'print("RESULT:", result)',
        )
    return submit("result", f"The printed result is {result}; I submit it.")


def recursion_policy(call: ModelCall) -> str:
    """The parent follows DEPTH_TASK or BATCHED_TASK; anything else is a child's question."""
    if call.kind == PLAIN:
        return unexpected(call)  # with max_depth=2 every rlm_query starts a child with a REPL
    if call.kind == SUMMARY:
        return unexpected(call)
    if "Use rlm_query_batched()" in call.shown:
        if call.kind == FINAL:
            return call.last_seen("RESPONSES") or "unknown"
        if not probed(call):
            return probe()
        if call.last_seen("RESPONSES") is None:
            questions = re.findall(r"^\s*\d\. '(.+?)'$", call.shown, re.MULTILINE)
            return repl_reply(
                "The task gives three questions to send together with rlm_query_batched.",
                f"responses = rlm_query_batched({json.dumps(questions)})\n"
                'print("RESPONSES:", responses)',
            )
        return submit("responses", "All three answers are back; I submit the list.")
    if "Use rlm_query()" in call.shown:
        if call.kind == FINAL:
            return call.last_seen("PRIMES") or "unknown"
        if not probed(call):
            return probe()
        if call.last_seen("PRIMES") is None:
            question = re.search(r"ask the sub-model: '(.+?)'", call.shown, re.DOTALL).group(1)
            return repl_reply(
                "The task says to ask a sub-model with rlm_query and keep the reply in `primes`.",
                f'primes = rlm_query({json.dumps(question)})\nprint("PRIMES:", primes)',
            )
        return submit("primes", "The child answered; I submit its reply.")
    return child_policy(call)


def run_depth_metadata(base_url: str) -> Any:
    from rlm import RLM
    from rlm.logger import RLMLogger

    logger = RLMLogger()
    rlm = RLM(
        backend="portkey",
        backend_kwargs={"model_name": MODEL, "api_key": FAKE_KEY, "base_url": base_url},
        environment="local",
        max_depth=2,
        max_iterations=3,
        logger=logger,
        verbose=True,
    )
    return rlm.completion(DEPTH_TASK)


def run_rlm_query_batched(base_url: str) -> Any:
    from rlm import RLM
    from rlm.logger import RLMLogger

    logger = RLMLogger()
    rlm = RLM(
        backend="portkey",
        backend_kwargs={"model_name": MODEL, "api_key": FAKE_KEY, "base_url": base_url},
        environment="local",
        max_depth=2,
        max_iterations=3,
        logger=logger,
        verbose=True,
    )
    return rlm.completion(BATCHED_TASK)


def sub_calls(result: Any) -> list[tuple[int, dict[str, Any]]]:
    """(iteration number, rlm_calls entry) for every sub-call in the trajectory, as the examples walk it."""
    found = []
    for i, iteration in enumerate(result.metadata.get("iterations", []), start=1):
        for block in iteration.get("code_blocks", []):
            for call in block.get("result", {}).get("rlm_calls", []):
                found.append((i, call))
    return found


def test_depth_metadata_example(serve):
    server = serve(recursion_policy)
    result = run_depth_metadata(server.base_url)
    assert_no_policy_errors(server)
    assert result.response == "2, 3, 5, 7, 11"
    assert not server.calls_of(FINAL), "a run ran out of turns"
    assert len(result.metadata["iterations"]) == 3
    calls = sub_calls(result)
    assert len(calls) == 1
    iteration, child = calls[0]
    assert iteration == 2
    assert child["root_model"] == MODEL
    assert child["response"] == "2, 3, 5, 7, 11"
    assert child["metadata"] is not None, "the child's trajectory was not captured"
    assert len(child["metadata"]["iterations"]) == 3
    assert child["metadata"]["run_metadata"]["max_iterations"] == 3
    # Parent and child each had turns 1, 2 and 3 of 3: the child got the full max_iterations.
    turns = sorted((c.turn, c.max_turns) for c in server.calls_of(ROOT))
    assert turns == [(t, 3) for t in (1, 1, 2, 2, 3, 3)]


def test_rlm_query_batched_example(serve):
    server = serve(recursion_policy)
    result = run_rlm_query_batched(server.base_url)
    assert_no_policy_errors(server)
    assert result.response == "['2, 3, 5, 7, 11', '2, 4, 6, 8, 10', '1, 4, 9, 16, 25']"
    assert not server.calls_of(FINAL), "a run ran out of turns"
    calls = sub_calls(result)
    assert len(calls) == 3  # the example's "at least 3 sub-calls"
    assert [c["response"] for _, c in calls] == [
        "2, 3, 5, 7, 11",
        "2, 4, 6, 8, 10",
        "1, 4, 9, 16, 25",
    ]
    for _, child in calls:
        assert child["metadata"] is not None
        assert len(child["metadata"]["iterations"]) == 3
    # The parent and each of the three children had turns 1, 2 and 3 of 3.
    turns = sorted((c.turn, c.max_turns) for c in server.calls_of(ROOT))
    assert turns == [(t, 3) for t in (1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3)]


# ---------------------------------------------------------------------------
# logger_example.py: the trajectory on completion.metadata
# ---------------------------------------------------------------------------

LOGGER_TASK = (
    "Compute the sum 1 + 2 + 3 + 4 + 5 and print the result using a REPL block, then set "
    "answer['content'] to the sum and answer['ready'] = True."
)


def logger_policy(call: ModelCall) -> str:
    if call.kind == FINAL:
        return call.last_seen("SUM") or "unknown"
    if call.kind != ROOT:
        return unexpected(call)
    if not probed(call):
        return probe()
    if "Compute the sum 1 + 2 + 3 + 4 + 5" not in call.shown:
        raise AssertionError("the probe did not show the task")
    if call.last_seen("SUM") is None:
        return repl_reply(
            "I compute the sum in the REPL and print it.",
            'total = 1 + 2 + 3 + 4 + 5\nprint("SUM:", total)',
        )
    return submit("total", f"The REPL printed {call.last_seen('SUM')}; I submit it.")


def run_logger(base_url: str) -> Any:
    from rlm import RLM
    from rlm.logger import RLMLogger

    logger = RLMLogger()
    rlm = RLM(
        backend="portkey",
        backend_kwargs={"model_name": MODEL, "api_key": FAKE_KEY, "base_url": base_url},
        environment="local",
        environment_kwargs={},
        max_depth=1,
        logger=logger,
        verbose=True,
    )
    return rlm.completion(LOGGER_TASK)


def test_logger_example(serve, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    server = serve(logger_policy)
    result = run_logger(server.base_url)
    assert_no_policy_errors(server)
    assert result.response == "15"
    traj = result.metadata
    assert traj is not None
    assert set(traj) >= {"run_metadata", "iterations"}
    assert len(traj["iterations"]) == 3
    first = traj["iterations"][0]
    assert set(first) >= {"prompt", "response", "code_blocks", "final_answer", "iteration_time"}
    assert traj["iterations"][-1]["final_answer"] == "15"
    assert traj["run_metadata"]["root_model"] == MODEL
    assert traj["run_metadata"]["max_depth"] == 1
    assert not list(tmp_path.iterdir()), "an in-memory logger wrote files"
    assert str(result)  # the example prints the whole result


# ---------------------------------------------------------------------------
# lm_in_repl.py: LMHandler + LocalREPL directly, llm_query from code
# ---------------------------------------------------------------------------

LM_IN_REPL_SETUP = '\nsecret = "1424424"\n'
LM_IN_REPL_CONTEXT = (
    "\nThis is a test context. It should print out, revealing the magic number to be 4.\n"
)
LM_IN_REPL_CODE = """
response = llm_query("What is 2 + 2? Reply with just the number.")
print(response)
print(type(response))
print(context)
print("Secret from setup code: ", secret)
"""


def arithmetic_policy(call: ModelCall) -> str:
    if call.kind != PLAIN:
        return unexpected(call)
    match = re.search(r"What is (\d+) \+ (\d+)\?", call.prompt)
    if not match:
        return unexpected(call)
    return str(int(match.group(1)) + int(match.group(2)))


def run_lm_in_repl(base_url: str) -> tuple[Any, Any]:
    from rlm.clients.portkey import PortkeyClient
    from rlm.core.lm_handler import LMHandler
    from rlm.environments.local_repl import LocalREPL

    client = PortkeyClient(api_key=FAKE_KEY, model_name=MODEL, base_url=base_url)
    # The example nests the two context managers; one `with` is the same thing.
    with (
        LMHandler(client=client) as handler,
        LocalREPL(
            lm_handler_address=handler.address,
            context_payload=LM_IN_REPL_CONTEXT,
            setup_code=LM_IN_REPL_SETUP,
        ) as repl,
    ):
        result = repl.execute_code(LM_IN_REPL_CODE)
        return result, repl.locals.get("response")


def test_lm_in_repl_example(serve):
    server = serve(arithmetic_policy)
    result, response = run_lm_in_repl(server.base_url)
    assert_no_policy_errors(server)
    assert result.stdout == (
        "4\n<class 'str'>\n" + LM_IN_REPL_CONTEXT + "\nSecret from setup code:  1424424\n"
    )
    assert result.stderr == ""
    assert response == "4"
    [call] = server.calls
    assert call.model == MODEL
    assert call.messages == [
        {"role": "user", "content": "What is 2 + 2? Reply with just the number."}
    ]

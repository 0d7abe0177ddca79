"""The trajectory viewer: its JSON API over real HTTP, and the page in headless Chromium.

The browser test drives Debian's ``chromium`` with the ``playwright`` package
(``executable_path``; no downloaded browsers). It is skipped with the reason
when either is missing, unless RLM_REQUIRE_BROWSER=1 (as in CI), and it saves a
screenshot under test-artifacts/.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from rlm import RLM
from rlm.logger import RLMLogger
from rlm.viewer import ViewerServer

FIXTURES = Path(__file__).parent / "fixtures"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

ROOT_SCRIPT = [
    "I will read the context first.\n```repl\nprint(context[:40])\nsecret = llm_query('Which code is in: ' + context[:40])\nprint('sub-model says', secret)\n```",
    "```repl\nprint(undefined_name)\n```",
    "```repl\nanswer['content'] = 'The vault code is ' + secret\nanswer['ready'] = True\n```",
]


@pytest.fixture
def log_dir(tmp_path):
    """A directory with a real recorded run and a copy of the public 0.1.3 fixture."""
    logs = tmp_path / "logs"
    engine = RLM(
        backend="scripted",
        backend_kwargs={"responses": list(ROOT_SCRIPT), "sub_responses": ["58213"]},
        logger=RLMLogger(log_dir=logs),
    )
    result = engine.completion("The vault code is 58213. " + "noise " * 500)
    assert result.response == "The vault code is 58213"
    shutil.copy(FIXTURES / "rlms_0_1_3.jsonl", logs / "public_0_1_3.jsonl")
    return logs


@pytest.fixture
def server(log_dir):
    srv = ViewerServer(log_dir, port=0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


def get(server, path, host=None):
    request = urllib.request.Request(server.url.rstrip("/") + path)
    if host:
        request.add_header("Host", host)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def get_json(server, path):
    status, _, body = get(server, path)
    return status, json.loads(body)


def _our_run(runs):
    return next(r for r in runs if r["file"].startswith("rlm_"))


def test_page_and_assets_are_served_from_the_package(server):
    status, headers, body = get(server, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    page = body.decode()
    assert '<script src="/app.js">' in page and "http" not in page.split("<body>")[1]
    for path, kind in (("/app.js", "javascript"), ("/style.css", "css")):
        status, headers, body = get(server, path)
        assert status == 200 and kind in headers["Content-Type"] and body
    assert "default-src 'self'" in headers["Content-Security-Policy"]


def test_runs_run_iteration_prompt_and_search(server):
    status, listing = get_json(server, "/api/runs")
    assert status == 200 and len(listing["runs"]) == 2
    ours = _our_run(listing["runs"])
    assert ours["iterations"] == 3 and ours["errors"] == 1 and ours["subcalls"] == 1
    assert ours["final_answer"] == "The vault code is 58213"

    _, run = get_json(server, f"/api/run?id={ours['id']}")
    assert [it["errors"] for it in run["iterations"]] == [0, 1, 0]
    assert run["iterations"][2]["final_answer"] == "The vault code is 58213"
    assert run["usage"][0]["model"] == "scripted" and run["usage_complete"]  # root usage logged

    _, first = get_json(server, f"/api/iteration?id={ours['id']}&i=0")
    (block,) = first["blocks"]
    assert "llm_query" in block["code"] and "sub-model says 58213" in block["stdout"]
    assert block["calls"][0]["response"] == "58213" and block["calls"][0]["depth"] == 1
    _, second = get_json(server, f"/api/iteration?id={ours['id']}&i=1")
    assert second["blocks"][0]["failed"] and "NameError" in second["blocks"][0]["error"]

    _, prompt = get_json(server, f"/api/prompt?id={ours['id']}&i=0")
    assert prompt["messages"][0]["role"] == "system"

    _, found = get_json(server, f"/api/search?id={ours['id']}&q=UNDEFINED_name")
    assert {(h["number"], h["block"], h["where"]) for h in found["hits"]} >= {(2, 0, "code")}


def test_child_runs_are_addressed_through_the_sub_call_tree(server):
    _, listing = get_json(server, "/api/runs")
    public = next(r for r in listing["runs"] if r["file"] == "public_0_1_3.jsonl")
    _, first = get_json(server, f"/api/iteration?id={public['id']}&i=0")
    call = first["blocks"][0]["calls"][0]
    assert call["address"] == "0.0.0" and call["child"]["iterations"] == 1
    assert [c["depth"] for c in call["child"]["calls"]] == [2, 2]
    assert first["blocks"][0]["calls"][1]["error"] == "RateLimitError: slow down"
    _, child = get_json(server, f"/api/run?id={public['id']}&node=0.0.0")
    assert child["final_answer"] == "one + two" and child["depth"] == 1
    assert [c["label"] for c in child["breadcrumbs"]][0] == "public_0_1_3.jsonl"
    status, missing = get_json(server, f"/api/run?id={public['id']}&node=0.0.1")
    assert status == 404 and "no child run" in missing["error"]


def test_bad_requests_and_foreign_hosts_are_refused(server):
    assert get_json(server, "/api/run?id=99.0")[0] == 404
    assert get_json(server, "/api/iteration?id=0.0&i=x")[0] == 400
    assert get(server, "/../../etc/passwd")[0] == 404
    assert get(server, "/api/runs", host="evil.example:80")[0] == 403


def test_a_log_that_grows_is_read_again(server, log_dir):
    _, listing = get_json(server, "/api/runs")
    path = log_dir / _our_run(listing["runs"])["file"]
    with open(path, "a") as handle:
        record = json.loads(path.read_text().splitlines()[-1])
        record["iteration"] = 4
        handle.write(json.dumps(record) + "\n")
    _, listing = get_json(server, "/api/runs")
    assert _our_run(listing["runs"])["iterations"] == 4


def test_cli_view_refuses_a_missing_path(tmp_path, capsys):
    from rlm.cli import main

    assert main(["view", str(tmp_path / "nothing"), "--no-browser"]) == 1
    assert "no such log file or directory" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# The page in a real browser
# ---------------------------------------------------------------------------


def _browser_or_skip():
    required = os.environ.get("RLM_REQUIRE_BROWSER") == "1"
    reason = None
    if importlib.util.find_spec("playwright") is None:
        reason = 'the playwright package is not installed (pip install -e ".[dev]")'
    elif not os.path.exists(CHROMIUM):
        reason = f"{CHROMIUM} is missing (apt-get install -y chromium)"
    if reason is not None:
        if required:
            pytest.fail(f"RLM_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)


def test_viewer_in_headless_chromium(server):
    _browser_or_skip()
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(server.url)
            page.locator(".run-item", has_text="scripted").click()

            # The final answer is on the page.
            expect(page.locator("#final-answer")).to_have_text("The vault code is 58213")
            # Expand iteration 1: its code (highlighted) and output appear.
            page.locator(".iteration-header", has_text="Iteration 1").click()
            block = page.locator("#block-0-0")
            expect(block.locator("pre.code .tok-rlm", has_text="llm_query")).to_be_visible()
            expect(block.locator("pre.stdout")).to_contain_text("sub-model says 58213")
            # Follow the sub-call: its prompt and answer open in the side panel.
            block.locator(".subcall button").first.click()
            expect(page.locator("#subcall-panel .subcall-response")).to_have_text("58213")
            expect(page.locator("#subcall-body")).not_to_contain_text("null")
            expect(page.locator("#subcall-panel .subcall-prompt")).to_contain_text(
                "Which code is in: The vault code is 58213."
            )
            # Errors are highlighted; search finds the failing code.
            expect(page.locator(".iteration.err")).to_have_count(1)
            page.fill("#search", "undefined_name")
            page.press("#search", "Enter")
            page.locator(".hit", has_text="iteration 2 block 0").first.click()
            expect(page.locator("#block-1-0.err")).to_be_visible()
            page.locator(".iteration-header", has_text="Iteration 3").click()
            expect(page.locator("#iteration-2 .final-text")).to_have_text("The vault code is 58213")
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(ARTIFACTS / "viewer.png"), full_page=True)

            # A public 0.1.3 log: follow a recursive sub-call into its child run.
            page.locator(".run-item", has_text="public_0_1_3.jsonl").click()
            expect(page.locator("#final-answer")).to_have_text("Summary: one + two")
            page.locator(".iteration-header", has_text="Iteration 1").click()
            page.locator(".subcall button", has_text="child run").click()
            page.locator("#open-child").click()
            expect(page.locator("#breadcrumbs")).to_contain_text("child run (depth 1)")
            expect(page.locator("#final-answer")).to_have_text("one + two")
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(ARTIFACTS / "viewer-child-run.png"), full_page=True)
            assert errors == []
        finally:
            browser.close()


# -- the run's facts, history and deep links, dark mode (issue 14, part 9) ----------------

QUESTION = "Which vault code is in the context?"


@pytest.fixture
def asked(tmp_path):
    """A recorded run with a question, and the completion's own call count (as rlm run
    prints it)."""
    logs = tmp_path / "asked"
    engine = RLM(
        backend="scripted",
        backend_kwargs={"responses": list(ROOT_SCRIPT), "sub_responses": ["58213"]},
        logger=RLMLogger(log_dir=logs),
    )
    result = engine.completion("The vault code is 58213. " + "noise " * 50, root_prompt=QUESTION)
    shutil.copy(FIXTURES / "rlms_0_1_3.jsonl", logs / "public_0_1_3.jsonl")
    srv = ViewerServer(logs, port=0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv, result, engine.logger.log_file_path
    srv.shutdown()
    srv.server_close()
    thread.join()


def test_the_run_says_its_question_date_models_stop_reason_and_call_count(asked):
    server, result, _ = asked
    _, listing = get_json(server, "/api/runs")
    ours = _our_run(listing["runs"])
    # The same count as `rlm run` prints: every model call, root calls included.
    assert ours["model_calls"] == result.usage_summary.total_calls == 4
    assert ours["question"] == QUESTION
    _, run = get_json(server, f"/api/run?id={ours['id']}")
    facts = run["facts"]
    assert facts["question"] == QUESTION and facts["models"] == ["scripted"]
    assert facts["stop_reason"] == "final answer (iteration 3)"
    assert facts["date"] and facts["date"][:4].isdigit()
    public = next(r for r in listing["runs"] if r["file"] == "public_0_1_3.jsonl")
    # rlms logs do not record root calls: one per iteration is counted in.
    assert public["model_calls"] == 2 + public["subcalls"]


def test_the_notebook_summary_has_the_facts_and_dark_theme_colours(asked):
    from rlm import load_trajectory

    _, _, path = asked
    html = load_trajectory(path)._repr_html_()
    assert QUESTION in html and "stopped: <b>final answer (iteration 3)</b>" in html
    assert "4 model calls" in html
    assert "prefers-color-scheme:dark" in html and "[data-jp-theme-light=false]" in html
    assert "color:inherit" in html and "background:#fff" not in html


def test_viewer_history_deep_links_and_both_colour_schemes(asked):
    _browser_or_skip()
    from playwright.sync_api import expect, sync_playwright

    server, _, _ = asked
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for scheme in ("light", "dark"):
                page = browser.new_page(
                    viewport={"width": 1400, "height": 1000}, color_scheme=scheme
                )
                errors: list[str] = []
                page.on("pageerror", lambda exc, errors=errors: errors.append(str(exc)))
                page.goto(server.url)
                page.locator(".run-item", has_text="scripted").click()
                expect(page.locator("#run-question")).to_contain_text(QUESTION)
                expect(page.locator("#run-stop")).to_contain_text("final answer (iteration 3)")
                expect(page.locator("#run-calls")).to_have_text("4 model calls")
                expect(page.locator(".run-item.active .counts")).to_contain_text("4 model calls")
                page.locator(".iteration-header", has_text="Iteration 1").click()
                expect(page.locator("#block-0-0 pre.stdout")).to_contain_text("sub-model says")
                background = page.evaluate("getComputedStyle(document.body).backgroundColor")
                assert (background == "rgb(18, 20, 23)") == (scheme == "dark"), background
                page.evaluate("window.scrollTo(0, 0)")
                page.screenshot(path=str(ARTIFACTS / f"viewer-{scheme}.png"), full_page=True)
                assert errors == []
                page.close()

            # History: a run, its iteration, a child run; Back and Forward walk them.
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(server.url)
            page.locator(".run-item", has_text="public_0_1_3.jsonl").click()
            expect(page.locator("#final-answer")).to_have_text("Summary: one + two")
            page.locator(".iteration-header", has_text="Iteration 1").click()
            expect(page).to_have_url(re_url("it=1"))
            page.locator(".subcall button", has_text="child run").click()
            page.locator("#open-child").click()
            expect(page.locator("#final-answer")).to_have_text("one + two")
            child_url = page.url
            page.go_back()
            expect(page.locator("#final-answer")).to_have_text("Summary: one + two")
            expect(page.locator("#breadcrumbs")).not_to_contain_text("child run")
            page.go_forward()
            expect(page.locator("#final-answer")).to_have_text("one + two")
            assert page.url == child_url
            # A deep link opens that run's iteration directly, in a fresh page.
            _, listing = get_json(server, "/api/runs")
            ours = _our_run(listing["runs"])
            deep = browser.new_page(viewport={"width": 1400, "height": 1000})
            deep.goto(f"{server.url.rstrip('/')}/#run={ours['id']}&it=2")
            expect(deep.locator("#block-1-0.err")).to_be_visible()
            expect(deep.locator("#run-question")).to_contain_text(QUESTION)
        finally:
            browser.close()


def re_url(fragment: str):
    import re

    return re.compile(".*" + re.escape(fragment) + ".*")

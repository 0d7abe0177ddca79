"""Behaviour kept by the per-iteration shortcuts (issue #15): a cell run again reuses its
compiled code and still reports itself; limits still apply when the loop skips work for
runs without them."""

from __future__ import annotations

from rlm.environments.repl_core import COMPILED_CACHE_CELLS, ReplCore

FAILING = "def f():\n    return [1 / 0 for _ in range(1)]\nf()"


def test_a_cell_run_again_names_itself_in_its_traceback():
    core = ReplCore()
    try:
        first = core.run_cell(FAILING)
        again = core.run_cell(FAILING)
    finally:
        core.close()
    assert first.error == again.error == "ZeroDivisionError: division by zero"
    assert '"<cell 1>", line 3' in first.stderr and "<cell 2>" not in first.stderr
    # The module, the function and the comprehension all report the second cell.
    assert again.stderr.count('"<cell 2>"') == 3, again.stderr
    assert "<cell 1>" not in again.stderr
    assert "return [1 / 0 for _ in range(1)]" in again.stderr


def test_a_cell_run_again_shows_its_last_value_and_sees_the_namespace_of_now():
    core = ReplCore()
    try:
        code = "x = x + 1 if 'x' in dir() else 1\nx * 10"
        outputs = [core.run_cell(code).stdout for _ in range(3)]
        core.run_cell("x = 100")
        outputs.append(core.run_cell(code).stdout)
    finally:
        core.close()
    assert outputs == ["10\n", "20\n", "30\n", "1010\n"]


def test_the_compiled_cells_kept_are_bounded():
    core = ReplCore()
    try:
        for i in range(COMPILED_CACHE_CELLS + 10):
            assert core.run_cell(f"v{i} = {i}\nv{i}").stdout == f"{i}\n"
        assert len(core._compiled) == COMPILED_CACHE_CELLS
        assert core.run_cell("v0 + 1").stdout == "1\n"  # an evicted cell compiles anew
    finally:
        core.close()

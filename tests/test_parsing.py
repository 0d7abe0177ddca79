"""rlm.utils.parsing: ```repl blocks, the final-answer forms, and what the model reads back."""

from __future__ import annotations

import pytest

from rlm.core.types import CodeBlock, REPLResult, RLMIteration
from rlm.environments.local_repl import LocalREPL
from rlm.utils.parsing import find_code_blocks, find_final_answer, format_iteration

FENCE = "```"


def fenced(code: str, tag: str = "repl") -> str:
    return f"{FENCE}{tag}\n{code}\n{FENCE}"


@pytest.fixture
def repl():
    env = LocalREPL()
    yield env
    env.cleanup()


# ---------------------------------------------------------------------------
# find_code_blocks
# ---------------------------------------------------------------------------


def test_single_repl_block():
    text = f"Let me look.\n{fenced('print(len(context))')}\nDone."
    assert find_code_blocks(text) == ["print(len(context))"]


def test_no_blocks_and_empty_text():
    assert find_code_blocks("") == []
    assert find_code_blocks("just prose, no code") == []
    assert find_code_blocks("inline ``` fence``` in prose") == []


@pytest.mark.parametrize("tag", ["REPL", "Repl", "repl ", "repl \t", " repl"])
def test_tag_case_and_spaces_are_tolerated(tag):
    text = f"{FENCE}{tag}\nx = 1\n{FENCE}"
    assert find_code_blocks(text) == ["x = 1"]


def test_trailing_spaces_on_closing_fence():
    text = f"{FENCE}repl  \nx = 1\ny = 2\n{FENCE}   \nafter"
    assert find_code_blocks(text) == ["x = 1\ny = 2"]


def test_crlf_line_endings():
    text = f"Intro\r\n{FENCE}repl\r\nx = 1\r\nif x:\r\n    print(x)\r\n{FENCE}\r\nOutro\r\n"
    blocks = find_code_blocks(text)
    assert blocks == ["x = 1\nif x:\n    print(x)"]
    assert "\r" not in blocks[0]
    compile(blocks[0], "<block>", "exec")


def test_indented_fences_are_dedented():
    text = (
        "1. First step:\n"
        f"    {FENCE}repl\n"
        "    total = 0\n"
        "    for i in range(3):\n"
        "        total += i\n"
        f"    {FENCE}\n"
    )
    blocks = find_code_blocks(text)
    assert blocks == ["total = 0\nfor i in range(3):\n    total += i"]
    compile(blocks[0], "<block>", "exec")


def test_multiple_blocks_in_order():
    text = (
        "First:\n"
        + fenced("a = 1")
        + "\nThen some prose.\n"
        + fenced("b = a + 1", tag="REPL")
        + "\n"
        + fenced("print(b)")
        + "\nEnd."
    )
    assert find_code_blocks(text) == ["a = 1", "b = a + 1", "print(b)"]


def test_python_and_bare_blocks_are_ignored():
    text = (
        fenced("print('python example')", tag="python")
        + "\n"
        + fenced("no tag here", tag="")
        + "\n"
        + fenced("x = 'the real one'")
        + "\n"
        + fenced("echo hi", tag="bash")
    )
    assert find_code_blocks(text) == ["x = 'the real one'"]


def test_repl_tag_with_suffix_is_not_a_repl_block():
    assert find_code_blocks(fenced("x = 1", tag="repl-like")) == []
    assert find_code_blocks(fenced("x = 1", tag="replay")) == []


def test_fence_inside_triple_quoted_string_does_not_cut_block():
    code = (
        'template = """\n'
        "Here is an example:\n"
        f"{FENCE}\n"
        "print('inside the string')\n"
        f"{FENCE}\n"
        '"""\n'
        "print(template.count('print'))"
    )
    text = f"Build a template.\n{fenced(code)}\nAnd then:\n{fenced('print(2)')}"
    blocks = find_code_blocks(text)
    assert blocks == [code, "print(2)"]
    compile(blocks[0], "<block>", "exec")


def test_repl_fence_inside_string_does_not_start_a_new_block():
    code = f"s = '''\n{FENCE}repl\nnot code\n{FENCE}\n'''\nprint(len(s))"
    blocks = find_code_blocks(fenced(code))
    assert blocks == [code]


def test_fenced_string_inside_block_runs_in_repl(repl):
    code = f'doc = """\n{FENCE}\nx\n{FENCE}\n"""\nprint(doc.count("{FENCE}"))'
    blocks = find_code_blocks(fenced(code))
    assert len(blocks) == 1
    result = repl.execute_code(blocks[0])
    assert result.stdout.strip() == "2"


def test_syntax_error_block_is_cut_at_first_fence():
    broken = "print('unclosed'\nx = ("
    text = f"{fenced(broken)}\nSome prose in between.\n{fenced('y = 2')}"
    blocks = find_code_blocks(text)
    assert blocks == [broken, "y = 2"]
    with pytest.raises(SyntaxError):
        compile(blocks[0], "<block>", "exec")


def test_syntax_error_block_alone_is_still_returned():
    assert find_code_blocks(fenced("def f(:\n    pass")) == ["def f(:\n    pass"]


def test_unterminated_block_is_ignored():
    text = f"{fenced('a = 1')}\n{FENCE}repl\nb = 2\nprint(b)\n"
    assert find_code_blocks(text) == ["a = 1"]
    assert find_code_blocks(f"{FENCE}repl\nprint('never closed')") == []


def test_empty_block():
    assert find_code_blocks(f"{FENCE}repl\n{FENCE}") == [""]


# ---------------------------------------------------------------------------
# find_final_answer
# ---------------------------------------------------------------------------


def test_final_plain():
    assert find_final_answer("I have it.\nFINAL(42)") == "42"


def test_final_alone_and_indented():
    assert find_final_answer("FINAL(Paris)") == "Paris"
    assert find_final_answer("Answer:\n   FINAL(Paris)\n") == "Paris"


def test_final_multi_line():
    text = "Done.\nFINAL(The answer has\ntwo lines\nand a third)\n"
    assert find_final_answer(text) == "The answer has\ntwo lines\nand a third"


def test_final_nested_parentheses():
    text = "FINAL(f(x) = (a + b) * (c - d))"
    assert find_final_answer(text) == "f(x) = (a + b) * (c - d)"


def test_final_nested_parentheses_across_lines():
    text = "FINAL(first (a)\nsecond (b))"
    assert find_final_answer(text) == "first (a)\nsecond (b)"


def test_final_followed_by_prose_with_parentheses():
    text = "FINAL(42)\n\nI computed this by summing the column (see above)"
    assert find_final_answer(text) == "42"


def test_final_with_unbalanced_parenthesis_inside():
    assert find_final_answer("FINAL(a smiley :) and more)") == "a smiley :) and more"


def test_no_final():
    assert find_final_answer("") is None
    assert find_final_answer("Still working on it.") is None
    assert find_final_answer(fenced("x = 1")) is None


def test_final_not_at_line_start_is_ignored():
    assert find_final_answer("When done I will write FINAL(answer) on its own line.") is None
    assert find_final_answer("Use FINAL_VAR(result) later.") is None


def test_final_inside_code_fence_is_ignored():
    text = fenced("FINAL(not this)") + "\nstill thinking"
    assert find_final_answer(text) is None
    text = fenced("FINAL(example)", tag="python") + "\n"
    assert find_final_answer(text) is None
    text = fenced('print("x")\nFINAL(inside)') + "\nFINAL(outside)"
    assert find_final_answer(text) == "outside"


def test_final_inside_fence_with_string_fence_is_ignored():
    code = f's = """\n{FENCE}\nFINAL(hidden)\n"""\nprint(s)'
    assert find_final_answer(fenced(code)) is None


def test_final_with_crlf():
    assert find_final_answer("Done.\r\nFINAL(yes)\r\n") == "yes"


def test_final_var_resolved_through_local_repl(repl):
    repl.execute_code("result = 'the planted fact: 7'")
    text = f"{fenced('print(result)')}\nFINAL_VAR(result)"
    assert find_final_answer(text, environment=repl) == "the planted fact: 7"


def test_final_var_with_quotes_and_non_string_value(repl):
    repl.execute_code("total = sum(range(10))")
    assert find_final_answer('FINAL_VAR("total")', environment=repl) == "45"
    assert find_final_answer("FINAL_VAR('total')", environment=repl) == "45"


def test_final_var_missing_variable_is_none(repl):
    assert find_final_answer("FINAL_VAR(nowhere)", environment=repl) is None


def test_final_var_without_environment_is_none():
    assert find_final_answer("FINAL_VAR(result)") is None


def test_final_var_does_not_execute_expressions(repl):
    repl.execute_code("flag = []")
    assert find_final_answer("FINAL_VAR(flag.append(1))", environment=repl) is None
    assert repl.globals["flag"] == []


# ---------------------------------------------------------------------------
# format_iteration
# ---------------------------------------------------------------------------


def iteration_with(*results: REPLResult, response: str = "some response") -> RLMIteration:
    return RLMIteration(
        prompt="p",
        response=response,
        code_blocks=[CodeBlock(code=f"block_{i}", result=r) for i, r in enumerate(results)],
    )


def test_format_iteration_assistant_then_one_user_message():
    results = [
        REPLResult(stdout="hello\n", stderr="", locals={"x": 1}),
        REPLResult(stdout="", stderr="NameError: y", locals={"x": 1}),
    ]
    messages = format_iteration(iteration_with(*results, response="my code"))
    assert [m["role"] for m in messages] == ["assistant", "user"]
    assert messages[0]["content"] == "my code"
    user = messages[1]["content"]
    assert "hello" in user
    assert "NameError: y" in user
    assert user.index("hello") < user.index("NameError: y")


def test_format_iteration_without_blocks_is_just_the_response():
    messages = format_iteration(iteration_with(response="no code this time"))
    assert messages == [{"role": "assistant", "content": "no code this time"}]


def test_format_iteration_truncates_long_output_and_says_so():
    head, tail = "HEAD-MARKER ", " TAIL-MARKER"
    stdout = head + "x" * 100_000 + tail
    messages = format_iteration(
        iteration_with(REPLResult(stdout=stdout, stderr="", locals={})),
        max_character_length=1000,
    )
    user = messages[1]["content"]
    assert len(user) < 1500
    assert "cut" in user
    assert "HEAD-MARKER" in user
    assert "TAIL-MARKER" in user


def test_format_iteration_truncates_each_block_separately():
    results = [REPLResult(stdout=f"B{i}:" + "y" * 50_000, stderr="", locals={}) for i in range(3)]
    user = format_iteration(iteration_with(*results), max_character_length=500)[1]["content"]
    assert len(user) < 3 * 800
    for i in range(3):
        assert f"B{i}:" in user
    assert user.count("cut") >= 3


def test_format_iteration_short_output_is_untouched():
    stdout = "z" * 900
    user = format_iteration(
        iteration_with(REPLResult(stdout=stdout, stderr="", locals={})),
        max_character_length=1000,
    )[1]["content"]
    assert stdout in user
    assert "characters cut" not in user


# ---------------------------------------------------------------------------
# The 0.1.1 dialect: FINAL_VAR precedence, duck-typed environments, texts
# ---------------------------------------------------------------------------


class PrintingEnv:
    """A 0.1.x-style environment that is not a BaseEnv: it only runs code.

    It answers ``print(FINAL_VAR('name'))`` from a dict, as rlms 0.1.1's REPL did."""

    def __init__(self, values: dict[str, str]):
        self.values = values
        self.ran: list[str] = []

    def execute_code(self, code: str) -> REPLResult:
        self.ran.append(code)
        name = code.split("FINAL_VAR(", 1)[1].rsplit("))", 1)[0].strip("'\"")
        if name in self.values:
            return REPLResult(stdout=self.values[name] + "\n", stderr="", locals={})
        message = f"Error: Variable '{name}' not found. Assign it before calling FINAL_VAR on it."
        return REPLResult(stdout=message + "\n", stderr="", locals={})


def test_final_var_wins_over_an_earlier_final(repl):
    repl.execute_code("result = 'from the variable'")
    text = "FINAL(from the text)\nlater:\nFINAL_VAR(result)"
    assert find_final_answer(text, environment=repl) == "from the variable"
    # No environment: FINAL_VAR is still the answer line, so there is no answer.
    assert find_final_answer(text) is None


def test_final_var_through_a_duck_typed_environment():
    env = PrintingEnv({"total": "45"})
    assert find_final_answer("done\nFINAL_VAR(total)", environment=env) == "45"
    assert env.ran == ["print(FINAL_VAR('total'))"]
    # The environment's not-found text means: no answer yet, keep going.
    assert find_final_answer("FINAL_VAR(missing)", environment=env) is None


def test_final_var_followed_by_prose_names_the_variable(repl):
    repl.execute_code("x = 7")
    assert find_final_answer("FINAL_VAR(x) is my answer", environment=repl) == "7"


def test_format_execution_result_texts_of_the_reference():
    from rlm.utils.parsing import format_execution_result

    assert format_execution_result(REPLResult(stdout="", stderr="", locals={})) == "No output"
    text = format_execution_result(
        REPLResult(
            stdout="hi\n",
            stderr="oops",
            locals={"x": 1, "_hidden": 2, "fn": print, "name": "a"},
        )
    )
    assert text == "\nhi\n\n\n\noops\n\nREPL variables: ['x', 'name']\n"


def test_format_iteration_shows_code_only_when_the_response_lacks_it():
    result = REPLResult(stdout="3", stderr="", locals={"x": 3})
    by_hand = RLMIteration(
        prompt="p", response="Let me add.", code_blocks=[CodeBlock("x = 1 + 2", result)]
    )
    user = format_iteration(by_hand)[1]["content"]
    assert user.startswith("Code executed:\n```python\nx = 1 + 2\n```\n\nREPL output:\n")
    written = RLMIteration(
        prompt="p",
        response=f"Let me add.\n{fenced('x = 1 + 2')}",
        code_blocks=[CodeBlock("x = 1 + 2", result)],
    )
    user = format_iteration(written)[1]["content"]
    assert user.startswith("REPL output:\n")
    assert "x = 1 + 2" not in user


def test_format_iteration_numbers_blocks_as_the_reference():
    results = [REPLResult(stdout=f"out{i}", stderr="", locals={}) for i in range(2)]
    user = format_iteration(iteration_with(*results, response="block_0 block_1"))[1]["content"]
    assert "REPL output (block 1):\n" in user
    assert "REPL output (block 2):\n" in user

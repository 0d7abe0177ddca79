# %% [markdown]
# # Replay a recorded run (a notebook in `# %%` cells)
#
# Open this file as a notebook (VS Code, PyCharm, or Jupyter with jupytext) and run the
# cells, or run it whole: `python examples/replay.py`. It records a run to a trajectory
# log, loads the log, shows it, and re-executes its code offline: every model call is
# answered from the recording, so no provider is called and the output can be compared.

# %%
import tempfile

from rlm import RLM, load_trajectory
from rlm.logger import RLMLogger

log_dir = tempfile.mkdtemp(prefix="rlm-replay-")
script = [
    "```repl\nwords = context.split()\nprint(len(words), 'words')\n```",
    "```repl\nlongest = max(words, key=len)\nsummary = llm_query(f'Define {longest}')\n"
    "print(summary)\n```",
    "```repl\nanswer.update(content=f'{longest}: {summary}', ready=True)\n```",
]
rlm = RLM(
    backend="scripted",
    backend_kwargs={"responses": script, "sub_responses": ["a very long word"]},
    logger=RLMLogger(log_dir=log_dir),
)
result = rlm.completion("a b supercalifragilistic c", root_prompt="Define the longest word.")
print(result.response)

# %% [markdown]
# Load the log. In a notebook the trajectory renders as an HTML summary (its
# `_repr_html_`); `rlm view LOG_DIR` opens the full viewer.

# %%
trajectory = load_trajectory(rlm.logger.log_file_path)
print(trajectory)
print(len(trajectory.iterations), "iterations, final answer:", trajectory.final_answer)

# %% [markdown]
# Replay it offline, block by block, and check that every block's output matches.

# %%
replayed = trajectory.replay(context="a b supercalifragilistic c")
print("replayed answer:", replayed.response)
print("matches the recording:", replayed.metadata["replay"]["matches"])

"""A long-context benchmark whose ground truth is known by construction (issue #13).

``tasks`` makes the tasks (seeded, pure functions of family, size and seed) and scores
answers; ``solve`` is the reference solution, written as REPL code; ``oracle`` is the
scripted model that runs it; ``arms`` runs a task on an arm (direct, rlm, rlms);
``report`` turns the records into a table and plots; ``run`` is the command line::

    python3 benchmarks/longcontext/run.py --oracle --sizes 1,4 --seeds 0 --out /tmp/lc

See docs/longcontext.md.
"""

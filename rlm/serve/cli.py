"""``rlm serve``: the command-line front of :mod:`rlm.serve.app`."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from rlm.cli_common import add_command, add_rlm_options, rlm_config


def _serve(args: argparse.Namespace) -> int:
    """serve the RLM as an OpenAI-compatible chat-completions API

    Serve an RLM over HTTP: GET /v1/models, POST /v1/chat/completions (stream: true for
    SSE) and the runs API (/v1/rlm/runs). Binds 127.0.0.1 by default; any other address
    needs --api-key. Needs rlm[server].
    """
    from rlm.serve.runner import _require_server_extra, check_bind, serve_forever

    _require_server_extra()
    api_key = args.api_key or os.environ.get("RLM_SERVE_API_KEY") or None
    check_bind(args.host, api_key)
    from rlm.serve.app import LIMIT_KEYS, ServeConfig, create_app

    config = ServeConfig(
        rlm=rlm_config(args),
        model_id=args.model_id,
        api_key=api_key,
        max_concurrent=args.max_concurrent,
        max_queue=args.max_queue,
        environments=list(args.allow_environment or []),
        # the maxima a request may ask for: --cap-iterations is max_iterations, ...
        **{key: getattr(args, key.replace("max_", "cap_")) for key in LIMIT_KEYS},
    )
    app = create_app(config)  # checks the RLM settings before binding
    print(
        f"rlm serve: model {config.model_id!r} on http://{args.host}:{args.port}/v1"
        + (" (API key required)" if api_key else ""),
        file=sys.stderr,
    )
    serve_forever(app, args.host, args.port, args.log_level)
    return 0


def build_serve(subparsers: Any) -> None:
    parser = add_command(subparsers, "serve", _serve)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument(
        "--api-key", help="require 'Authorization: Bearer KEY' (default: $RLM_SERVE_API_KEY)"
    )
    parser.add_argument("--model-id", default="rlm", help="the model id clients ask for")
    parser.add_argument("--max-concurrent", type=int, default=4, help="runs at once (default 4)")
    parser.add_argument(
        "--max-queue", type=int, default=64, help="runs waiting before 429 (default 64)"
    )
    parser.add_argument("--cap-iterations", type=int, help="the most max_iterations a request gets")
    parser.add_argument("--cap-budget", type=float, help="the most max_budget (USD) a request gets")
    parser.add_argument("--cap-timeout", type=float, help="the most max_timeout (s) a request gets")
    parser.add_argument("--cap-tokens", type=int, help="the most max_tokens a request gets")
    parser.add_argument(
        "--allow-environment",
        action="append",
        metavar="NAME",
        help="an environment requests may choose (repeatable; the served one always is)",
    )
    parser.add_argument("--log-level", default="info", help="uvicorn's log level")
    add_rlm_options(parser)

"""The model-call plumbing: the LMHandler server, the wire protocol and frame codec, the
call limiter and the adaptive batch concurrency."""

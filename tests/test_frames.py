"""The one frame codec (rlm/comms/frames.py), as the handler, the host driver and the
sandbox worker all use it."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from rlm.comms import frames
from rlm.core import comms_utils
from rlm.environments import isolated, worker
from rlm.utils.exceptions import ProtocolError

HEADER = struct.Struct(">I")


def test_every_side_uses_the_same_codec():
    assert worker.rlm_frames is frames
    assert comms_utils.encode_frame is frames.encode_frame
    assert comms_utils.FrameTooLargeError is frames.FrameTooLargeError
    assert isolated.worker_sources()["rlm_frames"] == Path(frames.__file__).read_text(
        encoding="utf-8"
    )
    assert issubclass(frames.FrameTooLargeError, ProtocolError)
    assert issubclass(ProtocolError, ValueError)


def test_the_wire_format_is_length_then_utf8_json():
    frame = frames.encode_frame({"prompt": "héllo"})
    body = json.dumps({"prompt": "héllo"}, ensure_ascii=False).encode()
    assert frame == HEADER.pack(len(body)) + body


def test_a_writer_checks_the_reader_cap_before_sending():
    with pytest.raises(frames.FrameTooLargeError, match="exceeds the host's limit of 10 bytes"):
        frames.encode_frame({"p": "x" * 20}, 10, "the host's limit")


def test_the_worker_channel_refuses_an_oversized_frame_before_reading_it():
    r_in, w_in = os.pipe()
    r_out, w_out = os.pipe()
    channel = worker.Channel(r_in, w_out)
    try:
        os.write(w_in, HEADER.pack(worker.MAX_FRAME_BYTES + 1))  # a header only
        with pytest.raises(frames.FrameTooLargeError):
            channel.recv()
        os.write(w_in, frames.encode_frame({"type": "ping"}))
        assert channel.recv() == {"type": "ping"}
        channel.send({"type": "pong"})
        assert frames.decode_payload(os.read(r_out, 100)[4:]) == {"type": "pong"}
    finally:
        for fd in (w_in, r_out):
            os.close(fd)


def test_the_worker_refuses_to_send_more_than_the_host_reads(monkeypatch):
    r_out, w_out = os.pipe()
    channel = worker.Channel(os.open(os.devnull, os.O_RDONLY), w_out)
    monkeypatch.setattr(worker, "MAX_SEND_BYTES", 100)
    try:
        with pytest.raises(ValueError, match="exceeds the host's limit"):
            channel.send({"type": "result", "stdout": "x" * 200})
    finally:
        os.close(r_out)


def test_a_stream_ending_inside_a_frame_is_an_error_not_a_clean_end():
    chunks = iter([HEADER.pack(10), None])
    with pytest.raises(ConnectionError):
        frames.read_frame(lambda n: next(chunks))


def test_the_bootstrap_checks_its_first_frame_before_reading_it():
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", isolated.BOOTSTRAP],
        input=HEADER.pack(isolated.MAX_SOURCES_BYTES + 1),
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert b"first frame too large" in proc.stderr


def test_the_shipped_codec_runs_without_the_package():
    """In a sandbox (``python -I -S``, no rlm importable) the codec stands alone."""
    code = (
        "import sys, types\n"
        "src = sys.stdin.read()\n"
        "m = types.ModuleType('rlm_frames'); exec(compile(src, 'rlm_frames.py', 'exec'), m.__dict__)\n"
        "try:\n"
        "    m.encode_frame('x' * 50, 10)\n"
        "except ValueError as exc:\n"
        "    print(type(exc).__name__, type(exc).__mro__[1].__name__, 'rlm' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code],
        input=Path(frames.__file__).read_text(encoding="utf-8"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout.split() == ["FrameTooLargeError", "ProtocolError", "False"], proc.stderr

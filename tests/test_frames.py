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


# ---------------------------------------------------------------------------
# Streamed transfers
# ---------------------------------------------------------------------------


def _streamed(value):
    """(declared size, bytes on the wire) of a streamed transfer of ``value``."""
    fmt, pieces = frames.stream_pieces(value)
    total = frames.stream_size(pieces)
    out = bytearray()
    frames.write_stream(out.extend, pieces(), total)
    return {"format": fmt, "bytes": total}, bytes(out)


def _reader(data: bytes):
    view = memoryview(data)
    pos = [0]

    def read_exact(n):
        if pos[0] >= len(view):
            return None
        chunk = bytes(view[pos[0] : pos[0] + n])
        pos[0] += len(chunk)
        return chunk

    return read_exact, pos


def _chunk_sizes(data: bytes) -> list[int]:
    sizes, i = [], 0
    while i < len(data):
        (n,) = HEADER.unpack(data[i : i + 4])
        sizes.append(n)
        i += 4 + n
    return sizes


@pytest.mark.parametrize(
    "value",
    [
        "",
        "plain ascii",
        "héllo \u4e16\u754c \U0001f600 \ud800 lone surrogate " * 40_000,
        ["x" * 3_000_000, "é" * 600_000, ("a", 1)],
        list(range(200_000)),
        {"a": [1, 2.5, None, True], 1: "int key", None: "none key", "long": "y" * 2_500_000},
        {},
        (1, "two"),
        [object, {"k": object}],
        42,
        None,
    ],
)
def test_a_streamed_transfer_round_trips_in_bounded_chunks(value):
    stream, data = _streamed(value)
    sizes = _chunk_sizes(data)
    assert sum(sizes) == stream["bytes"]
    assert all(0 < n <= frames.STREAM_CHUNK_BYTES for n in sizes)
    read_exact, pos = _reader(data)
    got = frames.read_stream_value(read_exact, stream)
    assert pos[0] == len(data)  # exactly the declared bytes were read
    expected = json.loads(json.dumps(value, default=repr)) if stream["format"] == "json" else value
    assert got == expected
    assert stream["format"] == ("text" if isinstance(value, str) else "json")


def test_a_large_text_is_sent_in_several_chunks():
    stream, data = _streamed("z" * (3 * frames.STREAM_CHUNK_BYTES + 5))
    assert _chunk_sizes(data) == [frames.STREAM_CHUNK_BYTES] * 3 + [5]


def test_a_streamed_transfer_over_the_cap_is_refused_before_anything_is_read():
    def read_exact(n):
        raise AssertionError("nothing may be read")

    with pytest.raises(frames.FrameTooLargeError, match="exceeds the worker's cap of 100 bytes"):
        frames.read_stream(read_exact, 101, 100, "the worker's cap")
    with pytest.raises(frames.FrameTooLargeError):
        frames.read_stream_value(read_exact, {"format": "text", "bytes": 10**12})


def test_a_chunk_larger_than_what_is_left_is_refused_before_it_is_read():
    data = HEADER.pack(6) + b"abcdef"
    read_exact, pos = _reader(data)
    with pytest.raises(frames.FrameTooLargeError, match="the rest of the transfer of 5 bytes"):
        frames.read_stream(read_exact, 5)
    assert pos[0] == 4  # the header only


@pytest.mark.parametrize(
    "stream, data, error",
    [
        ({"format": "text", "bytes": 5}, HEADER.pack(3) + b"abc", ConnectionError),
        ({"format": "text", "bytes": 5}, HEADER.pack(5) + b"ab", ConnectionError),
        ({"format": "text", "bytes": 5}, HEADER.pack(0), ProtocolError),
        ({"format": "text", "bytes": -1}, b"", ProtocolError),
        ({"format": "text", "bytes": True}, b"", ProtocolError),
        ({"format": "text", "bytes": "5"}, b"", ProtocolError),
        ({"format": "pickle", "bytes": 1}, HEADER.pack(1) + b"x", ProtocolError),
        ("text", b"", ProtocolError),
        ({"format": "text", "bytes": 2}, HEADER.pack(2) + b"\xff\xfe", ProtocolError),
        ({"format": "json", "bytes": 2}, HEADER.pack(2) + b"{]", ProtocolError),
    ],
)
def test_a_broken_streamed_transfer_is_an_error(stream, data, error):
    read_exact, _ = _reader(data)
    with pytest.raises(error):
        frames.read_stream_value(read_exact, stream)


@pytest.mark.parametrize("change", ["shrinks", "grows"])
def test_a_value_that_changes_size_between_the_passes_is_refused_by_the_writer(change):
    value = ["x" * 10] * 5
    fmt, pieces = frames.stream_pieces(value)
    total = frames.stream_size(pieces)
    if change == "shrinks":
        value.pop()
    else:
        value.append("y" * 10_000)
    out = bytearray()
    with pytest.raises(ProtocolError, match="the value changed while it was sent"):
        frames.write_stream(out.extend, pieces(), total)
    # Nothing past the declared size went out, so the reader never takes extra bytes.
    written = 0
    view = memoryview(out)
    while view:
        (n,) = frames.HEADER.unpack(view[: frames.HEADER.size])
        written += n
        view = view[frames.HEADER.size + n :]
    assert written <= total


def test_the_worker_channel_reads_a_streamed_context_into_its_message():
    r_in, w_in = os.pipe()
    channel = worker.Channel(r_in, os.open(os.devnull, os.O_WRONLY))
    text = "ctx é " * 400_000
    stream, data = _streamed(text)
    head = frames.encode_frame({"type": "context", "index": 3, "stream": stream})

    def feed():
        with os.fdopen(w_in, "wb") as pipe:
            pipe.write(head + data + frames.encode_frame({"type": "ping"}))

    import threading

    writer = threading.Thread(target=feed)
    writer.start()
    try:
        assert channel.recv() == {"type": "context", "index": 3, "value": text}
        assert channel.recv() == {"type": "ping"}  # the next frame starts right after
    finally:
        writer.join()

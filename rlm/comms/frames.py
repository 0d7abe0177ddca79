"""The frame codec: the one implementation of the wire format, on every side.

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8
JSON. The LM handler and its clients (:mod:`rlm.comms.protocol`), the
isolated environments' host driver (:mod:`rlm.environments.isolated`) and the
sandbox worker (:mod:`rlm.environments.worker`) all encode and read frames
here, so the format and its size caps cannot drift apart.

Every reader checks the announced length against its cap *before* the payload
is read or allocated (:func:`check_frame_length`); every writer checks the
encoded size against the reader's cap before anything is sent.

This module imports only the standard library: it is shipped into sandboxes
as source, next to ``repl_core`` and the worker (``rlm_frames`` there). Inside
the package its errors are :class:`rlm.utils.exceptions.ProtocolError`; in a
sandbox, a ``ValueError`` of the same name (both are ``ValueError``\\ s).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import Any

try:
    from rlm.utils.exceptions import ProtocolError
except ImportError:  # inside a sandbox: the standard library only

    class ProtocolError(ValueError):  # type: ignore[no-redef]
        """A frame was malformed, too large, or cut short."""


#: Largest frame either side accepts by default (bytes). Big enough for a 100 MB prompt.
MAX_FRAME_BYTES = 512 * 1024 * 1024
HEADER = struct.Struct(">I")

#: ``read_exact(n)``: exactly ``n`` bytes, ``None`` at a clean end of stream.
ReadExact = Callable[[int], "bytes | bytearray | None"]


class FrameTooLargeError(ProtocolError):
    """A frame's length is over the cap (nothing was allocated or sent for it)."""

    def __init__(self, length: int, limit: int, what: str = "the maximum"):
        super().__init__(f"Frame of {length:,} bytes exceeds {what} of {limit:,} bytes")
        self.length = length
        self.limit = limit


def encode_frame(data: Any, max_bytes: int = MAX_FRAME_BYTES, what: str = "the maximum") -> bytes:
    """``data`` as one frame (JSON; objects JSON cannot hold become their ``repr``).

    Raises :class:`FrameTooLargeError` when the payload is over ``max_bytes`` (the
    cap of the side that will read it)."""
    text = json.dumps(data, ensure_ascii=False, default=repr)
    try:
        payload = text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates (e.g. surrogateescape-decoded text)
        payload = json.dumps(data, ensure_ascii=True, default=repr).encode("ascii")
    if len(payload) > max_bytes:
        raise FrameTooLargeError(len(payload), max_bytes, what)
    return HEADER.pack(len(payload)) + payload


def check_frame_length(
    header: bytes | bytearray, max_bytes: int | None = None, what: str = "the maximum"
) -> int:
    """Decode a 4-byte frame header; raise :class:`FrameTooLargeError` over the cap.

    The one check every frame reader runs before it allocates the payload.
    """
    if len(header) != HEADER.size:
        raise ProtocolError(f"Frame header of {len(header)} bytes; expected {HEADER.size}")
    (length,) = HEADER.unpack(header)
    limit = MAX_FRAME_BYTES if max_bytes is None else max_bytes
    if length > limit:
        raise FrameTooLargeError(length, limit, what)
    return length


def read_frame(
    read_exact: ReadExact, max_bytes: int | None = None, what: str = "the maximum"
) -> bytes | bytearray | None:
    """One frame's payload from any channel with ``read_exact(n)``; ``None`` at a clean end.

    The length is checked against ``max_bytes`` (default :data:`MAX_FRAME_BYTES`)
    before the payload is read; a stream that ends inside a frame raises
    ``ConnectionError``.
    """
    header = read_exact(HEADER.size)
    if header is None:
        return None
    length = check_frame_length(header, max_bytes, what)
    payload = read_exact(length) if length else b""
    if payload is None or len(payload) != length:
        raise ConnectionError(f"Channel closed inside a frame of {length:,} bytes")
    return payload


def decode_payload(payload: bytes | bytearray) -> Any:
    """Parse a frame's UTF-8 JSON; :class:`ProtocolError` when it is not."""
    try:
        return json.loads(payload)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"Frame is not valid UTF-8 JSON: {exc}") from exc


def stream_read_exact(stream: Any, n: int) -> bytearray | None:
    """Exactly ``n`` bytes from a binary stream with ``readinto`` (a pipe, a file).

    ``None`` when the stream ends before its first byte; ``ConnectionError`` when it
    ends inside. The buffer is allocated once, after the caller checked ``n``."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = stream.readinto(view[got:])
        if not k:
            if got == 0:
                return None
            raise ConnectionError(f"Channel closed after {got} of {n} bytes")
        got += k
    return buf

"""The frame codec: the one implementation of the wire format, on every side.

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8
JSON. The LM handler and its clients (:mod:`rlm.comms.protocol`), the
isolated environments' host driver (:mod:`rlm.environments.isolated`) and the
sandbox worker (:mod:`rlm.environments.worker`) all encode and read frames
here, so the format and its size caps cannot drift apart.

Every reader checks the announced length against its cap *before* the payload
is read or allocated (:func:`check_frame_length`); every writer checks the
encoded size against the reader's cap before anything is sent.

A large value (a context) can travel as a *streamed transfer* instead, so that
neither side holds extra copies of it: a JSON frame whose ``"stream"`` field
declares ``{"format": "text"|"json", "bytes": N}``, then chunk frames (the same
4-byte length, then raw UTF-8 bytes, at most :data:`STREAM_CHUNK_BYTES` each)
until ``N`` bytes have come. The writer encodes the text slice by slice, a list or
a dict item by item (:func:`stream_pieces`, :func:`write_stream`); the reader checks ``N`` against its cap before it
allocates one buffer of ``N`` bytes, checks each chunk against what is left, and
decodes once (:func:`read_stream_value`).

This module imports only the standard library: it is shipped into sandboxes
as source, next to ``repl_core`` and the worker (``rlm_frames`` there). Inside
the package its errors are :class:`rlm.utils.exceptions.ProtocolError`; in a
sandbox, a ``ValueError`` of the same name (both are ``ValueError``\\ s).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from typing import Any

try:
    from rlm.utils.exceptions import ProtocolError
except ImportError:  # inside a sandbox: the standard library only

    class ProtocolError(ValueError):  # type: ignore[no-redef]
        """A frame was malformed, too large, or cut short."""


#: Largest frame either side accepts by default (bytes). Big enough for a 100 MB prompt.
MAX_FRAME_BYTES = 512 * 1024 * 1024
HEADER = struct.Struct(">I")

#: Largest chunk of a streamed transfer (bytes of UTF-8).
STREAM_CHUNK_BYTES = 1 << 20
#: The formats of a streamed transfer: a str as its UTF-8 text, anything else as JSON.
STREAM_FORMATS = ("text", "json")

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


def decode_payload(payload: bytes | bytearray | str) -> Any:
    """Parse a frame's UTF-8 JSON (or already decoded text); :class:`ProtocolError` when it
    is not."""
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


# ---------------------------------------------------------------------------
# Streamed transfers
# ---------------------------------------------------------------------------


def _json(value: Any, strict: bool = False) -> str:
    return json.dumps(value, ensure_ascii=False, default=None if strict else repr)


def _json_items(encode: Callable[[int, int], str], count: int) -> Iterator[str]:
    """The JSON of items ``[0, count)`` of a list or dict without its brackets, ``encode(i,
    k)`` giving items ``i..i+k`` (bracketed): a few at a time, as many as make about a
    chunk (doubling while smaller, halving while larger), so neither one JSON call per
    item nor one for everything."""
    i, k = 0, 1
    while i < count:
        piece = encode(i, k)[1:-1]
        yield ", " + piece if i else piece
        i += k
        if len(piece) < STREAM_CHUNK_BYTES // 2:
            k *= 2
        elif len(piece) > 2 * STREAM_CHUNK_BYTES and k > 1:
            k //= 2


def stream_pieces(value: Any, strict: bool = False) -> tuple[str, Callable[[], Iterator[str]]]:
    """``(format, pieces)`` of a streamed transfer of ``value``: a str is sent as itself
    (``"text"``); anything else as its JSON (``"json"``, as :func:`encode_frame` writes it),
    a list's or a dict's items a few at a time. ``pieces()`` yields the text anew each
    time (once to size the transfer, once to send it), so the whole JSON text is never
    held. ``strict``: objects JSON has no form for raise ``TypeError`` (not their repr)."""
    if isinstance(value, str):
        return "text", lambda: iter((value,))
    if isinstance(value, (list, tuple)):

        def items() -> Iterator[str]:
            yield "["
            yield from _json_items(lambda i, k: _json(value[i : i + k], strict), len(value))
            yield "]"

        return "json", items
    if isinstance(value, dict):

        def pairs() -> Iterator[str]:
            keys = list(value)
            yield "{"
            yield from _json_items(
                lambda i, k: _json({key: value[key] for key in keys[i : i + k]}, strict),
                len(keys),
            )
            yield "}"

        return "json", pairs
    return "json", lambda: iter((_json(value, strict),))


def text_chunks(text: str) -> Iterator[bytes]:
    """``text`` as UTF-8, slice by slice, each at most :data:`STREAM_CHUNK_BYTES` (lone
    surrogates kept: ``surrogatepass``, which the reader decodes back)."""
    step = STREAM_CHUNK_BYTES if text.isascii() else STREAM_CHUNK_BYTES // 4
    for i in range(0, len(text), step):
        yield text[i : i + step].encode("utf-8", "surrogatepass")


def utf8_chunks(pieces: Iterator[str]) -> Iterator[bytes]:
    """The UTF-8 of ``pieces``, joined into chunks of at most :data:`STREAM_CHUNK_BYTES`."""
    pending: list[bytes] = []
    size = 0
    for piece in pieces:
        for part in text_chunks(piece):
            if pending and size + len(part) > STREAM_CHUNK_BYTES:
                yield b"".join(pending)
                pending, size = [], 0
            pending.append(part)
            size += len(part)
    if pending:
        yield b"".join(pending)


def stream_size(pieces: Callable[[], Iterator[str]]) -> int:
    """The number of bytes :func:`utf8_chunks` yields for ``pieces()``, none held at once."""
    total = 0
    for piece in pieces():
        if piece.isascii():
            total += len(piece)
        else:
            total += sum(len(part) for part in text_chunks(piece))
    return total


def write_stream(write: Callable[[bytes], Any], pieces: Iterator[str], total: int) -> None:
    """Write ``pieces`` as the chunk frames of a streamed transfer whose header, written
    just before, declared ``total`` bytes (:func:`stream_size`). :class:`ProtocolError`
    when the pieces come to another size (the value changed between the two passes):
    nothing past ``total`` is written, and the channel must then be given up, since the
    reader still waits for the declared bytes."""
    sent = 0
    for chunk in utf8_chunks(pieces):
        if sent + len(chunk) > total:
            raise ProtocolError(
                f"a streamed transfer grew past the {total:,} bytes it declared "
                "(the value changed while it was sent)"
            )
        write(HEADER.pack(len(chunk)) + chunk)
        sent += len(chunk)
    if sent != total:
        raise ProtocolError(
            f"a streamed transfer sent {sent:,} of the {total:,} bytes it declared "
            "(the value changed while it was sent)"
        )


def read_stream(
    read_exact: ReadExact, total: Any, max_bytes: int | None = None, what: str = "the maximum"
) -> bytearray:
    """The ``total`` bytes of a streamed transfer's chunk frames, in one buffer allocated
    after ``total`` was checked against ``max_bytes``; each chunk must fit in what is left."""
    if isinstance(total, bool) or not isinstance(total, int) or total < 0:
        raise ProtocolError(f"a streamed transfer declares {total!r} bytes")
    limit = MAX_FRAME_BYTES if max_bytes is None else max_bytes
    if total > limit:
        raise FrameTooLargeError(total, limit, what)
    buf = bytearray(total)
    view = memoryview(buf)
    got = 0
    while got < total:
        header = read_exact(HEADER.size)
        if header is None:
            raise ConnectionError(f"Channel closed after {got:,} of {total:,} streamed bytes")
        n = check_frame_length(header, total - got, "the rest of the transfer")
        if n == 0:
            raise ProtocolError("an empty chunk in a streamed transfer")
        chunk = read_exact(n)
        if chunk is None or len(chunk) != n:
            raise ConnectionError(f"Channel closed inside a chunk of {n:,} bytes")
        view[got : got + n] = chunk
        got += n
    view.release()
    return buf


def read_stream_value(
    read_exact: ReadExact, stream: Any, max_bytes: int | None = None, what: str = "the maximum"
) -> Any:
    """The value of the streamed transfer that a frame's ``"stream"`` field declares,
    decoded once: its bytes are freed before a JSON text is parsed."""
    if not isinstance(stream, dict) or stream.get("format") not in STREAM_FORMATS:
        raise ProtocolError(f"a malformed streamed transfer: {stream!r}")
    buf = read_stream(read_exact, stream.get("bytes"), max_bytes, what)
    try:
        text = buf.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"A streamed transfer is not valid UTF-8: {exc}") from exc
    del buf
    if stream["format"] == "text":
        return text
    return decode_payload(text)

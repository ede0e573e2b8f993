"""Reading an attempt's captured output, optionally following it until the attempt ends."""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["OutputChunk", "OutputStream", "read_output"]


class OutputStream(enum.Enum):
    """Which output of an attempt."""

    STDOUT = "stdout"
    STDERR = "stderr"


@dataclass(frozen=True)
class OutputChunk:
    """A piece of one output file."""

    stream: OutputStream
    """Which output it came from."""
    data: bytes
    """The bytes, at most the chunk size."""
    offset: int
    """Byte offset of ``data`` within its file."""


async def read_output(
    files: Sequence[tuple[OutputStream, Path]],
    *,
    follow: bool,
    ended: asyncio.Event,
    chunk_bytes: int = 64 * 1024,
    poll_seconds: float = 0.1,
) -> AsyncIterator[OutputChunk]:
    """Yield the content of ``files`` in chunks of at most ``chunk_bytes``.

    Without ``follow``, yields what the files hold now. With ``follow``, keeps yielding new
    output until ``ended`` is set, then yields the rest and stops. A missing file reads as empty.
    """
    offsets = dict.fromkeys((stream for stream, _ in files), 0)
    while True:
        finished = ended.is_set()  # checked before reading, so the last pass sees all output
        for stream, path in files:
            for chunk in _read_from(stream, path, offsets[stream], chunk_bytes):
                offsets[stream] += len(chunk.data)
                yield chunk
        if not follow or finished:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(poll_seconds):
                await ended.wait()


def _read_from(
    stream: OutputStream, path: Path, offset: int, chunk_bytes: int
) -> Iterator[OutputChunk]:
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below; chunks are yielded while open
    except FileNotFoundError:
        return
    with fh:
        fh.seek(offset)
        while data := fh.read(chunk_bytes):
            yield OutputChunk(stream, data, offset)
            offset += len(data)

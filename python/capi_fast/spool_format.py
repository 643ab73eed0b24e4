"""How one signal is framed in a spool segment, and how a damaged segment is read past.

A record is ``magic | length | flag | crc32 | payload``. The magic holds the bytes 0xFF and 0xFE,
which never occur in UTF-8 and so never in a JSON payload: after a damaged stretch the reader
finds the next record by its magic and accepts it only if its checksum (over length, flag and
payload) holds. One flipped bit costs one record; a torn tail (a crash mid-write) costs the
record being written; every intact record around a damaged one is still read.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["HEADER_SIZE", "MAGIC", "MAX_RECORD", "Damage", "Record", "claimed_length", "encode", "record_at", "scan"]

MAGIC = b"\xff\xfeCF"
_HEADER = struct.Struct("<4sIBI")  # magic, payload length, flag (1 = whisper), crc32 of length+flag+payload
HEADER_SIZE = _HEADER.size
MAX_RECORD = 1 << 20


@dataclass(frozen=True)
class Record:
    """An intact record at ``offset``: ``end`` is where the next one starts."""

    offset: int
    end: int
    whisper: bool
    payload: bytes


@dataclass(frozen=True)
class Damage:
    """Bytes ``[offset, end)`` that hold no intact record; ``end`` is the file's end for a torn tail."""

    offset: int
    end: int


def _crc(length_and_flag: bytes, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(length_and_flag))


def encode(whisper: bool, payload: bytes) -> bytes:
    """One framed record."""
    length_and_flag = struct.pack("<IB", len(payload), int(whisper))
    return _HEADER.pack(MAGIC, len(payload), int(whisper), _crc(length_and_flag, payload)) + payload


def claimed_length(header: bytes) -> int | None:
    """The payload length a record header claims, or None when ``header`` is not one."""
    if len(header) < HEADER_SIZE:
        return None
    magic, length, _, _ = _HEADER.unpack_from(header)
    return length if magic == MAGIC and length <= MAX_RECORD else None


def record_at(data: bytes, offset: int) -> Record | None:
    """The intact record starting exactly at ``offset``, or None."""
    if offset < 0 or offset + HEADER_SIZE > len(data):
        return None
    magic, length, flag, crc = _HEADER.unpack_from(data, offset)
    end = offset + HEADER_SIZE + length
    if magic != MAGIC or flag > 1 or length > MAX_RECORD or end > len(data):
        return None
    payload = data[offset + HEADER_SIZE : end]
    if _crc(data[offset + 4 : offset + 9], payload) != crc:
        return None
    return Record(offset, end, bool(flag), payload)


def scan(data: bytes, start: int = 0) -> Iterator[Record | Damage]:
    """Every intact record from ``start`` on, and each damaged stretch between them, in file order."""
    off = start
    while off < len(data):
        record = record_at(data, off)
        if record is not None:
            yield record
            off = record.end
            continue
        nxt = data.find(MAGIC, off + 1)
        while nxt != -1 and record_at(data, nxt) is None:
            nxt = data.find(MAGIC, nxt + 1)
        end = len(data) if nxt == -1 else nxt
        yield Damage(off, end)
        off = end

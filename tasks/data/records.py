"""SHA-256 records beside cached files: ``<file>.sha256`` holds the digest of ``<file>``'s bytes,
written last, so its presence marks the file complete and its digest lets a reuse verify it."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tasks.files import write_text_atomic

CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_recorded(file: Path) -> str | None:
    """The SHA-256 recorded beside ``file`` (``<file>.sha256``), or None."""
    record = record_path(file)
    return record.read_text().split()[0] if record.is_file() else None


def record(file: Path, digest: str) -> None:
    """Write ``<file>.sha256`` atomically (the marker that ``file`` is complete)."""
    write_text_atomic(record_path(file), f"{digest}  {file.name}\n")


def matches_record(file: Path) -> bool:
    """Whether ``file`` exists and its bytes still match its record."""
    recorded = read_recorded(file)
    return recorded is not None and Path(file).is_file() and file_sha256(file) == recorded


def record_path(file: Path) -> Path:
    return file.with_name(file.name + ".sha256")

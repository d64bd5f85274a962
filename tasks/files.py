"""Writing files so that no reader (or later run) ever sees half of one.

Every output file of the pipeline (downloads, generated data, parsed frames, factors, index
files, tuning records) is written to a temporary sibling and renamed into place, which is
atomic within one filesystem; on any error the temporary file is removed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Where data, caches, run folders and the default SQLite database go unless configured.
DATA_DIR = Path(os.environ.get("RECS_DATA_DIR", "data"))

# Read once at import (os.umask can only be read by setting it): files renamed into place get the
# usual permissions, not the private ones (0600) of temporary files.
UMASK = os.umask(0o022)
os.umask(UMASK)


def temp_path(folder: Path, name: str) -> Path:
    """A new empty file ``folder/.<name>.<random>.part``, with the permissions a plain ``open``
    would give (mkstemp's 0600 would survive the rename into place)."""
    fd, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=folder)
    os.fchmod(fd, 0o666 & ~UMASK)
    os.close(fd)
    return Path(temp)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; when the block ends without error it
    is renamed onto ``path``, otherwise removed. Creates ``path``'s folder if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_path(path.parent, path.name)
    try:
        yield temp
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as temp:
        temp.write_text(text, encoding="utf-8")

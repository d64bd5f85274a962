"""Preflight checks of the local side of a run, before any download or training: the folders it
writes are writable and its source is there. Each failure is one RecsError within seconds.

The database side is ``storage.preflight``; the flow runs both as its first task, whose retries
follow ``tasks.transient`` like every other (a 404 or a missing file fails at once).
"""

from __future__ import annotations

import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path, PurePosixPath

from tasks.data.datasets import Source
from tasks.data.download import USER_AGENT, cache_entry, read_recorded
from tasks.errors import RecsError
from tasks.urls import with_masked_source

SOURCE_TIMEOUT_SECONDS = 10.0


def check_folders(folders: dict[str, Path]) -> None:
    """Create each folder (``{config field: path}``) if needed and write and remove a file in it."""
    for field, folder in folders.items():
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as exc:
            raise RecsError(
                f"cannot write to {field} {folder}: {exc.strerror or exc}; choose a writable folder for {field}"
            ) from exc


def check_source(source: Source, timeout: float = SOURCE_TIMEOUT_SECONDS) -> None:
    """The source exists (a local path) or answers (an http(s) URL, HEAD with a ``timeout`` in
    seconds, a one-byte GET where HEAD is not allowed), unless a complete copy is already cached.
    Generated data needs nothing. A failure's message shows the source with its secrets masked."""
    if source.location is not None:
        with_masked_source(source.location, lambda: _check_location(source, timeout))


def _check_location(source: Source, timeout: float) -> None:
    location = source.location
    if location is None:
        return
    url = urllib.parse.urlparse(location)
    if url.scheme not in ("http", "https"):
        path = Path(urllib.request.url2pathname(url.path)) if url.scheme == "file" else Path(location)
        if not path.exists():
            raise RecsError(f"source {location} does not exist; pass an existing file, folder or URL with --source")
        return
    # where tasks.data.download.fetch keeps a finished download of this URL (named after its path)
    name = PurePosixPath(url.path).name or "download"
    if read_recorded(cache_entry(source.cache_dir, location, name) / name) is not None:
        return
    headers = {"User-Agent": USER_AGENT}
    try:
        try:
            urllib.request.urlopen(
                urllib.request.Request(location, headers=headers, method="HEAD"), timeout=timeout
            ).close()
        except urllib.error.HTTPError as exc:
            if exc.code not in (405, 501):
                raise
            ranged = urllib.request.Request(location, headers={**headers, "Range": "bytes=0-0"})
            urllib.request.urlopen(ranged, timeout=timeout).close()
    except urllib.error.HTTPError as exc:
        raise RecsError(f"source {location} answered HTTP {exc.code} {exc.reason}; check the URL") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise RecsError(
            f"cannot reach {location}: {reason}; check the network and that {url.netloc.rpartition('@')[2]} is reachable, "
            "or pass a local copy with --source"
        ) from exc

"""Download: a URL or local path -> a verified file or extracted folder on local disk (``Downloaded``).

Cache layout, one folder per source URL (``<name>-<first 12 hex of sha256(URL)>``)::

    <cache_dir>/hetrec2011-lastfm-2k.zip-1a2b3c4d5e6f/
        hetrec2011-lastfm-2k.zip            the downloaded bytes (remote sources only)
        hetrec2011-lastfm-2k.zip.http       the server's ETag / Last-Modified for them (JSON)
        hetrec2011-lastfm-2k.zip.members    size and mtime_ns of every extracted file (JSON)
        hetrec2011-lastfm-2k.zip.sha256     their SHA-256, written last: the entry is complete
        hetrec2011-lastfm-2k/               the extracted archive (archives only)

Everything is written under a temporary name in the same folder and renamed into place only
after it was verified, so a failed, interrupted or mismatched download leaves nothing behind,
and a download that fails its ``sha256`` never replaces (or deletes) a valid cached copy.
While an entry is fetched its folder is locked (``flock``), so concurrent runs take turns, and
any ``.part`` file found inside then is a killed run's leftover and is removed.

Every run revalidates a cached URL: a conditional GET (``If-None-Match`` / ``If-Modified-Since``
from the recorded validators) that the server answers 304 (``check`` ``etag`` / ``last-modified``)
or with the new content; a server that gave neither validator is downloaded again in full. An
expected ``sha256`` pins the content: a cached copy with that digest is used without a request
(``sha256-pinned``). ``refresh`` downloads in any case. On reuse the file's SHA-256 is recomputed
and compared with the record, and the extracted files with their recorded sizes and mtimes; a
bad file is downloaded again, an edited or deleted extracted file is extracted again.

Downloads end after ``Limits.deadline_seconds`` in all or when slower than ``Limits.min_rate``
bytes/s over any ``Limits.rate_window_seconds``; archives may expand to at most
``Limits.max_extract_bytes`` and ``Limits.max_expansion`` times their size, and need that much
free disk first; a full disk is reported as "no space left on <folder>".

Local files are used where they are (never copied); a local archive is extracted into the cache
keyed by its path (and extracted again when its digest changes). A local folder's digest covers
the files the parser reads (``tasks.data.parse.inputs``), not the whole tree.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import http.client
import json
import os
import shutil
import socket
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TypeVar

from pydantic import Field
from tqdm import tqdm

from tasks.contracts import DownloadCheck, Downloaded, StageConfig
from tasks.data.parse import inputs
from tasks.data.records import file_sha256, read_recorded, record, record_path
from tasks.errors import RecsError
from tasks.files import UMASK, temp_path, write_text_atomic
from tasks.transient import is_transient

ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")
CHUNK = 1 << 20
PROGRESS_MIN_BYTES = 16 << 20  # smaller downloads finish before a bar is worth drawing
USER_AGENT = "lastfm-recs/0.1"
T = TypeVar("T")


class Limits(StageConfig):
    """Bounds on one download and one archive extraction (``data.limits``)."""

    deadline_seconds: float = Field(4 * 3600, gt=0, description="Longest a download may take in all.")
    min_rate: float = Field(
        1024, ge=0, description="Slowest a download may be, bytes/s over any rate window (0: no minimum)."
    )
    rate_window_seconds: float = Field(60, gt=0, description="Window over which min_rate is measured.")
    max_extract_bytes: int = Field(50 << 30, gt=0, description="Most bytes an archive may extract to.")
    max_expansion: float = Field(100, gt=1, description="Most an archive may expand: extracted / archive bytes.")


def fetch(
    source: str,
    cache_dir: Path,
    sha256: str | None = None,
    *,
    expect: str | None = None,
    attempts: int = 4,
    backoff: float = 1.0,
    timeout: float = 60.0,
    refresh: bool = False,
    limits: Limits | None = None,
) -> Downloaded:
    """Make ``source`` (http(s) URL, ``file://`` URL or local path) available on local disk.

    Archives (.zip, .tar.gz, .tgz, .tar) are extracted and ``path`` is the extracted folder;
    otherwise ``path`` is the file (or the local folder as given). ``sha256`` (hex), when given,
    must match the downloaded bytes. ``expect`` is a file the archive (or local folder) must hold,
    e.g. ``"user_artists.dat"``: at that relative path, or under its own name at the root or one
    folder down (a re-packed mirror). Connection errors and HTTP 5xx
    are retried ``attempts`` times in all, waiting ``backoff`` x 1, 2, 4 ... seconds; a 4xx is not.
    ``timeout``: seconds one read may wait. ``refresh``: download a URL even when the cached copy
    is current. A cached URL is revalidated on every call (module docstring).
    Raises ``RecsError`` with a one-line message on any failure.
    """
    expected = sha256.strip().lower() if sha256 else None
    limits = limits or Limits()
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme in ("http", "https"):
        fetcher = _Remote(source, Path(cache_dir), expected, expect, attempts, backoff, timeout, limits)
        return fetcher.fetch(refresh)
    if parsed.scheme == "file":
        local = Path(urllib.request.url2pathname(parsed.path))
    elif parsed.scheme and len(parsed.scheme) > 1:  # a one-letter scheme is a Windows drive
        raise RecsError(f"cannot download {source}: only http(s), file:// and local paths are supported")
    else:
        local = Path(source).expanduser()
    return _fetch_local(source, local.resolve(), Path(cache_dir), expected, expect, limits)


def cache_entry(cache_dir: Path, key: str, name: str) -> Path:
    """The cache folder for ``key`` (a URL or other unique source string) named after ``name``."""
    tag = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(cache_dir) / f"{_safe(name)}-{tag}"


# --- remote ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Remote:
    """One URL's fetch: its cache entry, the expected digest and the download's bounds."""

    url: str
    cache_dir: Path
    expected: str | None
    expect: str | None
    attempts: int
    backoff: float
    timeout: float
    limits: Limits

    def fetch(self, refresh: bool) -> Downloaded:
        name = PurePosixPath(urllib.parse.urlparse(self.url).path).name or "download"
        final = cache_entry(self.cache_dir, self.url, name) / name
        with _locked(final.parent):
            cached = None if refresh else _reuse(final, self.expected, self.expect, self.url, self.limits)
            if cached is not None and self.expected:
                return Downloaded(self.url, cached, self.expected, from_cache=True, check="sha256-pinned")
            validators = _read_validators(final) if cached is not None else {}
            part = temp_path(final.parent, name)
            try:
                got = _retrying(lambda: self._download(part, validators), self.url, self.attempts, self.backoff)
                if got is None:  # 304: the cached copy is current
                    check: DownloadCheck = "etag" if "etag" in validators else "last-modified"
                    return Downloaded(self.url, _present(cached), read_recorded(final) or "", True, check)
                digest, headers = got
                _check_expected(self.url, digest, self.expected)
                if cached is not None and digest == read_recorded(final):  # the same bytes again
                    _write_validators(final, headers)
                    return Downloaded(self.url, cached, digest, from_cache=True, check="downloaded")
                path = _install(part, final, digest, self.expect, self.url, headers, self.limits)
            finally:
                part.unlink(missing_ok=True)
        return Downloaded(self.url, path, digest, from_cache=False, check="downloaded")

    def _download(self, part: Path, validators: dict[str, str]) -> tuple[str, dict[str, str]] | None:
        """Stream the URL into ``part`` (truncating it first); returns the bytes' SHA-256 and the
        response's validators, or None when a conditional request got 304 Not Modified."""
        headers = {"User-Agent": USER_AGENT}
        if "etag" in validators:
            headers["If-None-Match"] = validators["etag"]
        if "last_modified" in validators:
            headers["If-Modified-Since"] = validators["last_modified"]
        request = urllib.request.Request(self.url, headers=headers)
        try:
            response = urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 304 and validators:
                return None
            raise
        with response, part.open("wb") as out:
            length = int(response.headers.get("Content-Length") or 0)
            received = _stream(response, out, length, self.url, self.limits, part.parent)
            if length and received[1] != length:
                raise http.client.IncompleteRead(b"", length - received[1])
            found = {"etag": response.headers.get("ETag"), "last_modified": response.headers.get("Last-Modified")}
        return received[0], {k: v for k, v in found.items() if v}


class _TooSlow(TimeoutError):
    """A download past its deadline or below its minimum rate (retried like any timeout)."""


def _stream(response, out, length: int, url: str, limits: Limits, folder: Path) -> tuple[str, int]:
    """Copy ``response`` into ``out`` within ``limits``; returns the SHA-256 and byte count.

    ``read1`` returns what has arrived instead of waiting for a full chunk, so a server that
    drips a few bytes at a time is checked against the deadline and the rate as it goes.
    """
    digest = hashlib.sha256()
    start = window_start = time.monotonic()
    received = window_bytes = 0
    with tqdm(
        total=length or None,
        unit="B",
        unit_scale=True,
        desc=PurePosixPath(urllib.parse.urlparse(url).path).name,
        disable=length < PROGRESS_MIN_BYTES or None,  # None: only on a terminal
        leave=False,
    ) as bar:
        while chunk := response.read1(CHUNK):
            try:
                out.write(chunk)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise _no_space(folder) from exc
                raise
            digest.update(chunk)
            received += len(chunk)
            window_bytes += len(chunk)
            bar.update(len(chunk))
            now = time.monotonic()
            if now - start > limits.deadline_seconds:
                raise _TooSlow(f"not done after {limits.deadline_seconds:g} s (data.limits.deadline_seconds)")
            if now - window_start >= limits.rate_window_seconds:
                rate = window_bytes / (now - window_start)
                if rate < limits.min_rate:
                    raise _TooSlow(
                        f"{rate:,.0f} B/s, below the minimum {limits.min_rate:,.0f} B/s (data.limits.min_rate)"
                    )
                window_start, window_bytes = now, 0
    return digest.hexdigest(), received


def _present(path: Path | None) -> Path:
    assert path is not None  # a conditional request is only made for a cached copy
    return path


def _reuse(final: Path, expected: str | None, expect: str | None, source: str, limits: Limits) -> Path | None:
    """The cached path for ``final`` if complete and its bytes still match their record; an
    archive whose extracted files were edited or deleted since is extracted again from it."""
    recorded = read_recorded(final)
    if recorded is None or not final.is_file():
        return None
    if expected and recorded != expected:
        return None
    if file_sha256(final) != recorded:
        return None
    if not _is_archive(final.name):
        return final
    folder = _extract_dir(final)
    if folder.is_dir() and _holds(folder, expect) and _members(folder) == _read_json(_members_path(final)):
        return folder
    _members_path(final).unlink(missing_ok=True)
    path = _extract(final, final.name, folder, expect, source, limits)
    write_text_atomic(_members_path(final), json.dumps(_members(folder)))
    return path


def cached_check(url: str, cache_dir: Path) -> DownloadCheck:
    """How the cached copy of ``url`` was last validated by its server: ``etag`` or
    ``last-modified`` (whichever validator is recorded), else ``downloaded``."""
    name = PurePosixPath(urllib.parse.urlparse(url).path).name or "download"
    validators = _read_validators(cache_entry(cache_dir, url, name) / name)
    return "etag" if "etag" in validators else "last-modified" if "last_modified" in validators else "downloaded"


def intact(downloaded: Downloaded) -> bool:
    """Whether a (Prefect-cached) download is still on disk as it was made: the path exists, and
    an extracted archive's files have the sizes and mtimes recorded at extraction."""
    path = Path(downloaded.path)
    if not path.exists():
        return False
    for archive in (path.parent / (path.name + suffix) for suffix in ARCHIVE_SUFFIXES):
        if _members_path(archive).is_file():
            return path.is_dir() and _members(path) == _read_json(_members_path(archive))
    return True


def _retrying(call: Callable[[], T], url: str, attempts: int, backoff: float) -> T:
    """``call()``, tried up to ``attempts`` times with doubling back-off while its failure is
    transient (``tasks.transient``); a permanent failure ends it at once."""
    host = urllib.parse.urlparse(url).netloc.rpartition("@")[2]  # never the user:password part
    attempt = 1
    while True:
        try:
            return call()
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            transient = is_transient(exc)
            if isinstance(exc, urllib.error.HTTPError):
                if not transient:
                    raise RecsError(f"download of {url} failed: HTTP {exc.code} {exc.reason}; check the URL") from exc
                if attempt >= attempts:
                    raise RecsError(
                        f"download of {url} failed: HTTP {exc.code} {exc.reason} (after {attempt} "
                        "attempts); the server is failing, try again later"
                    ) from exc
            elif not transient or attempt >= attempts:
                raise RecsError(
                    f"cannot download {url}: {_reason(exc)} (after {attempt} attempts); check the "
                    f"network and that {host} is reachable, or pass a local copy with --source"
                ) from exc
        time.sleep(backoff * 2 ** (attempt - 1))
        attempt += 1


def _reason(exc: BaseException) -> str:
    inner = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(inner, _TooSlow):
        return f"too slow: {inner}"
    if isinstance(inner, ConnectionRefusedError):
        return "connection refused"
    if isinstance(inner, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(inner, socket.gaierror):
        return "host name not found"
    if isinstance(inner, http.client.IncompleteRead):
        return "connection closed before the download completed"
    return str(inner).splitlines()[0] or type(inner).__name__


def _check_expected(source: str, digest: str, expected: str | None) -> None:
    if expected and digest != expected:
        raise RecsError(
            f"checksum mismatch for {source}: expected sha256 {expected}, got {digest}; "
            "the file changed or is corrupt, so it was not kept"
        )


def _install(
    part: Path, final: Path, digest: str, expect: str | None, source: str, headers: dict[str, str], limits: Limits
) -> Path:
    """Extract (if an archive) and move the verified download into place. The old record goes
    first and the new one last, so an interruption in between leaves an entry that is refetched."""
    record_path(final).unlink(missing_ok=True)
    path = final
    if _is_archive(final.name):
        path = _extract(part, final.name, _extract_dir(final), expect, source, limits)
        write_text_atomic(_members_path(final), json.dumps(_members(path)))
    os.replace(part, final)
    _write_validators(final, headers)
    record(final, digest)
    return path


# --- local ----------------------------------------------------------------------------------


def _fetch_local(
    source: str, local: Path, cache_dir: Path, expected: str | None, expect: str | None, limits: Limits
) -> Downloaded:
    if local.is_dir():
        if expected:
            raise RecsError(f"{source} is a folder; a sha256 can only be checked for a file")
        if not _holds(local, expect):
            raise RecsError(f"{source} has no {expect}; point at the dataset's extracted folder")
        return Downloaded(source, local, _files_sha256(local, inputs(local)), from_cache=False, check="local")
    if not local.is_file():
        raise RecsError(f"{source} not found; check the path (or give an http(s) URL)")
    digest = file_sha256(local)
    _check_expected(source, digest, expected)
    if not _is_archive(local.name):
        return Downloaded(source, local, digest, from_cache=False, check="local")
    # Keyed by path; the recorded digest tells whether the archive was replaced since.
    entry = cache_entry(cache_dir, local.as_uri(), local.name)
    final = entry / local.name
    folder = _extract_dir(final)
    with _locked(entry):
        members = _read_json(_members_path(final))
        if (
            read_recorded(final) == digest
            and folder.is_dir()
            and _holds(folder, expect)
            and _members(folder) == members
        ):
            return Downloaded(source, folder, digest, from_cache=True, check="local")
        _discard(final)
        path = _extract(local, local.name, folder, expect, source, limits)
        write_text_atomic(_members_path(final), json.dumps(_members(path)))
        record(final, digest)
    return Downloaded(source, path, digest, from_cache=False, check="local")


def _files_sha256(folder: Path, files: list[Path]) -> str:
    """SHA-256 over ``files`` of ``folder`` (relative path and bytes, in sorted order)."""
    digest = hashlib.sha256()
    for file in sorted(files):
        digest.update(file.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(bytes.fromhex(file_sha256(file)))
    return digest.hexdigest()


# --- archives -------------------------------------------------------------------------------


def _is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def _extract_dir(archive: Path) -> Path:
    name = archive.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return archive.with_name(name[: -len(suffix)] or "extracted")
    return archive.with_name(name + ".d")


def _extract(archive: Path, name: str, target: Path, expect: str | None, source: str, limits: Limits) -> Path:
    """Extract ``archive`` (format told by ``name``) into a temporary folder beside ``target``
    within ``limits``, check it, rename it into place."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent))
    staging.chmod(0o777 & ~UMASK)
    budget = _Budget(source, staging, archive.stat().st_size, limits)
    try:
        if name.lower().endswith(".zip"):
            _extract_zip(archive, staging, source, budget)
        else:
            _extract_tar(archive, staging, source, budget)
        if not _holds(staging, expect):
            raise RecsError(
                f"{source} has no {expect} inside; it is not the expected dataset archive "
                "(check the URL, or pass the play file itself with --source)"
            )
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _holds(folder: Path, expect: str | None) -> bool:
    """Whether ``folder`` has the ``expect`` file: at that relative path, or (a re-packed mirror)
    under its own name at the root or one folder down, where ``tasks.data.parse`` also looks."""
    if expect is None or (folder / expect).is_file():
        return True
    name = PurePosixPath(expect).name
    return any(p.is_file() for p in (*folder.glob(name), *folder.glob(f"*/{name}")))


@dataclass
class _Budget:
    """What an extraction may still write: the ``limits`` and the disk's free space."""

    source: str
    folder: Path
    archive_bytes: int
    limits: Limits
    total: int = 0

    def take(self, size: int) -> None:
        """Account for ``size`` more bytes; refuse them past a limit or the free space."""
        self.total += size
        ceiling = min(self.limits.max_extract_bytes, self.limits.max_expansion * max(self.archive_bytes, 1))
        if self.total > ceiling:
            raise RecsError(
                f"{self.source} expands to over {self.total:,} bytes, past the limit of {ceiling:,.0f} "
                f"({self.limits.max_expansion:g}x its {self.archive_bytes:,} bytes, at most "
                f"{self.limits.max_extract_bytes:,}); refusing it (raise data.limits if it is genuine)"
            )
        free = shutil.disk_usage(self.folder).free
        if size > free:
            raise RecsError(
                f"no space left on {self.folder.parent}: extracting {self.source} needs {size:,} more bytes, "
                f"{free:,} are free; free some space or use another --cache-dir"
            )


def _extract_zip(archive: Path, staging: Path, source: str, budget: _Budget) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for member in members:
                _check_member(member.filename, source)
            # the sizes declared in the central directory bound what extraction writes
            budget.take(sum(m.file_size for m in members))
            zf.extractall(staging)
    except OSError as exc:
        raise _no_space(staging.parent) if exc.errno == errno.ENOSPC else _corrupt(source, exc) from exc
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise _corrupt(source, exc) from exc


def _extract_tar(archive: Path, staging: Path, source: str, budget: _Budget) -> None:
    def counted(tf: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
        for member in tf:  # one pass: a tar.gz has no index to sum sizes from first
            budget.take(member.size)
            yield member

    try:
        with tarfile.open(archive) as tf:
            # The "data" filter refuses absolute paths, "..", links leaving the folder, devices.
            tf.extractall(staging, members=counted(tf), filter="data")
    except tarfile.FilterError as exc:
        raise RecsError(
            f"{source} is unsafe: {exc}; refusing to extract an archive that writes outside its folder"
        ) from exc
    except OSError as exc:
        raise _no_space(staging.parent) if exc.errno == errno.ENOSPC else _corrupt(source, exc) from exc
    except (tarfile.TarError, zlib.error, EOFError) as exc:
        raise _corrupt(source, exc) from exc


def _check_member(name: str, source: str) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise RecsError(
            f"{source} is unsafe: member {name!r} would be written outside the target folder; refusing to extract it"
        )


def _no_space(folder: Path) -> RecsError:
    return RecsError(f"no space left on {folder}; free some space or use another --cache-dir")


def _corrupt(source: str, exc: BaseException) -> RecsError:
    detail = str(exc).splitlines()[0].rstrip(":") if str(exc) else type(exc).__name__
    return RecsError(f"{source} is a corrupt or truncated archive ({detail}); download it again")


# --- files ----------------------------------------------------------------------------------


def _safe(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in name).lstrip(".")
    return cleaned[:80] or "download"


def _members_path(file: Path) -> Path:
    return file.with_name(file.name + ".members")


def _members(folder: Path) -> dict[str, list[int]]:
    """Relative path -> [size, mtime_ns] of every file under an extracted ``folder``."""
    found = {}
    for file in folder.rglob("*"):
        if file.is_file():
            info = file.stat()
            found[file.relative_to(folder).as_posix()] = [info.st_size, info.st_mtime_ns]
    return found


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_validators(final: Path) -> dict[str, str]:
    """The ETag / Last-Modified the server sent with the cached bytes (empty: it sent neither)."""
    return _read_json(final.with_name(final.name + ".http")) or {}


def _write_validators(final: Path, headers: dict[str, str]) -> None:
    write_text_atomic(final.with_name(final.name + ".http"), json.dumps(headers))


@contextmanager
def _locked(entry: Path) -> Iterator[None]:
    """Hold an exclusive lock on the cache folder ``entry`` (created if needed) while it is
    fetched; any ``.part`` left in it then belongs to a killed run and is removed. The folder is
    removed again if it ends empty (a waiter then locks the recreated folder, not the old one)."""
    while True:
        _mkdir(entry)
        fd = os.open(entry, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        if entry.is_dir() and os.path.samestat(os.fstat(fd), os.stat(entry)):
            break
        os.close(fd)
    try:
        for stale in entry.glob(".*.part"):
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink(missing_ok=True)
        yield
    finally:
        _remove_if_empty(entry)
        os.close(fd)


def _discard(final: Path) -> None:
    """Remove a stale or broken cache entry's files before fetching again."""
    record_path(final).unlink(missing_ok=True)
    _members_path(final).unlink(missing_ok=True)
    final.with_name(final.name + ".http").unlink(missing_ok=True)
    final.unlink(missing_ok=True)
    if _is_archive(final.name):
        shutil.rmtree(_extract_dir(final), ignore_errors=True)


def _mkdir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RecsError(f"cannot create cache folder {folder}: {exc.strerror}; check --cache-dir") from exc


def _remove_if_empty(folder: Path) -> None:
    with suppress(OSError):
        folder.rmdir()

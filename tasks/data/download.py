"""Download: a URL or local path -> a verified file or extracted folder on local disk (``Downloaded``).

Cache layout, one folder per source URL (``<name>-<first 12 hex of sha256(URL)>``)::

    <cache_dir>/hetrec2011-lastfm-2k.zip-1a2b3c4d5e6f/
        hetrec2011-lastfm-2k.zip          the downloaded bytes (remote sources only)
        hetrec2011-lastfm-2k.zip.sha256   their SHA-256, written last: the entry is complete
        hetrec2011-lastfm-2k/             the extracted archive (archives only)

Everything is written under a temporary name in the same folder and renamed into place only
after it was verified, so a failed, interrupted or mismatched download leaves nothing behind.
On reuse the file's SHA-256 is recomputed and compared with the recorded one (and the expected
one, when given); a mismatch discards the entry and downloads again.

Local files are used where they are (never copied); a local archive is extracted into the cache
keyed by its path (and extracted again when its digest changes).
"""

from __future__ import annotations

import hashlib
import http.client
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
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from tasks.contracts import Downloaded
from tasks.errors import RecsError
from tasks.files import UMASK, temp_path, write_text_atomic
from tasks.transient import is_transient

ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")
CHUNK = 1 << 20
PROGRESS_MIN_BYTES = 16 << 20  # smaller downloads finish before a bar is worth drawing
USER_AGENT = "lastfm-recs/0.1"


def fetch(
    source: str,
    cache_dir: Path,
    sha256: str | None = None,
    *,
    expect: str | None = None,
    attempts: int = 4,
    backoff: float = 1.0,
    timeout: float = 60.0,
) -> Downloaded:
    """Make ``source`` (http(s) URL, ``file://`` URL or local path) available on local disk.

    Archives (.zip, .tar.gz, .tgz, .tar) are extracted and ``path`` is the extracted folder;
    otherwise ``path`` is the file (or the local folder as given). ``sha256`` (hex), when given,
    must match the downloaded bytes. ``expect`` is a file the archive (or local folder) must hold,
    e.g. ``"user_artists.dat"``: at that relative path, or under its own name at the root or one
    folder down (a re-packed mirror). Connection errors and HTTP 5xx
    are retried ``attempts`` times in all, waiting ``backoff`` x 1, 2, 4 ... seconds; a 4xx is not.
    Raises ``RecsError`` with a one-line message on any failure.
    """
    expected = sha256.strip().lower() if sha256 else None
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme in ("http", "https"):
        return _fetch_remote(source, Path(cache_dir), expected, expect, attempts, backoff, timeout)
    if parsed.scheme == "file":
        local = Path(urllib.request.url2pathname(parsed.path))
    elif parsed.scheme and len(parsed.scheme) > 1:  # a one-letter scheme is a Windows drive
        raise RecsError(f"cannot download {source}: only http(s), file:// and local paths are supported")
    else:
        local = Path(source).expanduser()
    return _fetch_local(source, local.resolve(), Path(cache_dir), expected, expect)


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def cache_entry(cache_dir: Path, key: str, name: str) -> Path:
    """The cache folder for ``key`` (a URL or other unique source string) named after ``name``."""
    tag = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(cache_dir) / f"{_safe(name)}-{tag}"


def read_recorded(file: Path) -> str | None:
    """The SHA-256 recorded beside ``file`` (``<file>.sha256``), or None."""
    record = _record_path(file)
    return record.read_text().split()[0] if record.is_file() else None


def record(file: Path, digest: str) -> None:
    """Write ``<file>.sha256`` atomically (the marker that ``file`` is complete)."""
    write_text_atomic(_record_path(file), f"{digest}  {file.name}\n")


# --- remote ---------------------------------------------------------------------------------


def _fetch_remote(
    url: str,
    cache_dir: Path,
    expected: str | None,
    expect: str | None,
    attempts: int,
    backoff: float,
    timeout: float,
) -> Downloaded:
    name = PurePosixPath(urllib.parse.urlparse(url).path).name or "download"
    entry = cache_entry(cache_dir, url, name)
    final = entry / name
    reused = _reuse(final, expected, expect)
    if reused is not None:
        return Downloaded(source=url, path=reused, sha256=read_recorded(final) or "", from_cache=True)
    _discard(final)
    _mkdir(entry)
    part = temp_path(entry, name)
    try:
        digest = _retrying(lambda: _download(url, part, timeout), url, attempts, backoff)
        _check_expected(url, digest, expected)
        path = _install(part, final, digest, expect, url)
    finally:
        part.unlink(missing_ok=True)
        _remove_if_empty(entry)
    return Downloaded(source=url, path=path, sha256=digest, from_cache=False)


def _reuse(final: Path, expected: str | None, expect: str | None) -> Path | None:
    """The cached path for ``final`` if complete and its bytes still match their record."""
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
    if folder.is_dir() and _holds(folder, expect):
        return folder
    return None


def _download(url: str, part: Path, timeout: float) -> str:
    """Stream ``url`` into ``part`` (truncating it first); returns the bytes' SHA-256."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    digest = hashlib.sha256()
    with urllib.request.urlopen(request, timeout=timeout) as response, part.open("wb") as out:
        length = int(response.headers.get("Content-Length") or 0)
        with tqdm(
            total=length or None,
            unit="B",
            unit_scale=True,
            desc=PurePosixPath(urllib.parse.urlparse(url).path).name,
            disable=length < PROGRESS_MIN_BYTES or None,  # None: only on a terminal
            leave=False,
        ) as bar:
            received = 0
            while chunk := response.read(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        if length and received != length:
            raise http.client.IncompleteRead(b"", length - received)
    return digest.hexdigest()


def _retrying(call: Callable[[], str], url: str, attempts: int, backoff: float) -> str:
    """``call()``, tried up to ``attempts`` times with doubling back-off while its failure is
    transient (``tasks.transient``); a permanent failure ends it at once."""
    host = urllib.parse.urlparse(url).netloc
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


def _install(part: Path, final: Path, digest: str, expect: str | None, source: str) -> Path:
    """Extract (if an archive) and move the verified download into place; the record goes last."""
    path = final
    if _is_archive(final.name):
        path = _extract(part, final.name, _extract_dir(final), expect, source)
    os.replace(part, final)
    record(final, digest)
    return path


# --- local ----------------------------------------------------------------------------------


def _fetch_local(
    source: str, local: Path, cache_dir: Path, expected: str | None, expect: str | None
) -> Downloaded:
    if local.is_dir():
        if expected:
            raise RecsError(f"{source} is a folder; a sha256 can only be checked for a file")
        if not _holds(local, expect):
            raise RecsError(f"{source} has no {expect}; point at the dataset's extracted folder")
        return Downloaded(source=source, path=local, sha256=_tree_sha256(local), from_cache=False)
    if not local.is_file():
        raise RecsError(f"{source} not found; check the path (or give an http(s) URL)")
    digest = file_sha256(local)
    _check_expected(source, digest, expected)
    if not _is_archive(local.name):
        return Downloaded(source=source, path=local, sha256=digest, from_cache=False)
    # Keyed by path; the recorded digest tells whether the archive was replaced since.
    entry = cache_entry(cache_dir, local.as_uri(), local.name)
    final = entry / local.name
    folder = _extract_dir(final)
    if read_recorded(final) == digest and folder.is_dir() and _holds(folder, expect):
        return Downloaded(source=source, path=folder, sha256=digest, from_cache=True)
    _discard(final)
    _mkdir(entry)
    try:
        path = _extract(local, local.name, folder, expect, source)
        record(final, digest)
    finally:
        _remove_if_empty(entry)
    return Downloaded(source=source, path=path, sha256=digest, from_cache=False)


def _tree_sha256(folder: Path) -> str:
    """SHA-256 over a folder's files (relative path and bytes, in sorted order)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
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


def _extract(archive: Path, name: str, target: Path, expect: str | None, source: str) -> Path:
    """Extract ``archive`` (format told by ``name``) into a temporary folder beside ``target``,
    check it, rename it into place."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent))
    staging.chmod(0o777 & ~UMASK)
    try:
        if name.lower().endswith(".zip"):
            _extract_zip(archive, staging, source)
        else:
            _extract_tar(archive, staging, source)
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


def _extract_zip(archive: Path, staging: Path, source: str) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.infolist():
                _check_member(member.filename, source)
            zf.extractall(staging)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise _corrupt(source, exc) from exc


def _extract_tar(archive: Path, staging: Path, source: str) -> None:
    try:
        with tarfile.open(archive) as tf:
            # The "data" filter refuses absolute paths, "..", links leaving the folder, devices.
            tf.extractall(staging, filter="data")
    except tarfile.FilterError as exc:
        raise RecsError(
            f"{source} is unsafe: {exc}; refusing to extract an archive that writes outside its folder"
        ) from exc
    except (tarfile.TarError, zlib.error, EOFError, OSError) as exc:
        raise _corrupt(source, exc) from exc


def _check_member(name: str, source: str) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise RecsError(
            f"{source} is unsafe: member {name!r} would be written outside the target folder; "
            "refusing to extract it"
        )


def _corrupt(source: str, exc: BaseException) -> RecsError:
    detail = str(exc).splitlines()[0].rstrip(":") if str(exc) else type(exc).__name__
    return RecsError(f"{source} is a corrupt or truncated archive ({detail}); download it again")


# --- files ----------------------------------------------------------------------------------


def _safe(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in name).lstrip(".")
    return cleaned[:80] or "download"


def _record_path(file: Path) -> Path:
    return file.with_name(file.name + ".sha256")


def _discard(final: Path) -> None:
    """Remove a stale or broken cache entry's files before fetching again."""
    _record_path(final).unlink(missing_ok=True)
    final.unlink(missing_ok=True)
    if _is_archive(final.name):
        shutil.rmtree(_extract_dir(final), ignore_errors=True)


def _mkdir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RecsError(f"cannot create cache folder {folder}: {exc.strerror}; check --cache-dir") from exc


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass

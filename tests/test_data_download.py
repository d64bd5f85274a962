"""tasks.data.download and tasks.data.datasets through real HTTP on loopback servers and real archives."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import stat
import tarfile
import threading
import time
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tasks.data.datasets import DATASETS, DataConfig, obtain, resolve
from tasks.data.download import fetch, file_sha256, read_recorded
from tasks.data.parse import parse
from tasks.data.synthetic import SyntheticConfig, generate
from tasks.errors import RecsError

FAST = {"attempts": 3, "backoff": 0.01, "timeout": 10}


class _Server(ThreadingHTTPServer):
    """Serves ``root``; the first ``failures`` requests get ``failure_code``; with ``short`` set,
    bodies stop half-way (the Content-Length promises the whole file)."""

    def __init__(self, root: Path):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.requests: list[str] = []
        self.failures = 0
        self.failure_code = 503
        self.short = False
        self.etag = False  # send an ETag (the file's sha256) and answer If-None-Match
        self.plain = False  # send no validator at all
        self.drip = 0.0  # seconds between 64-byte pieces of the body

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_port}/{name}"


class _Handler(SimpleHTTPRequestHandler):
    server: _Server

    def __init__(self, *args, **kwargs):
        super().__init__(*args, directory=str(args[2].root), **kwargs)

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.requests.append(self.path)
        if self.server.failures > 0:
            self.server.failures -= 1
            self.send_error(self.server.failure_code)
            return
        file = self.server.root / self.path.lstrip("/")
        if (self.server.etag or self.server.plain or self.server.drip) and file.is_file():
            self._send(file.read_bytes())
            return
        if self.server.short and file.is_file():
            body = file.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        super().do_GET()

    def do_HEAD(self):
        self.server.requests.append("HEAD " + self.path)
        super().do_HEAD()

    def _send(self, body: bytes):
        tag = '"' + hashlib.sha256(body).hexdigest() + '"'
        if self.server.etag and self.headers.get("If-None-Match") == tag:
            self.send_response(304)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        if self.server.etag:
            self.send_header("ETag", tag)
        self.end_headers()
        if not self.server.drip:
            self.wfile.write(body)
            return
        for start in range(0, len(body), 64):
            self.wfile.write(body[start : start + 64])
            self.wfile.flush()
            time.sleep(self.server.drip)


@pytest.fixture
def server(tmp_path: Path):
    root = tmp_path / "served"
    root.mkdir()
    srv = _Server(root)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def files_in(folder: Path) -> list[Path]:
    """Every file left under ``folder`` (temporary ones included)."""
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def refused(call) -> str:
    """The RecsError message of ``call()``, checked to be one line."""
    with pytest.raises(RecsError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and message
    return message


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the real HetRec archive over HTTP -------------------------------------------------------


def test_hetrec_zip_downloads_extracts_parses_and_is_reused(hetrec_url: str, hetrec_zip: Path, cache: Path):
    expected = hashlib.sha256(hetrec_zip.read_bytes()).hexdigest()
    got = fetch(hetrec_url, cache, expected, expect=DATASETS["lastfm-2k"].expect)
    assert not got.from_cache and got.sha256 == expected and got.path.is_dir()
    assert (got.path / "user_artists.dat").read_bytes() == (
        hetrec_zip.parent / "hetrec2011-lastfm-2k" / "user_artists.dat"
    ).read_bytes()

    interactions = parse(got.path)
    frame = interactions.frame
    assert (frame["user"].nunique(), frame["artist"].nunique(), len(frame)) == (1_892, 17_632, 92_834)
    assert interactions.dataset == "lastfm-2k"
    gaga = frame[frame["artist"] == "89"]
    assert set(gaga["artist_name"].astype(str)) == {"Lady Gaga"}
    first = frame[(frame["user"] == "2") & (frame["artist"] == "51")]
    assert first["plays"].tolist() == [13883.0] and first["artist_name"].astype(str).tolist() == ["Duran Duran"]

    umask = os.umask(0o022)
    os.umask(umask)
    for made in (got.path, got.path / "artists.dat", got.path.parent / "hetrec2011-lastfm-2k.zip"):
        mode = stat.S_IMODE(made.stat().st_mode)
        assert mode == (0o777 if made.is_dir() else 0o666) & ~umask, (made, oct(mode))

    again = fetch(hetrec_url, cache, expect="user_artists.dat")
    assert again.from_cache and again.path == got.path and again.sha256 == expected
    archive = next(p for p in files_in(cache) if p.name == "hetrec2011-lastfm-2k.zip")
    assert read_recorded(archive) == expected
    assert not [p for p in files_in(cache) if p.name.endswith(".part")]


def test_cached_file_that_no_longer_matches_its_record_is_downloaded_again(
    hetrec_url: str, hetrec_zip: Path, cache: Path
):
    fetch(hetrec_url, cache)
    archive = next(p for p in files_in(cache) if p.name == hetrec_zip.name)
    archive.write_bytes(b"damaged")
    again = fetch(hetrec_url, cache)
    assert not again.from_cache
    assert file_sha256(archive) == file_sha256(hetrec_zip) == again.sha256


# --- errors: one line each, nothing left in the cache ---------------------------------------


def test_checksum_mismatch(hetrec_url: str, cache: Path):
    message = refused(lambda: fetch(hetrec_url, cache, "0" * 64, **FAST))
    assert message.startswith(f"checksum mismatch for {hetrec_url}: expected sha256 {'0' * 64}, got ")
    assert files_in(cache) == []


def test_404_is_not_retried(server: _Server, cache: Path):
    message = refused(lambda: fetch(server.url("missing.zip"), cache, **FAST))
    assert message == f"download of {server.url('missing.zip')} failed: HTTP 404 File not found; check the URL"
    assert server.requests == ["/missing.zip"]
    assert files_in(cache) == []


def test_no_network_is_retried_then_reported(cache: Path):
    url = f"http://127.0.0.1:{closed_port()}/hetrec2011-lastfm-2k.zip"
    message = refused(lambda: fetch(url, cache, **FAST))
    assert message.startswith(f"cannot download {url}: connection refused (after 3 attempts);")
    assert files_in(cache) == []


def test_transient_5xx_succeeds_on_retry(server: _Server, hetrec_zip: Path, cache: Path):
    (server.root / hetrec_zip.name).write_bytes(hetrec_zip.read_bytes())
    server.failures = 2
    got = fetch(server.url(hetrec_zip.name), cache, expect="user_artists.dat", **FAST)
    assert len(server.requests) == 3 and got.sha256 == file_sha256(hetrec_zip)
    assert (got.path / "artists.dat").is_file()


def test_persistent_5xx_gives_up(server: _Server, cache: Path):
    server.failures = 10
    message = refused(lambda: fetch(server.url("x.zip"), cache, **FAST))
    assert message.startswith(f"download of {server.url('x.zip')} failed: HTTP 503 ")
    assert "(after 3 attempts)" in message and len(server.requests) == 3
    assert files_in(cache) == []


def test_interrupted_download_leaves_nothing(server: _Server, hetrec_zip: Path, cache: Path):
    (server.root / hetrec_zip.name).write_bytes(hetrec_zip.read_bytes())
    server.short = True
    message = refused(lambda: fetch(server.url(hetrec_zip.name), cache, **FAST))
    assert "connection closed before the download completed (after 3 attempts)" in message
    assert files_in(cache) == []


@pytest.mark.parametrize("name", ["truncated.zip", "truncated.tar.gz"])
def test_corrupt_or_truncated_archive(server: _Server, hetrec_zip: Path, hetrec_dir: Path, cache: Path, name: str):
    if name.endswith(".zip"):
        whole = hetrec_zip.read_bytes()
    else:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            tar.add(hetrec_dir / "user_artists.dat", arcname="user_artists.dat")
        whole = buffer.getvalue()
    (server.root / name).write_bytes(whole[: len(whole) // 2])
    message = refused(lambda: fetch(server.url(name), cache, **FAST))
    assert message.startswith(f"{server.url(name)} is a corrupt or truncated archive (")
    assert message.endswith("); download it again")
    assert files_in(cache) == []


def test_missing_expected_file_inside_archive(hetrec_url: str, cache: Path):
    message = refused(lambda: fetch(hetrec_url, cache, expect="usersha1-artmbid-artname-plays.tsv", **FAST))
    assert message.startswith(f"{hetrec_url} has no usersha1-artmbid-artname-plays.tsv inside;")
    assert files_in(cache) == []


def _zip_with(member: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("user_artists.dat", "userID\tartistID\tweight\r\n2\t51\t10\r\n")
        zf.writestr(member, "escaped")
    return buffer.getvalue()


def _tar_with(member: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo(member)
        info.size = len(b"escaped")
        tar.addfile(info, io.BytesIO(b"escaped"))
    return buffer.getvalue()


@pytest.mark.parametrize(("name", "make"), [("evil.zip", _zip_with), ("evil.tar.gz", _tar_with)])
def test_path_traversal_is_refused(server: _Server, tmp_path: Path, cache: Path, name: str, make):
    (server.root / name).write_bytes(make("../../escaped.txt"))
    message = refused(lambda: fetch(server.url(name), cache, **FAST))
    assert message.startswith(f"{server.url(name)} is unsafe: ")
    assert "refusing to extract" in message
    assert not list(tmp_path.rglob("escaped.txt"))
    assert files_in(cache) == []


# --- local sources ----------------------------------------------------------------------------


def test_local_path_file_url_and_folder(hetrec_zip: Path, hetrec_dir: Path, cache: Path):
    from_path = fetch(str(hetrec_zip), cache, expect="user_artists.dat")
    from_url = fetch(hetrec_zip.as_uri(), cache, expect="user_artists.dat")
    assert from_path.path == from_url.path and from_url.from_cache and not from_path.from_cache
    assert from_path.sha256 == file_sha256(hetrec_zip)
    plain = fetch(str(hetrec_dir / "user_artists.dat"), cache)
    # fetch resolves local paths (symlinks included), so compare resolved paths
    assert plain.path == (hetrec_dir / "user_artists.dat").resolve() and plain.sha256 == file_sha256(plain.path)
    folder = fetch(str(hetrec_dir), cache, expect="artists.dat")
    assert folder.path == hetrec_dir.resolve() and len(folder.sha256) == 64
    assert refused(lambda: fetch(str(hetrec_dir / "nope.tsv"), cache)).endswith(
        "not found; check the path (or give an http(s) URL)"
    )


# --- named datasets ---------------------------------------------------------------------------


def test_resolve_named_datasets_and_sources(tmp_path: Path):
    two_k = resolve(DataConfig(dataset="lastfm-2k", cache_dir=tmp_path))
    assert two_k.location == "https://files.grouplens.org/datasets/hetrec2011/hetrec2011-lastfm-2k.zip"
    assert (two_k.dataset, two_k.expect, two_k.synthetic) == ("lastfm-2k", "user_artists.dat", None)
    big = resolve(DataConfig(dataset="lastfm-360k", sha256="ab" * 32))
    assert big.location.endswith("lastfm-dataset-360K.tar.gz") and big.sha256 == "ab" * 32
    assert big.expect == "lastfm-dataset-360K/usersha1-artmbid-artname-plays.tsv"
    mirror = resolve(DataConfig(dataset="lastfm-2k", source="/mirror/hetrec.zip"))
    assert (mirror.location, mirror.dataset, mirror.expect) == ("/mirror/hetrec.zip", "lastfm-2k", "user_artists.dat")
    own = resolve(DataConfig(source="plays.csv"))
    assert (own.location, own.dataset, own.expect, own.synthetic) == ("plays.csv", None, None, None)
    generated = resolve(DataConfig(synthetic=SyntheticConfig(users=50, artists=200, rows=1_000)))
    assert generated.location is None and generated.synthetic.rows == 1_000


def test_360k_layout_tar_gz_over_http(server: _Server, tmp_path: Path, cache: Path):
    """The 360K archive's layout (play file under lastfm-dataset-360K/) through the real path."""
    plays = generate(tmp_path / "plays.tsv", users=100, artists=400, rows=3_000, genres=5, seed=3)
    with tarfile.open(server.root / "lastfm-dataset-360K.tar.gz", "w:gz") as tar:
        tar.add(plays, arcname=DATASETS["lastfm-360k"].expect)
    source = resolve(
        DataConfig(dataset="lastfm-360k", source=server.url("lastfm-dataset-360K.tar.gz"), cache_dir=cache)
    )
    got = obtain(source)
    interactions = parse(got.path, source.dataset)
    assert interactions.dataset == "lastfm-360k"
    assert len(interactions.frame) == 3_000 and interactions.bad_rows.counts == {}


# --- recs data ----------------------------------------------------------------------------------


def test_recs_data_over_http_prints_the_summary(hetrec_url: str, hetrec_dir: Path, cache: Path):
    from typer.testing import CliRunner

    from flows.cli import app

    with (hetrec_dir / "user_artists.dat").open() as fh:
        total = sum(int(line.split("\t")[2]) for line in list(fh)[1:])
    result = CliRunner().invoke(
        app, ["data", "--dataset", "lastfm-2k", "--source", hetrec_url, "--cache-dir", str(cache)]
    )
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.replace("│", " ").split())
    for expected in ("users 1,892", "artists 17,632", "pairs 92,834", f"total plays {total:,}", "bad rows none"):
        assert expected in out


def test_recs_data_reports_bad_rows_and_errors_in_one_line(server: _Server, tmp_path: Path, cache: Path):
    from typer.testing import CliRunner

    from flows.cli import app

    plays = tmp_path / "plays.csv"
    plays.write_text("user,artist,plays\nann,Air,3\nann,Blur,x\nbob,Air,2\nbob,Air,1\nbob,Cher,4\n")
    result = CliRunner().invoke(app, ["data", "--source", str(plays), "--cache-dir", str(cache)])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.replace("│", " ").split())
    assert "pairs 3" in out and "bad rows non_numeric_plays: 1, duplicate_pairs: 1" in out

    result = CliRunner().invoke(app, ["data", "--source", server.url("gone.zip"), "--cache-dir", str(cache)])
    assert result.exit_code == 1
    assert (
        result.output.strip()
        == f"error: download of {server.url('gone.zip')} failed: HTTP 404 File not found; check the URL"
    )


def test_expected_file_found_in_a_repacked_mirror(server: _Server, tmp_path: Path, cache: Path):
    """A 360K mirror with the play file at the archive root (not under lastfm-dataset-360K/)."""
    plays = generate(tmp_path / "usersha1-artmbid-artname-plays.tsv", users=20, artists=80, rows=200, genres=2)
    with tarfile.open(server.root / "mirror.tar.gz", "w:gz") as tar:
        tar.add(plays, arcname=plays.name)
    got = fetch(server.url("mirror.tar.gz"), cache, expect=DATASETS["lastfm-360k"].expect, **FAST)
    assert len(parse(got.path).frame) == 200
    folder = fetch(str(got.path), cache, expect=DATASETS["lastfm-360k"].expect)
    assert folder.path == got.path


# --- issue 17: fresh data every run, caches that heal, bounded downloads and archives -------------


def _serve(server: _Server, name: str, body: bytes, age: float = 0) -> str:
    file = server.root / name
    file.write_bytes(body)
    stamp = time.time() - age
    os.utime(file, (stamp, stamp))
    return server.url(name)


def _plays(rows: int, plays: int = 3) -> bytes:
    return ("user,artist,plays\n" + "".join(f"u{i},a{i % 7},{plays}\n" for i in range(rows))).encode()


def test_a_changed_url_is_fetched_again_by_last_modified(server: _Server, cache: Path):
    url = _serve(server, "plays.csv", _plays(20), age=100)
    first = fetch(url, cache, **FAST)
    assert (first.check, first.from_cache) == ("downloaded", False)
    again = fetch(url, cache, **FAST)
    assert (again.check, again.from_cache, again.sha256) == ("last-modified", True, first.sha256)
    _serve(server, "plays.csv", _plays(30), age=0)  # next week's export, a new Last-Modified
    changed = fetch(url, cache, **FAST)
    assert (changed.check, changed.from_cache) == ("downloaded", False)
    assert changed.sha256 == hashlib.sha256(_plays(30)).hexdigest() != first.sha256
    assert len(parse(changed.path).frame) == 30


def test_a_changed_url_is_fetched_again_by_etag_and_without_validators(server: _Server, cache: Path):
    server.etag = True
    url = _serve(server, "plays.csv", _plays(20))
    assert fetch(url, cache, **FAST).check == "downloaded"
    assert fetch(url, cache, **FAST).check == "etag"
    _serve(server, "plays.csv", _plays(25))
    assert fetch(url, cache, **FAST).sha256 == hashlib.sha256(_plays(25)).hexdigest()
    server.etag, server.plain = False, True  # neither ETag nor Last-Modified: downloaded each time
    plain = server.url("plays.csv")
    server.requests.clear()
    assert [fetch(plain, cache, **FAST).check for _ in range(2)] == ["downloaded", "downloaded"]
    assert len(server.requests) == 2


def test_sha256_pins_the_content_and_refresh_forces_a_download(server: _Server, cache: Path):
    url = _serve(server, "plays.csv", _plays(20), age=100)
    digest = hashlib.sha256(_plays(20)).hexdigest()
    fetch(url, cache, digest, **FAST)
    server.requests.clear()
    pinned = fetch(url, cache, digest, **FAST)
    assert (pinned.check, pinned.from_cache, server.requests) == ("sha256-pinned", True, [])
    forced = fetch(url, cache, digest, refresh=True, **FAST)
    assert (forced.check, len(server.requests)) == ("downloaded", 1)


def test_a_wrong_sha256_keeps_the_valid_cached_copy(server: _Server, cache: Path):
    url = _serve(server, "plays.csv", _plays(20), age=100)
    good = fetch(url, cache, **FAST)
    before = {p: p.read_bytes() for p in files_in(cache)}
    message = refused(lambda: fetch(url, cache, "ab" * 32, **FAST))
    assert message.startswith(f"checksum mismatch for {url}: expected sha256 {'ab' * 32}, got {good.sha256}")
    assert {p: p.read_bytes() for p in files_in(cache)} == before
    assert fetch(url, cache, good.sha256, **FAST).check == "sha256-pinned"


def test_a_malformed_sha256_is_refused_before_downloading(server: _Server, cache: Path):
    from pydantic import ValidationError
    from typer.testing import CliRunner

    from flows.cli import app

    url = _serve(server, "plays.csv", _plays(20))
    for bad in ("xyz", "ab" * 31, "g" * 64):
        with pytest.raises(ValidationError, match="is not a SHA-256"):
            DataConfig(source=url, sha256=bad)
    assert DataConfig(sha256=" " + "AB" * 32 + " ").sha256 == "ab" * 32
    result = CliRunner().invoke(app, ["data", "--source", url, "--sha256", "nothex", "--cache-dir", str(cache)])
    assert result.exit_code == 1
    assert result.output.strip() == (
        "error: invalid option --sha256: Value error, 'nothex' is not a SHA-256 (64 hex digits)"
    )
    assert server.requests == [] and files_in(cache) == []


def test_recs_data_refresh_downloads_again(server: _Server, cache: Path):
    from typer.testing import CliRunner

    from flows.cli import app

    url = _serve(server, "plays.csv", _plays(20), age=100)
    args = ["data", "--source", url, "--cache-dir", str(cache)]
    for extra in ([], [], ["--refresh"]):
        assert CliRunner().invoke(app, args + extra).exit_code == 0
    assert server.requests == ["/plays.csv"] * 3
    assert [p for p in files_in(cache) if p.name.endswith(".http")]  # the validators are recorded


@pytest.mark.parametrize(
    ("limits", "reason"),
    [
        ({"min_rate": 10_000, "rate_window_seconds": 0.3}, "too slow: "),
        ({"deadline_seconds": 0.5, "min_rate": 0}, "too slow: not done after 0.5 s (data.limits.deadline_seconds)"),
    ],
)
def test_a_slow_drip_download_times_out(server: _Server, cache: Path, limits: dict, reason: str):
    from tasks.data.download import Limits

    server.drip = 0.05  # ~1.3 KB/s, each piece well inside the per-read timeout
    url = _serve(server, "plays.csv", _plays(400))
    started = time.monotonic()
    message = refused(lambda: fetch(url, cache, attempts=1, timeout=10, limits=Limits(**limits)))
    assert message.startswith(f"cannot download {url}: {reason}") and time.monotonic() - started < 5
    assert files_in(cache) == []


def test_a_killed_downloads_part_file_is_removed_on_the_next_fetch(server: _Server, cache: Path):
    import multiprocessing
    import signal

    server.drip = 0.05
    url = _serve(server, "plays.csv", _plays(2_000))  # ~25 s at this drip: killed long before
    child = multiprocessing.get_context("fork").Process(target=fetch, args=(url, cache), kwargs=FAST)
    child.start()
    deadline = time.monotonic() + 10
    while not [p for p in files_in(cache) if p.name.endswith(".part") and p.stat().st_size] and child.is_alive():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert child.is_alive(), child.exitcode
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert [p for p in files_in(cache) if p.name.endswith(".part")]  # what the kill left behind
    server.drip = 0
    got = fetch(url, cache, **FAST)
    assert got.check == "downloaded" and not [p for p in files_in(cache) if p.name.endswith(".part")]


def _zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, body in members.items():
            zf.writestr(name, body)
    return buffer.getvalue()


def test_an_archive_past_its_expansion_or_size_limit_is_refused(server: _Server, cache: Path):
    from tasks.data.download import Limits

    bomb = _zip_of({"plays.csv": _plays(10), "padding.bin": bytes(20 << 20)})  # ~20 KB -> 20 MB
    url = _serve(server, "bomb.zip", bomb)
    message = refused(lambda: fetch(url, cache, **FAST))
    assert message.startswith(f"{url} expands to over 20,")
    assert message.endswith("refusing it (raise data.limits if it is genuine)")
    assert files_in(cache) == []
    small = Limits(max_extract_bytes=1 << 20, max_expansion=1e6)
    assert "at most 1,048,576" in refused(lambda: fetch(url, cache, limits=small, **FAST))
    assert files_in(cache) == []


def test_an_archive_larger_than_the_free_space_is_refused_first(server: _Server, cache: Path):
    from tasks.data.download import Limits

    archive = bytearray(_zip_of({f"part{i}.csv": b"x" for i in range(4_000)}))
    # declare each member 4 GB in the central directory: 16 TB in all, more than this disk has
    at = archive.find(b"PK\x01\x02")
    while at >= 0:
        archive[at + 24 : at + 28] = (0xFFFF_FFF0).to_bytes(4, "little")
        at = archive.find(b"PK\x01\x02", at + 4)
    url = _serve(server, "huge.zip", bytes(archive))
    unlimited = Limits(max_extract_bytes=1 << 60, max_expansion=1e12)
    message = refused(lambda: fetch(url, cache, limits=unlimited, **FAST))
    assert message.startswith(f"no space left on {cache}") and "are free; free some space" in message
    assert files_in(cache) == []


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A real 1 MB filesystem (tmpfs), to fill; skipped where mounting is not allowed."""
    import subprocess

    mount = tmp_path / "tiny"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_is_reported_as_a_full_disk(server: _Server, tiny_disk: Path):
    cache = tiny_disk / "cache"
    url = _serve(server, "big.csv", _plays(100_000))  # ~1.4 MB: the download fills the disk
    message = refused(lambda: fetch(url, cache, **FAST))
    assert message.startswith("no space left on ") and str(cache) in message and "corrupt" not in message
    assert files_in(cache) == []
    # an archive whose download fits but whose extraction would not: refused before extracting
    body = _zip_of({"user_artists.dat": b"userID\tartistID\tweight\r\n" + os.urandom(600_000)})
    url = _serve(server, "fills.zip", body)
    message = refused(lambda: fetch(url, cache, **FAST))
    assert message.startswith(f"no space left on {cache}") and "needs 600,0" in message, message
    assert files_in(cache) == []


def test_an_edited_or_deleted_extracted_file_is_extracted_again(
    server: _Server, hetrec_zip: Path, hetrec_dir: Path, cache: Path
):
    url = _serve(server, hetrec_zip.name, hetrec_zip.read_bytes(), age=100)
    got = fetch(url, cache, expect="user_artists.dat", **FAST)
    original = (hetrec_dir / "user_artists.dat").read_bytes()
    (got.path / "user_artists.dat").write_bytes(b"userID\tartistID\tweight\r\n2\t51\t1\r\n")
    (got.path / "tags.dat").unlink()
    server.requests.clear()
    again = fetch(url, cache, expect="user_artists.dat", **FAST)
    assert again.check == "last-modified" and server.requests == [f"/{hetrec_zip.name}"]  # a 304: no download
    assert (again.path / "user_artists.dat").read_bytes() == original and (again.path / "tags.dat").is_file()
    assert len(parse(again.path).frame) == 92_834


def test_a_local_folders_key_sees_nested_play_files_and_skips_other_trees(tmp_path: Path):
    from tasks.data.datasets import fingerprint

    root = tmp_path / "export"
    nested = root / "hetrec"
    nested.mkdir(parents=True)
    plays = nested / "user_artists.dat"
    plays.write_text("userID\tartistID\tweight\n2\t51\t10\n")
    (nested / "artists.dat").write_text("id\tname\turl\tpictureURL\n51\tDuran Duran\t\t\n")
    venv = root / ".venv" / "lib"
    venv.mkdir(parents=True)
    (venv / "big.bin").write_bytes(bytes(1 << 20))
    source = resolve(DataConfig(source=str(root), cache_dir=tmp_path / "cache"))
    key = fingerprint(source)
    assert fingerprint(source) == key
    (venv / "big.bin").write_bytes(bytes(2 << 20))  # not read by the parser: not in the key
    assert fingerprint(source) == key
    stamp = plays.stat()
    plays.write_text("userID\tartistID\tweight\n2\t51\t99\n")  # same size, one level down
    os.utime(plays, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # and the same mtime (a racy edit)
    assert fingerprint(source) != key
    # the folder's digest covers the parser's inputs only, so the .venv is never read
    got = fetch(str(root), tmp_path / "cache")
    assert got.check == "local" and got.sha256 == fetch(str(root), tmp_path / "cache").sha256
    (venv / "big.bin").write_bytes(b"changed")
    assert fetch(str(root), tmp_path / "cache").sha256 == got.sha256

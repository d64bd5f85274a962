"""tasks.preflight: folders and source checked before any download, each failure one RecsError."""

from __future__ import annotations

import functools
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tasks.data.datasets import DataConfig, resolve
from tasks.data.download import cache_entry, record
from tasks.errors import RecsError
from tasks.preflight import check_folders, check_source
from tasks.transient import is_transient


@pytest.fixture
def served(tmp_path):
    """A loopback HTTP server over ``tmp_path/www`` whose HEAD answers 405 (GET works)."""

    class NoHead(SimpleHTTPRequestHandler):
        def do_HEAD(self):
            self.send_error(405)

        def log_message(self, *args):
            pass

    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "plays.csv").write_text("user,artist,plays\n1,a,3\n")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(NoHead, directory=str(tmp_path / "www")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def _source(tmp_path, location: str):
    return resolve(DataConfig(dataset="lastfm-2k", source=location, cache_dir=tmp_path / "cache"))


def test_unwritable_folder_is_one_line(tmp_path):
    (tmp_path / "a-file").write_text("")
    check_folders({"work_dir": tmp_path / "runs"})
    assert (tmp_path / "runs").is_dir() and not list((tmp_path / "runs").iterdir())  # nothing left behind
    with pytest.raises(RecsError, match=r"cannot write to data.cache_dir .*a-file/cache: .*; choose a writable folder"):
        check_folders({"work_dir": tmp_path / "runs", "data.cache_dir": tmp_path / "a-file" / "cache"})


def test_missing_local_source_is_one_line(tmp_path):
    check_source(_source(tmp_path, str(tmp_path)))
    check_source(resolve(DataConfig()))  # generated: nothing to check
    with pytest.raises(RecsError, match="does not exist; pass an existing file, folder or URL with --source"):
        check_source(_source(tmp_path, str(tmp_path / "nope.zip")))
    with pytest.raises(RecsError, match="does not exist"):
        check_source(_source(tmp_path, f"file://{tmp_path / 'nope.zip'}"))


def test_url_source_answers_or_fails_at_once(tmp_path, served):
    check_source(_source(tmp_path, f"{served}/plays.csv"))  # HEAD refused with 405: a one-byte GET
    with pytest.raises(RecsError, match="answered HTTP 404") as missing:
        check_source(_source(tmp_path, f"{served}/missing.zip"))
    assert not is_transient(missing.value)  # never retried


def test_refused_url_is_transient_unless_cached(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/hetrec.zip"
    with pytest.raises(RecsError, match=rf"cannot reach {url}: .*pass a local copy with --source") as refused:
        check_source(_source(tmp_path, url))
    assert is_transient(refused.value)
    # a finished download of that URL in the cache: an offline run can still use it
    entry = cache_entry(tmp_path / "cache", url, "hetrec.zip")
    entry.mkdir(parents=True)
    (entry / "hetrec.zip").write_bytes(b"zip")
    record(entry / "hetrec.zip", "0" * 64)
    check_source(_source(tmp_path, url))

"""`recs run` with secrets and hostile names, in-process against the Prefect API of the test
harness (so the flow-run parameters, logs and artifacts can be read back through it):

- a --db password and a --source query token appear nowhere at rest: not in any text column of
  runs / run_metrics, not in the flow-run parameters, logs or artifacts;
- the printed ``try:`` command, pasted into bash, runs no shell code from an artist name and works
  on SQLite and PostgreSQL; Rich markup in names and paths is printed as text.
"""

from __future__ import annotations

import functools
import os
import subprocess
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from storage.engine import scratch_schema

pytestmark = pytest.mark.slow

PASSWORD = "pw-hunter2-8c1f"
TOKEN = "tok-s3cr3t-5d2e"
PG_URL = os.environ.get("RECS_TEST_POSTGRES_URL")
# the most listened artist runs shell code if its name is pasted unquoted; the others are Rich markup
TOP = "$(touch pwned)`touch pwned2`'; [/x] [bold]x"
NAMES = [TOP, "[bold]Bold[/bold]", "[/x]", "Plain"] + [f"Artist {i}" for i in range(26)]


def _plays_csv(path: Path) -> None:
    rows = ["user,artist,plays"]
    for u in range(40):
        for a, name in enumerate(NAMES):
            if a == 0 or (u * 7 + a * 3) % 4 == 0:  # TOP: every user; the rest: about a quarter
                rows.append(f'u{u},"{name.replace(chr(34), chr(34) * 2)}",{(u + a) % 9 + 1}')
    path.write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``http://127.0.0.1:PORT/plays.csv?token=TOKEN``, served by a loopback HTTP server."""
    folder = tmp_path_factory.mktemp("served")
    _plays_csv(folder / "plays.csv")

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/plays.csv?token={TOKEN}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _run(tmp_path: Path, monkeypatch, source: str, db: str):
    monkeypatch.delenv("PGPASSWORD", raising=False)  # the CLI sets these for the flow; undone after
    monkeypatch.delenv("RECS_SOURCE", raising=False)
    config = tmp_path / "run.yaml"
    config.write_text(
        f"data:\n  cache_dir: {tmp_path / 'cache'}\nwork_dir: {tmp_path / 'runs'}\n"
        "eval:\n  min_artists: 2\nretry:\n  attempts: 0\n"
    )
    from flows.cli import app

    result = CliRunner().invoke(
        app, ["run", "--config", str(config), "--source", source, "--db", db, "--model", "als"], env={"COLUMNS": "400"}
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def _paste(line: str, folder: Path) -> subprocess.CompletedProcess:
    """The ``try:`` line as a user pastes it into bash, run in ``folder``."""
    folder.mkdir()
    return subprocess.run(
        ["bash", "-c", line.removeprefix("try: ")], cwd=folder, capture_output=True, text=True, timeout=60
    )


@pytest.mark.postgres
@pytest.mark.timeout(600)
def test_no_secret_at_rest_and_the_psql_hint_works(served, harness, tmp_path, monkeypatch):
    if not PG_URL:
        pytest.skip("RECS_TEST_POSTGRES_URL is not set")
    from prefect.client.orchestration import get_client

    with scratch_schema(PG_URL, "recs_test") as url:
        with_password = make_url(url).set(password=PASSWORD).render_as_string(hide_password=False)
        result = _run(tmp_path, monkeypatch, served, with_password)
        assert PASSWORD not in result.output and TOKEN not in result.output

        engine = sa.create_engine(url)
        with engine.connect() as conn:
            stored = [
                str(value)
                for table in ("runs", "run_metrics")
                for row in conn.exec_driver_sql(f"SELECT * FROM {table}")
                for value in row
            ]
            source, config = conn.exec_driver_sql("SELECT source, config FROM runs").one()
        engine.dispose()
        assert stored and not [v for v in stored if PASSWORD in v or TOKEN in v]
        assert source.endswith("/plays.csv?token=***") and ":***@" not in config["storage"]["db"]

        with get_client(sync_client=True) as client:
            [flow_run] = client.read_flow_runs()
            texts = [str(flow_run.parameters)]
            texts += [str(a.data) + str(a.description) for a in client.read_artifacts()]
            texts += [log.message for log in client.read_logs()]
        assert flow_run.state is not None and flow_run.state.is_completed()
        assert "plays.csv?token=***" in texts[0]
        assert not [t for t in texts if PASSWORD in t or TOKEN in t]
        assert any("token=***" in t for t in texts[1:])  # the report names the (masked) source

        query = next(line for line in result.stdout.splitlines() if line.startswith("try: psql "))
        answer = _paste(query, tmp_path / "paste")
        assert answer.returncode == 0, answer.stderr  # round(score::numeric, 3): no round(real, integer)
        assert "(" in answer.stdout and "rows)" in answer.stdout
        assert not list((tmp_path / "paste").iterdir())


@pytest.mark.timeout(600)
def test_hostile_names_and_paths_print_as_text_and_paste_safely(served, harness, tmp_path, monkeypatch):
    folder = tmp_path / "[bold]db [red]"
    folder.mkdir()
    result = _run(tmp_path, monkeypatch, served, f"sqlite:///{folder / 'out.db'}")
    assert f"to sqlite:///{folder / 'out.db'}" in result.stdout  # markup in the path printed as is
    query = next(line for line in result.stdout.splitlines() if line.startswith("try: sqlite3 "))
    assert "[/x] [bold]x" in query  # the name's markup printed as is
    answer = _paste(query, tmp_path / "paste")
    assert answer.returncode == 0, answer.stderr
    assert len(answer.stdout.splitlines()) == 10
    assert not list((tmp_path / "paste").iterdir())  # neither $(touch …) nor `touch …` ran

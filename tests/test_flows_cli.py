"""`recs run` as a user runs it: a real subprocess, a real (ephemeral) Prefect API, real HTTP."""

from __future__ import annotations

import os
import shlex
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

# `recs` as a subprocess, with its own temporary Prefect API server
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# what the `recs` console script runs (pyproject: recs = "flows.cli:app"), without needing it installed
RECS = [sys.executable, "-c", "from flows.cli import app; app(prog_name='recs')"]


def _recs(tmp: Path, *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp / "prefect-home"),  # its own ephemeral Prefect API and database
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "RECS_DATA_DIR": str(tmp / "data"),  # default cache, runs and DB land in the test's folder
        "COLUMNS": "200",
    }
    env.pop("PREFECT_API_URL", None)
    return subprocess.run([*RECS, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _one_line_error(done: subprocess.CompletedProcess) -> str:
    """The one ``error: ...`` line (Prefect's own progress log lines may surround it)."""
    assert done.returncode == 1, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr[-2000:]
    return errors[0]


def test_recs_run_publishes_and_prints_a_summary(hetrec_url, tmp_path):
    db = tmp_path / "out.db"
    done = _recs(
        tmp_path, "run", "--dataset", "lastfm-2k", "--source", hetrec_url, "--db", f"sqlite:///{db}", "--model", "als"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    with sqlite3.connect(db) as con:
        [(run_id,)] = con.execute("SELECT run_id FROM runs WHERE status = 'published'").fetchall()
        [models] = con.execute("SELECT related_model, user_model FROM runs").fetchall()
    assert f"published run {run_id} to sqlite:///{db}" in out
    assert "precision@10" in out and "popularity" in out
    assert all(m.split("-")[0] == "als" for m in models)  # "als-related"/"als-users" when settings differ
    # the printed example query works as printed
    query = next(line for line in out.splitlines() if line.startswith("try: sqlite3 "))
    answer = subprocess.run(query.removeprefix("try: "), shell=True, capture_output=True, text=True, timeout=30)
    if answer.returncode == 127:  # no sqlite3 shell here: run its SQL through Python instead
        sql = shlex.split(query.removeprefix("try: "))[-1]
        with sqlite3.connect(db) as con:
            rows = con.execute(sql).fetchall()
    else:
        rows = answer.stdout.splitlines()
    assert len(rows) == 10


def test_recs_run_unreachable_source_fails_with_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "fast-fail.yaml"
    config.write_text("retry:\n  attempts: 0\n")
    done = _recs(
        tmp_path,
        "run",
        "--config",
        str(config),
        "--dataset",
        "lastfm-2k",
        "--source",
        f"http://127.0.0.1:{port}/missing.zip",
        "--db",
        f"sqlite:///{tmp_path / 'x.db'}",
    )
    assert f"127.0.0.1:{port}" in _one_line_error(done)
    assert (
        not (tmp_path / "x.db").exists()
        or not sqlite3.connect(tmp_path / "x.db")
        .execute("SELECT count(*) FROM runs WHERE status = 'published'")
        .fetchone()[0]
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("data:\n  datset: lastfm-2k\n", "data.datset"),
        ("n: 0\n", "n:"),
        ("data: [\n", "cannot read config"),
        ("eval:\n  k: []\n", "eval.k:"),
        ("eval:\n  k: [10, 0]\n", "eval.k.1:"),
        ("eval:\n  k: [501]\n", "eval.k.0:"),
        ("related_model:\n  name: als\n  regularization: -0.1\n", "related_model.als.regularization:"),
        ("user_model:\n  name: blend\n  factor:\n    name: bpr\n    regularization: -1\n", ".regularization:"),
        ("index:\n  search_k: -2\n", "index.search_k:"),
        ("storage:\n  db: 'sqlite://'\n", "in-memory SQLite"),
        ("storage:\n  db: 'sqlite:///:memory:'\n", "in-memory SQLite"),
    ],
)
def test_recs_run_bad_config_is_one_line_before_any_work(tmp_path, text, expected):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    done = _recs(tmp_path, "run", "--config", str(config), timeout=60)
    assert expected in _one_line_error(done)
    assert not (tmp_path / "data").exists()

"""A killed `recs run` leaves no process behind: SIGTERM stops it like Ctrl-C, and after SIGKILL
the kernel kills its temporary Prefect API server (PR_SET_PDEATHSIG). Real subprocesses, /proc."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_flows_cli import RECS, ROOT

pytestmark = pytest.mark.slow


def _descendants(pid: int) -> set[int]:
    """Live (non-zombie) descendants of ``pid``, walked through /proc/*/stat."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.timeout(400)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_run_leaves_no_server(tmp_path, sig):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "RECS_DATA_DIR": str(tmp_path / "data")}
    env.pop("PREFECT_API_URL", None)
    run = subprocess.Popen([*RECS, "run"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    tree: set[int] = set()
    try:
        deadline = time.monotonic() + 300
        servers: set[int] = set()
        while not servers and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.2)
            servers = {p for p in _descendants(run.pid) if b"uvicorn" in Path(f"/proc/{p}/cmdline").read_bytes()}
        assert servers, "the temporary Prefect server never started"
        time.sleep(3)  # the server is up and the flow is running
        tree = _descendants(run.pid)
        run.send_signal(sig)
        run.wait(timeout=60)
        if sig == signal.SIGTERM:
            assert run.returncode == 130  # stopped like Ctrl-C, not finished
            assert b"error: the run was stopped (Ctrl-C or SIGTERM)" in run.stdout.read()
        deadline = time.monotonic() + 30
        while any(map(_alive, tree)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in tree if _alive(p)], "processes of the killed run survived"
    finally:
        if run.poll() is None:
            run.kill()
        for p in filter(_alive, tree):  # leave nothing behind when the test fails either
            os.kill(p, signal.SIGKILL)

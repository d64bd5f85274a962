"""End to end through a real Prefect server: work pool, deployment from deployments/prefect.yaml,
its schedule, a triggered run picked up by a process worker, published rows and artifacts.

Everything runs on loopback with its own PREFECT_HOME, so it touches no user's Prefect state.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest

from flows.report import ARTIFACT_KEYS, METRICS_KEY, REPORT_KEY

ROOT = Path(__file__).resolve().parents[1]
PREFECT = [sys.executable, "-m", "prefect"]
POOL = "recs-process"
DEPLOYMENT = "retrain/weekly-retrain"

pytestmark = pytest.mark.slow


def _drain_prefect_workers() -> None:
    """Send what this process's Prefect log and event workers hold to the server of this module
    while it is up: workers left holding items for a stopped server make a later module's
    ``prefect_test_harness`` teardown (and the interpreter's exit) wait on them for good."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    EventsWorker.drain_all()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"prefect server not healthy after {timeout}s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    """Stop a process group this test started (the server or worker and their children)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def prefect_env(tmp_path_factory):
    """A real ``prefect server start`` on a free loopback port; yields the env to talk to it."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_UI_ENABLED": "false",
        # the scheduler would otherwise first look at new deployments after 60 s
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
    }
    log = home / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=home,
            start_new_session=True,
        )
    try:
        _wait_healthy(api, proc, log)
        yield env
    finally:
        _stop(proc)


async def _scheduled_runs(client, deployment_id):
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    return await client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
        ),
    )


async def _until(predicate, timeout: float, what: str, poll: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(poll)


def test_scheduled_deployment_runs_with_a_process_worker(prefect_env, hetrec_url, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # `recs deploy` creates the missing process pool, then runs
    # `prefect --no-prompt deploy --prefect-file deployments/prefect.yaml --all` (docs/operations.md's steps)
    deployed = subprocess.run(
        [sys.executable, "-c", "from flows.cli import app; app(prog_name='recs')", "deploy"],
        env=prefect_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert deployed.returncode == 0, deployed.stderr
    assert f"created process work pool {POOL}" in deployed.stdout

    db = tmp_path / "recs.db"
    config = {
        "data": {"dataset": "lastfm-2k", "source": hetrec_url, "cache_dir": str(tmp_path / "cache")},
        "storage": {"db": f"sqlite:///{db}"},
        "work_dir": str(tmp_path / "runs"),
    }

    async def scenario():
        async with get_client() as client:
            deployment = await client.read_deployment_by_name(DEPLOYMENT)
            assert deployment.work_pool_name == POOL
            assert deployment.global_concurrency_limit.limit == 1
            assert deployment.concurrency_options.collision_strategy == "ENQUEUE"
            [schedule] = deployment.schedules
            assert schedule.schedule.cron == "0 3 * * 1" and schedule.active

            scheduled = await _until(lambda: _scheduled_runs(client, deployment.id), 90, "scheduled runs")
            times = sorted(run.expected_start_time for run in scheduled)
            assert len(times) >= 2
            assert all(b - a == timedelta(days=7) for a, b in zip(times, times[1:]))
            assert all(t.weekday() == 0 and t.hour == 3 for t in times)

            # two runs at once: the deployment's concurrency limit must make the second wait. Both
            # forced past the unchanged check: either may start first, and whichever is second
            # would otherwise end early as `unchanged` (same data, config and code), with no report
            forced = {**config, "storage": {**config["storage"], "skip_unchanged": False}}
            triggered = [await run_deployment(DEPLOYMENT, parameters={"config": forced}, timeout=0) for _ in range(2)]
            worker_log = tmp_path / "worker.log"
            with worker_log.open("wb") as out:
                worker = subprocess.Popen(
                    [*PREFECT, "worker", "start", "--pool", POOL, "--type", "process"],
                    env=prefect_env,
                    cwd=ROOT,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            try:

                async def finished():
                    runs = [await client.read_flow_run(t.id) for t in triggered]
                    return runs if all(r.state.is_final() for r in runs) else None

                runs = await _until(finished, 480, "the triggered runs to finish", poll=2)
            finally:
                _stop(worker)
            for run in runs:
                logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
                log_text = "\n".join(entry.message for entry in logs)
                assert run.state.is_completed(), f"{run.state}\n{log_text[-3000:]}\n{worker_log.read_text()[-3000:]}"
            first, second = sorted(runs, key=lambda r: r.start_time)
            assert first.end_time <= second.start_time  # never two retrains at once
            waited = {state.name for state in await client.read_flow_run_states(second.id)}
            assert "AwaitingConcurrencySlot" in waited

            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[second.id]))
            )
            pools = [p.name for p in await client.read_work_pools()]
            return artifacts, pools

    with temporary_settings({PREFECT_API_URL: prefect_env["PREFECT_API_URL"]}):
        artifacts, pools = asyncio.run(scenario())
        _drain_prefect_workers()
    assert pools.count(POOL) == 1

    by_key = {a.key: a for a in artifacts}
    assert set(ARTIFACT_KEYS) <= set(by_key)
    table = by_key[METRICS_KEY].data
    rows = json.loads(table) if isinstance(table, str) else table
    assert any(r["model"] != "annoy" and r["popularity"] is not None for r in rows)

    with sqlite3.connect(db) as con:
        published = con.execute("SELECT run_id FROM runs WHERE status = 'published' ORDER BY run_id").fetchall()
        assert len(published) == 2
        related = con.execute("SELECT count(*) FROM current_related_artists").fetchone()[0]
        recs = con.execute("SELECT count(DISTINCT user_key) FROM current_user_recommendations").fetchone()[0]
    assert related > 0
    assert recs > 0
    assert f"run `{published[-1][0]}`" in by_key[REPORT_KEY].data  # the later run's report, of its own run


def test_a_failed_retrain_fires_the_alert_automation(prefect_env, tmp_path):
    """`recs deploy --alert-webhook` registers deployments/alerts.yaml; a failing retrain on the
    real server makes its action POST to a loopback webhook."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.config import RetrainConfig
    from flows.retrain import retrain

    received: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{hook.server_port}/alert"
    try:
        for _ in range(2):  # deploying again replaces the alert, never doubles it
            deployed = subprocess.run(
                [sys.executable, "-c", "from flows.cli import app; app(prog_name='recs')", "deploy"],
                env={**prefect_env, "RECS_ALERT_WEBHOOK": url},
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=240,
            )
            assert deployed.returncode == 0, deployed.stderr
            assert "registered the automation recs-retrain-failed" in deployed.stdout
        config = RetrainConfig.model_validate(
            {
                "data": {"dataset": "lastfm-2k", "source": str(tmp_path / "nope.zip"), "cache_dir": str(tmp_path)},
                "storage": {"db": f"sqlite:///{tmp_path / 'recs.db'}"},
                "work_dir": str(tmp_path / "runs"),
            }
        )
        with temporary_settings({PREFECT_API_URL: prefect_env["PREFECT_API_URL"]}):

            async def automations():
                async with get_client() as client:
                    return await client.read_automations_by_name("recs-retrain-failed")

            assert len(asyncio.run(automations())) == 1
            state = retrain(config, return_state=True)
            _drain_prefect_workers()
        assert state.is_failed()
        deadline = time.monotonic() + 120
        while not received and time.monotonic() < deadline:
            time.sleep(1)
    finally:
        hook.shutdown()
        hook.server_close()
    [alert] = received
    assert "failed" in alert["subject"]
    assert "Failed" in alert["text"] and "nope.zip does not exist" in alert["text"]
    assert "data.source" in alert["text"]  # a run that did not come from `recs run`: the config field

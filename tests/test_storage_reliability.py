"""storage.publish under faults the rows or other publishers cause: a value PostgreSQL cannot
index (a permanent error: one failed attempt, one line) and a publish lock held by another
process (a configurable wait, then an error naming the holder)."""

from __future__ import annotations

import string
import subprocess
import sys
import time

import numpy as np
import pytest
from test_storage import PG_URL, ROOT, make_outputs, statuses, views_of

from storage.engine import make_engine, scratch_schema
from storage.publish import publish
from tasks.errors import RecsError

HOLDER = r"""
import sys, time
sys.path[:0] = [sys.argv[2]]
from storage.engine import make_engine
from storage.publish import publish_lock
with publish_lock(make_engine(sys.argv[1])):
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
"""


def _hold_lock(db_url: str, seconds: float) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, db_url, str(ROOT), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.timeout(120)
def test_lock_wait_is_configurable_and_names_the_holder(db_url):
    engine = make_engine(db_url)
    first = publish(engine, make_outputs(1))
    before = views_of(engine)
    holder = _hold_lock(db_url, 60)
    try:
        started = time.monotonic()
        with pytest.raises(RecsError) as err:
            publish(engine, make_outputs(2), lock_timeout_seconds=2)
        waited = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    message = str(err.value)
    assert "\n" not in message and waited >= 2
    assert f"pid {holder.pid}" in message and "since" in message and "storage.lock_timeout_seconds" in message
    assert statuses(engine) == {first: "published"} and views_of(engine) == before
    engine.dispose()


@pytest.mark.timeout(120)
def test_publish_waits_for_a_holder_that_finishes(db_url):
    engine = make_engine(db_url)
    holder = _hold_lock(db_url, 3)
    try:
        assert publish(engine, make_outputs(3), lock_timeout_seconds=60) == 1
    finally:
        holder.wait(timeout=30)
    assert statuses(engine) == {1: "published"}
    engine.dispose()


@pytest.mark.postgres
@pytest.mark.timeout(300)
def test_unindexable_artist_key_fails_once_in_one_line(tmp_path):
    """A 9 KB artist key exceeds PostgreSQL's btree row limit (SQLSTATE 54000): a permanent
    error, one ``failed`` run even through the flow's publish task with retries configured."""
    if not PG_URL:
        pytest.skip("RECS_TEST_POSTGRES_URL is not set")
    from prefect import flow
    from prefect.testing.utilities import prefect_test_harness

    from flows import retrain
    from flows.config import RetrainConfig

    rng = np.random.default_rng(0)
    good, bad = make_outputs(4), make_outputs(5)
    bad.encoded.artist_keys[0] = "".join(rng.choice(list(string.ascii_letters), 9000))  # incompressible
    with scratch_schema(PG_URL, "recs_test") as url:
        engine = make_engine(url)
        first = publish(engine, good)
        before = views_of(engine)
        with pytest.raises(RecsError) as direct:
            publish(engine, bad)
        assert "\n" not in str(direct.value)
        assert "refused its rows" in str(direct.value) and "index row" in str(direct.value)
        assert "reachable" not in str(direct.value)
        assert list(statuses(engine).values()) == ["published", "failed"]

        config = RetrainConfig.model_validate({"storage": {"db": url}, "retry": {"attempts": 2, "backoff_seconds": 0}})

        @flow
        def publish_only() -> int:
            return retrain._retrying(retrain.publish_task, config)(config, bad)

        with prefect_test_harness(), pytest.raises(RecsError, match="refused its rows"):
            publish_only()
        assert list(statuses(engine).values()) == ["published", "failed", "failed"]  # no retries
        assert views_of(engine) == before and first == 1
        engine.dispose()

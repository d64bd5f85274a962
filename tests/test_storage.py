"""storage/: schema, atomic publish, retention, quality gate, crash safety and read queries.

Every test runs on SQLite (a temporary file) and on the real PostgreSQL from
``RECS_TEST_POSTGRES_URL`` (each test in a fresh schema, dropped afterwards); the PostgreSQL half
skips only when that variable is unset.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import sqlalchemy as sa
from typer.testing import CliRunner

import storage.publish as publish_module
from storage.engine import HEAD_REVISION, make_engine
from storage.publish import RunOutputs, RunRejected, publish
from storage.queries import list_runs, recommendations, related_artists
from tasks.contracts import Encoded, Metric, TopN
from tasks.errors import RecsError

ROOT = Path(__file__).resolve().parents[1]
PG_URL = os.environ.get("RECS_TEST_POSTGRES_URL")
BULK = ("artists", "users", "related_artists", "user_recommendations")

# Names that break naive quoting, LIKE patterns, COPY text escaping or terminal markup.
NASTY_NAMES = [
    "Sigur Rós",
    "Motörhead",
    "坂本龍一",
    "Mötley Crüe 🎸",
    "O'Brien",
    'The "Quoted" Band',
    "Robert'); DROP TABLE artists;--",
    "100% _Pure_ \\Back\\slash",
    "tab\there",
    "new\nline",
    "[bold]Rich[/bold]",
    "$1 ? :name %s",
    "",
]


def make_outputs(
    seed: int,
    n_artists: int = 40,
    n_users: int = 50,
    n: int = 5,
    precision: float = 0.2,
    names: list[str] | None = None,
    dataset: str = "synthetic",
) -> RunOutputs:
    """A small, fully random run; different seeds give different lists and scores."""
    rng = np.random.default_rng(seed)
    plays = sp.random(n_users, n_artists, density=0.2, format="csr", dtype=np.float32, random_state=seed)
    plays.data = np.ceil(plays.data * 50)
    artist_names = list(names or []) + [f"Artist {i}" for i in range(len(names or []), n_artists)]
    encoded = Encoded(
        plays=plays,
        user_keys=np.array([f"user-{i}" for i in range(n_users)], dtype=object),
        artist_keys=np.array([f"key-{i}" for i in range(n_artists)], dtype=object),
        artist_names=np.array(artist_names, dtype=object),
    )

    def top(rows: int) -> TopN:
        ids = np.argsort(rng.random((rows, n_artists)), axis=1)[:, :n].astype(np.int32)
        scores = np.sort(rng.random((rows, n), dtype=np.float32), axis=1)[:, ::-1].copy()
        ids[-1, -2:], scores[-1, -2:] = -1, np.nan  # a short list, padded like the contract says
        return TopN(ids, scores)

    return RunOutputs(
        encoded=encoded,
        related=top(n_artists),
        recommendations=top(n_users),
        metrics=[
            Metric("als", "precision", 10, precision),
            Metric("popularity", "precision", 10, 0.05),
            Metric("als", "rmse_binary", None, 0.9),
        ],
        config={"seed": seed, "note": 'it\'s "json"'},
        dataset=dataset,
        source="generated",
        data_sha256=f"{seed:064x}",
        related_model="als",
        user_model="als",
        code_version="test",
    )


def expected_related(o: RunOutputs) -> set[tuple]:
    keys, names = o.encoded.artist_keys, o.encoded.artist_names
    return {
        (keys[a], names[a], r + 1, keys[b], names[b], np.float32(o.related.scores[a, r]))
        for a, r in zip(*np.nonzero(o.related.ids >= 0))
        for b in [o.related.ids[a, r]]
    }


def expected_recommendations(o: RunOutputs) -> set[tuple]:
    e = o.encoded
    return {
        (e.user_keys[u], r + 1, e.artist_keys[a], e.artist_names[a], np.float32(o.recommendations.scores[u, r]))
        for u, r in zip(*np.nonzero(o.recommendations.ids >= 0))
        for a in [o.recommendations.ids[u, r]]
    }


def read_views(conn: sa.Connection) -> tuple[set[tuple], set[tuple]]:
    """Both views, each read in one statement, scores as float32 like they were published."""
    related = {
        (*row[:5], np.float32(row[5]))
        for row in conn.exec_driver_sql(
            "SELECT artist_key, artist_name, rank, related_artist_key, related_artist_name, score "
            "FROM current_related_artists"
        )
    }
    users = {
        (*row[:4], np.float32(row[4]))
        for row in conn.exec_driver_sql(
            "SELECT user_key, rank, artist_key, artist_name, score FROM current_user_recommendations"
        )
    }
    return related, users


def views_of(engine: sa.Engine, dataset: str | None = None) -> tuple[set[tuple], set[tuple]]:
    """Both views (only ``dataset``'s rows when given)."""
    with engine.connect() as conn:
        if dataset is None:
            return read_views(conn)
        related, users = (
            {
                (*row[:-1], np.float32(row[-1]))
                for row in conn.execute(sa.text(f"SELECT {columns} FROM {view} WHERE dataset = :d"), {"d": dataset})
            }
            for view, columns in (
                (
                    "current_related_artists",
                    "artist_key, artist_name, rank, related_artist_key, related_artist_name, score",
                ),
                ("current_user_recommendations", "user_key, rank, artist_key, artist_name, score"),
            )
        )
        return related, users


def expected_views(o: RunOutputs) -> tuple[set[tuple], set[tuple]]:
    return expected_related(o), expected_recommendations(o)


def statuses(engine: sa.Engine) -> dict[int, str]:
    with engine.connect() as conn:
        return dict(conn.exec_driver_sql("SELECT run_id, status FROM runs").all())


def bulk_run_ids(engine: sa.Engine) -> set[int]:
    with engine.connect() as conn:
        return {rid for table in BULK for (rid,) in conn.exec_driver_sql(f"SELECT DISTINCT run_id FROM {table}")}


@pytest.fixture
def engine(db_url):
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def test_publish_makes_complete_run_visible(engine):
    assert views_of(engine) == (set(), set())
    outputs = make_outputs(1)
    run_id = publish(engine, outputs)
    assert views_of(engine) == expected_views(outputs)
    with engine.connect() as conn:
        run = conn.exec_driver_sql(
            "SELECT status, n_artists, n_users, n_related, n_recommendations, "
            "finished_at, user_model FROM runs WHERE run_id = 1"
        ).one()
        metrics = conn.exec_driver_sql("SELECT model, metric, k, value FROM run_metrics ORDER BY metric_id").all()
        artists = conn.exec_driver_sql("SELECT listeners, plays FROM artists ORDER BY artist_id").all()
    assert run_id == 1
    assert run[:5] == ("published", 40, 50, 40 * 5 - 2, 50 * 5 - 2) and run[5] is not None and run[6] == "als"
    assert [tuple(m) for m in metrics] == [(m.model, m.metric, m.k, m.value) for m in outputs.metrics]
    assert [a[0] for a in artists] == outputs.encoded.listeners.tolist()
    np.testing.assert_allclose([a[1] for a in artists], outputs.encoded.artist_plays)


def test_nasty_names_round_trip_and_match_case_insensitively(engine):
    outputs = make_outputs(2, names=NASTY_NAMES)
    publish(engine, outputs)
    assert views_of(engine) == expected_views(outputs)
    for i, name in enumerate(NASTY_NAMES):
        # SQLite's lower() folds ASCII only, so swap case only where that is all there is.
        query = name.swapcase() if name.isascii() else name
        found = related_artists(engine, query)
        assert (found.artist_key, found.artist_name) == (f"key-{i}", name)
    with engine.connect() as conn:  # the injection attempt was stored as text, the table is intact
        assert conn.exec_driver_sql("SELECT count(*) FROM artists").scalar_one() == 40


def test_lookups_suggest_and_fail_in_one_line(engine):
    with pytest.raises(RecsError, match="nothing published yet"):
        related_artists(engine, "Artist 1")
    outputs = make_outputs(3, names=NASTY_NAMES)
    publish(engine, outputs)
    with pytest.raises(RecsError) as err:
        related_artists(engine, "Motorhead")
    assert "Motörhead" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(RecsError) as err:  # % and _ are literal, not wildcards
        related_artists(engine, "0%")
    assert "100% _Pure_ \\Back\\slash" in str(err.value) and "Artist" not in str(err.value)
    found = related_artists(engine, "ARTIST 20", n=3)
    a = 20
    assert [(r.rank, r.artist_key, r.score) for r in found.rows] == [
        (r + 1, f"key-{outputs.related.ids[a, r]}", pytest.approx(float(outputs.related.scores[a, r]), rel=1e-6))
        for r in range(3)
    ]
    recs = recommendations(engine, "user-7")
    assert [r.artist_key for r in recs.rows] == [f"key-{i}" for i in outputs.recommendations.ids[7]]
    with pytest.raises(RecsError, match="unknown user 'nobody'"):
        recommendations(engine, "nobody")


def test_retention_keeps_last_n_and_metrics_of_pruned(engine):
    runs = [make_outputs(seed) for seed in range(10, 14)]
    for outputs in runs:
        publish(engine, outputs, retention=2)
    assert statuses(engine) == {1: "pruned", 2: "pruned", 3: "published", 4: "published"}
    assert bulk_run_ids(engine) == {3, 4}
    assert views_of(engine) == expected_views(runs[-1])
    assert [(r.run_id, r.precision_at_10) for r in list_runs(engine)] == [(i, 0.2) for i in (4, 3, 2, 1)]
    if engine.dialect.name == "postgresql":  # pruned runs' partitions are gone, not just emptied
        with engine.connect() as conn:
            partitions = (
                conn.exec_driver_sql(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                    "WHERE c.relkind = 'r' AND c.relnamespace = current_schema()::regnamespace"
                )
                .scalars()
                .all()
            )
        assert sorted(partitions) == sorted(f"{t}_run_{r}" for t in BULK for r in (3, 4))
    with pytest.raises(RecsError, match="retention must be at least 1"):
        publish(engine, runs[0], retention=0)


def test_quality_gate_rejects_regressions_only(engine):
    good = make_outputs(20, precision=0.20)
    publish(engine, good, max_regression=0.1)
    worse = make_outputs(21, precision=0.17)  # 15 % worse
    with pytest.raises(RunRejected) as err:
        publish(engine, worse, max_regression=0.1)
    assert err.value.run_id == 2 and "readers keep run 1" in str(err.value)
    assert statuses(engine) == {1: "published", 2: "rejected"}
    assert bulk_run_ids(engine) == {1}
    assert views_of(engine) == expected_views(good)
    slightly = make_outputs(22, precision=0.19)  # 5 % worse: within the margin
    assert publish(engine, slightly, max_regression=0.1) == 3
    assert views_of(engine) == expected_views(slightly)
    assert publish(engine, worse) == 4  # no gate asked for: published


def test_invalid_outputs_write_nothing(engine):
    outputs = make_outputs(30)
    bad_ids = outputs.related.ids.copy()
    bad_ids[0, 0] = 40
    cases = {
        "outside": RunOutputs(**{**outputs.__dict__, "related": TopN(bad_ids, outputs.related.scores)}),
        "duplicates": RunOutputs(
            **{
                **outputs.__dict__,
                "encoded": Encoded(
                    outputs.encoded.plays,
                    np.array(["same"] * 50, dtype=object),
                    outputs.encoded.artist_keys,
                    outputs.encoded.artist_names,
                ),
            }
        ),
    }
    for needle, bad in cases.items():
        with pytest.raises(RecsError, match=needle):
            publish(engine, bad)
    with pytest.raises(RecsError, match="quality gate needs a precision@10"):
        publish(engine, RunOutputs(**{**outputs.__dict__, "metrics": []}), max_regression=0.1)
    assert statuses(engine) == {}


def test_exception_mid_load_marks_run_failed(engine, monkeypatch):
    first = make_outputs(40)
    publish(engine, first)
    real = publish_module.write_run_rows

    def failing(conn, table, run_id, batches):
        if table.name == "user_recommendations":
            raise OSError("disk full (injected)")  # a fault a test cannot otherwise cause on demand
        return real(conn, table, run_id, batches)

    monkeypatch.setattr(publish_module, "write_run_rows", failing)
    with pytest.raises(OSError):
        publish(engine, make_outputs(41))
    monkeypatch.undo()
    with engine.connect() as conn:
        status, message = conn.exec_driver_sql("SELECT status, message FROM runs WHERE run_id = 2").one()
    assert status == "failed" and "disk full" in message
    assert bulk_run_ids(engine) == {1} and views_of(engine) == expected_views(first)
    third = make_outputs(42)
    assert publish(engine, third) == 3 and views_of(engine) == expected_views(third)


def test_second_publisher_waits_then_fails_in_one_line(engine):
    with publish_module.publish_lock(engine), pytest.raises(RecsError, match="another publish") as err:
        publish(engine, make_outputs(70), lock_timeout_seconds=0.5)
    assert "\n" not in str(err.value) and statuses(engine) == {}
    assert publish(engine, make_outputs(70)) == 1  # released on exit


def lock_waiters(engine: sa.Engine) -> int:
    """PostgreSQL sessions of this database waiting for a lock."""
    with engine.connect() as conn:
        return conn.exec_driver_sql(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).scalar_one()


def wait_for(condition, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


CHILD = r"""
import sys, time
sys.path[:0] = [sys.argv[3], sys.argv[4]]
import storage.publish as P
from storage.engine import make_engine
from test_storage import make_outputs

point = sys.argv[2]

def pause(name):
    if name == point:
        print("paused", flush=True)
        time.sleep(600)

def before(name, fn):
    def wrapped(*args, **kwargs):
        pause(name)
        return fn(*args, **kwargs)
    return wrapped

def after(name, fn):
    def wrapped(*args, **kwargs):
        out = fn(*args, **kwargs)
        pause(name)
        return out
    return wrapped

real_write = P.write_run_rows
def write_run_rows(conn, table, run_id, batches):
    if table.name == "related_artists":
        def paced(inner):
            for i, batch in enumerate(inner):
                yield batch
                if i == 2:
                    pause("mid_load")
        batches = paced(batches)
    return real_write(conn, table, run_id, batches)

P.write_run_rows = write_run_rows
P._load_and_publish = before("before_load", P._load_and_publish)
P._mark_published = after("before_commit", P._mark_published)
P._prune = before("after_commit", P._prune)
P.publish(make_engine(sys.argv[1]), make_outputs(2), batch_rows=20)
print("finished", flush=True)
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("point", ["before_load", "mid_load", "before_commit", "after_commit"])
def test_sigkill_while_publishing_never_shows_a_mix(db_url, engine, point):
    old, new = make_outputs(1), make_outputs(2)
    publish(engine, old)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, db_url, point, str(ROOT), str(ROOT / "tests")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = child.stdout.readline().strip()
        assert line == "paused", child.stderr.read()
        reader = make_engine(db_url)  # a separate process-level view: its own connections
        visible = new if point == "after_commit" else old
        if point == "before_commit" and engine.dialect.name == "postgresql":
            # the switch holds current_runs to its commit, so a reader waits for the commit or the kill
            during: list[tuple] = []
            reading = threading.Thread(target=lambda: during.append(views_of(reader)))
            reading.start()
            wait_for(lambda: lock_waiters(engine) == 1)
            os.kill(child.pid, signal.SIGKILL)
            reading.join(60)
            assert during == [expected_views(old)]
        else:
            assert views_of(reader) == expected_views(visible)
            os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
        assert views_of(reader) == expected_views(visible)
        reader.dispose()
    finally:
        child.kill()
        child.wait(30)
        child.stdout.close()
        child.stderr.close()
    if point == "after_commit":
        assert statuses(engine) == {1: "published", 2: "published"}
        return
    assert statuses(engine) == {1: "published", 2: "loading"}
    third = make_outputs(3)
    assert publish(engine, third) == 3
    assert statuses(engine) == {1: "published", 2: "failed", 3: "published"}
    assert bulk_run_ids(engine) == {1, 3}
    assert views_of(engine) == expected_views(third)


@pytest.mark.timeout(120)
def test_concurrent_reader_sees_only_complete_runs(db_url, engine, monkeypatch):
    old, new = make_outputs(5, n_artists=120, n_users=150), make_outputs(6, n_artists=120, n_users=150)
    publish(engine, old)
    runs = {"old": expected_views(old), "new": expected_views(new)}
    reader = make_engine(db_url)
    seen: list[str] = []
    during_load: list[str] = []
    mid_load, checked, done = threading.Event(), threading.Event(), threading.Event()

    def read_once() -> None:
        # Each view is one statement, hence one snapshot; the publish may commit between the two.
        views = views_of(reader)
        labels = {next((label for label, rows in runs.items() if rows[i] == views[i]), "MIX") for i in (0, 1)}
        seen.append("/".join(sorted(labels)))

    def read_loop() -> None:
        while not done.is_set():
            read_once()
            if mid_load.is_set() and not checked.is_set():
                read_once()  # started after the publisher paused with uncommitted rows
                during_load.append(seen[-1])
                checked.set()
        read_once()

    real = publish_module.write_run_rows

    def paced(conn, table, run_id, batches):
        def gen():
            for i, batch in enumerate(batches):
                yield batch
                if table.name == "user_recommendations" and i == 1:
                    mid_load.set()  # rows of every table are written, none committed
                    assert checked.wait(30)

        return real(conn, table, run_id, gen())

    monkeypatch.setattr(publish_module, "write_run_rows", paced)
    thread = threading.Thread(target=read_loop)
    thread.start()
    try:
        publish(engine, new, batch_rows=100)
    finally:
        done.set()
        thread.join(60)
        reader.dispose()
    assert not any("MIX" in labels for labels in seen)
    assert during_load == ["old"] and seen[0] == "old" and seen[-1] == "new"


@pytest.mark.timeout(120)
def test_reader_planned_before_the_switch_never_sees_an_empty_run(db_url, engine):
    """PostgreSQL plans a READ COMMITTED statement before it takes the snapshot it reads with, so
    a view query planned while the new run's partitions are still unattached could read with a
    snapshot taken after the switch: the new run is current, its partitions are not in the plan,
    and the view comes back empty. Made deterministic here: a third session holds an old
    partition, so the reader blocks in the middle of planning while the publisher switches."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite reads a whole statement in one snapshot, planning included")
    first, old, new = (make_outputs(seed, n_artists=60, n_users=80) for seed in (7, 8, 9))
    publish(engine, first)
    publish(engine, old)
    runs = {"old": expected_views(old), "new": expected_views(new)}
    reader = make_engine(db_url)
    seen: list[str] = []

    def read() -> None:
        views = views_of(reader)
        seen.append("/".join(sorted({next((k for k, v in runs.items() if v[i] == views[i]), "MIX") for i in (0, 1)})))

    with engine.connect() as blocker:
        blocker.exec_driver_sql("LOCK TABLE related_artists_run_1 IN ACCESS EXCLUSIVE MODE")
        reading = threading.Thread(target=read)
        reading.start()
        wait_for(lambda: lock_waiters(engine) == 1)  # the reader, blocked while planning
        publishing = threading.Thread(target=publish, args=(engine, new))
        publishing.start()
        wait_for(lambda: not publishing.is_alive() or lock_waiters(engine) == 2)
        blocker.rollback()
    reading.join(60)
    publishing.join(60)
    reader.dispose()
    assert seen == ["old"]
    assert views_of(engine) == expected_views(new)


def test_switch_gives_up_on_a_reader_that_never_ends(engine, monkeypatch):
    if engine.dialect.name != "postgresql":
        pytest.skip("only PostgreSQL's switch waits for readers")
    old, new = make_outputs(1), make_outputs(2)
    publish(engine, old)
    monkeypatch.setattr(publish_module, "SWITCH_WAIT_SECONDS", 1.0)
    with engine.connect() as stuck:
        stuck.exec_driver_sql("SELECT count(*) FROM current_related_artists")  # and its transaction stays open
        with pytest.raises(
            RecsError, match=r"^readers held current_runs for over 1 s .* readers keep the previous one"
        ):
            publish(engine, new)
        assert lock_waiters(engine) == 0  # nothing left queued in front of other readers
    assert views_of(engine) == expected_views(old)
    assert statuses(engine) == {1: "published", 2: "failed"}


def test_schema_is_versioned_documented_and_indexed(db_url, engine):
    make_engine(db_url).dispose()  # a second start finds the schema current and changes nothing
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM recs_alembic_version").scalars().all() == [HEAD_REVISION]
        if engine.dialect.name == "postgresql":
            comments = conn.exec_driver_sql(
                "SELECT obj_description('runs'::regclass), col_description('runs'::regclass, 2), "
                "obj_description('current_related_artists'::regclass)"
            ).one()
            assert all(comments)
        else:
            ddl = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = 'runs'").scalar_one()
            assert "/* One row per publish attempt" in ddl and "/* loading (rows being written" in ddl
    # a few thousand rows: on a handful PostgreSQL's costs tie and it may probe users by primary key
    publish(engine, make_outputs(50, n_artists=2000, n_users=3000))
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("SET enable_seqscan = off")  # small tables: ask whether the index CAN serve
        explain = "EXPLAIN" if engine.dialect.name == "postgresql" else "EXPLAIN QUERY PLAN"
        plans = [
            " ".join(str(row) for row in conn.exec_driver_sql(f"{explain} {sql}"))
            for sql in (
                "SELECT * FROM current_related_artists WHERE lower(artist_name) = lower('ARTIST 3')",
                "SELECT * FROM current_related_artists WHERE artist_search_key = 'artist 3'",
                "SELECT * FROM current_user_recommendations WHERE user_key = 'user-3'",
            )
        ]
    # SQLite names our indexes; PostgreSQL's per-run partitions name theirs after them.
    assert "run_id_lower" in plans[0] and "run_id_search_key" in plans[1] and "run_id_user_key" in plans[2]
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE recs_alembic_version SET version_num = 'ffffffffffff'")
    with pytest.raises(RecsError, match="newer than this code"):
        make_engine(db_url)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://postgres@127.0.0.1:1/nowhere",
        "sqlite:///{tmp}",  # a directory is not a database file
        "mysql://root@localhost/x",
        "not a url",
    ],
)
def test_unreachable_database_is_one_line_error(url, tmp_path):
    with pytest.raises(RecsError) as err:
        make_engine(url.format(tmp=tmp_path))
    assert "\n" not in str(err.value)
    if url.startswith("postgresql"):  # the server goes away after the engine was made
        with pytest.raises(RecsError, match="Connection refused") as err:
            publish(sa.create_engine(url), make_outputs(1))
        assert "\n" not in str(err.value)
    result = CliRunner().invoke(_cli_app(), ["runs", "--db", url.format(tmp=tmp_path)])
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("error:") and len(result.stderr.strip().splitlines()) == 1


def test_every_models_related_lists_are_published_and_compared_side_by_side(db_url, engine):
    shipped = make_outputs(3)
    others = {"lsa": make_outputs(4).related, "als-users": make_outputs(5).related}
    outputs = RunOutputs(**{**shipped.__dict__, "related_model": "cosine_blend", "other_related": others})
    publish(engine, outputs)
    assert views_of(engine) == expected_views(outputs)  # current_related_artists: the shipped model only
    lists = {"cosine_blend": outputs.related, **others}
    keys, names = outputs.encoded.artist_keys, outputs.encoded.artist_names
    with engine.connect() as conn:
        by_model = {
            (row[0], bool(row[1]), *row[2:6], np.float32(row[6]))
            for row in conn.exec_driver_sql(
                "SELECT model, shipped, artist_key, rank, related_artist_key, related_artist_name, score "
                "FROM current_related_by_model"
            )
        }
        compared = conn.exec_driver_sql(
            "SELECT model, rank, shipped_model, shipped_artist_name, related_artist_name, rank_in_shipped "
            "FROM current_related_comparison WHERE dataset = 'synthetic' AND lower(artist_name) = 'artist 39' "
            "ORDER BY model, rank"
        ).all()
        [n_related] = conn.exec_driver_sql("SELECT n_related FROM runs").one()
    assert by_model == {
        (model, model == "cosine_blend", keys[a], r + 1, keys[b], names[b], np.float32(topn.scores[a, r]))
        for model, topn in lists.items()
        for a, r in zip(*np.nonzero(topn.ids >= 0))
        for b in [topn.ids[a, r]]
    }
    assert n_related == sum(int((topn.ids >= 0).sum()) for topn in lists.values())
    # artist 39's lists (the last row: the shipped list is short, padded like the contract says)
    ship = list(outputs.related.ids[39])
    expected = []
    for model in sorted(others):
        for r, b in enumerate(others[model].ids[39]):
            if b < 0:
                continue
            at = ship[r] if ship[r] >= 0 else None
            in_shipped = ship.index(b) + 1 if b in ship else None
            expected.append((model, r + 1, "cosine_blend", None if at is None else names[at], names[b], in_shipped))
    assert [tuple(row) for row in compared] == expected
    # the query and the CLI take a model; an unknown one is named with the run's models
    assert [row.artist_key for row in related_artists(engine, "Artist 2", model="lsa").rows] == [
        keys[b] for b in others["lsa"].ids[2] if b >= 0
    ]
    found = related_artists(engine, "Artist 2")
    assert found.model == "cosine_blend" and [row.artist_key for row in found.rows] == [
        keys[b] for b in outputs.related.ids[2]
    ]
    with pytest.raises(RecsError, match=r"no related lists of model 'svd'; use one of: als-users, cosine_blend, lsa$"):
        related_artists(engine, "Artist 2", model="svd")
    result = CliRunner().invoke(_cli_app(), ["related", "Artist 2", "--model", "als-users", "--db", db_url])
    assert result.exit_code == 0, result.output
    assert f"key-{others['als-users'].ids[2, 0]}" in result.stdout and "als-users" in result.stdout


def _cli_app():
    from flows.cli import app

    return app


def test_cli_related_recommend_runs(db_url, engine):
    outputs = make_outputs(60, names=NASTY_NAMES)
    publish(engine, outputs)
    app, runner = _cli_app(), CliRunner()
    result = runner.invoke(app, ["related", "motörhead", "--n", "2", "--db", db_url])
    assert result.exit_code == 0, result.output
    assert f"key-{outputs.related.ids[1, 0]}" in result.stdout and "(run 1," in result.stdout
    result = runner.invoke(app, ["related", "Sigur Ros", "--db", db_url])
    assert result.exit_code == 1 and "did you mean: Sigur Rós" in result.stderr
    result = runner.invoke(app, ["recommend", "user-3", "--db", db_url])
    assert result.exit_code == 0 and f"key-{outputs.recommendations.ids[3, 0]}" in result.stdout
    result = runner.invoke(app, ["recommend", "user-999", "--db", db_url])
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
    result = runner.invoke(app, ["runs", "--db", db_url])
    assert result.exit_code == 0 and "published" in result.stdout and "0.2000" in result.stdout


# -- the current run per dataset, promote, stability, unchanged runs --------------------------


def _current_runs(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.exec_driver_sql("SELECT dataset, run_id FROM current_runs").all())


def test_two_datasets_in_one_database_each_stay_served(engine, hetrec_encoded):
    hetrec = make_outputs(80, dataset="lastfm-2k")
    rng = np.random.default_rng(0)
    ids = np.argsort(rng.random((hetrec_encoded.n_artists, 200)), axis=1)[:, :10].astype(np.int32)
    users = rng.integers(0, hetrec_encoded.n_artists, (hetrec_encoded.n_users, 10)).astype(np.int32)
    scores = np.sort(rng.random(ids.shape, dtype=np.float32), axis=1)[:, ::-1].copy()
    hetrec = RunOutputs(
        **{
            **hetrec.__dict__,
            "encoded": hetrec_encoded,
            "related": TopN(ids, scores),
            "recommendations": TopN(users, scores[: hetrec_encoded.n_users]),
        }
    )
    synthetic = make_outputs(81)
    assert publish(engine, hetrec) == 1
    assert publish(engine, synthetic, max_regression=0.1) == 2
    assert _current_runs(engine) == {"lastfm-2k": 1, "synthetic": 2}
    assert views_of(engine, "lastfm-2k") == expected_views(hetrec)
    assert views_of(engine, "synthetic") == expected_views(synthetic)
    # the read queries default to the dataset published last, and take either one by name
    assert related_artists(engine, "Artist 3").dataset == "synthetic"
    found = related_artists(engine, "radiohead", n=3, dataset="lastfm-2k")
    assert (found.run_id, found.artist_name) == (1, "Radiohead")
    code = int(np.flatnonzero(hetrec_encoded.artist_keys == found.artist_key)[0])
    assert [r.artist_key for r in found.rows] == [hetrec_encoded.artist_keys[i] for i in ids[code, :3]]
    assert recommendations(engine, "2", dataset="lastfm-2k").run_id == 1
    with pytest.raises(RecsError) as err:
        related_artists(engine, "radiohead", dataset="lastfm-360k")
    assert str(err.value).endswith("--dataset takes one of: lastfm-2k, synthetic") and "\n" not in str(err.value)
    # a later synthetic run, and retention, never touch lastfm-2k's current run
    for seed in (82, 83, 84):
        publish(engine, make_outputs(seed), retention=1)
    assert statuses(engine) == {1: "published", 2: "pruned", 3: "pruned", 4: "pruned", 5: "published"}
    assert views_of(engine, "lastfm-2k") == expected_views(hetrec)


def test_quality_gate_compares_with_the_same_dataset_and_records_both_figures(engine):
    publish(engine, make_outputs(90, precision=0.30, dataset="lastfm-2k"))
    # far below lastfm-2k's 0.30, but the first synthetic run: nothing of its own to compare with
    assert publish(engine, make_outputs(91, precision=0.10), max_regression=0.1) == 2
    kept = make_outputs(92, precision=0.095)
    assert publish(engine, kept, max_regression=0.1) == 3
    with pytest.raises(RunRejected) as err:
        publish(engine, make_outputs(93, precision=0.05), max_regression=0.1)
    assert "precision@10 of als is 0.0500, below 0.0855 (current run 3: 0.0950, max regression 10.0%)" in str(err.value)
    publish(engine, make_outputs(94, precision=0.2))  # gate off: figures still recorded
    messages = {r.run_id: r.message for r in list_runs(engine)}
    assert messages[1] is None
    assert messages[2] == "quality gate passed: first run of synthetic"
    assert messages[3] == (
        "quality gate passed: precision@10 of als is 0.0950, at least 0.0900 "
        "(current run 2: 0.1000, max regression 10.0%)"
    )
    assert messages[5] == "quality gate off: precision@10 of als is 0.2000 (current run 3: 0.0950)"
    assert _current_runs(engine) == {"lastfm-2k": 1, "synthetic": 5}


def test_promote_makes_an_earlier_run_current_again_and_retention_keeps_it(engine):
    runs = [make_outputs(seed) for seed in (100, 101, 102)]
    for outputs in runs:
        publish(engine, outputs)
    other = make_outputs(103, dataset="lastfm-2k")
    publish(engine, other)
    assert publish_module.promote(engine, 1) == "synthetic"
    assert views_of(engine, "synthetic") == expected_views(runs[0])
    assert views_of(engine, "lastfm-2k") == expected_views(other)
    listed = {r.run_id: r.current for r in list_runs(engine)}
    assert listed == {1: True, 2: False, 3: False, 4: True}
    with engine.connect() as conn:
        promoted = conn.exec_driver_sql("SELECT run_id FROM runs WHERE promoted_at IS NOT NULL").scalars().all()
    assert promoted == [1]
    # retention 1 keeps the newest run and every dataset's current one (run 1, promoted)
    publish(engine, make_outputs(104, dataset="lastfm-2k"), retention=1)
    assert statuses(engine) == {1: "published", 2: "pruned", 3: "pruned", 4: "pruned", 5: "published"}
    assert views_of(engine, "synthetic") == expected_views(runs[0])
    before = views_of(engine)
    for run_id, message in (
        (2, "run 2 is pruned, so it has no rows to serve; promote a published run (`recs runs`)"),
        (99, "there is no run 99 in "),
    ):
        with pytest.raises(RecsError) as err:
            publish_module.promote(engine, run_id)
        assert message in str(err.value) and "\n" not in str(err.value)
    assert views_of(engine) == before


def _expected_overlap(new: TopN, old: TopN, new_keys, old_keys, new_items, old_items, k: int = 10) -> float:
    """overlap@k by the definition, with Python sets over source keys (the slow, obvious way)."""
    old_lists = {old_keys[i]: {old_items[a] for a in row[:k] if a >= 0} for i, row in enumerate(old.ids) if old_keys[i]}
    hits = total = 0
    for i, row in enumerate(new.ids):
        if new_keys[i] not in old_lists:
            continue
        entries = [new_items[a] for a in row[:k] if a >= 0]
        hits += sum(key in old_lists[new_keys[i]] for key in entries)
        total += len(entries)
    return hits / total


def test_stability_against_the_current_run_of_the_dataset(engine):
    first = make_outputs(110, n=12)
    publish(engine, first)
    publish(engine, make_outputs(111, dataset="lastfm-2k"))  # another dataset: not compared with
    same = make_outputs(110, n=12)
    publish(engine, same)
    # the next run lost some users and artists and renumbered the rest (reversed codes)
    second = make_outputs(112, n=12)
    enc = second.encoded
    renamed = Encoded(
        enc.plays[::-1, ::-1].tocsr(),
        np.array([f"user-{i}" for i in range(49, -1, -1)][:45] + [f"new-{i}" for i in range(5)], dtype=object),
        np.array([f"key-{i}" for i in range(39, -1, -1)][:36] + [f"fresh-{i}" for i in range(4)], dtype=object),
        enc.artist_names,
    )
    second = RunOutputs(**{**second.__dict__, "encoded": renamed})
    publish(engine, second)
    with engine.connect() as conn:
        stability = conn.exec_driver_sql(
            "SELECT run_id, metric, k, value FROM run_metrics WHERE model = 'stability' ORDER BY run_id, metric"
        ).all()
    old = first.encoded
    expected = {
        "related_overlap": _expected_overlap(
            second.related, first.related, renamed.artist_keys, old.artist_keys, renamed.artist_keys, old.artist_keys
        ),
        "user_overlap": _expected_overlap(
            second.recommendations,
            first.recommendations,
            renamed.user_keys,
            old.user_keys,
            renamed.artist_keys,
            old.artist_keys,
        ),
    }
    assert [row[:3] for row in stability] == [
        (3, "related_overlap", 10),
        (3, "user_overlap", 10),
        (4, "related_overlap", 10),
        (4, "user_overlap", 10),
    ]
    assert [row[3] for row in stability[:2]] == [1.0, 1.0]  # the same lists
    assert {row[1]: row[3] for row in stability[2:]} == pytest.approx(expected)
    assert min(expected.values()) > 0 and max(expected.values()) < 1


def test_unchanged_run_is_recorded_and_changes_nothing(engine):
    outputs = make_outputs(120)
    publish(engine, outputs)
    identity = publish_module.RunIdentity(
        dataset="synthetic",
        source="generated",
        data_sha256=outputs.data_sha256,
        config=outputs.config,
        code_version="test",
        flow_run_id="abc",
    )
    for changed in (
        {"data_sha256": "f" * 64},
        {"config": {**outputs.config, "seed": 0}},
        {"code_version": "other"},
        {"dataset": "lastfm-2k"},
    ):
        assert (
            publish_module.skip_if_unchanged(engine, publish_module.RunIdentity(**{**identity.__dict__, **changed}))
            is None
        )
    assert statuses(engine) == {1: "published"}
    # the same config with its keys in another order is the same config
    reordered = publish_module.RunIdentity(**{**identity.__dict__, "config": dict(reversed(outputs.config.items()))})
    assert publish_module.skip_if_unchanged(engine, reordered) == (2, 1)
    assert statuses(engine) == {1: "published", 2: "unchanged"}
    assert views_of(engine) == expected_views(outputs) and _current_runs(engine) == {"synthetic": 1}
    [summary, _] = list_runs(engine)
    assert (summary.message, summary.flow_run_id) == (
        "same data, config and code as current run 1; nothing retrained",
        "abc",
    )
    assert publish(engine, make_outputs(121)) == 3  # an unchanged run is no current run and no gate reference


def test_cli_dataset_and_runs_show_diff_promote(db_url, engine):
    first = make_outputs(130, precision=0.25)
    publish(engine, first)
    second = make_outputs(131)
    publish(engine, RunOutputs(**{**second.__dict__, "config": {**second.config, "n": 20}}))
    publish(engine, make_outputs(132, dataset="lastfm-2k"))
    app, runner = _cli_app(), CliRunner()
    result = runner.invoke(app, ["recommend", "user-3", "--db", db_url, "--dataset", "synthetic"])
    assert result.exit_code == 0 and "(run 2," in result.stdout
    result = runner.invoke(app, ["recommend", "user-3", "--db", db_url])  # lastfm-2k was published last
    assert result.exit_code == 0 and "(run 3," in result.stdout
    result = runner.invoke(app, ["related", "Artist 1", "--db", db_url, "--dataset", "nope"])
    assert result.exit_code == 1 and result.stderr.strip().splitlines() == [
        f"error: no published run of dataset 'nope' in {db_url}; --dataset takes one of: lastfm-2k, synthetic"
    ]
    hashes = {r.run_id: r.config_hash for r in list_runs(engine)}
    assert len(set(hashes.values())) == 3 and all(len(h) == 64 for h in hashes.values())
    result = runner.invoke(app, ["runs", "--db", db_url])
    assert result.exit_code == 0, result.output
    assert "3 *" in result.stdout and "2 *" in result.stdout and hashes[1][:8] in result.stdout
    result = runner.invoke(app, ["runs", "show", "2", "--db", db_url])
    assert result.exit_code == 0, result.output
    for needle in ("(current)", "config_hash", hashes[2], "precision@10", "timings", "seed: 131", "n: 20"):
        assert needle in result.stdout, needle
    result = runner.invoke(app, ["runs", "diff", "1", "2", "--db", db_url])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any("seed" in line and "130" in line and "131" in line for line in lines)
    assert any(line.split() == ["│", "n", "│", "null", "│", "20", "│"] for line in lines)
    assert any("precision@10" in line and "0.2500" in line and "0.2000" in line and "-0.0500" in line for line in lines)
    assert "note" not in result.stdout  # unchanged keys are not listed
    result = runner.invoke(app, ["runs", "promote", "1", "--db", db_url])
    assert result.exit_code == 0 and "run 1 is the current run of synthetic again" in result.stdout
    assert views_of(engine, "synthetic") == expected_views(first)
    result = runner.invoke(app, ["runs", "promote", "7", "--db", db_url])
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: there is no run 7 in ")
    assert views_of(engine, "synthetic") == expected_views(first)


def test_cli_n_beyond_the_catalogue_is_clipped(db_url, engine):
    outputs = make_outputs(61)
    publish(engine, outputs)
    app, runner = _cli_app(), CliRunner()
    for command in (["related", "Artist 1"], ["recommend", "user-3"]):
        result = runner.invoke(app, [*command, "--n", str(10**20), "--db", db_url])
        assert result.exit_code == 0, result.output  # no OverflowError from the LIMIT
        assert result.stdout.count("key-") == 5  # every published entry (lists of 5)


def test_new_sqlite_files_get_large_pages_and_old_ones_keep_theirs(tmp_path):
    """A new file gets SQLITE_PAGE_SIZE pages (its fold-in BLOBs chain through fewer overflow
    pages); a file made elsewhere with SQLite's default keeps it and still takes a publish."""
    import sqlite3

    from storage.engine import SQLITE_PAGE_SIZE

    def page_size(path: Path) -> int:
        with sqlite3.connect(path) as con:
            return con.execute("PRAGMA page_size").fetchone()[0]

    new = tmp_path / "new.db"
    make_engine(f"sqlite:///{new}").dispose()
    assert page_size(new) == SQLITE_PAGE_SIZE != 4096

    old = tmp_path / "old.db"
    with sqlite3.connect(old) as con:
        con.execute("PRAGMA page_size=4096")
        con.execute("CREATE TABLE made_elsewhere (x INTEGER)")
    engine = make_engine(f"sqlite:///{old}")
    try:
        publish(engine, make_outputs(1))
        assert [run.status for run in list_runs(engine)] == ["published"]
    finally:
        engine.dispose()
    assert page_size(old) == 4096

"""Read queries over the published outputs: what the CLI and services ask the database.

All read the public views (the latest published run) or ``runs``/``run_metrics``; every value from
a user travels as a bound parameter.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from storage.engine import database_errors
from storage.runs import GATE_K, GATE_METRIC, current_run_id
from storage.schema import Artist, Run, RunMetric, current_related_artists, current_user_recommendations
from tasks.errors import RecsError

SUGGESTIONS = 5
# Close-name candidates: names sharing the first letter, most-listened first, capped so the
# not-found path stays fast on a 300K-artist catalogue.
SUGGESTION_POOL = 20_000


@dataclass(frozen=True)
class RelatedRow:
    rank: int
    artist_key: str
    artist_name: str
    score: float


@dataclass(frozen=True)
class Related:
    """Related artists of one artist in the current run (rows best first)."""

    run_id: int
    artist_key: str
    artist_name: str
    rows: list[RelatedRow]


@dataclass(frozen=True)
class Recommendations:
    """Top-N new artists for one user in the current run (rows best first)."""

    run_id: int
    user_key: str
    rows: list[RelatedRow]


@dataclass(frozen=True)
class RunSummary:
    run_id: int
    status: str
    started_at: datetime
    finished_at: datetime | None
    dataset: str
    related_model: str
    user_model: str
    n_related: int
    n_recommendations: int
    precision_at_10: float | None
    message: str | None


def related_artists(engine: Engine, name: str, n: int | None = None) -> Related:
    """Related artists of the artist called ``name`` (case-insensitive; an exact artist_key also
    matches). When several artists share the name, the most listened one. RecsError with close
    names when there is none."""
    with database_errors(engine), engine.connect() as conn:
        run_id = _require_run(conn, engine)
        match = conn.execute(
            sa.select(Artist.artist_key, Artist.name)
            .where(
                Artist.run_id == run_id,
                sa.or_(sa.func.lower(Artist.name) == sa.func.lower(name), Artist.artist_key == name),
            )
            .order_by(Artist.listeners.desc(), Artist.artist_id)
            .limit(1)
        ).first()
        if match is None:
            close = similar_names(conn, run_id, name)
            hint = f"; did you mean: {', '.join(close)}?" if close else "; check the spelling"
            raise RecsError(f"no artist named {name!r} in run {run_id}{hint}")
        v = current_related_artists.c
        query = (
            sa.select(v.rank, v.related_artist_key, v.related_artist_name, v.score)
            .where(v.artist_key == match.artist_key)
            .order_by(v.rank)
        )
        rows = conn.execute(query.limit(n) if n else query).all()
    return Related(run_id, match.artist_key, match.name, [RelatedRow(*row) for row in rows])


def recommendations(engine: Engine, user_key: str, n: int | None = None) -> Recommendations:
    """The current run's recommendations for the user whose source id is ``user_key``."""
    v = current_user_recommendations.c
    with database_errors(engine), engine.connect() as conn:
        run_id = _require_run(conn, engine)
        query = sa.select(v.rank, v.artist_key, v.artist_name, v.score).where(v.user_key == user_key).order_by(v.rank)
        rows = conn.execute(query.limit(n) if n else query).all()
    if not rows:
        raise RecsError(
            f"unknown user {user_key!r} in run {run_id}: no recommendations for that user id; "
            "user ids are the dataset's own"
        )
    return Recommendations(run_id, user_key, [RelatedRow(*row) for row in rows])


def similar_names(conn: Connection, run_id: int, name: str, limit: int = SUGGESTIONS) -> list[str]:
    """Artist names of ``run_id`` close to ``name``: containing it, else by difflib similarity."""
    needle = name.strip().lower()
    if not needle:
        return []
    lowered = sa.func.lower(Artist.name)
    containing = (
        conn.execute(
            sa.select(Artist.name)
            .where(Artist.run_id == run_id, lowered.like(f"%{_like_escape(needle)}%", escape="\\"))
            .order_by(Artist.listeners.desc())
            .limit(limit)
        )
        .scalars()
        .all()
    )
    if containing:
        return list(containing)
    pool = (
        conn.execute(
            sa.select(Artist.name)
            .where(Artist.run_id == run_id, lowered.like(f"{_like_escape(needle[0])}%", escape="\\"))
            .order_by(Artist.listeners.desc())
            .limit(SUGGESTION_POOL)
        )
        .scalars()
        .all()
    )
    by_lower = {candidate.lower(): candidate for candidate in reversed(pool)}
    return [by_lower[key] for key in difflib.get_close_matches(needle, list(by_lower), n=limit, cutoff=0.6)]


def list_runs(engine: Engine, limit: int = 20) -> list[RunSummary]:
    """The newest ``limit`` runs, with the user model's precision@10 where it was measured."""
    precision = (
        sa.select(RunMetric.value)
        .where(
            RunMetric.run_id == Run.run_id,
            RunMetric.model == Run.user_model,
            RunMetric.metric == GATE_METRIC,
            RunMetric.k == GATE_K,
        )
        .limit(1)
        .scalar_subquery()
    )
    query = (
        sa.select(
            Run.run_id,
            Run.status,
            Run.started_at,
            Run.finished_at,
            Run.dataset,
            Run.related_model,
            Run.user_model,
            Run.n_related,
            Run.n_recommendations,
            precision,
            Run.message,
        )
        .order_by(Run.run_id.desc())
        .limit(limit)
    )
    with database_errors(engine), engine.connect() as conn:
        return [RunSummary(*row) for row in conn.execute(query)]


def _like_escape(text: str) -> str:
    """``text`` as a literal inside a LIKE pattern with ESCAPE '\\'."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _require_run(conn: Connection, engine: Engine) -> int:
    run_id = current_run_id(conn)
    if run_id is None:
        raise RecsError(
            f"nothing published yet in {engine.url.render_as_string(hide_password=True)}; run `recs run` first"
        )
    return run_id

"""Read queries over the published outputs: what the CLI and services ask the database.

All read the public views (the current run of each dataset) or ``runs``/``run_metrics``; every
value from a user travels as a bound parameter. A lookup names its dataset, or takes the dataset
whose run became current last. Artist names are matched by their search key (``tasks.names``:
NFKC + case folding, stored per artist at publish), so "die ärzte" finds "Die Ärzte" on SQLite
and PostgreSQL alike; an exact artist_key matches too.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from storage.engine import database_errors
from storage.runs import GATE_K, GATE_METRIC, current_datasets, current_run_id
from storage.schema import (
    Artist,
    CurrentRun,
    RelatedArtist,
    Run,
    RunMetric,
    current_related_artists,
    current_related_by_model,
    current_user_recommendations,
)
from tasks.errors import RecsError
from tasks.names import search_key

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
class RecommendationRow:
    """One recommended artist, with the heard artist that contributed most to it (None when no
    heard artist did, or the run predates the column)."""

    rank: int
    artist_key: str
    artist_name: str
    score: float
    because_artist_key: str | None
    because_artist_name: str | None


@dataclass(frozen=True)
class ArtistMatch:
    """An artist of a run that a typed name matched."""

    artist_id: int
    artist_key: str
    artist_name: str


@dataclass(frozen=True)
class Related:
    """Related artists of one artist in the current run of ``dataset`` (rows best first), from
    ``model`` (the run's shipped related model unless another was asked for)."""

    run_id: int
    dataset: str
    artist_key: str
    artist_name: str
    rows: list[RelatedRow]
    model: str = ""


@dataclass(frozen=True)
class Recommendations:
    """Top-N new artists for one user in the current run of ``dataset`` (rows best first)."""

    run_id: int
    dataset: str
    user_key: str
    rows: list[RecommendationRow]


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
    config_hash: str | None
    seconds: float | None
    flow_run_id: str | None
    flow_run_url: str | None
    current: bool


@dataclass(frozen=True)
class RunDetails:
    """One run's whole record: its ``runs`` row (column -> value; config, timings and choices as
    JSON values) and its metrics as ``(model, metric, k) -> value``."""

    row: dict
    metrics: dict[tuple[str, str, int | None], float]
    current: bool


@dataclass(frozen=True)
class RelatedByModel:
    """Related artists of one artist in the current run of ``dataset``: ``lists`` maps the name of
    each model the run published related artists of to its rows (best first)."""

    run_id: int
    dataset: str
    artist_key: str
    artist_name: str
    lists: dict[str, list[RelatedRow]]


class UnknownName(RecsError):
    """No artist or user by that name in the current run; ``suggestions``: close names (may be empty)."""

    def __init__(self, message: str, suggestions: list[str]):
        super().__init__(message)
        self.suggestions = suggestions


def related_artists(
    engine: Engine, name: str, n: int | None = None, dataset: str | None = None, model: str | None = None
) -> Related:
    """Related artists of the artist called ``name`` (any letter case, Unicode-aware; an exact
    artist_key also matches) in the current run of ``dataset`` (default: the dataset whose run
    became current last), from ``model`` (default: the run's shipped related model). When several
    artists share the name, the most listened one. UnknownName (a RecsError) with close names when
    there is none; RecsError with the run's models when it has no lists of ``model``."""
    with database_errors(engine), engine.connect() as conn:
        run_id, dataset = _require_run(conn, engine, dataset)
        key, found = _match_artist(conn, run_id, dataset, name)
        shipped = conn.execute(sa.select(Run.related_model).where(Run.run_id == run_id)).scalar_one()
        if model is None or model == shipped:
            view, model = current_related_artists, shipped
            where = view.c.dataset == dataset
        else:
            _require_model(conn, run_id, dataset, model)
            view = current_related_by_model
            where = sa.and_(view.c.dataset == dataset, view.c.model == model)
        query = (
            sa.select(view.c.rank, view.c.related_artist_key, view.c.related_artist_name, view.c.score)
            .where(where, view.c.artist_key == key)
            .order_by(view.c.rank)
        )
        rows = conn.execute(query.limit(n) if n else query).all()
    return Related(run_id, dataset, key, found, [RelatedRow(*row) for row in rows], model)


def related_by_model(engine: Engine, name: str, n: int | None = None, dataset: str | None = None) -> RelatedByModel:
    """Related artists of ``name`` (matched as ``related_artists`` does) from every model the
    current run published related lists of, the shipped model first, then by name; all read in
    one transaction (one run, even while another publishes)."""
    v = current_related_by_model.c
    with database_errors(engine), engine.connect() as conn:
        run_id, dataset = _require_run(conn, engine, dataset)
        key, found = _match_artist(conn, run_id, dataset, name)
        query = (
            sa.select(v.model, v.rank, v.related_artist_key, v.related_artist_name, v.score)
            .where(v.dataset == dataset, v.artist_key == key)
            .order_by(v.shipped.desc(), v.model, v.rank)
        )
        rows = conn.execute(query.where(v.rank <= n) if n else query).all()  # ranks run 1, 2, ... per list
    lists: dict[str, list[RelatedRow]] = {}
    for model, *row in rows:  # at most (models x n) rows: one artist's lists
        lists.setdefault(model, []).append(RelatedRow(*row))
    return RelatedByModel(run_id, dataset, key, found, lists)


def artist_completions(engine: Engine, prefix: str, limit: int = SUGGESTIONS, dataset: str | None = None) -> list[str]:
    """Names in the current run of ``dataset`` whose search key starts with ``prefix``'s (the same
    Unicode folding as the name lookup), most-listened first, at most ``limit``; [] for a blank prefix."""
    if not prefix.strip():
        return []
    folded = search_key(prefix)
    with database_errors(engine), engine.connect() as conn:
        run_id, _ = _require_run(conn, engine, dataset)
        if conn.dialect.name == "sqlite":
            # a range over the (run_id, search_key) index: SQLite's LIKE cannot use it. U+10FFFF
            # is the greatest code point, so every key with the prefix sorts below prefix + it.
            starts = sa.and_(Artist.search_key >= folded, Artist.search_key < folded + "\U0010ffff")
        else:  # a non-C collation does not order by code point; LIKE is right under every one
            starts = Artist.search_key.like(_like_escape(folded) + "%", escape="\\")
        query = (
            sa.select(Artist.name)
            .where(Artist.run_id == run_id, starts)
            .order_by(Artist.listeners.desc(), Artist.artist_id)
            .limit(limit)
        )
        return list(conn.execute(query).scalars())


def _match_artist(conn: Connection, run_id: int, dataset: str, name: str) -> tuple[str, str]:
    """(artist_key, name) of the artist ``name`` names in ``run_id``; UnknownName when none."""
    match = find_artists(conn, run_id, [name])[name]
    if match is None:
        close = similar_names(conn, run_id, name)
        hint = f"; did you mean: {', '.join(close)}?" if close else "; check the spelling"
        raise UnknownName(f"no artist named {name!r} in run {run_id} ({dataset}){hint}", close)
    return match.artist_key, match.artist_name


def _require_model(conn: Connection, run_id: int, dataset: str, model: str) -> None:
    """RecsError naming the run's related models when it published none under ``model``."""
    r = RelatedArtist.__table__.c
    found = conn.execute(sa.select(sa.literal(1)).where(r.run_id == run_id, r.model == model).limit(1)).first()
    if found is None:  # the error path only: listing the models reads the run's whole key range
        models = list(conn.execute(sa.select(r.model).where(r.run_id == run_id).distinct().order_by(r.model)).scalars())
        raise UnknownName(
            f"run {run_id} ({dataset}) has no related lists of model {model!r}; "
            f"use one of: {', '.join(models) or 'none'}",
            models,
        )


def recommendations(engine: Engine, user_key: str, n: int | None = None, dataset: str | None = None) -> Recommendations:
    """The recommendations of the current run of ``dataset`` (default: the dataset whose run
    became current last) for the user whose source id is ``user_key``."""
    v = current_user_recommendations.c
    with database_errors(engine), engine.connect() as conn:
        run_id, dataset = _require_run(conn, engine, dataset)
        query = (
            sa.select(v.rank, v.artist_key, v.artist_name, v.score, v.because_artist_key, v.because_artist_name)
            .where(v.dataset == dataset, v.user_key == user_key)
            .order_by(v.rank)
        )
        rows = conn.execute(query.limit(n) if n else query).all()
    if not rows:
        raise UnknownName(
            f"unknown user {user_key!r} in run {run_id} ({dataset}): no recommendations for that user id; "
            "user ids are the dataset's own",
            [],
        )
    return Recommendations(run_id, dataset, user_key, [RecommendationRow(*row) for row in rows])


def find_artists(conn: Connection, run_id: int, names: list[str]) -> dict[str, ArtistMatch | None]:
    """Each of ``names`` -> the artist of run ``run_id`` it names (same search key, or exactly its
    artist_key; of several, the most listened), or None. One query for all of them."""
    keys = {name: search_key(name) for name in names}
    found = conn.execute(
        sa.select(Artist.artist_id, Artist.artist_key, Artist.name, Artist.search_key)
        .where(Artist.run_id == run_id, sa.or_(Artist.search_key.in_(set(keys.values())), Artist.artist_key.in_(names)))
        .order_by(Artist.listeners.desc(), Artist.artist_id)
    ).all()
    by_key: dict[str, ArtistMatch] = {}
    by_search: dict[str, ArtistMatch] = {}
    for row in found:  # best first: keep the first match of each key
        match = ArtistMatch(row.artist_id, row.artist_key, row.name)
        by_key.setdefault(row.artist_key, match)
        by_search.setdefault(row.search_key, match)
    return {name: by_key.get(name) or by_search.get(keys[name]) for name in names}


def _unknown_names(conn: Connection, run_id: int, dataset: str, names: list[str]) -> str:
    """One line naming every unknown name of run ``run_id``, each with its close names."""
    hints = []
    for name in names:
        close = similar_names(conn, run_id, name)
        hints.append(f"did you mean: {', '.join(close)}?" if close else "check the spelling")
    if len(names) == 1:
        return f"no artist named {names[0]!r} in run {run_id} ({dataset}); {hints[0]}"
    listed = "; ".join(f"{name!r} ({hint})" for name, hint in zip(names, hints))
    return f"no artists named {listed} in run {run_id} ({dataset})"


def similar_names(conn: Connection, run_id: int, name: str, limit: int = SUGGESTIONS) -> list[str]:
    """Artist names of ``run_id`` close to ``name``: containing it, else by difflib similarity,
    both on search keys (so letter case and Unicode forms do not matter)."""
    needle = search_key(name)
    if not needle:
        return []
    containing = (
        conn.execute(
            sa.select(Artist.name)
            .where(Artist.run_id == run_id, Artist.search_key.like(f"%{_like_escape(needle)}%", escape="\\"))
            .order_by(Artist.listeners.desc())
            .limit(limit)
        )
        .scalars()
        .all()
    )
    if containing:
        return list(containing)
    pool = conn.execute(
        sa.select(Artist.search_key, Artist.name)
        .where(Artist.run_id == run_id, Artist.search_key.like(f"{_like_escape(needle[0])}%", escape="\\"))
        .order_by(Artist.listeners.desc())
        .limit(SUGGESTION_POOL)
    ).all()
    by_key = {key: candidate for key, candidate in reversed(pool)}  # the most listened name of a key wins
    return [by_key[key] for key in difflib.get_close_matches(needle, list(by_key), n=limit, cutoff=0.6)]


def artist_suggestions(engine: Engine, prefix: str, limit: int = 10, dataset: str | None = None) -> list[str]:
    """Names of the current run of ``dataset`` whose search key starts with ``prefix``'s, most
    listened first (for autocomplete); [] for an empty prefix."""
    needle = search_key(prefix)
    if not needle:
        return []
    with database_errors(engine), engine.connect() as conn:
        run_id, _ = _require_run(conn, engine, dataset)
        return list(
            conn.execute(
                sa.select(Artist.name)
                .where(Artist.run_id == run_id, Artist.search_key.like(f"{_like_escape(needle)}%", escape="\\"))
                .order_by(Artist.listeners.desc(), Artist.artist_id)
                .limit(limit)
            ).scalars()
        )


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
            Run.config_hash,
            Run.seconds,
            Run.flow_run_id,
            Run.flow_run_url,
            Run.run_id.in_(sa.select(CurrentRun.run_id)),
        )
        .order_by(Run.run_id.desc())
        .limit(limit)
    )
    with database_errors(engine), engine.connect() as conn:
        return [RunSummary(*row) for row in conn.execute(query)]


def run_details(engine: Engine, run_id: int) -> RunDetails:
    """The record of run ``run_id``; RecsError when there is none."""
    with database_errors(engine), engine.connect() as conn:
        row = conn.execute(sa.select(Run.__table__).where(Run.run_id == run_id)).mappings().first()
        if row is None:
            raise RecsError(f"there is no run {run_id} in {_masked(engine)}; `recs runs` lists the runs")
        metrics = conn.execute(
            sa.select(RunMetric.model, RunMetric.metric, RunMetric.k, RunMetric.value)
            .where(RunMetric.run_id == run_id)
            .order_by(RunMetric.metric_id)
        ).all()
        current = conn.execute(sa.select(CurrentRun.dataset).where(CurrentRun.run_id == run_id)).first() is not None
    return RunDetails(dict(row), {(m.model, m.metric, m.k): m.value for m in metrics}, current)


def flatten(config: dict, prefix: str = "") -> dict[str, object]:
    """Nested JSON values as ``dotted.key -> leaf value`` (lists are leaves)."""
    flat: dict[str, object] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat |= flatten(value, name + ".")
        else:
            flat[name] = value
    return flat


def config_changes(a: dict, b: dict) -> dict[str, tuple[object, object]]:
    """Keys whose values differ between configs ``a`` and ``b``: ``key -> (a's, b's)``; a key one
    side lacks has None there."""
    flat_a, flat_b = flatten(a), flatten(b)
    return {
        key: (flat_a.get(key), flat_b.get(key))
        for key in sorted(flat_a.keys() | flat_b.keys())
        if flat_a.get(key) != flat_b.get(key)
    }


def _like_escape(text: str) -> str:
    """``text`` as a literal inside a LIKE pattern with ESCAPE '\\'."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _masked(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def _require_run(conn: Connection, engine: Engine, dataset: str | None) -> tuple[int, str]:
    """The current run of ``dataset`` (default: the one that became current last) and its dataset."""
    run_id = current_run_id(conn, dataset)
    if run_id is not None and dataset is not None:
        return run_id, dataset
    if run_id is not None:
        return run_id, conn.execute(sa.select(CurrentRun.dataset).where(CurrentRun.run_id == run_id)).scalar_one()
    served = current_datasets(conn)
    if served:
        raise RecsError(
            f"no published run of dataset {dataset!r} in {_masked(engine)}; --dataset takes one of: {', '.join(served)}"
        )
    raise RecsError(f"nothing published yet in {_masked(engine)}; run `recs run` first")

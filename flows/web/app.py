"""The FastAPI app of ``recs serve``: the explorer page and a read-only JSON API.

Every endpoint reads the current published run through ``storage.queries`` on a read-only engine
(``make_engine(read_only=True)``: the database refuses writes), one transaction per request, so a
request sees one run and the next request after a publish commits sees the new one. Every value
from a request is a bound parameter; ``n`` is capped at ``tasks.evaluate.MAX_N`` (no published list
is longer). Errors are JSON ``{"detail": "<one line>", "suggestions": [...]}``: 404 for an unknown
artist or user (with close names), 503 when the database has nothing to serve or cannot be reached.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.engine import Engine

from storage import queries
from storage.foldin import Heard, listened_recommendations, parse_listened
from tasks.errors import RecsError
from tasks.evaluate import MAX_N

STATIC = Path(__file__).with_name("static")
DEFAULT_N = 10
COMPLETIONS = 10  # names offered under the search box
RUNS_SHOWN = 20


@dataclass(frozen=True)
class ModelList:
    model: str
    rows: list[queries.RelatedRow]


@dataclass(frozen=True)
class RelatedAnswer:
    """``/api/related``: the related artists of one artist, one list per model the run published."""

    run_id: int
    dataset: str
    artist_key: str
    artist_name: str
    models: list[ModelList]


@dataclass(frozen=True)
class RecommendAnswer:
    """``/api/recommend``: top-N new artists for one user of the run (``user_key``), or for a
    listener not in the data (``heard``: their history as matched; ``user_key`` None)."""

    run_id: int
    dataset: str
    user_key: str | None
    rows: list[queries.RecommendationRow]
    heard: list[Heard]


@dataclass(frozen=True)
class RunRow:
    """``/api/runs``: one run, newest first; ``current``: what the views (and this API) show."""

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
    current: bool


@dataclass(frozen=True)
class ServerInfo:
    """``/api/info``: what this server reads."""

    database: str  # the URL, password masked
    max_n: int


@dataclass(frozen=True)
class Problem:
    detail: str
    suggestions: list[str]


class Unprocessable(Exception):
    """A request the API understood but cannot answer as asked (422)."""


def _problem(detail: str, status: int) -> JSONResponse:
    return JSONResponse({"detail": detail, "suggestions": []}, status_code=status)


N = Annotated[int, Query(ge=1, description=f"How many artists (capped at {MAX_N}, the published length).")]
DATASET = Annotated[
    str | None, Query(description="Dataset whose current run to read (default: the one whose run became current last).")
]
ERRORS: dict[int | str, dict] = {
    404: {"model": Problem, "description": "Unknown artist or user; `suggestions` has close names."},
    503: {"model": Problem, "description": "Nothing published yet, or the database cannot be reached."},
}


def create_app(engine: Engine) -> FastAPI:
    """The app over ``engine`` (made with ``make_engine(url, read_only=True)``)."""
    app = FastAPI(
        title="lastfm-recs explorer",
        summary="Related artists and per-user recommendations of the current published run (read-only).",
        version="1",
    )

    @app.exception_handler(Unprocessable)
    def _unprocessable(_request: Request, exc: Unprocessable) -> JSONResponse:
        return _problem(str(exc), 422)

    @app.exception_handler(RecsError)
    def _recs_error(_request: Request, exc: RecsError) -> JSONResponse:
        if isinstance(exc, queries.UnknownName):
            return JSONResponse({"detail": str(exc), "suggestions": exc.suggestions}, status_code=404)
        return JSONResponse({"detail": str(exc), "suggestions": []}, status_code=503)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/related", responses=ERRORS)
    def related(
        artist: Annotated[str, Query(min_length=1, description="Artist name (any letter case) or artist key.")],
        n: N = DEFAULT_N,
        dataset: DATASET = None,
        model: Annotated[str | None, Query(description="Only this model's list (default: every model's).")] = None,
    ) -> RelatedAnswer:
        """Related artists of ARTIST in the current run: one list per model, the shipped model's first."""
        if model is not None:
            one = queries.related_artists(engine, artist, min(n, MAX_N), dataset, model)
            return RelatedAnswer(
                one.run_id, one.dataset, one.artist_key, one.artist_name, [ModelList(one.model, one.rows)]
            )
        found = queries.related_by_model(engine, artist, min(n, MAX_N), dataset)
        lists = [ModelList(name, rows) for name, rows in found.lists.items()]
        return RelatedAnswer(found.run_id, found.dataset, found.artist_key, found.artist_name, lists)

    @app.get(
        "/api/recommend",
        responses=ERRORS
        | {422: {"model": Problem, "description": "Neither or both of user and listened, or a bad history."}},
    )
    def recommend(
        user: Annotated[str | None, Query(min_length=1, description="The dataset's own user id.")] = None,
        listened: Annotated[
            str | None,
            Query(
                min_length=1,
                description="A listener not in the data: artist names separated by commas, each "
                "optionally name:plays (plays default to 1); folded into the run's user model.",
            ),
        ] = None,
        n: N = DEFAULT_N,
        dataset: DATASET = None,
    ) -> RecommendAnswer:
        """New artists for USER, or for the LISTENED history, from the current run, each with the
        heard artist behind it."""
        if (user is None) == (listened is None):
            raise Unprocessable("give either user or listened")
        if user is not None:
            found = queries.recommendations(engine, user, min(n, MAX_N), dataset)
            return RecommendAnswer(found.run_id, found.dataset, found.user_key, found.rows, [])
        try:
            folded = listened_recommendations(engine, parse_listened(listened or ""), min(n, MAX_N), dataset)
        except queries.UnknownName:
            raise
        except RecsError as exc:  # a bad history or a run that cannot fold in: the request's fault
            raise Unprocessable(str(exc)) from None
        return RecommendAnswer(folded.run_id, folded.dataset, None, folded.rows, folded.heard)

    @app.get("/api/artists", responses=ERRORS)
    def artists(
        prefix: Annotated[str, Query(description="The start of a name, any letter case.")],
        dataset: DATASET = None,
    ) -> list[str]:
        """Names starting with PREFIX, most-listened first (the search box's completions)."""
        return queries.artist_completions(engine, prefix, COMPLETIONS, dataset)

    @app.get("/api/runs", responses=ERRORS)
    def runs(limit: Annotated[int, Query(ge=1, le=100)] = RUNS_SHOWN) -> list[RunRow]:
        """The newest runs (published, failed, rejected, pruned, unchanged); `current` marks what is served."""
        return [
            RunRow(
                r.run_id,
                r.status,
                r.started_at,
                r.finished_at,
                r.dataset,
                r.related_model,
                r.user_model,
                r.n_related,
                r.n_recommendations,
                r.precision_at_10,
                r.message,
                r.current,
            )
            for r in queries.list_runs(engine, limit)
        ]

    @app.get("/api/info")
    def info() -> ServerInfo:
        """The database this server reads (password masked) and the cap on `n`."""
        return ServerInfo(engine.url.render_as_string(hide_password=True), MAX_N)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app

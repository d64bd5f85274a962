"""The ``retrain`` flow: one pass from listening data to a published run.

    download -> parse -> encode -> split -> weight -> factorize -> index -> recommend -> evaluate -> publish

Each step is a thin Prefect task around a plain stage function in tasks/ or storage/; this module
adds only orchestration: retries with back-off where the network or the database can fail for a
while, caching of the deterministic input steps across runs, timeouts where a stage can hang, and
no Prefect result persistence for anything large (matrices and factors stay in memory or go to
files under ``config.work_dir``).

The split comes before weighting so held-out pairs never enter the BM25/TF-IDF statistics (artist
lengths, user idf) of the matrix the models are fitted on.
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import hashlib
import http.client
import json
import shutil
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from importlib.metadata import PackageNotFoundError, version

import numpy as np
import pandas as pd
import psycopg
import scipy.sparse as sp
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.context import FlowRunContext
from prefect.tasks import exponential_backoff
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError

from flows.config import DataConfig, ModelConfig, RetrainConfig
from flows.report import RunReport, publish_artifacts
from storage.engine import make_engine
from storage.publish import RunOutputs, publish
from tasks.contracts import BadRows, Downloaded, Encoded, Factors, Interactions, Metric, Scorer, Split, TopN
from tasks.datasets import obtain, resolve
from tasks.encode import encode
from tasks.errors import RecsError
from tasks.evaluate import evaluate, report
from tasks.files import atomic_path
from tasks.factorize import fit, save
from tasks.index import build_index
from tasks.parse import parse
from tasks.recommend import recall_at_n, related_approx, related_exact, user_top_n, user_top_n_approx
from tasks.split import per_user_holdout
from tasks.weight import weight

T = TypeVar("T")

# Large values (matrices, factors, top-N arrays) pass between tasks in memory only: no result
# persistence, and no input hashing for a cache key (hashing a 17 M-pair matrix costs seconds).
IN_MEMORY: dict[str, Any] = {"cache_policy": NONE, "persist_result": False}


# -- retry policy ------------------------------------------------------------------------------

_TRANSIENT_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT,
                     errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EPIPE}


def _is_transient(exc: BaseException | None) -> bool:
    """True if ``exc`` or anything in its cause/context chain is a network or database-connection
    error worth retrying (refused/reset connection, timeout, HTTP 5xx, PostgreSQL connection
    failure, SQLite "database is locked"); False for everything else (404, checksum mismatch, bad
    data, a SQLite file that cannot be opened), which another attempt cannot fix."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, sqlite3.OperationalError):
            return "locked" in str(exc) or "busy" in str(exc)
        if isinstance(exc, OperationalError | InterfaceError):
            return exc.orig is None or _is_transient(exc.orig)
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            return True
        if isinstance(exc, urllib.error.HTTPError):
            return exc.code >= 500
        if isinstance(exc, TimeoutError | socket.timeout | ConnectionError | http.client.RemoteDisconnected
                      | http.client.IncompleteRead):
            return True
        if isinstance(exc, urllib.error.URLError):
            return _is_transient(exc.reason) if isinstance(exc.reason, BaseException) else False
        if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _retry_transient(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry only errors another attempt can fix."""
    try:
        state.result()
    except Exception as exc:  # the failed state re-raises the task's exception
        return _is_transient(exc)
    return False


# -- cache keys --------------------------------------------------------------------------------


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def download_key(context, parameters: dict) -> str:
    """Cache key of a download: what ``tasks.datasets.resolve`` says to obtain (URL or path,
    expected sha256, archive member, generator parameters) and the cache folder. A local source
    adds its files' sizes and modification times, so an edited file is read again; a URL's content
    is pinned by ``data.sha256`` when given (the download cache is keyed by URL too)."""
    plan = resolve(parameters["data"])
    return "download-" + _digest(plan.location, plan.sha256, plan.expect, str(Path(plan.cache_dir).resolve()),
                                 plan.synthetic.model_dump() if plan.synthetic else None,
                                 _local_stamp(plan.location))


def _local_stamp(location: str | None) -> list | None:
    """(name, size, mtime_ns) of a local file, or of the files directly in a local folder; None for
    URLs and generated data."""
    if location is None or urllib.parse.urlparse(location).scheme in ("http", "https"):
        return None
    parsed = urllib.parse.urlparse(location)
    path = Path(urllib.request.url2pathname(parsed.path) if parsed.scheme == "file" else location).expanduser()
    if not path.exists():
        return None  # the download step reports the missing path
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]


def parse_key(context, parameters: dict) -> str:
    """Cache key of a parse: the downloaded bytes (source + their sha256) and the dataset format."""
    got: Downloaded = parameters["downloaded"]
    return "parse-" + _digest(got.source, got.sha256, parameters["dataset"])


# -- tasks -------------------------------------------------------------------------------------


@task(name="download", cache_key_fn=download_key, persist_result=True, retry_jitter_factor=0.5,
      retry_condition_fn=_retry_transient, timeout_seconds=4 * 3600)
def download_task(data: DataConfig) -> tuple[Downloaded, str | None]:
    """Fetch (or generate) the dataset into ``data.cache_dir``. Returns the download and the
    dataset name to record (None: the user's own file, named by its format when parsed).
    A small result, cached across runs by source."""
    plan = resolve(data)
    return obtain(plan, attempts=1), plan.dataset


@dataclass(frozen=True)
class Parsed:
    """A parse result kept on disk: ``path`` is a Parquet file of the tidy frame."""

    path: Path
    bad_rows: BadRows
    dataset: str


@task(name="parse", cache_key_fn=parse_key, persist_result=True, timeout_seconds=3 * 3600)
def parse_task(downloaded: Downloaded, dataset: str | None, out_dir: Path) -> Parsed:
    """Parse into the tidy frame and write it as Parquet next to the download; the cached result
    is only the path and the bad-row counts, never the frame."""
    interactions = parse(downloaded.path, dataset)
    path = out_dir / f"parsed-{downloaded.sha256[:16]}-{interactions.dataset}.parquet"
    with atomic_path(path) as temp:
        interactions.frame.to_parquet(temp, index=False)
    return Parsed(path=path, bad_rows=interactions.bad_rows, dataset=interactions.dataset)


@task(name="encode", **IN_MEMORY)
def encode_task(parsed: Parsed, data: DataConfig) -> Encoded:
    """The parsed Parquet file -> CSR users x artists (float32 plays) and code tables."""
    frame = pd.read_parquet(parsed.path)
    return encode(Interactions(frame=frame, bad_rows=parsed.bad_rows, dataset=parsed.dataset),
                  min_listeners=data.min_listeners, min_artists=data.min_artists)


@task(name="split", **IN_MEMORY)
def split_task(encoded: Encoded, config: RetrainConfig) -> Split:
    """Per-user holdout of the raw plays (before any weighting)."""
    return per_user_holdout(encoded.plays, fraction=config.eval.holdout,
                            min_artists=config.eval.min_artists, seed=config.eval.seed)


@task(name="weight", task_run_name="weight-{model.name}", **IN_MEMORY)
def weight_task(train: sp.csr_matrix, model: ModelConfig) -> sp.csr_matrix:
    """Raw train plays -> the model's confidences (CSR, users x artists, float32)."""
    return weight(train, model.weight)


@task(name="factorize", task_run_name="factorize-{model.name}", **IN_MEMORY)
def factorize_task(weighted: sp.csr_matrix, model: ModelConfig, out_dir: Path) -> Scorer:
    """Fit the model on the weighted train matrix; factor models are also saved under
    ``out_dir/<model name>/`` (factors.npz + params.json) for inspection."""
    fitted = fit(weighted, model)
    if isinstance(fitted, Factors):
        save(fitted, out_dir / model.name)
    return fitted


@task(name="index", task_run_name="index-{path.stem}", **IN_MEMORY)
def index_task(artist_factors: np.ndarray, config: RetrainConfig, path: Path, inner_product: bool = False):
    """Nearest-neighbour index (``index.engine``) over artist factors (float32, artists x f) saved
    at ``path``: cosine for related artists, or inner product (``inner_product=True``) for
    approximate user top-N."""
    return build_index(artist_factors, config.index, path, inner_product=inner_product,
                       seed=config.related_model.random_state)


@dataclass(frozen=True)
class Recommended:
    """The published lists and how well the index matched exact search on a sample."""

    related: TopN  # artists x n
    users: TopN  # users x n
    recall: list[Metric]


def _sample(count: int, size: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(count, size=min(size, count), replace=False))


@task(name="recommend", **IN_MEMORY)
def recommend_task(related_scorer: Factors, user_scorer: Scorer, related_index, user_index, heard: sp.csr_matrix,
                   config: RetrainConfig) -> Recommended:
    """Related artists from ``related_index`` for every artist (recall checked against exact cosine
    on a sample), and top-N new artists for every user, everything in ``heard`` (CSR, users x
    artists) excluded: through ``user_index`` when given (recall checked the same way), else exact."""
    n, cfg = config.n, config.index
    artist_factors = related_scorer.artist_factors
    related = related_approx(related_index, artist_factors, n)
    rows = _sample(len(artist_factors), cfg.recall_sample, config.eval.seed)
    recall = [Metric(cfg.engine, "related_recall", n,
                     recall_at_n(related, related_exact(artist_factors, n, rows), rows))]

    if user_index is not None:
        users = user_top_n_approx(user_index, user_scorer.user_factors, user_scorer.artist_factors, heard, n)
        rows = _sample(heard.shape[0], cfg.recall_sample, config.eval.seed)
        exact = user_top_n(user_scorer, heard, n, users=rows)
        recall.append(Metric(cfg.engine, "user_recall", n, recall_at_n(users, exact, rows)))
    else:
        users = user_top_n(user_scorer, heard, n)
    return Recommended(related=related, users=users, recall=recall)


@dataclass(frozen=True)
class Fitted:
    """One fitted model: its config, the ``Scorer`` and the weighted train matrix it was fitted on
    (CSR, users x artists, float32 confidences)."""

    model: ModelConfig
    scorer: Scorer
    train: sp.csr_matrix

    @property
    def params(self) -> dict:
        """The hyper-parameters the model used (``Factors.params``), else its config."""
        return getattr(self.scorer, "params", None) or self.model.model_dump()


@task(name="evaluate", **IN_MEMORY)
def evaluate_task(fitted: list[Fitted], split: Split, config: RetrainConfig) -> list[Metric]:
    """Holdout metrics of each fitted model (train-heard artists excluded), with the popularity
    and random baselines once beside them."""
    metrics: list[Metric] = []
    for i, f in enumerate(fitted):
        own = Split(train=f.train, test=split.test, rule=split.rule, seed=split.seed)
        # the explicit model predicts its weighted training target; RMSE compares with that
        target = weight(split.test, f.model.weight) if f.model.name == "explicit" else None
        run = report if i == 0 else evaluate  # the first model brings the baselines
        metrics += run(f.scorer, own, config.eval.k, rmse_target=target, seed=config.eval.seed,
                       max_users=config.eval.max_users)
    return metrics


@task(name="publish", retry_jitter_factor=0.5, retry_condition_fn=_retry_transient, timeout_seconds=3 * 3600,
      **IN_MEMORY)
def publish_task(config: RetrainConfig, downloaded: Downloaded, dataset: str, encoded: Encoded,
                 recommended: Recommended, metrics: list[Metric], related_model: str, user_model: str) -> int:
    """Load the run's rows and make them visible in one transaction; returns the new run_id."""
    outputs = RunOutputs(
        encoded=encoded, related=recommended.related, recommendations=recommended.users, metrics=metrics,
        config=config.model_dump(mode="json"), dataset=dataset, source=downloaded.source,
        data_sha256=downloaded.sha256, related_model=related_model, user_model=user_model,
        code_version=_code_version(),
    )
    engine = make_engine(config.storage.db)
    try:
        return publish(engine, outputs, retention=config.storage.retention,
                       max_regression=config.storage.max_regression)
    finally:
        engine.dispose()


def _code_version() -> str:
    """The package version, plus the git commit when running from a checkout."""
    try:
        text = version("lastfm-recs")
    except PackageNotFoundError:
        text = "unknown"
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{text}+{commit}" if commit else text


def _safe_url(url: str) -> str:
    """The database URL with any password masked, for logs and summaries."""
    return make_url(url).render_as_string(hide_password=True)


# -- the flow ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetrainResult:
    """What a retrain returns (and ``recs run`` prints): small, JSON-friendly."""

    run_id: int
    db: str
    metrics: list[Metric]
    timings: dict[str, float]  # wall seconds per stage
    seconds: float  # wall seconds of the run inside the flow, first task to the report artifacts
    example_artist: str  # the most listened artist, for an example query
    related_model: str
    user_model: str


class _Timer:
    """Wall seconds per stage, in call order, for the report."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, stage: str, fn: Callable[..., T], *args, **kwargs) -> T:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


def _run_dir(config: RetrainConfig) -> Path:
    ctx = FlowRunContext.get()
    name = str(ctx.flow_run.id) if ctx and ctx.flow_run else time.strftime("%Y%m%dT%H%M%S")
    path = Path(config.work_dir) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _prune_run_dirs(work_dir: Path, keep: int, current: Path) -> None:
    """Keep the ``keep`` newest run folders (factors, index files) under ``work_dir``, like the
    database keeps its last published runs; the current one is never removed."""
    runs = sorted((p for p in work_dir.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in runs[keep:]:
        if old.resolve() != current.resolve():
            shutil.rmtree(old, ignore_errors=True)


# users x artists from which the HetRec-sized defaults get slow (Last.fm 360K is 1.1e11)
LARGE_CELLS = 10**10


def scale_advice(config: RetrainConfig, user_scorer: Scorer, n_users: int, n_artists: int) -> str | None:
    """One line to log when the data is large and the run still has what only suits small
    catalogues (README "Performance"): a user model without factors (item-kNN, blends), which
    scores every artist for every user, or the Annoy engine, no quicker than exact search there.
    None otherwise."""
    if n_users * n_artists < LARGE_CELLS:
        return None
    slow = []
    if not isinstance(user_scorer, Factors):
        slow.append(f"user_model {user_scorer.name!r} scores all {n_artists:,} artists for every user")
    if config.index.engine == "annoy":
        slow.append("the annoy index is no quicker than exact search at this size")
    if not slow:
        return None
    return (f"{n_users:,} users x {n_artists:,} artists: " + "; ".join(slow)
            + "; for this size run with --config deployments/lastfm-360k.yaml (ALS + faiss)")


def _same_model(a: ModelConfig, b: ModelConfig) -> bool:
    return a.model_dump() == b.model_dump()


@flow(name="retrain", description="Retrain related artists and per-user recommendations and publish them.")
def retrain(config: RetrainConfig = RetrainConfig()) -> RetrainResult:
    """Run every stage once and publish the run; returns its ``run_id``, metrics and timings.

    Raises the first stage's ``RecsError`` (also logged as one line) so the run ends FAILED with
    that reason; nothing is published then and readers keep the previous run.
    """
    logger = get_run_logger()
    try:
        return _retrain(config, logger)
    except RecsError as exc:
        logger.error("retrain failed: %s", exc)
        raise


def _renamed(scorer, name: str):
    """A copy of ``scorer`` under another ``name`` (frozen dataclasses and plain objects alike)."""
    if dataclasses.is_dataclass(scorer):
        return dataclasses.replace(scorer, name=name)
    clone = copy.copy(scorer)
    clone.name = name
    return clone


def _fit_models(config: RetrainConfig, split: Split, run_dir: Path, timer: _Timer) -> tuple[Fitted, Fitted]:
    """Fit the related-artists and user models on the train split, once each (once in all when
    both roles name the same configuration)."""
    related_cfg, user_cfg = config.related_model, config.user_model
    fitted = []
    for cfg in (related_cfg, user_cfg) if not _same_model(related_cfg, user_cfg) else (related_cfg,):
        weighted = timer("weight", weight_task, split.train, cfg)
        scorer = timer("factorize", factorize_task, weighted, cfg, run_dir)
        fitted.append(Fitted(model=cfg, scorer=scorer, train=weighted))
    if len(fitted) == 2 and fitted[0].scorer.name == fitted[1].scorer.name:
        # same model name with different settings: keep their metrics apart
        fitted = [Fitted(f.model, _renamed(f.scorer, f"{f.scorer.name}-{role}"), f.train)
                  for f, role in zip(fitted, ("related", "users"))]
    if not hasattr(fitted[0].scorer, "artist_factors"):
        raise RecsError(f"related_model {related_cfg.name!r} has no artist factors to compare artists by; "
                        "use a factor model (als, lsa, bpr, lmf, explicit) for related_model")
    return fitted[0], fitted[-1]


def _retrying(t, config: RetrainConfig):
    """``t`` with the run's retry count and exponential back-off (transient errors only)."""
    return t.with_options(retries=config.retry.attempts,
                          retry_delay_seconds=exponential_backoff(backoff_factor=config.retry.backoff_seconds))


def _retrain(config: RetrainConfig, logger) -> RetrainResult:
    started = time.perf_counter()
    timer = _Timer()
    run_dir = _run_dir(config)
    data = config.data
    download = _retrying(download_task, config)
    downloaded, dataset = timer("download", download, data)
    if not Path(downloaded.path).exists():  # a cached result whose file was deleted since
        downloaded, dataset = timer("download", download.with_options(refresh_cache=True), data)
    parsed = timer("parse", parse_task, downloaded, dataset, Path(data.cache_dir) / "parsed")
    if not parsed.path.exists():
        parsed = timer("parse", parse_task.with_options(refresh_cache=True), downloaded, dataset,
                       Path(data.cache_dir) / "parsed")
    encoded = timer("encode", encode_task, parsed, data)
    logger.info("%s: %d users x %d artists, %d pairs; %d bad rows", parsed.dataset, encoded.n_users,
                encoded.n_artists, encoded.plays.nnz, parsed.bad_rows.total)
    split = timer("split", split_task, encoded, config)
    related, users = _fit_models(config, split, run_dir, timer)
    advice = scale_advice(config, users.scorer, encoded.n_users, encoded.n_artists)
    if advice:
        logger.warning(advice)
    related_index = timer("index", index_task, related.scorer.artist_factors, config,
                          run_dir / f"related.{config.index.engine}")
    user_index = None
    if isinstance(users.scorer, Factors) and config.index.approximate_users:
        user_index = timer("index", index_task, users.scorer.artist_factors, config,
                           run_dir / f"users.{config.index.engine}", inner_product=True)
    # every artist a user ever heard (train and test) is excluded from the published top-N; the
    # scorers only read which artists were heard, not how often (item-kNN binarises its input)
    recommended = timer("recommend", recommend_task, related.scorer, users.scorer, related_index, user_index,
                        encoded.plays, config)
    fitted = [related] if related is users else [related, users]
    metrics = timer("evaluate", evaluate_task, fitted, split, config) + recommended.recall
    for m in metrics:
        logger.info("%-12s %-22s %s", m.model, m.metric if m.k is None else f"{m.metric}@{m.k}", f"{m.value:.4f}")
    run_id = timer("publish", _retrying(publish_task, config), config, downloaded, parsed.dataset, encoded,
                   recommended, metrics, related.scorer.name, users.scorer.name)
    run_report = RunReport(
        run_id=str(run_id), dataset=parsed.dataset, source=downloaded.source, sha256=downloaded.sha256,
        encoded=encoded, bad_rows=parsed.bad_rows, split_rule=split.rule, test_pairs=split.test.nnz,
        models={"related artists": related.params, "user recommendations": users.params},
        metrics=metrics, related=recommended.related, artist_factors=related.scorer.artist_factors,
        timings=timer.seconds,
    )
    publish_artifacts(run_report)
    _prune_run_dirs(Path(config.work_dir), keep=config.storage.retention, current=run_dir)
    top = str(encoded.artist_names[int(np.argmax(encoded.listeners))])
    return RetrainResult(run_id=run_id, db=_safe_url(config.storage.db), metrics=metrics, timings=timer.seconds,
                         seconds=time.perf_counter() - started, example_artist=top,
                         related_model=related.scorer.name, user_model=users.scorer.name)

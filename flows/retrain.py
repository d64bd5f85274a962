"""The ``retrain`` flow: one pass from listening data to a published run.

    download -> parse -> encode -> split -> weight -> factorize -> index -> recommend -> evaluate -> publish

Each task is one call into a stage function in tasks/ or storage/; this module adds only
orchestration: retries with back-off where the network or the database can fail for a while
(``tasks.transient`` decides what is transient), caching of the deterministic input steps across
runs, timeouts where a stage can hang, per-stage wall time, and no Prefect result persistence for
anything large (matrices and factors stay in memory or go to files under ``config.work_dir``).

The split comes before weighting so held-out pairs never enter the BM25/TF-IDF statistics (artist
lengths, user idf) of the matrix the models are fitted on.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import scipy.sparse as sp
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.context import FlowRunContext
from prefect.tasks import exponential_backoff
from sqlalchemy.engine import make_url

from flows.config import RetrainConfig
from flows.report import RunReport, publish_artifacts
from storage.config import StorageConfig, masked_url
from storage.engine import make_engine
from storage.publish import RunOutputs, publish
from tasks.contracts import Downloaded, Encoded, Factors, Metric, Parsed, Recommended, Scorer, Split
from tasks.data.datasets import DataConfig, fingerprint, obtain, resolve
from tasks.data.encode import encode_parsed
from tasks.data.parse import parse_to_parquet
from tasks.errors import RecsError
from tasks.evaluate import evaluate_models
from tasks.index import ArtistIndex, build_index
from tasks.models import roles
from tasks.models.base import fit
from tasks.models.registry import ModelConfig
from tasks.models.roles import Fitted
from tasks.models.store import save
from tasks.recommend import recommend, scale_advice
from tasks.split import per_user_holdout
from tasks.transient import is_transient
from tasks.weight import weight
from tasks.workspace import code_version, prune_run_dirs, run_dir

# Large values (matrices, factors, top-N arrays) pass between tasks in memory only: no result
# persistence, and no input hashing for a cache key (hashing a 17 M-pair matrix costs seconds).
IN_MEMORY: dict[str, Any] = {"cache_policy": NONE, "persist_result": False}

# Wall seconds per stage of the running flow, filled by ``stage`` (None outside a retrain).
_TIMINGS: ContextVar[dict[str, float] | None] = ContextVar("recs_stage_timings", default=None)


def stage(name: str, **options: Any) -> Callable[[Callable[..., Any]], Any]:
    """A Prefect task named ``name`` whose wall time (summed over calls and attempts) is recorded
    for the run's report: the one place timings come from."""

    def wrap(fn: Callable[..., Any]) -> Any:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                timings = _TIMINGS.get()
                if timings is not None:
                    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start

        return task(name=name, **options)(timed)

    return wrap


def _retry_transient(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry only errors another attempt can fix."""
    try:
        state.result()
    except Exception as exc:  # the failed state re-raises the task's exception
        return is_transient(exc)
    return False


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def unmasked(data: DataConfig) -> DataConfig:
    """``data`` with the real source URL when ``recs run`` moved it into ``RECS_SOURCE`` because
    it carries a token or password (the flow parameter holds its masked form only)."""
    real = os.environ.get("RECS_SOURCE")
    if real and data.source and masked_url(real) == data.source:
        return data.model_copy(update={"source": real})
    return data


def database_url(storage: StorageConfig) -> str:
    """The URL to publish into: the Prefect Secret block ``storage.db_secret`` when named, else
    ``storage.db`` (its password, if any, comes from PGPASSWORD)."""
    if storage.db_secret is None:
        return storage.db
    from prefect.blocks.system import Secret

    try:
        return str(cast(Secret, Secret.load(storage.db_secret)).get())
    except ValueError as exc:  # Prefect's "unable to find block document named ..."
        raise RecsError(
            f"cannot load the Prefect Secret block {storage.db_secret!r} ({exc}); create it "
            "(prefect block create secret) or fix storage.db_secret"
        ) from None


def download_key(context, parameters: dict) -> str:
    """Cache key of a download: the source's fingerprint (``tasks.data.datasets.fingerprint``)."""
    return "download-" + _digest(*fingerprint(resolve(unmasked(parameters["data"]))))


def parse_key(context, parameters: dict) -> str:
    """Cache key of a parse: the downloaded bytes (source + their sha256) and the dataset format."""
    got: Downloaded = parameters["downloaded"]
    return "parse-" + _digest(got.source, got.sha256, parameters["dataset"])


# -- tasks: one stage call each ----------------------------------------------------------------


@stage(
    "download",
    cache_key_fn=download_key,
    persist_result=True,
    retry_jitter_factor=0.5,
    retry_condition_fn=_retry_transient,
    timeout_seconds=4 * 3600,
)
def download_task(data: DataConfig) -> tuple[Downloaded, str | None]:
    """Fetch (or generate) the dataset into ``data.cache_dir``; returns the download and the
    dataset name to record (None: the user's own file). One attempt per task attempt, so the
    retries are Prefect's alone. The download's ``source`` is masked (``masked_url``): it is
    persisted as the task's result, stored in ``runs.source`` and shown in the report."""
    plan = resolve(unmasked(data))
    got = obtain(plan, attempts=1)
    return dataclasses.replace(got, source=masked_url(got.source)), plan.dataset


@stage("parse", cache_key_fn=parse_key, persist_result=True, timeout_seconds=3 * 3600)
def parse_task(downloaded: Downloaded, dataset: str | None, out_dir: Path) -> Parsed:
    """The tidy frame as Parquet next to the download; cached by the downloaded bytes."""
    return parse_to_parquet(downloaded, dataset, out_dir)


@stage("encode", **IN_MEMORY)
def encode_task(parsed: Parsed, data: DataConfig) -> Encoded:
    """CSR users x artists (float32 plays) and code tables."""
    return encode_parsed(parsed, data.min_listeners, data.min_artists)


@stage("split", **IN_MEMORY)
def split_task(encoded: Encoded, config: RetrainConfig) -> Split:
    """Per-user holdout of the raw plays (before any weighting)."""
    return per_user_holdout(
        encoded.plays, fraction=config.eval.holdout, min_artists=config.eval.min_artists, seed=config.eval.seed
    )


@stage("weight", task_run_name="weight-{model.name}", **IN_MEMORY)
def weight_task(train: sp.csr_matrix, model: ModelConfig) -> sp.csr_matrix:
    """Raw train plays -> the model's confidences (CSR, users x artists, float32)."""
    return weight(train, model.weight)


@stage("factorize", task_run_name="factorize-{model.name}", **IN_MEMORY)
def factorize_task(weighted: sp.csr_matrix, model: ModelConfig, out_dir: Path) -> Scorer:
    """Fit the model on the weighted train matrix; factor models are saved under
    ``out_dir/<model name>/`` (factors.npz + params.json) for inspection."""
    fitted = fit(weighted, model)
    if isinstance(fitted, Factors):
        save(fitted, out_dir / model.name)
    return fitted


@stage("index", task_run_name="index-{path.stem}", **IN_MEMORY)
def index_task(
    artist_factors: np.ndarray, config: RetrainConfig, path: Path, inner_product: bool = False
) -> ArtistIndex:
    """Nearest-neighbour index (``index.engine``) over artist factors (float32, artists x f)."""
    return build_index(
        artist_factors, config.index, path, inner_product=inner_product, seed=config.related_model.random_state
    )


@stage("recommend", **IN_MEMORY)
def recommend_task(
    related_model: Factors,
    user_model: Scorer,
    related_index: ArtistIndex,
    user_index: ArtistIndex | None,
    heard: sp.csr_matrix,
    config: RetrainConfig,
) -> Recommended:
    """Related artists for every artist and top-N new artists for every user."""
    return recommend(
        related_model, user_model, related_index, user_index, heard, config.n, config.index, seed=config.eval.seed
    )


@stage("evaluate", **IN_MEMORY)
def evaluate_task(fitted: list[Fitted], split: Split, config: RetrainConfig) -> list[Metric]:
    """Holdout metrics of each fitted model beside the popularity and random baselines."""
    return evaluate_models(fitted, split, config.eval)


@stage("publish", retry_jitter_factor=0.5, retry_condition_fn=_retry_transient, timeout_seconds=3 * 3600, **IN_MEMORY)
def publish_task(config: RetrainConfig, outputs: RunOutputs) -> int:
    """Load the run's rows and make them visible in one transaction; returns the new run_id."""
    engine = make_engine(database_url(config.storage))
    try:
        return publish(
            engine,
            outputs,
            retention=config.storage.retention,
            max_regression=config.storage.max_regression,
            lock_timeout_seconds=config.storage.lock_timeout_seconds,
        )
    finally:
        engine.dispose()


def _safe_url(url: str) -> str:
    """The database URL with any password masked, for logs and summaries."""
    return make_url(url).render_as_string(hide_password=True)


def _masked_config(config: RetrainConfig) -> dict:
    """The run's config as JSON values for ``runs.config``, with the URLs' secrets masked (a
    password given straight as a flow parameter, e.g. in the UI, is still never stored)."""
    raw = config.model_dump(mode="json")
    raw["storage"]["db"] = masked_url(raw["storage"]["db"])
    if raw["data"]["source"]:
        raw["data"]["source"] = masked_url(raw["data"]["source"])
    return raw


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


@flow(name="retrain", description="Retrain related artists and per-user recommendations and publish them.")
def retrain(config: RetrainConfig = RetrainConfig()) -> RetrainResult:
    """Run every stage once and publish the run; returns its ``run_id``, metrics and timings.

    Raises the first stage's ``RecsError`` (also logged as one line) so the run ends FAILED with
    that reason; nothing is published then and readers keep the previous run.
    """
    logger = get_run_logger()
    timings: dict[str, float] = {}
    token = _TIMINGS.set(timings)
    try:
        return _retrain(config, logger, timings)
    except RecsError as exc:
        logger.error("retrain failed: %s", exc)
        raise
    finally:
        _TIMINGS.reset(token)


def _retrying(t, config: RetrainConfig):
    """``t`` with the run's retry count and exponential back-off (transient errors only)."""
    return t.with_options(
        retries=config.retry.attempts,
        retry_delay_seconds=exponential_backoff(backoff_factor=config.retry.backoff_seconds),
    )


def _run_name() -> str:
    ctx = FlowRunContext.get()
    return str(ctx.flow_run.id) if ctx and ctx.flow_run else time.strftime("%Y%m%dT%H%M%S")


def _retrain(config: RetrainConfig, logger, timings: dict[str, float]) -> RetrainResult:
    started = time.perf_counter()
    folder = run_dir(config.work_dir, _run_name())
    data, parsed_dir = config.data, Path(config.data.cache_dir) / "parsed"
    download = _retrying(download_task, config)
    downloaded, dataset = download(data)
    if not Path(downloaded.path).exists():  # a cached result whose file was deleted since
        downloaded, dataset = download.with_options(refresh_cache=True)(data)
    parsed = parse_task(downloaded, dataset, parsed_dir)
    if not parsed.path.exists():
        parsed = parse_task.with_options(refresh_cache=True)(downloaded, dataset, parsed_dir)
    encoded = encode_task(parsed, data)
    logger.info(
        "%s: %d users x %d artists, %d pairs; %d bad rows",
        parsed.dataset,
        encoded.n_users,
        encoded.n_artists,
        encoded.plays.nnz,
        parsed.bad_rows.total,
    )
    split = split_task(encoded, config)
    fitted = []
    for model in roles.distinct(config.related_model, config.user_model):
        weighted = weight_task(split.train, model)
        fitted.append(Fitted(model=model, scorer=factorize_task(weighted, model, folder), train=weighted))
    related, users = roles.assign(fitted)
    advice = scale_advice(users.scorer, config.index.engine, encoded.n_users, encoded.n_artists)
    if advice:
        logger.warning(advice)
    related_factors = cast(Factors, related.scorer)  # roles.assign refuses a related model without factors
    related_index = index_task(related_factors.artist_factors, config, folder / f"related.{config.index.engine}")
    user_index = None
    if isinstance(users.scorer, Factors) and config.index.approximate_users:
        user_index = index_task(
            users.scorer.artist_factors, config, folder / f"users.{config.index.engine}", inner_product=True
        )
    # every artist a user ever heard (train and test) is excluded from the published top-N; the
    # scorers only read which artists were heard, not how often (item-kNN binarises its input)
    recommended = recommend_task(related_factors, users.scorer, related_index, user_index, encoded.plays, config)
    metrics = evaluate_task(fitted, split, config) + recommended.recall
    for m in metrics:
        logger.info("%-12s %-22s %s", m.model, m.metric if m.k is None else f"{m.metric}@{m.k}", f"{m.value:.4f}")
    outputs = RunOutputs(
        encoded=encoded,
        related=recommended.related,
        recommendations=recommended.users,
        metrics=metrics,
        config=_masked_config(config),
        dataset=parsed.dataset,
        source=downloaded.source,
        data_sha256=downloaded.sha256,
        related_model=related.scorer.name,
        user_model=users.scorer.name,
        code_version=code_version(),
    )
    run_id = _retrying(publish_task, config)(config, outputs)
    run_report = RunReport(
        run_id=str(run_id),
        dataset=parsed.dataset,
        source=downloaded.source,
        sha256=downloaded.sha256,
        encoded=encoded,
        bad_rows=parsed.bad_rows,
        split_rule=split.rule,
        test_pairs=split.test.nnz,
        models={"related artists": related.scorer.params, "user recommendations": users.scorer.params},
        metrics=metrics,
        related=recommended.related,
        artist_factors=related_factors.artist_factors,
        timings=dict(timings),
    )
    publish_artifacts(run_report)
    prune_run_dirs(config.work_dir, keep=config.storage.retention, current=folder)
    top = str(encoded.artist_names[int(np.argmax(encoded.listeners))])
    return RetrainResult(
        run_id=run_id,
        db=_safe_url(config.storage.db),
        metrics=metrics,
        timings=dict(timings),
        seconds=time.perf_counter() - started,
        example_artist=top,
        related_model=related.scorer.name,
        user_model=users.scorer.name,
    )

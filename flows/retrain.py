"""The ``retrain`` flow: one pass from listening data to a published run.

    preflight -> download -> parse -> encode -> split -> weight -> factorize -> index -> recommend -> evaluate -> publish

The preflight checks folders, source and database before anything is downloaded or fitted. Each task is one call into a stage function in tasks/ or storage/; this module adds only
orchestration: retries with back-off where the network or the database can fail for a while
(``tasks.transient`` decides what is transient), caching of the deterministic input steps across
runs, timeouts where a stage can hang, per-stage wall time, and no Prefect result persistence for
anything large (matrices and factors stay in memory or go to files under ``config.work_dir``).

The split comes before weighting so held-out pairs never enter the BM25/TF-IDF statistics (artist
lengths, user idf) of the matrix the models are fitted on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import numpy as np
import scipy.sparse as sp
from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.utilities.urls import url_for

from flows.config import RetrainConfig
from flows.report import RunReport, publish_artifacts, publish_failure_report, render_report
from flows.stages import _FAILED, _TIMINGS, IN_MEMORY, _retry_transient, _retrying, stage
from storage.config import StorageConfig, masked_url
from storage.engine import make_engine
from storage.preflight import check_database
from storage.publish import STABILITY_MODEL, RunIdentity, RunOutputs, publish, skip_if_unchanged
from storage.queries import run_details
from tasks.candidates import retrieval_factors
from tasks.contracts import Downloaded, Encoded, Factors, Metric, Parsed, Recommended, Scorer, Split
from tasks.curves import Curves, als_curves, curve_model
from tasks.data.datasets import DataConfig, check_of_cached, fingerprint, obtain, resolve
from tasks.data.download import intact
from tasks.data.encode import encode_parsed
from tasks.data.parse import cached_parse_intact, parse_to_parquet
from tasks.errors import RecsError
from tasks.evaluate import describe_fits, evaluate_models, fit_metrics
from tasks.foldin import fold_in_arrays
from tasks.index import ArtistIndex, build_index, faiss_choices
from tasks.models import roles
from tasks.models.base import fit
from tasks.models.registry import ModelConfig
from tasks.models.roles import Fitted
from tasks.models.store import save
from tasks.preflight import check_folders, check_source
from tasks.recommend import recommend, user_path
from tasks.split import evaluation_holdout, publish_refit
from tasks.weight import weight
from tasks.workspace import code_version, prune_run_dirs, run_dir

# RecsError messages name the fix as a `recs run` flag; a run from anywhere else (a deployment, a
# Python call) is told the config field the flag sets instead. `recs run` sets ORIGIN_ENV to "cli".
ORIGIN_ENV = "RECS_ORIGIN"
FLAG_FIELDS = {
    "--db / RECS_DB": "storage.db",  # before "--db": the longest match wins
    "--db": "storage.db",
    "--source": "data.source",
    "--dataset": "data.dataset",
    "--model": "related_model / user_model",
}
# A preflight rides out a blip but still fails within seconds: 1 s, then 2 s before its retries.
PREFLIGHT_BACKOFF_SECONDS = 1.0
_FLAGS = re.compile("|".join(map(re.escape, FLAG_FIELDS)))


def in_words_of_origin(message: str) -> str:
    """``message`` with each CLI flag replaced by its config field, unless the run came from the CLI."""
    if os.environ.get(ORIGIN_ENV) == "cli":
        return message
    return _FLAGS.sub(lambda m: FLAG_FIELDS[m.group()], message)


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
    """Cache key of a download: the source's fingerprint (``tasks.data.datasets.fingerprint``),
    which for a URL holds the server's current ETag / Last-Modified (or is new each run), so
    changed content always misses the cache and is fetched."""
    return "download-" + _digest(*fingerprint(resolve(unmasked(parameters["data"]))))


def parse_key(context, parameters: dict) -> str:
    """Cache key of a parse: the downloaded bytes (source + their sha256) and the dataset format."""
    got: Downloaded = parameters["downloaded"]
    return "parse-" + _digest(got.source, got.sha256, parameters["dataset"])


# -- tasks: one stage call each ----------------------------------------------------------------


@stage("preflight", retry_jitter_factor=0.5, retry_condition_fn=_retry_transient, **IN_MEMORY)
def preflight_task(config: RetrainConfig) -> None:
    """Before any download or training: the work and cache folders are writable, the source is
    there, and the database accepts a publish (reachable, writable, publish lock free)."""
    check_folders({"work_dir": config.work_dir, "data.cache_dir": config.data.cache_dir})
    check_database(database_url(config.storage))
    check_source(resolve(unmasked(config.data)))


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
def parse_task(downloaded: Downloaded, dataset: str | None, out_dir: Path, keep: int) -> Parsed:
    """The tidy frame as Parquet next to the download, the ``keep`` newest kept; cached by the
    downloaded bytes."""
    return parse_to_parquet(downloaded, dataset, out_dir, keep)


@stage("unchanged", retry_jitter_factor=0.5, retry_condition_fn=_retry_transient, **IN_MEMORY)
def unchanged_task(config: RetrainConfig, identity: RunIdentity) -> tuple[int, int] | None:
    """``(unchanged run_id, current run_id)`` when this run would repeat its dataset's current
    run (then recorded as ``unchanged``), else None."""
    engine = make_engine(database_url(config.storage))
    try:
        return skip_if_unchanged(engine, identity)
    finally:
        engine.dispose()


@stage("encode", **IN_MEMORY)
def encode_task(parsed: Parsed, data: DataConfig) -> Encoded:
    """CSR users x artists (float32 plays) and code tables."""
    return encode_parsed(parsed, data.min_listeners, data.min_artists)


@stage("split", **IN_MEMORY)
def split_task(encoded: Encoded, config: RetrainConfig) -> Split:
    """Per-user holdout of the raw plays (before any weighting), from the evaluated users only
    when they hold few enough pairs for one fit to serve metrics and publishing."""
    e = config.eval
    return evaluation_holdout(encoded.plays, e.holdout, e.min_artists, e.seed, e.max_users)


@stage("curves", **IN_MEMORY)
def curves_task(split: Split, config: RetrainConfig) -> Curves | None:
    """Training curves of the run's ALS model (the report's plot), fitted on a validation split."""
    model = curve_model(config.related_model, config.user_model)
    return None if model is None else als_curves(split, model)


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
        artist_factors,
        config.index,
        path,
        inner_product=inner_product,
        seed=config.related_model.random_state,
        n=config.n,
    )


@stage("recommend", **IN_MEMORY)
def recommend_task(
    related_model: Factors,
    user_model: Scorer,
    related_index: ArtistIndex | None,
    user_index: ArtistIndex | None,
    heard: sp.csr_matrix,
    config: RetrainConfig,
    compared: dict[str, tuple[Factors, ArtistIndex | None]] | None = None,
) -> Recommended:
    """Related artists for every artist (of the related model and of each ``compared`` one) and
    top-N new artists for every user."""
    return recommend(
        related_model,
        user_model,
        related_index,
        user_index,
        heard,
        config.n,
        config.index,
        seed=config.eval.seed,
        compared=compared,
    )


@stage("evaluate", **IN_MEMORY)
def evaluate_task(fitted: list[Fitted], split: Split, config: RetrainConfig) -> list[Metric]:
    """Holdout metrics of each fitted model beside the popularity and random baselines."""
    return evaluate_models(fitted, split, config.eval)


@stage("publish", retry_jitter_factor=0.5, retry_condition_fn=_retry_transient, timeout_seconds=3 * 3600, **IN_MEMORY)
def publish_task(config: RetrainConfig, outputs: RunOutputs) -> tuple[int, str | None, dict[str, float]]:
    """Load the run's rows and make them visible in one transaction; returns the new run_id, the
    quality gate's decision and the stability figures (metric -> overlap@10) it recorded."""
    engine = make_engine(database_url(config.storage))
    try:
        run_id = publish(
            engine,
            outputs,
            retention=config.storage.retention,
            max_regression=config.storage.max_regression,
            lock_timeout_seconds=config.storage.lock_timeout_seconds,
        )
        details = run_details(engine, run_id)
    finally:
        engine.dispose()
    stability = {metric: value for (model, metric, _), value in details.metrics.items() if model == STABILITY_MODEL}
    return run_id, details.row["message"], stability


def recorded_config(config: RetrainConfig) -> dict:
    """The config as ``runs.config`` keeps it and ``runs.config_hash`` hashes it: JSON values, the
    database password masked, and without ``storage.skip_unchanged`` and ``data.refresh``
    (instructions to this one run, not settings of what it makes: a forced or refreshed run and
    the next scheduled one compare equal)."""
    recorded = config.model_dump(mode="json", exclude={"storage": {"skip_unchanged"}, "data": {"refresh"}})
    # a password given straight as a flow parameter (e.g. in the UI) is still never stored
    recorded["storage"]["db"] = masked_url(recorded["storage"]["db"])
    if recorded["data"]["source"]:
        recorded["data"]["source"] = masked_url(recorded["data"]["source"])
    return recorded


def _flow_run() -> tuple[str | None, str | None]:
    """The running flow run's id and its page in the Prefect UI (None without a UI URL)."""
    ctx = FlowRunContext.get()
    if not ctx or not ctx.flow_run:
        return None, None
    return str(ctx.flow_run.id), url_for(ctx.flow_run)


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
    status: str = "published"  # or "unchanged": nothing retrained, run_id is that record
    message: str | None = None  # the quality gate's decision, or why the run was unchanged


@flow(name="retrain", description="Retrain related artists and per-user recommendations and publish them.")
def retrain(config: RetrainConfig = RetrainConfig()) -> RetrainResult:
    """Run every stage once and publish the run; returns its ``run_id``, metrics and timings.

    Raises the first stage's ``RecsError`` (also logged as one line, with the fix named in the
    words of where the run came from: ``in_words_of_origin``) so the run ends FAILED with that
    reason, and leaves a failure report artifact naming the stage; nothing is published then and
    readers keep the previous run.
    """
    logger = get_run_logger()
    timings: dict[str, float] = {}
    failed: list[str] = []
    tokens = _TIMINGS.set(timings), _FAILED.set(failed)
    try:
        return _retrain(config, logger, timings)
    except Exception as exc:
        reason = in_words_of_origin(str(exc)) if isinstance(exc, RecsError) else f"{type(exc).__name__}: {exc}"
        where = failed[0] if failed else "retrain"
        logger.error("retrain failed at %s: %s", where, reason)
        publish_failure_report(where, reason, dict(timings))
        if isinstance(exc, RecsError) and reason != str(exc):
            raise RecsError(reason) from exc
        raise
    finally:
        _TIMINGS.reset(tokens[0])
        _FAILED.reset(tokens[1])


def _fit_all(models: list[ModelConfig], plays: sp.csr_matrix, folder: Path) -> list[Fitted]:
    """Weight ``plays`` (CSR, users x artists, raw plays) for each model and fit it."""
    fitted = []
    for model in models:
        weighted = weight_task(plays, model)
        fitted.append(Fitted(model=model, scorer=factorize_task(weighted, model, folder), train=weighted))
    return fitted


def _run_name() -> str:
    ctx = FlowRunContext.get()
    return str(ctx.flow_run.id) if ctx and ctx.flow_run else time.strftime("%Y%m%dT%H%M%S")


def _identity(
    config: RetrainConfig,
    dataset: str,
    downloaded: Downloaded,
    started_at: datetime,
    flow_run_id: str | None,
    flow_run_url: str | None,
) -> RunIdentity:
    return RunIdentity(
        dataset=dataset,
        source=downloaded.source,
        data_sha256=downloaded.sha256,
        config=recorded_config(config),
        code_version=code_version(),
        started_at=started_at,
        flow_run_id=flow_run_id,
        flow_run_url=flow_run_url,
    )


def _unchanged(
    config: RetrainConfig, identity: RunIdentity, logger, started: float, timings: dict[str, float]
) -> RetrainResult | None:
    """The result of a run that would repeat its dataset's current run (recorded as
    ``unchanged``), or None when it must retrain."""
    skipped = _retrying(unchanged_task, config)(config, identity) if config.storage.skip_unchanged else None
    if not skipped:
        return None
    message = (
        f"run {skipped[0]} unchanged: same data, config and code as current run {skipped[1]} of {identity.dataset}"
    )
    logger.info("%s; nothing retrained (storage.skip_unchanged: false or --force retrains)", message)
    return RetrainResult(
        run_id=skipped[0],
        db=masked_url(config.storage.db),
        metrics=[],
        timings=dict(timings),
        seconds=time.perf_counter() - started,
        example_artist="",
        related_model="",
        user_model="",
        status="unchanged",
        message=message,
    )


def _on_spark(
    config: RetrainConfig,
    logger,
    downloaded: Downloaded,
    dataset: str | None,
    started: float,
    started_at: datetime,
    flow_run_id: str | None,
    flow_run_url: str | None,
    timings: dict[str, float],
) -> RetrainResult:
    """``engine: spark``: the same unchanged check, then ``flows.retrain_spark`` from the
    downloaded files to the published run."""
    from flows.retrain_spark import retrain_on_spark
    from tasks.data.parse import detect

    identity = _identity(
        config, dataset or detect(downloaded.path)[0], downloaded, started_at, flow_run_id, flow_run_url
    )
    unchanged = _unchanged(config, identity, logger, started, timings)
    if unchanged:
        return unchanged
    run = retrain_on_spark(config, downloaded, identity, database_url(config.storage), timings)
    seconds = time.perf_counter() - started
    logger.info(
        "published run %d (%s, spark) to %s in %.1f s",
        run.run_id,
        identity.dataset,
        masked_url(config.storage.db),
        seconds,
    )
    return RetrainResult(
        run_id=run.run_id,
        db=masked_url(config.storage.db),
        metrics=run.metrics,
        timings=dict(timings),
        seconds=seconds,
        example_artist=run.example_artist,
        related_model=run.model,
        user_model=run.model,
    )


def _retrain(config: RetrainConfig, logger, timings: dict[str, float]) -> RetrainResult:
    started, started_at = time.perf_counter(), datetime.now(UTC)
    _retrying(preflight_task, config, PREFLIGHT_BACKOFF_SECONDS)(config)
    flow_run_id, flow_run_url = _flow_run()
    data, parsed_dir = config.data, Path(config.data.cache_dir) / "parsed"
    download = _retrying(download_task, config)
    fetched = download(data, return_state=True)
    downloaded, dataset = fetched.result()
    if not intact(downloaded):  # a cached result whose files were deleted or edited since
        downloaded, dataset = download.with_options(refresh_cache=True)(data)
    elif fetched.name == "Cached":
        downloaded = replace(downloaded, from_cache=True, check=check_of_cached(resolve(unmasked(data))))
    logger.info("data %s: %s, sha256 %s", downloaded.source, downloaded.check, downloaded.sha256)
    if config.engine == "spark":  # every stage after the download on Spark
        return _on_spark(config, logger, downloaded, dataset, started, started_at, flow_run_id, flow_run_url, timings)
    keep = config.storage.retention
    parsed = parse_task(downloaded, dataset, parsed_dir, keep)
    if not cached_parse_intact(parsed):  # deleted, truncated or edited since it was cached
        parsed = parse_task.with_options(refresh_cache=True)(downloaded, dataset, parsed_dir, keep)
    identity = _identity(config, parsed.dataset, downloaded, started_at, flow_run_id, flow_run_url)
    unchanged = _unchanged(config, identity, logger, started, timings)
    if unchanged:
        return unchanged
    folder = run_dir(config.work_dir, _run_name())
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
    models = roles.distinct(config.related_model, config.user_model)
    # the published lists come from models that saw every pair: the evaluated fits themselves
    # when at most 1 % was held out of them, else siblings with the same config and seed
    refit = publish_refit(split, config.eval.publish_fit)
    evaluated = roles.named(_fit_all(models, split.train, folder / "holdout" if refit else folder))
    published = roles.named(_fit_all(models, encoded.plays, folder)) if refit else evaluated
    logger.info("%s", describe_fits(published, evaluated))
    related, users = roles.assign(published)
    # what the index config leaves to the data (engine, approximate_users) decided for its shape
    config = config.model_copy(update={"index": config.index.resolved(encoded.n_users, encoded.n_artists)})
    related_factors = cast(Factors, related.scorer)  # roles.assign refuses a related model without factors
    related_index = user_index = None
    if config.index.engine != "exact":
        related_index = index_task(
            related_factors.similarity_factors, config, folder / f"related.{config.index.engine}"
        )
    # every other factor model's related lists are published too, for comparison (e.g. ALS vs LSA)
    compared = {
        name: (
            model,
            None
            if config.index.engine == "exact"
            else index_task(model.similarity_factors, config, folder / f"related-{name}.{config.index.engine}"),
        )
        for name, model in roles.compared(related_factors, users.scorer).items()
    }
    retrieval = retrieval_factors(users.scorer)
    if retrieval is not None and config.index.approximate_users:
        user_index = index_task(
            retrieval.artist_factors, config, folder / f"users.{config.index.engine}", inner_product=True
        )
    # every artist a user ever heard (train and test) is excluded from the published top-N, and
    # scored as the user model was fitted and evaluated: on its own weighting of the plays (RP3beta
    # reads the weights, not only which artists were heard)
    history = users.train if refit else weight_task(encoded.plays, users.model)
    recommended = recommend_task(related_factors, users.scorer, related_index, user_index, history, config, compared)
    metrics = evaluate_task(evaluated, split, config) + recommended.recall + fit_metrics(published, evaluated)
    for m in metrics:
        logger.info("%-12s %-22s %s", m.model, m.metric if m.k is None else f"{m.metric}@{m.k}", f"{m.value:.4f}")
    outputs = RunOutputs(
        encoded=encoded,
        related=recommended.related,
        recommendations=recommended.users,
        metrics=metrics,
        config=identity.config,
        dataset=parsed.dataset,
        source=downloaded.source,
        data_sha256=downloaded.sha256,
        related_model=related.scorer.name,
        user_model=users.scorer.name,
        code_version=identity.code_version,
        other_related=recommended.other_related,
        started_at=started_at,
        flow_run_id=flow_run_id,
        flow_run_url=flow_run_url,
        timings=dict(timings),
        choices={
            "index_engine": config.index.engine,
            "approximate_users": user_index is not None,
            "two_stage": config.index.two_stage,
            "user_top_n": user_path(users.scorer, user_index is not None, config.index),
            "eval_max_users": config.eval.max_users,
            **faiss_choices(
                {"related": related_index, "users": user_index}
                | {f"related-{name}": index for name, (_, index) in compared.items()}
            ),
            "published_fit": "refit on all pairs" if refit else "the evaluated fit",
        },
        because=recommended.because,
        fold_in=fold_in_arrays(users.model, users.scorer, encoded.artist_plays),
    )
    run_id, gate, stability = _retrying(publish_task, config)(config, outputs)
    if gate:
        logger.info("run %d: %s", run_id, gate)
    for metric, value in stability.items():
        logger.info("run %d: stability %s@10 against the previous current run: %.4f", run_id, metric, value)
    curves = curves_task(split, config)  # after the publish: readers never wait for the report
    run_report = RunReport(
        run_id=str(run_id),
        dataset=parsed.dataset,
        source=downloaded.source,
        sha256=downloaded.sha256,
        data_check=downloaded.check,
        encoded=encoded,
        bad_rows=parsed.bad_rows,
        split_rule=split.rule,
        test_pairs=split.test.nnz,
        models={"related artists": related.scorer.params, "user recommendations": users.scorer.params},
        metrics=metrics,
        related=recommended.related,
        artist_factors=related_factors.artist_factors,
        timings=dict(timings),
        gate=gate,
        stability=stability,
        database=masked_url(config.storage.db),
        curves=curves,
        related_by_model={related.scorer.name: recommended.related, **recommended.other_related},
        choices=outputs.choices,
    )
    publish_artifacts(run_report.run_id, run_report.metrics, render_report(run_report))
    prune_run_dirs(config.work_dir, keep=config.storage.retention, current=folder)
    top = str(encoded.artist_names[int(np.argmax(encoded.listeners))])
    seconds = time.perf_counter() - started
    logger.info("published run %d (%s) to %s in %.1f s", run_id, parsed.dataset, masked_url(config.storage.db), seconds)
    return RetrainResult(
        run_id=run_id,
        db=masked_url(config.storage.db),
        metrics=metrics,
        timings=dict(timings),
        seconds=seconds,
        example_artist=top,
        related_model=related.scorer.name,
        user_model=users.scorer.name,
        message=gate,
    )

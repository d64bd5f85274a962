"""The retrain's heavy stages on Spark (``engine: spark``): the branch ``flows.retrain`` takes
after the download, in the same flow run, with the same config, stage timings, artifacts and
published tables.

    spark-parse -> spark-encode -> spark-split -> spark-weight -> spark-factorize
        -> spark-related -> spark-recommend -> spark-evaluate -> spark-publish

Every stage runs in the Spark session ``config.spark`` describes (``local[*]`` by default, or a
cluster); only small values come back to the driver (counts, metrics, a sample for the related
artists' recall). One ALS model (``config.spark.model``) feeds both related artists and user
top-N; it is evaluated on the holdout's train part and, unless at most 1 % of the pairs were held
out (``SparkSplit.shares_fit``), fitted again on every pair for publishing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import get_run_logger

from flows.config import RetrainConfig
from flows.report import ReportSummary, publish_artifacts, render_spark_report
from flows.stages import IN_MEMORY, _retry_transient, _retrying, stage
from storage.config import masked_url
from storage.engine import make_engine
from storage.publish import RunIdentity
from storage.queries import run_details
from storage.spark_publish import SparkRunOutputs, publish_spark
from tasks.contracts import Downloaded, Metric
from tasks.models.spark_als import SparkALSConfig
from tasks.spark import evaluate as spark_evaluate
from tasks.spark import topn
from tasks.spark.als import fit_frame
from tasks.spark.encode import SparkEncoded, encode
from tasks.spark.parse import SparkParsed, parse
from tasks.spark.related import recall_on_sample, related_artists
from tasks.spark.session import first, spark_session
from tasks.spark.split import SparkSplit, per_user_holdout
from tasks.spark.weight import weight

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

RECALL_SAMPLE = 200  # artists whose related lists are checked against exact search


@dataclass(frozen=True)
class SparkRun:
    """What a Spark retrain published: its run_id, metrics, the model behind both lists and the
    most listened artist (for an example query)."""

    run_id: int
    metrics: list[Metric]
    model: str
    example_artist: str


@dataclass(frozen=True)
class SparkFit:
    """A fitted Spark ALS model (``pyspark.ml.recommendation.ALSModel``) and its fit seconds."""

    model: object
    seconds: float


@stage("spark-parse", **IN_MEMORY)
def parse_task(spark, path: Path, dataset: str | None) -> SparkParsed:
    return parse(spark, path, dataset)


@stage("spark-encode", **IN_MEMORY)
def encode_task(parsed: SparkParsed, config: RetrainConfig) -> SparkEncoded:
    return encode(parsed.frame, config.data.min_listeners, config.data.min_artists)


@stage("spark-split", **IN_MEMORY)
def split_task(encoded: SparkEncoded, config: RetrainConfig) -> SparkSplit:
    e = config.eval
    return per_user_holdout(encoded.plays, e.holdout, e.min_artists, e.seed, e.max_users)


@stage("spark-factorize", task_run_name="spark-factorize-{label}", **IN_MEMORY)
def factorize_task(plays, n_artists: int, model: SparkALSConfig, label: str) -> SparkFit:
    """Weight ``plays`` (``user, artist, plays``) and fit ALS on the confidences."""
    fitted, seconds = fit_frame(weight(plays, n_artists, model.weight), model)
    return SparkFit(fitted, seconds)


@stage("spark-related", **IN_MEMORY)
def related_task(fit: SparkFit, encoded: SparkEncoded, config: RetrainConfig):
    """Related artists (blocked exact cosine), cached and counted, and their sampled recall."""
    factors = fit.model.itemFactors  # type: ignore[attr-defined]
    related = related_artists(factors, encoded.n_artists, config.n, config.spark.block_artists).cache()
    count = related.count()
    recall = recall_on_sample(factors, related, config.n, RECALL_SAMPLE, config.eval.seed)
    return related, count, Metric("blocked_cosine", "related_recall", config.n, recall)


@stage("spark-recommend", **IN_MEMORY)
def recommend_task(fit: SparkFit, encoded: SparkEncoded, config: RetrainConfig):
    """Every user's top N, every artist they heard (train and test) excluded; cached, counted."""
    top = topn.model_top_n(fit.model, encoded.plays, config.n).cache()  # type: ignore[arg-type]
    return top, top.count()


@stage("spark-evaluate", **IN_MEMORY)
def evaluate_task(fit: SparkFit, split: SparkSplit, config: RetrainConfig, name: str) -> list[Metric]:
    """precision/ndcg/map@K of the model fitted on train, beside popularity, on the test users."""
    users = spark_evaluate.ranked_users(split.test, config.eval.max_users, config.eval.seed)
    k = max(config.eval.k)
    model_top = topn.model_top_n(fit.model, split.train, k, users)  # type: ignore[arg-type]
    popular_top = topn.popularity_top_n(split.train, users, k)
    metrics = spark_evaluate.ranking_metrics(name, model_top, split.test, users, config.eval.k)
    return metrics + spark_evaluate.ranking_metrics("popularity", popular_top, split.test, users, config.eval.k)


@stage("spark-publish", retry_jitter_factor=0.5, retry_condition_fn=_retry_transient, **IN_MEMORY)
def publish_task(config: RetrainConfig, outputs: SparkRunOutputs, db_url: str) -> int:
    """The run's rows in parallel from the Spark tasks, then the one-transaction switch."""
    engine = make_engine(db_url)
    try:
        return publish_spark(
            engine,
            outputs,
            retention=config.storage.retention,
            max_regression=config.storage.max_regression,
            partitions=config.spark.publish_partitions,
            lock_timeout_seconds=config.storage.lock_timeout_seconds,
        )
    finally:
        engine.dispose()


def retrain_on_spark(
    config: RetrainConfig, downloaded: Downloaded, identity: RunIdentity, db_url: str, timings: dict[str, float]
) -> SparkRun:
    """The stages after the download on Spark, then the publish into ``db_url`` and the run's
    report; ``flows.retrain`` calls this inside its flow run when ``config.engine == "spark"``.
    ``downloaded``: the downloaded file or folder; ``identity``: the run's data, config and code (as
    recorded); ``timings``: the flow run's seconds per stage, which the stages add to."""
    from pyspark.sql import functions as F

    logger = get_run_logger()
    spark = spark_session(config.spark)
    logger.info("spark %s (%s)", spark.version, config.spark.connect or config.spark.master)
    parsed = parse_task(spark, downloaded.path, identity.dataset)
    encoded = encode_task(parsed, config)
    logger.info(
        "%s on spark: %d users x %d artists, %d pairs; %d bad rows",
        parsed.dataset,
        encoded.n_users,
        encoded.n_artists,
        encoded.n_pairs,
        parsed.bad_rows.total,
    )
    split = split_task(encoded, config)
    model = config.spark.model
    evaluated = factorize_task(split.train, encoded.n_artists, model, "holdout")
    published = evaluated if split.shares_fit else factorize_task(encoded.plays, encoded.n_artists, model, "all")
    related, n_related, recall = related_task(published, encoded, config)
    recommendations, n_recommendations = recommend_task(published, encoded, config)
    metrics = evaluate_task(evaluated, split, config, model.name) + [recall]
    metrics += [
        Metric(model.name, "fit_seconds", None, published.seconds),
        Metric(model.name, "fit_pairs", None, float(split.pairs if published is not evaluated else split.train_pairs)),
        Metric(model.name, "evaluated_fit_pairs", None, float(split.train_pairs)),
    ]
    for m in metrics:
        logger.info("%-14s %-16s %.4f", m.model, m.metric if m.k is None else f"{m.metric}@{m.k}", m.value)
    outputs = spark_outputs(
        config, identity, encoded, split, (related, n_related), (recommendations, n_recommendations), metrics
    )
    run_id = _retrying(publish_task, config)(config, outputs, db_url)
    summary = ReportSummary(
        run_id=str(run_id),
        dataset=identity.dataset,
        source=identity.source,
        sha256=identity.data_sha256,
        shape=(encoded.n_users, encoded.n_artists, encoded.n_pairs, float(first(encoded.plays.agg(F.sum("plays")))[0])),
        bad_rows=parsed.bad_rows,
        split_rule=split.rule,
        test_pairs=split.test_pairs,
        models={"related artists and user recommendations": model.model_dump(mode="json")},
        metrics=metrics,
        timings=dict(timings),
        gate=_run_message(db_url, run_id),
        stability=None,
        data_check=downloaded.check,
        database=masked_url(db_url),
        choices=outputs.choices,
    )
    publish_artifacts(summary.run_id, metrics, render_spark_report(summary))
    top = first(encoded.artists.orderBy(F.desc("listeners"), "artist").limit(1))
    return SparkRun(run_id=run_id, metrics=metrics, model=model.name, example_artist=str(top["name"]))


def _run_message(db_url: str, run_id: int) -> str | None:
    """``runs.message`` of the published run: the quality gate's decision and both figures."""
    engine = make_engine(db_url)
    try:
        return run_details(engine, run_id).row["message"]
    finally:
        engine.dispose()


def spark_outputs(
    config: RetrainConfig,
    identity: RunIdentity,
    encoded: SparkEncoded,
    split: SparkSplit,
    related: tuple[DataFrame, int],
    recommendations: tuple[DataFrame, int],
    metrics: list[Metric],
) -> SparkRunOutputs:
    """What ``publish_spark`` loads for one run: the encoded artists and users, the related
    artists (``related_task``'s frame and count, labelled with the model) and the user top-N
    (``recommend_task``'s), with the run's identity and automatic choices. The flow and
    ``benchmarks.spark`` both build it here, so the benchmark publishes what the flow does."""
    from pyspark.sql import functions as F

    model = config.spark.model
    return SparkRunOutputs(
        artists=encoded.artists.select(
            F.col("artist").alias("artist_id"), "artist_key", "name", "listeners", "plays", "search_key"
        ),
        users=encoded.users.select(F.col("user").alias("user_id"), "user_key"),
        related=related[0].withColumn("model", F.lit(model.name)),
        recommendations=recommendations[0],
        n_artists=encoded.n_artists,
        n_users=encoded.n_users,
        n_related=related[1],
        n_recommendations=recommendations[1],
        metrics=metrics,
        config=identity.config,
        dataset=identity.dataset,
        source=identity.source,
        data_sha256=identity.data_sha256,
        related_model=model.name,
        user_model=model.name,
        code_version=identity.code_version,
        started_at=identity.started_at,
        flow_run_id=identity.flow_run_id,
        flow_run_url=identity.flow_run_url,
        choices={
            "engine": "spark",
            "spark_master": config.spark.connect or config.spark.master,
            "published_fit": "the evaluated fit" if split.shares_fit else "refit on all pairs",
            "split": split.rule,
        },
    )

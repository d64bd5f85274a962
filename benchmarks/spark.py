"""The Spark retrain (``engine: spark``) beside the single-machine pipeline, and its scaling curve.

    python -m benchmarks.spark --quick                       # small, < 3 minutes (what CI runs)
    python -m benchmarks.spark --fractions 0.125,0.25        # points of the 360K-shape curve
    python -m benchmarks.spark --fractions 0.125,0.25,0.5,1 --postgres postgresql+psycopg://postgres@127.0.0.1:5432/test

For each size (``--quick``: 3,000 users x 4,000 artists x 120 K rows; else each fraction of the
Last.fm 360K shape, 360 K users x 300 K artists x 17.5 M rows) one file in the real 360K format is
generated (``tasks.data.synthetic``), then, each in a fresh spawned process so its memory is its
own:

- ``spark``: the stage functions ``flows.retrain_spark`` calls, in its order, in a
  ``local[2]`` session (``--master``): parse, encode, split, factorize (weight + ALS fit on the
  train part, and again on all pairs when the split holds out more than 1 %), related (blocked
  cross join), recommend, evaluate (model and popularity), publish (into PostgreSQL with
  ``--postgres``, else SQLite). Per stage: wall seconds, the driver's peak RSS and the JVM's
  peak RSS (``VmHWM`` of the Spark JVM, reset before each stage; in local mode the JVM holds
  the executors too);
- ``single`` (``--single``, on by default for ``--quick``): ``benchmarks.pipeline.run_plain``,
  the single-machine stages on the same file, for the side-by-side.

Prints one JSON object: per size and engine the stages, and ``growth``: each Spark stage's seconds
divided by the previous size's, beside the data's growth (pairs, users x artists, artists^2), so a
stage reads as linear when its ratio follows the measure it scales with.
Timings on a shared machine are noisy; the JSON records the load average at the start.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from benchmarks.measure import Stages
from benchmarks.pipeline import FULL, QUICK, _config, fresh_schema, run_plain
from flows.config import RetrainConfig

SPARK_STAGES = ("parse", "encode", "split", "factorize", "related", "recommend", "evaluate", "publish")


class SparkStages(Stages):
    """``Stages`` plus the Spark JVM's own peak RSS per stage (``jvm_peak_rss_mb``)."""

    def __init__(self, jvm_pid: int) -> None:
        super().__init__()
        self.jvm = Path(f"/proc/{jvm_pid}")

    @contextmanager
    def __call__(self, stage: str):
        try:
            (self.jvm / "clear_refs").write_text("5")
        except OSError:
            self.rss_per_stage = False
        with super().__call__(stage):
            yield
        status = (self.jvm / "status").read_text()
        peak = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
        self.figures[stage]["jvm_peak_rss_mb"] = round(int(peak.split()[1]) / 1024, 1)
        print(f"  {stage} JVM peak: {self.figures[stage]['jvm_peak_rss_mb']} MB", file=sys.stderr, flush=True)


def run_spark(tsv: str, db: str, master: str, seed: int) -> dict:
    """The Spark path's stages on ``tsv``, published into ``db``; per-stage figures."""
    from flows.retrain_spark import spark_outputs
    from storage.engine import make_engine
    from storage.publish import RunIdentity
    from storage.spark_publish import publish_spark
    from tasks.spark import topn
    from tasks.spark.als import fit_frame
    from tasks.spark.config import SparkConfig
    from tasks.spark.encode import encode
    from tasks.spark.evaluate import ranked_users, ranking_metrics
    from tasks.spark.parse import parse
    from tasks.spark.related import recall_on_sample, related_artists
    from tasks.spark.session import spark_session
    from tasks.spark.split import per_user_holdout
    from tasks.spark.weight import weight

    config = RetrainConfig(spark=SparkConfig(master=master, shuffle_partitions=8, driver_memory="6g"))
    model, n, e = config.spark.model, config.n, config.eval
    spark = spark_session(config.spark)
    stages = SparkStages(spark.sparkContext._gateway.proc.pid)  # type: ignore[union-attr]
    with stages("parse"):
        parsed = parse(spark, Path(tsv), "synthetic")
    with stages("encode"):
        encoded = encode(parsed.frame)
    with stages("split"):
        split = per_user_holdout(encoded.plays, e.holdout, e.min_artists, seed, e.max_users)
    with stages("factorize"):
        evaluated, _ = fit_frame(weight(split.train, encoded.n_artists, model.weight), model)
        published = evaluated
        if not split.shares_fit:
            published, _ = fit_frame(weight(encoded.plays, encoded.n_artists, model.weight), model)
    with stages("related"):
        related = related_artists(published.itemFactors, encoded.n_artists, n, config.spark.block_artists).cache()
        n_related = related.count()
        recall = recall_on_sample(published.itemFactors, related, n, 200, seed)
    with stages("recommend"):
        recommendations = topn.model_top_n(published, encoded.plays, n).cache()
        n_recommendations = recommendations.count()
    with stages("evaluate"):
        users = ranked_users(split.test, e.max_users, seed)
        metrics = ranking_metrics(
            model.name, topn.model_top_n(evaluated, split.train, 10, users), split.test, users, [10]
        )
        metrics += ranking_metrics("popularity", topn.popularity_top_n(split.train, users, 10), split.test, users, [10])
    identity = RunIdentity(
        dataset="synthetic",
        source=tsv,
        data_sha256="0" * 64,
        config=config.model_dump(mode="json"),
        code_version="benchmark",
    )
    outputs = spark_outputs(
        config, identity, encoded, split, (related, n_related), (recommendations, n_recommendations), metrics
    )
    engine = make_engine(db)
    try:
        with stages("publish"):
            publish_spark(engine, outputs, partitions=config.spark.publish_partitions)
    finally:
        engine.dispose()
    rows = n_related + n_recommendations + encoded.n_artists + encoded.n_users
    spark.stop()
    return {
        "shape": {"users": encoded.n_users, "artists": encoded.n_artists, "pairs": encoded.n_pairs},
        "bad_rows": parsed.bad_rows.total,
        "stages": stages.figures,
        "total": stages.total(),
        "related_recall": round(recall, 4),
        "published_rows": rows,
        "publish_rows_per_second": round(rows / max(stages.figures["publish"]["seconds"], 1e-9)),
        "precision_at_10": {m.model: round(m.value, 4) for m in metrics if m.metric == "precision"},
    }


def run_single(tsv: str, work: str, postgres: str | None, seed: int) -> dict:
    stages = Stages()
    config = _config(RetrainConfig(), Path(tsv), Path(work), f"sqlite:///{Path(work) / 'single.db'}", seed)
    with fresh_schema(postgres) as schema:
        run_plain(config, stages, schema)
    return {"stages": stages.figures, "total": stages.total()}


def _in_fresh_process(fn, *args):
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def _growth(points: dict[str, dict]) -> dict:
    """Per Spark stage: seconds at each size / seconds at the previous size, beside the growth of
    the pairs (what parse, split, factorize and publish scale with) and of users x artists (what
    exact user top-N and, as artists^2, related artists scale with)."""
    names = list(points)
    out = {}
    for before, after in zip(names, names[1:], strict=False):
        a, b = points[before]["spark"], points[after]["spark"]
        out[f"{before}->{after}"] = {
            "pairs": round(b["shape"]["pairs"] / a["shape"]["pairs"], 2),
            "users_x_artists": round(
                b["shape"]["users"] * b["shape"]["artists"] / (a["shape"]["users"] * a["shape"]["artists"]), 2
            ),
            "artists_squared": round((b["shape"]["artists"] / a["shape"]["artists"]) ** 2, 2),
            **{s: round(b["stages"][s]["seconds"] / max(a["stages"][s]["seconds"], 1e-9), 2) for s in SPARK_STAGES},
            "total": round(b["total"]["seconds"] / max(a["total"]["seconds"], 1e-9), 2),
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.spark", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"one small size for CI: {QUICK}")
    parser.add_argument("--fractions", default="0.125,0.25,0.5,1", help="fractions of the 360K shape, in order")
    parser.add_argument("--single", action="store_true", help="also run the single-machine pipeline at each size")
    parser.add_argument("--master", default="local[2]", help="spark.master for the Spark runs")
    parser.add_argument("--postgres", metavar="URL", help="publish into a scratch schema of this database")
    parser.add_argument("--genres", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    sizes = (
        {"quick": QUICK}
        if args.quick
        else {f: {k: int(v * float(f)) for k, v in FULL.items()} for f in args.fractions.split(",")}
    )
    from tasks.data.synthetic import generate

    load = os.getloadavg()
    points: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="recs-spark-bench-") as tmp:
        for label, size in sizes.items():
            work = Path(tmp) / label
            work.mkdir()
            started = time.perf_counter()
            tsv = generate(work / "plays.tsv", size["users"], size["artists"], size["rows"], args.genres, args.seed)
            point: dict = {"size": size, "generate_seconds": round(time.perf_counter() - started, 2)}
            with fresh_schema(args.postgres) as schema:
                db = schema or f"sqlite:///{work / 'spark.db'}"
                point["spark"] = _in_fresh_process(run_spark, str(tsv), db, args.master, args.seed)
            if args.quick or args.single:
                point["single"] = _in_fresh_process(run_single, str(tsv), str(work), args.postgres, args.seed)
            print(f"{label}: {json.dumps(point)}", file=sys.stderr, flush=True)
            points[label] = point
    result = {
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": [round(x, 2) for x in load]},
        "master": args.master,
        "database": "postgresql" if args.postgres else "sqlite",
        "points": points,
        "growth": _growth(points),
    }
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return result


if __name__ == "__main__":
    main()

"""The whole retrain at Last.fm 360K size, measured against the raw libraries in the same run.

    python -m benchmarks.pipeline                      # 360K users, 300K artists, 17.5 M rows
    python -m benchmarks.pipeline --quick              # small, < 2 minutes (what CI runs)
    python -m benchmarks.pipeline --postgres postgresql+psycopg://postgres@127.0.0.1:5432/test

On one generated dataset (``tasks.data.synthetic``, the real 360K file format), with the
``deployments/lastfm-360k.yaml`` profile, it runs, in order:

1. ``plain``: the stage functions the flow's tasks call, called directly in the flow's order,
   each timed with its own peak RSS (``benchmarks.measure``; the recommend stage's parts by its
   own ``Recommended.seconds``), published into SQLite (and PostgreSQL when given);
2. ``raw``: the libraries alone on the same matrices and factors (``benchmarks.raw``): implicit's
   ALS fit, implicit's exact ``similar_items`` and batch ``recommend`` on a sample (extrapolated),
   a bare sqlite3 ``executemany`` / psycopg ``COPY`` of as many rows as were published;
3. ``flow``: the ``retrain`` Prefect flow on the same file, into a fresh SQLite database (without
   ``PREFECT_API_URL`` Prefect starts a temporary API server for it; the flow run's own time is
   reported apart from that).

and prints one JSON object: per-stage seconds and peak RSS, the ratios against the raw libraries,
the recall@N of every approximate step against exact search on a sample, and each target beside
its measured value. Timings on a shared machine are noisy; the JSON records the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from benchmarks import raw
from benchmarks.measure import Stages, peak_rss_mb
from flows.config import RetrainConfig
from storage.config import StorageConfig
from tasks.data.datasets import DataConfig

FULL = {"users": 360_000, "artists": 300_000, "rows": 17_500_000}
QUICK = {"users": 3_000, "artists": 4_000, "rows": 120_000}
# Rows checked against exact search: the exact yardsticks are extrapolated from these too.
SAMPLE = {"full": 10_000, "quick": 1_000}
TARGETS = {
    "pipeline_seconds": ("<=", 360.0),
    "pipeline_peak_rss_mb": ("<=", 8 * 1024.0),
    "fit_ratio": ("<=", 1.05),
    "related_speedup": (">=", 15.0),
    "related_recall": (">=", 0.95),
    "user_speedup": (">=", 3.0),
    "user_recall": (">=", 0.95),
    "flow_overhead": ("<=", 0.10),
}


# The profile the targets are for: one ALS model (64 factors x 15 iterations on BM25 weights) in
# both roles, faiss for related artists and user top-N. The shipped defaults are the HetRec 2K
# choices (an ALS + item-kNN + RP3beta blend for users, Annoy), which do not carry over to this size.
PROFILE = Path(__file__).resolve().parents[1] / "deployments" / "lastfm-360k.yaml"


def _config(tsv: Path, work: Path, db: str, seed: int) -> RetrainConfig:
    """``PROFILE`` pointed at the generated file, the benchmark's database and folders."""
    profile = RetrainConfig.from_file(PROFILE)
    return profile.model_copy(
        update={
            "data": DataConfig(dataset="synthetic", source=str(tsv), cache_dir=work / "cache"),
            "storage": StorageConfig(db=db),
            "eval": profile.eval.model_copy(update={"seed": seed}),
            "work_dir": work / "runs",
        }
    )


def _sample(count: int, size: int, seed: int, among: np.ndarray | None = None) -> np.ndarray:
    pool = np.arange(count) if among is None else np.flatnonzero(among)
    return np.sort(np.random.default_rng(seed).choice(pool, size=min(size, len(pool)), replace=False))


@contextmanager
def fresh_schema(url: str | None) -> Iterator[str | None]:
    """``url`` pointed at a new, empty PostgreSQL schema (dropped afterwards), so the benchmark
    measures a first publish and never touches what the database already holds."""
    if not url:
        yield None
        return
    from storage.engine import scratch_schema

    with scratch_schema(url, "recs_bench") as scratch:
        yield scratch


def run_plain(config: RetrainConfig, stages: Stages, postgres: str | None) -> dict:
    """The flow's stages as plain calls of the stage functions its tasks call, in the flow's
    order, each timed with its peak RSS; only Prefect is left out. The profile fits one model
    for both roles, so weight and factorize run once, as in the flow."""
    from storage.engine import make_engine
    from storage.publish import RunOutputs, publish
    from tasks.data.datasets import obtain, resolve
    from tasks.data.encode import encode_parsed
    from tasks.data.parse import parse_to_parquet
    from tasks.evaluate import evaluate_models, fit_metrics
    from tasks.index import build_index
    from tasks.models.base import fit
    from tasks.models.roles import Fitted
    from tasks.models.store import save
    from tasks.recommend import recommend
    from tasks.split import evaluation_holdout, publish_refit
    from tasks.weight import weight
    from tasks.workspace import code_version

    data, model, n, cfg = config.data, config.related_model, config.n, config.index
    run_dir = Path(config.work_dir) / "plain"
    with stages("download"):
        plan = resolve(data)
        downloaded = obtain(plan, attempts=1)
    with stages("parse"):
        parsed = parse_to_parquet(downloaded, plan.dataset, Path(data.cache_dir) / "parsed")
    with stages("encode"):
        encoded = encode_parsed(parsed, data.min_listeners, data.min_artists)
    e = config.eval
    with stages("split"):
        split = evaluation_holdout(encoded.plays, e.holdout, e.min_artists, e.seed, e.max_users)
    with stages("weight"):
        weighted = weight(split.train, model.weight)
    with stages("factorize"):
        evaluated = fit(weighted, model)
        save(evaluated, run_dir / model.name)
    factors, published_train = evaluated, weighted
    if publish_refit(split, e.publish_fit):  # small data: the published model sees every pair
        with stages("refit"):
            published_train = weight(encoded.plays, model.weight)
            factors = fit(published_train, model)
            save(factors, run_dir / "published" / model.name)
    # the flow recommends to users from everything they heard, train and test
    heard = encoded.plays
    with stages("index_related"):
        related_index = build_index(
            factors.artist_factors, cfg, run_dir / f"related.{cfg.engine}", seed=model.random_state
        )
    with stages("index_users"):
        user_index = build_index(
            factors.artist_factors, cfg, run_dir / f"users.{cfg.engine}", inner_product=True, seed=model.random_state
        )
    with stages("recommend"):
        recommended = recommend(factors, factors, related_index, user_index, heard, n, cfg, seed=config.eval.seed)
    with stages("evaluate"):
        metrics = evaluate_models([Fitted(model=model, scorer=evaluated, train=weighted)], split, config.eval)
        metrics += recommended.recall + fit_metrics(
            [Fitted(model=model, scorer=factors, train=published_train)],
            [Fitted(model=model, scorer=evaluated, train=weighted)],
        )
    outputs = RunOutputs(
        encoded=encoded,
        related=recommended.related,
        recommendations=recommended.users,
        metrics=metrics,
        config=config.model_dump(mode="json"),
        dataset=parsed.dataset,
        source=downloaded.source,
        data_sha256=downloaded.sha256,
        related_model=factors.name,
        user_model=factors.name,
        code_version=code_version(),
    )
    for name, url in [("sqlite", config.storage.db)] + ([("postgres", postgres)] if postgres else []):
        engine = make_engine(url)
        try:
            with stages(f"publish_{name}"):
                publish(engine, outputs, retention=config.storage.retention)
        finally:
            engine.dispose()
    related, users = recommended.related, recommended.users
    return {
        "weighted": weighted,
        "heard": heard,
        "factors": factors,
        "related": related,
        "users": users,
        "recommend_seconds": {k: round(v, 3) for k, v in recommended.seconds.items()},
        # what publish writes in bulk: both top-N tables plus one row per artist and per user
        "published_rows": int((related.ids >= 0).sum() + (users.ids >= 0).sum()) + sum(heard.shape),
    }


def run_raw(plain: dict, config: RetrainConfig, sample_size: int, postgres: str | None) -> dict:
    """The libraries alone on the plain run's matrices and factors; recall of its approximate lists."""
    from tasks.recommend import recall_at_n

    weighted, heard, factors, n = plain["weighted"], plain["heard"], plain["factors"], config.n
    fit = raw.implicit_fit(weighted, config.related_model)
    # artists with no train listener have zero factors and no meaningful neighbours
    artists = _sample(weighted.shape[1], sample_size, 1, among=np.diff(weighted.tocsc().indptr) > 0)
    users = _sample(heard.shape[0], sample_size, 2, among=np.diff(weighted.indptr) > 0)
    similar = raw.exact_similar(factors, artists, n)
    recommend = raw.batch_recommend(factors, heard, users, n)
    rows = plain["published_rows"]
    out = {
        "implicit_fit_seconds": round(fit.seconds, 3),
        "exact_similar_all_seconds": round(similar.seconds, 3),
        "exact_similar_sample": similar.sample,
        "batch_recommend_all_seconds": round(recommend.seconds, 3),
        "batch_recommend_sample": recommend.sample,
        "sqlite_executemany_seconds": round(raw.sqlite_executemany(rows).seconds, 3),
        "related_recall": round(recall_at_n(plain["related"], similar.exact, artists), 4),
        "user_recall": round(recall_at_n(plain["users"], recommend.exact, users), 4),
    }
    if postgres:
        out["postgres_copy_seconds"] = round(raw.postgres_copy(postgres, rows).seconds, 3)
    return out


def run_flow(config: RetrainConfig) -> dict:
    """The ``retrain`` flow (Prefect's API as configured, else a temporary one), timed whole
    (``seconds``: the call, including starting and stopping a temporary API server) and from the
    inside (``run_seconds``: the flow run itself, what every run of a deployment pays)."""
    from flows.retrain import retrain

    Path("/proc/self/clear_refs").write_text("5")
    started = time.perf_counter()
    result = retrain(config)
    return {
        "seconds": round(time.perf_counter() - started, 3),
        "run_seconds": round(result.seconds, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "stages": {k: round(v, 3) for k, v in result.timings.items()},
        "run_id": result.run_id,
    }


def _ratios(plain: Stages, recommend_seconds: dict, raw_figures: dict, flow: dict | None) -> dict:
    s = {k: v["seconds"] for k, v in plain.figures.items()}
    related = s["index_related"] + recommend_seconds["related"]
    users = s["index_users"] + recommend_seconds["users"]
    ratios = {
        "fit_ratio": s["factorize"] / raw_figures["implicit_fit_seconds"],
        "related_speedup": raw_figures["exact_similar_all_seconds"] / related,
        "user_speedup": raw_figures["batch_recommend_all_seconds"] / users,
        "publish_sqlite_vs_executemany": s["publish_sqlite"] / raw_figures["sqlite_executemany_seconds"],
    }
    if flow:
        # the flow publishes into SQLite only; compare it with the plain stages that match.
        # flow_overhead: the flow run (a deployment's server is already up); flow_call_overhead:
        # the whole call, including the temporary API server a bare `retrain()` starts and stops
        plain_seconds = plain.total()["seconds"] - s.get("publish_postgres", 0.0)
        ratios["flow_overhead"] = flow["run_seconds"] / plain_seconds - 1
        ratios["flow_call_overhead"] = flow["seconds"] / plain_seconds - 1
    if "postgres_copy_seconds" in raw_figures:
        ratios["publish_postgres_vs_copy"] = s["publish_postgres"] / raw_figures["postgres_copy_seconds"]
    return {k: round(v, 3) for k, v in ratios.items()}


def _targets(measured: dict) -> dict:
    out = {}
    for name, (op, bound) in TARGETS.items():
        value = measured.get(name)
        if value is None:
            out[name] = {"value": None, "target": f"{op} {bound:g}", "met": None}
            continue
        out[name] = {
            "value": value,
            "target": f"{op} {bound:g}",
            "met": value <= bound if op == "<=" else value >= bound,
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pipeline", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"small size for CI: {QUICK}")
    parser.add_argument("--users", type=int)
    parser.add_argument("--artists", type=int)
    parser.add_argument("--rows", type=int)
    parser.add_argument("--genres", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--postgres", metavar="URL", help="also publish into this PostgreSQL database")
    parser.add_argument("--work-dir", type=Path, help="keep data and databases here (default: a temp dir)")
    parser.add_argument(
        "--no-flow", action="store_true", help="skip the Prefect flow run (and so the orchestration-overhead figure)"
    )
    args = parser.parse_args(argv)
    # the flow's download/parse are cached by source across runs; a benchmark must pay for them
    os.environ["PREFECT_TASKS_REFRESH_CACHE"] = "true"
    # without PREFECT_API_URL the flow starts a temporary API server, slow on a loaded machine
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    size = dict(QUICK if args.quick else FULL)
    size.update({k: getattr(args, k) for k in size if getattr(args, k) is not None})
    sample = SAMPLE["quick" if args.quick else "full"]

    from tasks.data.synthetic import generate

    with tempfile.TemporaryDirectory(prefix="recs-bench-") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        tsv = generate(work / "plays.tsv", size["users"], size["artists"], size["rows"], args.genres, args.seed)
        generate_seconds = time.perf_counter() - started
        load = os.getloadavg()

        stages = Stages()
        with fresh_schema(args.postgres) as postgres:
            plain = run_plain(_config(tsv, work, f"sqlite:///{work / 'plain.db'}", args.seed), stages, postgres)
        raw_figures = run_raw(plain, _config(tsv, work, "", args.seed), sample, args.postgres)
        recommend_seconds = plain["recommend_seconds"]
        del plain
        flow = None if args.no_flow else run_flow(_config(tsv, work, f"sqlite:///{work / 'flow.db'}", args.seed))

    total = stages.total()
    ratios = _ratios(stages, recommend_seconds, raw_figures, flow)
    measured = ratios | {
        "pipeline_seconds": total["seconds"],
        "pipeline_peak_rss_mb": total["peak_rss_mb"],
        "related_recall": raw_figures["related_recall"],
        "user_recall": raw_figures["user_recall"],
    }
    result = {
        "size": size | {"genres": args.genres, "seed": args.seed},
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in load],
            "rss_per_stage": stages.rss_per_stage,
        },
        "generate_seconds": round(generate_seconds, 3),
        "plain": {"stages": stages.figures, "recommend_parts": recommend_seconds, "total": total},
        "raw": raw_figures,
        "flow": flow,
        "ratios": ratios,
        "targets": _targets(measured),
    }
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return result


if __name__ == "__main__":
    main()

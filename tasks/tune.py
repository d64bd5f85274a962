"""Hyper-parameter search on a validation split: model, weighting and their parameters.

The data is split as the retrain flow splits it (per-user holdout, ``EvalConfig``); the search
then holds out a second per-user fraction of that *train* part (``tasks.split.validation_split``)
and scores every candidate there, so the test pairs never influence the choice. Each trial
weights the validation train matrix with its own scheme, fits (``tasks.models.registry.fit``) and is
evaluated (``tasks.evaluate.evaluate``) with the train artists excluded.

Candidates are a seeded random sample of ``SPACE`` plus fixed anchors (implicit's ALS defaults on
log1p weights, and the shipped default), run in parallel worker processes, one thread each.
Every trial is recorded (``write_trials``: JSON and CSV, written atomically).
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from tasks.contracts import Split
from tasks.errors import RecsError
from tasks.evaluate import Popularity, evaluate
from tasks.files import write_text_atomic
from tasks.models.base import fit
from tasks.models.implicit_mf import ALSConfig
from tasks.models.registry import ModelConfig, model_config
from tasks.split import per_user_holdout, validation_split
from tasks.weight import WeightConfig, weight

# implicit's AlternatingLeastSquares() defaults on log1p(plays): the reference to beat
REFERENCE = ALSConfig(
    weight=WeightConfig(scheme="log", alpha=1.0, eps=1.0), factors=100, regularization=0.01, alpha=1.0, iterations=15
)

# Values each model's fields are drawn from; a dotted name is a field of a part (the blend's
# ``factor`` and ``knn``). Weighting: "log" draws eps, "bm25" draws k1 and b.
SPACE: dict[str, dict[str, list]] = {
    "als": {
        "weight": ["log", "log", "bm25"],
        "factors": [16, 32, 48, 64, 100, 128],
        "regularization": [0.01, 0.1, 1.0, 3.0, 10.0],
        "alpha": [0.5, 1.0, 2.0, 4.0],
        "iterations": [10, 15, 25],
    },
    "bpr": {
        "weight": ["log"],
        "factors": [32, 64, 128],
        "learning_rate": [0.01, 0.03, 0.1],
        "regularization": [0.001, 0.01],
        "iterations": [50, 100, 200],
    },
    "itemknn": {
        "weight": ["log"],
        "similarity": ["bm25", "bm25", "cosine", "tfidf"],
        "neighbours": [50, 100, 200, 400],
        "k1": [0.25, 0.5, 1.0],
        "b": [0.5, 0.75, 1.0],
    },
}
MODEL_SHARE = {"als": 0.6, "bpr": 0.15, "itemknn": 0.25}  # blends: the Optuna search (next)
LOG_EPS = [0.1, 1.0, 10.0]
BM25_K1 = [1.2, 100.0]
BM25_B = [0.5, 0.8, 1.0]


@dataclass(frozen=True)
class Trial:
    """One evaluated candidate. ``model``: the ``ModelConfig`` as a dict; ``metrics``: validation
    figures named ``metric@k`` (``rmse_*`` without ``@``); ``error``: one line if it failed."""

    number: int
    model: dict
    metrics: dict[str, float] = field(default_factory=dict)
    fit_seconds: float = 0.0
    eval_seconds: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class TuneResult:
    """All trials (in candidate order), the best candidate by ``objective`` and its trial number,
    the popularity baseline's validation metrics, and how validation was split."""

    trials: list[Trial]
    best: ModelConfig
    best_trial: int
    objective: str
    baseline: dict[str, float]
    validation_rule: str


def sample_candidates(n: int, seed: int = 0, anchors: Sequence[ModelConfig] = (REFERENCE,)) -> list[ModelConfig]:
    """``anchors`` then up to ``n`` distinct random draws from ``SPACE`` (``MODEL_SHARE`` decides
    how often each model is drawn)."""
    rng = np.random.default_rng(seed)
    names = list(MODEL_SHARE)
    shares = np.array([MODEL_SHARE[m] for m in names])
    out = list(anchors)
    seen = {c.model_dump_json() for c in out}
    for _ in range(20 * n):
        if len(out) >= n + len(anchors):
            break
        name = names[rng.choice(len(names), p=shares / shares.sum())]
        fields = {k: v[rng.integers(len(v))] for k, v in SPACE[name].items()}
        scheme = fields.pop("weight")
        if scheme == "log":
            w = WeightConfig(scheme="log", alpha=1.0, eps=LOG_EPS[rng.integers(len(LOG_EPS))])
        else:
            w = WeightConfig(scheme="bm25", k1=BM25_K1[rng.integers(len(BM25_K1))], b=BM25_B[rng.integers(len(BM25_B))])
        cfg = model_config(_nested({"name": name, "weight": w.model_dump(), **fields}))
        key = cfg.model_dump_json()
        if key not in seen:
            seen.add(key)
            out.append(cfg)
    return out


def _nested(fields: dict) -> dict:
    """Dotted ``SPACE`` names -> nested mappings (``{"factor.factors": 32}`` -> ``{"factor":
    {"factors": 32}}``), numpy scalars -> Python numbers/str (pydantic and JSON want those)."""
    out: dict = {}
    for key, value in fields.items():
        *parents, leaf = key.split(".")
        node = out
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value.item() if isinstance(value, np.generic) else value
    return out


def validation_of(plays: sp.csr_matrix, holdout: float = 0.2, min_artists: int = 5, seed: int = 0) -> Split:
    """The validation split of ``plays`` (CSR, users x artists, raw plays): a per-user holdout
    of the train part of the test split the retrain flow makes with the same arguments."""
    return validation_split(per_user_holdout(plays, holdout, min_artists, seed), holdout, min_artists)


def run_trial(number: int, cfg: ModelConfig, validation: Split, k: int = 10) -> Trial:
    """Weight, fit and evaluate one candidate on ``validation`` (raw plays); failures become a
    ``Trial`` with ``error`` set rather than an exception, so one bad candidate ends no search."""
    # one thread per trial (BLAS and OpenMP): trials already run side by side
    with threadpool_limits(1):
        try:
            start = time.perf_counter()
            train = weight(validation.train, cfg.weight)
            scorer = fit(train, cfg)
            fitted = time.perf_counter()
            metrics = evaluate(scorer, Split(train, validation.test, validation.rule, validation.seed), [k])
        except RecsError as exc:
            return Trial(number, cfg.model_dump(), error=str(exc))
    return Trial(
        number,
        cfg.model_dump(),
        {_key(m.metric, m.k): m.value for m in metrics},
        fit_seconds=fitted - start,
        eval_seconds=time.perf_counter() - fitted,
    )


def _key(metric: str, k: int | None) -> str:
    return metric if k is None else f"{metric}@{k}"


_VALIDATION: Split | None = None  # a worker process's copy, set once by _init_worker


def _init_worker(validation: Split) -> None:
    global _VALIDATION
    _VALIDATION = validation
    # implicit draws a progress bar on stderr for every fit (tasks.models.implicit_mf asks for it); from
    # parallel workers the bars only garble the trial table. A trial's failure still reaches the
    # parent: as Trial.error, or as the exception its future raises.
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - kept open for the worker's life


def _run_in_worker(number: int, cfg: ModelConfig, k: int) -> Trial:
    if _VALIDATION is None:
        raise RuntimeError("tune worker started without _init_worker")
    return run_trial(number, cfg, _VALIDATION, k)


def default_workers() -> int:
    """Cores this process may use (at least 1)."""
    return max(1, len(os.sched_getaffinity(0)))


def tune(
    plays: sp.csr_matrix,
    candidates: Sequence[ModelConfig],
    *,
    holdout: float = 0.2,
    min_artists: int = 5,
    seed: int = 0,
    k: int = 10,
    objective: str = "precision",
    workers: int | None = None,
    on_trial: Callable[[Trial], None] | None = None,
    incumbent: ModelConfig | None = None,
    min_gain: float = 0.01,
) -> TuneResult:
    """Evaluate every candidate on the validation split of ``plays`` (CSR, users x artists, raw
    play counts) and pick the best by ``objective`` at ``k`` (e.g. ``precision`` -> precision@10).

    ``incumbent`` (the shipped configuration, if among ``candidates``) stays the pick unless the
    best challenger beats it by more than ``min_gain`` (relative): on HetRec 2K the top three
    candidates swapped places between validation seeds with gaps under 0.6 %, so smaller gains
    are noise and the shipped default should not churn on them.

    ``workers`` processes (default: the cores available) run candidates side by side, each with
    one BLAS/OpenMP thread; ``on_trial`` is called with each trial as it finishes (any order).
    """
    if not candidates:
        raise RecsError("no candidates to tune; give at least one model configuration")
    validation = validation_of(plays, holdout, min_artists, seed)
    if validation.test.nnz == 0:
        raise RecsError(f"no user has {min_artists}+ artists after the test holdout; lower eval.min_artists")
    baseline_metrics = evaluate(Popularity(validation.train), validation, [k])
    baseline = {_key(m.metric, m.k): m.value for m in baseline_metrics}
    target = _key(objective, k)
    if target not in baseline:
        raise RecsError(f"unknown objective {objective!r}; use one of precision, recall, ndcg, map")

    workers = min(workers or default_workers(), len(candidates))
    trials: list[Trial] = []
    if workers == 1:
        for i, cfg in enumerate(candidates):
            trials.append(run_trial(i, cfg, validation, k))
            if on_trial:
                on_trial(trials[-1])
    else:
        # spawn, not fork: the parent may hold OpenMP/BLAS thread pools (or a Prefect client)
        # that a forked child would inherit in a broken state
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(validation,)) as pool:
            futures = [pool.submit(_run_in_worker, i, cfg, k) for i, cfg in enumerate(candidates)]
            for future in as_completed(futures):
                trials.append(future.result())
                if on_trial:
                    on_trial(trials[-1])
    trials.sort(key=lambda t: t.number)
    done = [t for t in trials if t.error is None]
    if not done:
        raise RecsError(f"every candidate failed; the first said: {trials[0].error}")
    best = max(done, key=lambda t: t.metrics[target])
    held = [t for t in done if incumbent is not None and t.model == incumbent.model_dump()]
    if held and best.metrics[target] <= (1 + min_gain) * held[0].metrics[target]:
        best = held[0]
    return TuneResult(trials, model_config(best.model), best.number, target, baseline, validation.rule)


CSV_METRICS = ("precision", "ndcg", "map", "recall", "implicit_precision", "coverage", "novelty")


def trial_rows(result: TuneResult) -> list[dict]:
    """One flat dict per trial (popularity first as trial -1), best objective first: number,
    model, weighting, parameters, metrics, seconds, error."""
    k = result.objective.split("@")[1]
    rows = [
        {
            "trial": -1,
            "model": "popularity",
            "weight": "",
            "params": "",
            **{f"{m}@{k}": result.baseline.get(f"{m}@{k}") for m in CSV_METRICS},
            "fit_s": None,
            "eval_s": None,
            "error": None,
        }
    ]
    for t in sorted(result.trials, key=lambda t: -t.metrics.get(result.objective, -np.inf)):
        rows.append(
            {
                "trial": t.number,
                "model": t.model["name"],
                "weight": describe_weight(t.model["weight"]),
                "params": describe_params(t.model),
                **{f"{m}@{k}": t.metrics.get(f"{m}@{k}") for m in CSV_METRICS},
                "fit_s": round(t.fit_seconds, 2),
                "eval_s": round(t.eval_seconds, 2),
                "error": t.error,
            }
        )
    return rows


def describe_weight(w: dict) -> str:
    if w["scheme"] == "log":
        return f"log eps={w['eps']:g}"
    if w["scheme"] == "bm25":
        return f"bm25 k1={w['k1']:g} b={w['b']:g}"
    return w["scheme"]


def describe_params(m: dict) -> str:
    """A ``ModelConfig`` dict's hyper-parameters, compactly."""
    name = m["name"]
    if name == "blend":
        return " + ".join(f"{p['weight']:.2g}x {p['model']['name']}({describe_params(p['model'])})" for p in m["parts"])
    if name == "itemknn":
        knn = f"{m['similarity']} K={m['neighbours']}"
        return knn + (f" k1={m['k1']:g} b={m['b']:g}" if m["similarity"] == "bm25" else "")
    if name == "lsa":
        return f"f={m['factors']}"
    factor = f"f={m['factors']} reg={m['regularization']:g}"
    step = f" lr={m['learning_rate']:g}" if "learning_rate" in m else f" alpha={m['alpha']:g}" if "alpha" in m else ""
    return f"{factor}{step} it={m['iterations']}"


def format_table(result: TuneResult, limit: int | None = None) -> str:
    """The trial table as aligned plain text, best first (``limit`` rows after the baseline)."""
    rows = trial_rows(result)
    rows = rows[: (limit + 1 if limit else None)]
    k = result.objective.split("@")[1]
    cols = [
        "trial",
        "model",
        "weight",
        "params",
        f"precision@{k}",
        f"ndcg@{k}",
        f"map@{k}",
        f"coverage@{k}",
        "fit_s",
        "eval_s",
    ]

    def cell(v) -> str:
        return "" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    table = [cols] + [[cell(r[c]) for c in cols] + ([f"error: {r['error']}"] if r["error"] else []) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(cols))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths + [0])).rstrip() for line in table)


def write_trials(result: TuneResult, out_dir: Path) -> tuple[Path, Path]:
    """Write ``trials.json`` (every trial in full, with the best config and the baseline) and
    ``trials.csv`` (the table rows) into ``out_dir``; each written whole or not at all."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "objective": result.objective,
        "validation": result.validation_rule,
        "best_trial": result.best_trial,
        "best": result.best.model_dump(mode="json"),
        "popularity": result.baseline,
        "trials": [asdict(t) for t in result.trials],
    }
    rows = trial_rows(result)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    json_path, csv_path = out_dir / "trials.json", out_dir / "trials.csv"
    write_text_atomic(json_path, json.dumps(doc, indent=2, default=str))
    write_text_atomic(csv_path, buffer.getvalue())
    return json_path, csv_path

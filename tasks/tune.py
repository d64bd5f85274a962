"""Hyper-parameter search with Optuna on validation splits carved from train.

The data is split as the retrain flow splits it (per-user holdout, ``EvalConfig``); the search
then draws ``folds`` independent per-user holdouts of that *train* part
(``tasks.split.validation_split``, folds 0, 1, ...) and scores every trial there, so the test
pairs never influence the choice. A trial weights each fold's train matrix with its own scheme,
fits (``tasks.models.base.fit``), is evaluated with the train artists excluded
(``tasks.evaluate.evaluate``) and reports the running mean of the objective after each fold:
the median pruner stops a trial whose first folds fall below the median of earlier trials at
the same fold (hopeless ones cost one fit instead of ``folds``).

Trials are sampled by TPE (``SearchSpace``: the model, its hyper-parameters, and blends of two or
three parts with their shares) and stored through Optuna's RDB storage at a SQLAlchemy URL
(SQLite file or PostgreSQL), one study per name (``flows.tune`` names one per dataset and
search space), so a second search continues the same study. ``workers`` processes (spawned,
one BLAS/OpenMP thread each) optimise the same study side by side through that storage.

Before the pick is returned the best trials and the incumbent are re-checked on
``RECHECK_FOLDS`` validation folds: the pick is the best mean over those, and the incumbent
stays unless beaten by more than ``min_gain``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import multiprocessing
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import optuna
import scipy.sparse as sp
from sqlalchemy.exc import SQLAlchemyError
from threadpoolctl import threadpool_limits

from tasks.contracts import Split
from tasks.cores import cores
from tasks.errors import RecsError
from tasks.evaluate import Popularity, evaluate
from tasks.files import write_text_atomic
from tasks.models.base import fit
from tasks.models.implicit_mf import ALSConfig
from tasks.models.registry import ModelConfig, model_config
from tasks.split import per_user_holdout, validation_split
from tasks.urls import masked_url
from tasks.weight import WeightConfig, weight

# implicit's AlternatingLeastSquares() defaults on log1p(plays): the reference to beat
REFERENCE = ALSConfig(
    weight=WeightConfig(scheme="log", alpha=1.0, eps=1.0), factors=100, regularization=0.01, alpha=1.0, iterations=15
)

# What ``SearchSpace`` searches; a change to it is a new search space, hence a new study
SPACE_VERSION = 2  # 2: RP3beta alpha up to 2.5, ALS iterations 8-40, --blends
MODELS = ("als", "itemknn", "ease", "rp3beta", "blend")
BLENDS = ("als+itemknn", "als+ease", "als+rp3beta", "ease+rp3beta", "als+itemknn+rp3beta", "als+ease+rp3beta")
RECHECK_FOLDS = 3  # validation folds the finalists are compared on
FINALISTS = 3  # best trials re-checked (besides the incumbent)

Space = Callable[[optuna.Trial], ModelConfig]


class SearchSpace:
    """The ``Space`` TPE samples: a model of ``models`` (a subset of ``MODELS``) on log weights
    (eps searched); a blend picks one of ``blends`` (default: the ``BLENDS`` made only of
    ``models``; given, any of ``BLENDS``, so ``models=("blend",)`` with one blend searches that
    blend alone) and a share per part. A part's hyper-parameters have the same names alone and
    in a blend (``als.factors``), so TPE learns them from both. A class, not a closure: spawned workers unpickle it."""

    def __init__(self, models: Sequence[str] = MODELS, blends: Sequence[str] | None = None):
        unknown = sorted(set(models) - set(MODELS))
        if unknown or not models:
            raise RecsError(f"cannot search {', '.join(unknown) or 'no model'}; choose among {', '.join(MODELS)}")
        self.models = tuple(m for m in MODELS if m in models)
        if blends is None:
            self.blends = tuple(b for b in BLENDS if set(b.split("+")) <= set(self.models))
        else:
            unknown = sorted(set(blends) - set(BLENDS))
            if unknown:
                raise RecsError(f"cannot search the blend {', '.join(unknown)}; choose among {', '.join(BLENDS)}")
            if "blend" not in self.models:
                raise RecsError("blends are searched only with blend among the models; add blend")
            self.blends = tuple(b for b in BLENDS if b in blends)
        if "blend" in self.models and not self.blends:
            raise RecsError(f"no blend of {', '.join(self.models)} is searched; add two of {', '.join(MODELS[:-1])}")

    def __call__(self, trial: optuna.Trial) -> ModelConfig:
        name = trial.suggest_categorical("model", self.models)
        scheme = {"scheme": "log", "alpha": 1.0, "eps": trial.suggest_float("weight.eps", 0.1, 10.0, log=True)}
        if name != "blend":
            return model_config({"weight": scheme, **_part(trial, name)})
        combo = str(trial.suggest_categorical("blend", self.blends)).split("+")
        parts = [{"model": _part(trial, p), "weight": trial.suggest_float(f"share.{p}", 0.05, 1.0)} for p in combo]
        return model_config({"name": "blend", "weight": scheme, "parts": parts})


def _part(trial: optuna.Trial, name: str) -> dict:
    """One model's hyper-parameters. Ranges: Rendle et al. 2021 for iALS (many factors want
    strong regularization), the published HetRec ranges for the item models."""
    if name == "als":
        return {
            "name": "als",
            "factors": trial.suggest_int("als.factors", 16, 512, log=True),
            "regularization": trial.suggest_float("als.regularization", 0.01, 300.0, log=True),
            "alpha": trial.suggest_float("als.alpha", 0.25, 8.0, log=True),
            "iterations": trial.suggest_int("als.iterations", 8, 40),
        }
    if name == "itemknn":
        return {
            "name": "itemknn",
            "similarity": "bm25",
            "neighbours": trial.suggest_int("itemknn.neighbours", 20, 1000, log=True),
            "k1": trial.suggest_float("itemknn.k1", 0.1, 3.0, log=True),
            "b": trial.suggest_float("itemknn.b", 0.0, 1.0),
        }
    if name == "ease":
        return {"name": "ease", "l2": trial.suggest_float("ease.l2", 10.0, 30_000.0, log=True)}
    if name == "rp3beta":
        return {
            "name": "rp3beta",
            "alpha": trial.suggest_float("rp3beta.alpha", 0.2, 2.5),
            "beta": trial.suggest_float("rp3beta.beta", 0.0, 1.0),
            "neighbours": trial.suggest_int("rp3beta.neighbours", 20, 1000, log=True),
        }
    raise RecsError(f"no search space for model {name!r}; use one of {', '.join(MODELS)}")


@dataclass(frozen=True)
class Trial:
    """One trial of the study. ``model``: the ``ModelConfig`` as a dict; ``metrics``: validation
    figures named ``metric@k`` (``rmse_*`` without ``@``), the mean over the folds it ran;
    ``folds``: the objective on each fold it ran; ``state``: complete, pruned or fail;
    ``error``: one line if it failed; seconds summed over its folds."""

    number: int
    model: dict
    metrics: dict[str, float] = field(default_factory=dict)
    folds: list[float] = field(default_factory=list)
    state: str = "complete"
    fit_seconds: float = 0.0
    eval_seconds: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class TuneResult:
    """Every trial of the study (by number), the pick and its trial number, the popularity
    baseline's metrics on fold 0, how validation was split, and the re-check: trial number ->
    objective on each of ``RECHECK_FOLDS`` folds (the pick has the best mean there)."""

    trials: list[Trial]
    best: ModelConfig
    best_trial: int
    objective: str
    baseline: dict[str, float]
    validation_rule: str
    study: str
    storage: str
    recheck: dict[int, list[float]]


@dataclass(frozen=True)
class Settings:
    """How trials are scored: the test split's holdout, minimum artists and seed (as the retrain
    flow splits), ``folds`` validation holdouts of its train part, the cut-off ``k`` and the
    objective (``precision``, ``ndcg``, ``map`` or ``recall``)."""

    holdout: float = 0.2
    min_artists: int = 5
    seed: int = 0
    folds: int = 2
    k: int = 10
    objective: str = "precision"

    @property
    def target(self) -> str:
        return _key(self.objective, self.k)


def validation_of(
    plays: sp.csr_matrix, holdout: float = 0.2, min_artists: int = 5, seed: int = 0, fold: int = 0
) -> Split:
    """Validation fold ``fold`` of ``plays`` (CSR, users x artists, raw plays): a per-user
    holdout of the train part of the test split the retrain flow makes with the same arguments."""
    return validation_split(per_user_holdout(plays, holdout, min_artists, seed), holdout, min_artists, fold)


def score_on(
    cfg: ModelConfig, validation: Split, k: int = 10, max_users: int | None = None
) -> tuple[dict[str, float], float, float]:
    """Weight ``validation.train`` (raw plays) as ``cfg`` says, fit, evaluate at ``k`` over at
    most ``max_users`` test users (None: all): (metrics, fit seconds, evaluation seconds). One
    BLAS/OpenMP thread: trials already run side by side."""
    with threadpool_limits(1):
        start = time.perf_counter()
        train = weight(validation.train, cfg.weight)
        scorer = fit(train, cfg)
        fitted = time.perf_counter()
        split = Split(train, validation.test, validation.rule, validation.seed)
        metrics = evaluate(scorer, split, [k], max_users=max_users)
    return {_key(m.metric, m.k): m.value for m in metrics}, fitted - start, time.perf_counter() - fitted


def _key(metric: str, k: int | None) -> str:
    return metric if k is None else f"{metric}@{k}"


class _Objective:
    """The study's objective on one process's copy of the validation folds."""

    def __init__(self, plays: sp.csr_matrix, settings: Settings, space: Space):
        self.settings = settings
        self.space = space
        self.folds = [
            validation_of(plays, settings.holdout, settings.min_artists, settings.seed, fold)
            for fold in range(settings.folds)
        ]

    def __call__(self, trial: optuna.Trial) -> float:
        fixed = trial.user_attrs.get("anchor")
        cfg = model_config(fixed) if fixed else self.space(trial)
        trial.set_user_attr("config", cfg.model_dump(mode="json"))
        trial.set_user_attr("pid", os.getpid())  # which worker ran it
        runs: list[dict[str, float]] = []
        fit_s = eval_s = 0.0
        for step, fold in enumerate(self.folds):
            try:
                metrics, f, e = score_on(cfg, fold, self.settings.k)
            except RecsError as exc:
                trial.set_user_attr("error", str(exc))
                raise
            runs.append(metrics)
            fit_s, eval_s = fit_s + f, eval_s + e
            mean = {m: float(np.mean([r[m] for r in runs])) for m in runs[0]}
            trial.set_user_attr("metrics", mean)
            trial.set_user_attr("folds", [r[self.settings.target] for r in runs])
            trial.set_user_attr("seconds", [fit_s, eval_s])
            trial.report(mean[self.settings.target], step)
            if step < len(self.folds) - 1 and trial.should_prune():
                raise optuna.TrialPruned()
        return mean[self.settings.target]


def open_study(storage: str, name: str, seed: int = 0) -> optuna.Study:
    """The study ``name`` at ``storage`` (a SQLAlchemy URL), created if new: maximised, TPE
    (seeded by ``seed`` and the trials already there, so a resumed search draws afresh), the
    median pruner after 8 trials."""
    # a failed trial would be logged with its traceback; the trial table and on_trial say it in a line
    optuna.logging.set_verbosity(logging.ERROR)
    try:
        study = optuna.create_study(
            storage=optuna.storages.RDBStorage(storage),
            study_name=name,
            direction="maximize",
            load_if_exists=True,
            pruner=optuna.pruners.MedianPruner(n_startup_trials=8, n_warmup_steps=0),
        )
        existing = len(study.get_trials(deepcopy=False))
    except (ValueError, ImportError, SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
        raise RecsError(
            f"cannot open the tuning storage {masked_url(storage)}: {str(exc).splitlines()[0]}; "
            "give a reachable SQLAlchemy URL, e.g. sqlite:///data/tune.db"
        ) from exc
    with warnings.catch_warnings():  # multivariate TPE over conditional groups: "experimental" since 2.2
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.sampler = optuna.samplers.TPESampler(
            seed=seed + existing, multivariate=True, group=True, n_startup_trials=10
        )
    return study


def _worker(
    storage: str, name: str, seed: int, plays: sp.csr_matrix, settings: Settings, space: Space, n_trials: int
) -> None:
    """One spawned worker: ``n_trials`` trials of the shared study."""
    # implicit draws a progress bar on stderr for every fit; from parallel workers the bars only
    # garble the trial table. A trial's failure still reaches the parent through the storage.
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - kept open for the worker's life
    study = open_study(storage, name, seed)
    study.optimize(_Objective(plays, settings, space), n_trials=n_trials, catch=(RecsError,))


def tune(
    plays: sp.csr_matrix,
    *,
    storage: str,
    study: str,
    trials: int = 30,
    settings: Settings = Settings(),
    space: Space = SearchSpace(),
    anchors: Sequence[ModelConfig] = (REFERENCE,),
    incumbent: ModelConfig | None = None,
    min_gain: float = 0.01,
    seed: int = 0,
    workers: int | None = None,
    on_trial: Callable[[Trial], None] | None = None,
) -> TuneResult:
    """Add ``trials`` trials of ``space`` to the study ``study`` at ``storage`` (created if new;
    ``anchors`` and ``incumbent`` run first when the study has not tried them yet), scored on
    ``settings.folds`` validation folds of ``plays`` (CSR, users x artists, raw play counts),
    then re-check the finalists on ``RECHECK_FOLDS`` folds and pick one.

    ``incumbent`` (the shipped configuration) stays the pick unless the best finalist beats its
    re-checked mean by more than ``min_gain`` (relative): on HetRec 2K gaps under 1 % swap
    places between validation folds, so the shipped default should not churn on them.

    ``workers`` processes (default: the cores available) optimise the study side by side;
    ``on_trial`` is called with each trial of this search as it finishes (any order).
    """
    if settings.objective not in ("precision", "recall", "ndcg", "map"):
        raise RecsError(f"unknown objective {settings.objective!r}; use one of precision, recall, ndcg, map")
    if trials < 1 or settings.folds < 1:
        raise RecsError(f"a search needs at least one trial and one fold, got {trials} and {settings.folds}")
    first = validation_of(plays, settings.holdout, settings.min_artists, settings.seed)
    if first.test.nnz == 0:
        raise RecsError(f"no user has {settings.min_artists}+ artists after the test holdout; lower eval.min_artists")
    baseline_metrics = evaluate(Popularity(first.train), first, [settings.k])
    baseline = {_key(m.metric, m.k): m.value for m in baseline_metrics}

    handle = open_study(storage, study, seed)
    tried = {json.dumps(t.user_attrs.get("config"), sort_keys=True) for t in handle.get_trials(deepcopy=False)}
    for anchor in [*anchors, *([incumbent] if incumbent is not None else [])]:
        key = json.dumps(anchor.model_dump(mode="json"), sort_keys=True)
        if key not in tried:
            tried.add(key)
            handle.enqueue_trial({}, user_attrs={"anchor": anchor.model_dump(mode="json")})
            trials += 1  # anchors come on top of the requested trials
    before = {t.number for t in handle.get_trials(deepcopy=False) if t.state.is_finished()}

    objective, callbacks = _Objective(plays, settings, space), [lambda s, t: on_trial(_trial(t))] if on_trial else []
    # Queued trials (the anchors, or ones a stopped search left queued) run here, before any
    # worker starts: two processes can pop the same queued trial from SQLite, which takes no row
    # lock, and the second then fails with "Cannot tell a COMPLETE trial" (optuna#4002).
    queued = min(len(handle.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))), trials)
    if queued:
        handle.optimize(objective, n_trials=queued, catch=(RecsError,), callbacks=callbacks)
    trials -= queued
    workers = min(workers or cores(), trials)
    if workers == 1:
        handle.optimize(objective, n_trials=trials, catch=(RecsError,), callbacks=callbacks)
    elif workers > 1:
        seen = before | {t.number for t in handle.get_trials(deepcopy=False) if t.state.is_finished()}
        _optimise_in_workers(handle, storage, study, seed, plays, settings, space, trials, workers, seen, on_trial)

    done = [_trial(t) for t in handle.get_trials(deepcopy=False) if t.state.is_finished()]
    done.sort(key=lambda t: t.number)
    complete = [t for t in done if t.state == "complete"]
    if not complete:
        failed = [t for t in done if t.error]
        raise RecsError(f"every trial failed; the first said: {failed[0].error if failed else 'nothing'}")
    recheck, best = _recheck(plays, settings, complete, incumbent, min_gain)
    return TuneResult(
        trials=done,
        best=model_config(best.model),
        best_trial=best.number,
        objective=settings.target,
        baseline=baseline,
        validation_rule=first.rule,
        study=study,
        storage=masked_url(storage),
        recheck=recheck,
    )


def _optimise_in_workers(
    handle: optuna.Study,
    storage: str,
    study: str,
    seed: int,
    plays: sp.csr_matrix,
    settings: Settings,
    space: Space,
    trials: int,
    workers: int,
    before: set[int],
    on_trial: Callable[[Trial], None] | None,
) -> None:
    """``trials`` trials split over ``workers`` spawned processes (spawn, not fork: the parent
    may hold OpenMP/BLAS thread pools or a Prefect client a forked child would inherit broken);
    ``on_trial`` sees each finished trial as the storage shows it."""
    shares = [trials // workers + (i < trials % workers) for i in range(workers)]
    context = multiprocessing.get_context("spawn")
    seen = set(before)
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = {
            pool.submit(_worker, storage, study, seed + 7919 * (i + 1), plays, settings, space, n)
            for i, n in enumerate(shares)
        }
        while futures:
            finished, futures = wait(futures, timeout=1.0, return_when=FIRST_COMPLETED)
            for future in finished:
                future.result()  # a worker's crash (not a trial's failure) ends the search
            for t in handle.get_trials(deepcopy=False):
                if t.state.is_finished() and t.number not in seen:
                    seen.add(t.number)
                    if on_trial:
                        on_trial(_trial(t))


def _trial(t: optuna.trial.FrozenTrial) -> Trial:
    attrs = t.user_attrs
    fit_s, eval_s = attrs.get("seconds", [0.0, 0.0])
    state = {optuna.trial.TrialState.COMPLETE: "complete", optuna.trial.TrialState.PRUNED: "pruned"}.get(
        t.state, "fail"
    )
    error = attrs.get("error") or (t.system_attrs.get("fail_reason", "").splitlines() or ["failed"])[-1]
    return Trial(
        number=t.number,
        model=attrs.get("config") or attrs.get("anchor") or {},
        metrics=attrs.get("metrics", {}),
        folds=attrs.get("folds", []),
        state=state,
        fit_seconds=fit_s,
        eval_seconds=eval_s,
        error=error if state == "fail" else None,
    )


def _recheck(
    plays: sp.csr_matrix,
    settings: Settings,
    complete: list[Trial],
    incumbent: ModelConfig | None,
    min_gain: float,
) -> tuple[dict[int, list[float]], Trial]:
    """The ``FINALISTS`` best complete trials and the incumbent on ``RECHECK_FOLDS`` validation
    folds (the folds a trial already ran are reused); the pick has the best mean, unless the
    incumbent is within ``min_gain`` of it."""
    ranked = sorted(complete, key=lambda t: -t.metrics[settings.target])
    finalists = ranked[:FINALISTS]
    held = None
    if incumbent is not None:
        key = incumbent.model_dump(mode="json")
        held = next((t for t in ranked if t.model == key), None)
        if held is not None and held not in finalists:
            finalists.append(held)
    folds = max(RECHECK_FOLDS, settings.folds)
    recheck: dict[int, list[float]] = {}
    for t in finalists:
        values = list(t.folds[:folds])
        for fold in range(len(values), folds):
            validation = validation_of(plays, settings.holdout, settings.min_artists, settings.seed, fold)
            values.append(score_on(model_config(t.model), validation, settings.k)[0][settings.target])
        recheck[t.number] = values
    best = max(finalists, key=lambda t: np.mean(recheck[t.number]))
    if held is not None and np.mean(recheck[best.number]) <= (1 + min_gain) * np.mean(recheck[held.number]):
        best = held
    return recheck, best


CSV_METRICS = ("precision", "ndcg", "map", "recall", "implicit_precision", "coverage", "novelty")


def trial_rows(result: TuneResult) -> list[dict]:
    """One flat dict per trial (popularity first as trial -1), best objective first: number,
    state, model, weighting, parameters, metrics (mean over the folds it ran), seconds, error."""
    k = result.objective.split("@")[1]
    rows = [
        {
            "trial": -1,
            "state": "",
            "model": "popularity",
            "weight": "",
            "params": "",
            **{f"{m}@{k}": result.baseline.get(f"{m}@{k}") for m in CSV_METRICS},
            "folds": "",
            "fit_s": None,
            "eval_s": None,
            "error": None,
        }
    ]
    for t in sorted(result.trials, key=lambda t: (t.state != "complete", -t.metrics.get(result.objective, -np.inf))):
        rows.append(
            {
                "trial": t.number,
                "state": t.state,
                "model": t.model.get("name", ""),
                "weight": describe_weight(t.model["weight"]) if "weight" in t.model else "",
                "params": describe_params(t.model) if t.model else "",
                **{f"{m}@{k}": t.metrics.get(f"{m}@{k}") for m in CSV_METRICS},
                "folds": len(t.folds),
                "fit_s": round(t.fit_seconds, 2),
                "eval_s": round(t.eval_seconds, 2),
                "error": t.error,
            }
        )
    return rows


def describe_weight(w: dict) -> str:
    if w["scheme"] == "log":
        return f"log eps={w['eps']:.3g}"
    if w["scheme"] == "bm25":
        return f"bm25 k1={w['k1']:.3g} b={w['b']:.3g}"
    return w["scheme"]


def describe_params(m: dict) -> str:
    """A ``ModelConfig`` dict's hyper-parameters, compactly."""
    name = m["name"]
    if name == "blend":
        return " + ".join(f"{p['weight']:.2f}x {p['model']['name']}({describe_params(p['model'])})" for p in m["parts"])
    if name == "itemknn":
        knn = f"{m['similarity']} K={m['neighbours']}"
        return knn + (f" k1={m['k1']:.3g} b={m['b']:.3g}" if m["similarity"] == "bm25" else "")
    if name == "ease":
        return f"l2={m['l2']:.4g}"
    if name == "rp3beta":
        return f"alpha={m['alpha']:.3g} beta={m['beta']:.3g} K={m['neighbours']}"
    if name == "lsa":
        return f"f={m['factors']}"
    factor = f"f={m['factors']} reg={m['regularization']:.3g}"
    step = (
        f" lr={m['learning_rate']:.3g}" if "learning_rate" in m else f" alpha={m['alpha']:.3g}" if "alpha" in m else ""
    )
    return f"{factor}{step} it={m['iterations']}"


def format_table(result: TuneResult, limit: int | None = None) -> str:
    """The trial table as aligned plain text, best first (``limit`` rows after the baseline)."""
    rows = trial_rows(result)
    rows = rows[: (limit + 1 if limit else None)]
    k = result.objective.split("@")[1]
    cols = [
        "trial",
        "state",
        "model",
        "weight",
        "params",
        f"precision@{k}",
        f"ndcg@{k}",
        f"map@{k}",
        f"coverage@{k}",
        "folds",
        "fit_s",
        "eval_s",
    ]

    def cell(v) -> str:
        return "" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    table = [cols] + [[cell(r[c]) for c in cols] + ([f"error: {r['error']}"] if r["error"] else []) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(cols))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths + [0])).rstrip() for line in table)


def format_recheck(result: TuneResult) -> str:
    """The re-check as lines: trial, objective per validation fold, mean; the pick marked."""
    lines = [f"re-check on {len(next(iter(result.recheck.values())))} validation folds ({result.objective}):"]
    for number, values in sorted(result.recheck.items(), key=lambda kv: -float(np.mean(kv[1]))):
        mark = "  <- pick" if number == result.best_trial else ""
        folds = " ".join(f"{v:.4f}" for v in values)
        lines.append(f"trial {number}: {folds}  mean {np.mean(values):.4f}{mark}")
    return "\n".join(lines)


def write_trials(result: TuneResult, out_dir: Path) -> tuple[Path, Path]:
    """Write ``trials.json`` (every trial in full, with the pick, the re-check and the baseline)
    and ``trials.csv`` (the table rows) into ``out_dir``; each written whole or not at all."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "study": result.study,
        "storage": result.storage,
        "objective": result.objective,
        "validation": result.validation_rule,
        "best_trial": result.best_trial,
        "best": result.best.model_dump(mode="json"),
        "recheck": {str(n): v for n, v in result.recheck.items()},
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

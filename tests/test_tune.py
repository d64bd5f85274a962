"""The Optuna search: validation apart from test, trials stored and resumed in SQLite and
PostgreSQL, pruning, parallel workers, the re-check, `recs tune` end to end."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from tasks.errors import RecsError
from tasks.models.implicit_mf import ALSConfig
from tasks.models.itemknn import ItemKNNConfig
from tasks.models.lsa import LSAConfig
from tasks.models.registry import ModelConfig, model_config
from tasks.split import per_user_holdout
from tasks.tune import (
    MODELS,
    SearchSpace,
    Settings,
    format_recheck,
    format_table,
    open_study,
    score_on,
    tune,
    validation_of,
    write_trials,
)
from tasks.weight import WeightConfig

LOG = WeightConfig(scheme="log")
CHEAP_ALS = ALSConfig(weight=LOG, factors=8, iterations=2)
CHEAP_KNN = ItemKNNConfig(weight=LOG, neighbours=20)


def cheap_space(trial: optuna.Trial) -> ModelConfig:
    """Small models only, so a test trial takes a fraction of a second; every fourth is LSA with
    more factors than users, which fails and must be recorded as failed."""
    if trial.number % 4 == 3:
        return LSAConfig(factors=10_000)
    if trial.suggest_categorical("model", ["als", "itemknn"]) == "als":
        return ALSConfig(weight=LOG, factors=trial.suggest_int("f", 2, 12), iterations=2)
    return ItemKNNConfig(weight=LOG, neighbours=trial.suggest_int("k", 5, 50))


@pytest.fixture(scope="module")
def plays(hetrec_encoded):
    """The first 500 HetRec users: enough signal, quick trials."""
    return hetrec_encoded.plays[:500].tocsr()


@pytest.fixture
def storage(tmp_path):
    return f"sqlite:///{tmp_path / 'tune.db'}"


def test_validation_folds_hold_out_part_of_train_and_never_test(plays):
    test_split = per_user_holdout(plays, 0.2, 5, seed=0)
    folds = [validation_of(plays, 0.2, 5, seed=0, fold=f) for f in range(3)]
    for validation in folds:
        assert validation.test.nnz > 0
        seen = validation.train + validation.test
        assert (seen != test_split.train).nnz == 0  # exactly the train part of the test split
        assert seen.multiply(test_split.test).nnz == 0
    assert (folds[0].test != folds[1].test).nnz > 0  # independent holdouts


def test_the_search_space_draws_valid_models_of_every_kind():
    def draw(space: SearchSpace, n: int = 60) -> list[ModelConfig]:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        drawn = []
        for _ in range(n):
            trial = study.ask()
            drawn.append(space(trial))
            study.tell(trial, 0.0)
        return drawn

    drawn = draw(SearchSpace())
    assert {c.name for c in drawn} == set(MODELS)
    blends = [c for c in drawn if c.name == "blend"]
    assert all(2 <= len(b.parts) <= 3 and sum(p.weight for p in b.parts) == pytest.approx(1) for b in blends)
    assert all(model_config(c.model_dump()) == c for c in drawn)
    # a restricted space draws only its models, in blends too
    scalable = draw(SearchSpace(("als", "rp3beta", "blend")))
    assert {c.name for c in scalable} == {"als", "rp3beta", "blend"}
    assert {p.model.name for c in scalable if c.name == "blend" for p in c.parts} == {"als", "rp3beta"}
    # one blend alone (recs tune --models blend --blends als+itemknn+rp3beta), its parts in order
    only = draw(SearchSpace(("blend",), ("als+itemknn+rp3beta",)), n=20)
    assert all(c.name == "blend" and [p.model.name for p in c.parts] == ["als", "itemknn", "rp3beta"] for c in only)
    with pytest.raises(RecsError, match="cannot search svd"):
        SearchSpace(("als", "svd"))
    with pytest.raises(RecsError, match="cannot search the blend als\\+svd"):
        SearchSpace(("blend",), ("als+svd",))
    with pytest.raises(RecsError, match="with blend among the models"):
        SearchSpace(("als", "itemknn"), ("als+itemknn",))
    with pytest.raises(RecsError, match="no blend"):
        SearchSpace(("als", "blend"))


def test_tune_stores_every_trial_and_a_second_search_resumes_the_study(plays, storage, tmp_path):
    settings = Settings(folds=1, objective="ndcg")
    first = tune(plays, storage=storage, study="s", trials=8, settings=settings, space=cheap_space, workers=1)
    # the anchor (implicit's default ALS) ran first, then the 8 trials
    assert [t.number for t in first.trials] == list(range(9))
    assert first.trials[0].model == first.trials[0].model | {"name": "als", "factors": 100}
    failed = [t for t in first.trials if t.state == "fail"]
    assert failed and all("lsa" in t.error and not t.metrics for t in failed)
    complete = [t for t in first.trials if t.state == "complete"]
    assert all(t.metrics["precision@10"] > first.baseline["precision@10"] for t in complete)

    # the same study, continued by a second search: the anchor is not run again
    second = tune(plays, storage=storage, study="s", trials=3, settings=settings, space=cheap_space, workers=1)
    assert [t.number for t in second.trials] == list(range(12))
    assert [t.model for t in second.trials[:9]] == [t.model for t in first.trials]
    assert optuna.load_study(study_name="s", storage=storage).trials[-1].number == 11

    # the pick: best mean over the re-check folds, among the best complete trials
    assert first.best_trial in first.recheck and len(first.recheck[first.best_trial]) == 3
    means = {n: sum(v) / 3 for n, v in first.recheck.items()}
    assert means[first.best_trial] == max(means.values())
    best = next(t for t in first.trials if t.number == first.best_trial)
    assert first.recheck[best.number][0] == pytest.approx(best.folds[0])  # fold 0 reused, not re-run
    fold2 = validation_of(plays, 0.2, 5, 0, fold=2)
    assert first.recheck[best.number][2] == pytest.approx(score_on(first.best, fold2)[0]["ndcg@10"])

    json_path, csv_path = write_trials(first, tmp_path / "out")
    doc = json.loads(json_path.read_text())
    assert [t["number"] for t in doc["trials"]] == list(range(9)) and doc["study"] == "s"
    assert doc["best"] == first.best.model_dump(mode="json")
    rows = list(csv.DictReader(csv_path.open()))
    assert rows[0]["model"] == "popularity" and len(rows) == 10
    assert float(rows[1]["ndcg@10"]) == pytest.approx(max(t.metrics["ndcg@10"] for t in complete))
    table = format_table(first)
    assert "popularity" in table and "error: " in table and table.count("\n") == 10
    assert f"trial {first.best_trial}: " in format_recheck(first)


def test_hopeless_trials_are_pruned_after_their_first_fold(plays, storage):
    # LSA with 1 factor is far below ALS and item-kNN: once the pruner has 8 trials, it stops there
    def space(trial: optuna.Trial) -> ModelConfig:
        n = trial.number
        return CHEAP_KNN if n < 8 else LSAConfig(weight=LOG, factors=1)

    result = tune(plays, storage=storage, study="p", trials=10, settings=Settings(folds=2), space=space, workers=1)
    late = [t for t in result.trials if t.model["name"] == "lsa"]
    assert late and all(t.state == "pruned" and len(t.folds) == 1 for t in late)
    assert all(len(t.folds) == 2 for t in result.trials if t.state == "complete")


def test_the_incumbent_stays_unless_beaten_by_more_than_min_gain(plays, storage):
    def space(trial: optuna.Trial) -> ModelConfig:
        return CHEAP_KNN

    settings = Settings(folds=1)
    free = tune(plays, storage=storage, study="a", trials=1, settings=settings, space=space, anchors=(), workers=1)
    worse = CHEAP_ALS.model_copy(update={"factors": 2})
    kept = tune(
        plays, storage=storage, study="b", trials=1, settings=settings, space=space, anchors=(), incumbent=worse,
        min_gain=100.0, workers=1,
    )  # fmt: skip
    assert kept.best == worse
    beaten = tune(
        plays, storage=storage, study="c", trials=1, settings=settings, space=space, anchors=(), incumbent=worse,
        min_gain=0.0, workers=1,
    )  # fmt: skip
    assert beaten.best == free.best == CHEAP_KNN


def test_parallel_workers_share_one_study(plays, storage):
    seen = []
    result = tune(
        plays, storage=storage, study="w", trials=8, settings=Settings(folds=1), space=cheap_space, workers=2,
        on_trial=seen.append,
    )  # fmt: skip
    assert sorted(t.number for t in result.trials) == list(range(9))
    assert sorted(t.number for t in seen) == list(range(9))
    stored = optuna.load_study(study_name="w", storage=storage).trials
    # the queued anchor runs here before the workers start, so no two processes can pop it (optuna#4002)
    assert {t.user_attrs["pid"] for t in stored if "anchor" in t.user_attrs} == {os.getpid()}
    assert len({t.user_attrs["pid"] for t in stored if "anchor" not in t.user_attrs} - {os.getpid()}) == 2


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_trials_are_stored_and_resumed_in_postgresql(plays, db_url):
    settings = Settings(folds=1)
    tune(plays, storage=db_url, study="pg", trials=2, settings=settings, space=cheap_space, workers=1)
    again = tune(plays, storage=db_url, study="pg", trials=2, settings=settings, space=cheap_space, workers=1)
    assert [t.number for t in again.trials] == list(range(5))
    assert len(optuna.load_study(study_name="pg", storage=db_url).trials) == 5


def test_bad_requests_are_one_line_errors(plays, storage):
    with pytest.raises(RecsError, match="unknown objective"):
        tune(plays, storage=storage, study="x", settings=Settings(objective="auc"))
    with pytest.raises(RecsError, match="every trial failed"):
        tune(
            plays, storage=storage, study="x", trials=1, settings=Settings(folds=1), anchors=(),
            space=lambda t: LSAConfig(factors=10_000), workers=1,
        )  # fmt: skip
    with pytest.raises(RecsError, match="cannot open the tuning storage") as err:
        open_study("postgresql+psycopg://u:secret@127.0.0.1:1/none", "x")
    assert "\n" not in str(err.value) and "secret" not in str(err.value)


def test_recs_tune_prints_the_trial_table_and_resumes_its_study(hetrec_dir, tmp_path):
    storage = f"sqlite:///{tmp_path / 'tune.db'}"

    def recs_tune(out: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                sys.executable,
                "-c",
                "from flows.cli import app; app(prog_name='recs')",
                "tune",
                "--dataset",
                "lastfm-2k",
                "--source",
                str(hetrec_dir),
                "--trials",
                "1",
                "--n-jobs",
                "2",
                "--folds",
                "1",
                "--models",
                "itemknn",  # cheap trials: the anchors are ALS and the shipped blend anyway
                "--storage",
                storage,
                "--out",
                str(out),
            ],
            capture_output=True,
            text=True,
            timeout=900,
            cwd=Path(__file__).resolve().parents[1],
        )

    done = recs_tune(tmp_path / "one")
    assert done.returncode == 0, done.stderr
    assert "precision@10" in done.stdout and "popularity" in done.stdout and "re-check on 3" in done.stdout
    assert "best by validation precision@10" in done.stdout
    doc = json.loads((tmp_path / "one" / "trials.json").read_text())
    assert len(doc["trials"]) == 3  # implicit's default ALS, the shipped default, one TPE draw
    best = yaml.safe_load((tmp_path / "one" / "best.yaml").read_text())["user_model"]
    assert best == doc["best"] and model_config(best).name in MODELS
    scores = {
        t["number"]: sum(v) / 3 for t in doc["trials"] for n, v in doc["recheck"].items() if int(n) == t["number"]
    }
    assert scores[doc["best_trial"]] >= 0.99 * max(scores.values())  # the shipped one stays within 1 %

    again = recs_tune(tmp_path / "two")
    assert again.returncode == 0, again.stderr
    doc2 = json.loads((tmp_path / "two" / "trials.json").read_text())
    assert doc2["study"] == doc["study"] and len(doc2["trials"]) == 4  # resumed: one more trial

"""The search: candidates, validation apart from test, every trial recorded, `recs tune` end to end."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from operator import attrgetter
from pathlib import Path

import pytest
import yaml

from tasks.errors import RecsError
from tasks.models.implicit_mf import ALSConfig
from tasks.models.itemknn import ItemKNNConfig
from tasks.models.lsa import LSAConfig
from tasks.models.registry import model_config
from tasks.split import per_user_holdout
from tasks.tune import REFERENCE, SPACE, format_table, sample_candidates, tune, validation_of, write_trials
from tasks.weight import WeightConfig

CHEAP = [
    ALSConfig(weight=WeightConfig(scheme="log"), factors=8, iterations=2),
    ItemKNNConfig(weight=WeightConfig(scheme="log"), neighbours=20),
    LSAConfig(factors=10_000),  # more factors than users: fails, and is recorded
]


@pytest.fixture(scope="module")
def plays(hetrec_encoded):
    """The first 500 HetRec users: enough signal, quick trials."""
    return hetrec_encoded.plays[:500].tocsr()


def test_candidates_are_repeatable_distinct_and_anchored():
    a = sample_candidates(25, seed=3)
    assert a == sample_candidates(25, seed=3)
    assert a != sample_candidates(25, seed=4)
    assert a[0] == REFERENCE and len(a) == 26
    assert len({c.model_dump_json() for c in a}) == len(a)
    assert {c.name for c in a[1:]} <= set(SPACE)
    for c in a[1:]:
        for name, values in SPACE[c.name].items():
            if name != "weight":
                assert attrgetter(name)(c) in values


def test_validation_holds_out_part_of_train_and_never_test(plays):
    test_split = per_user_holdout(plays, 0.2, 5, seed=0)
    validation = validation_of(plays, 0.2, 5, seed=0)
    assert validation.test.nnz > 0
    seen = validation.train + validation.test
    assert (seen != test_split.train).nnz == 0  # exactly the train part of the test split
    assert seen.multiply(test_split.test).nnz == 0


def test_tune_records_every_trial_and_picks_the_best(plays, tmp_path):
    result = tune(plays, CHEAP, workers=1, objective="ndcg")
    assert [t.number for t in result.trials] == [0, 1, 2]
    failed = result.trials[2]
    assert failed.error and "lsa" in failed.error and not failed.metrics
    done = result.trials[:2]
    best = max(done, key=lambda t: t.metrics["ndcg@10"])
    assert result.best_trial == best.number and result.best == CHEAP[best.number]
    assert all(t.metrics["precision@10"] > result.baseline["precision@10"] for t in done)

    json_path, csv_path = write_trials(result, tmp_path)
    doc = json.loads(json_path.read_text())
    assert [t["number"] for t in doc["trials"]] == [0, 1, 2]
    assert doc["best"] == CHEAP[best.number].model_dump(mode="json")
    rows = list(csv.DictReader(csv_path.open()))
    assert rows[0]["model"] == "popularity" and len(rows) == 4
    assert float(rows[1]["ndcg@10"]) == pytest.approx(best.metrics["ndcg@10"])
    assert not list(tmp_path.glob(".*.tmp"))
    table = format_table(result)
    assert "popularity" in table and "error: " in table and table.count("\n") == 4


def test_the_incumbent_stays_unless_beaten_by_more_than_min_gain(plays):
    free = tune(plays, CHEAP[:2], workers=1)
    loser = 1 - free.best_trial
    kept = tune(plays, CHEAP[:2], workers=1, incumbent=CHEAP[loser], min_gain=10.0)
    assert kept.best_trial == loser and kept.best == CHEAP[loser]
    beaten = tune(plays, CHEAP[:2], workers=1, incumbent=CHEAP[loser], min_gain=0.0)
    assert beaten.best_trial == free.best_trial


def test_parallel_workers_give_the_same_trials_as_one(plays):
    one = tune(plays, CHEAP[:2], workers=1)
    two = tune(plays, CHEAP[:2], workers=2)
    for a, b in zip(one.trials, two.trials):
        assert a.number == b.number and a.model == b.model
        assert a.metrics["precision@10"] == pytest.approx(b.metrics["precision@10"], abs=1e-9)


def test_bad_requests_are_one_line_errors(plays):
    with pytest.raises(RecsError, match="no candidates"):
        tune(plays, [])
    with pytest.raises(RecsError, match="unknown objective"):
        tune(plays, CHEAP[:1], objective="auc", workers=1)
    with pytest.raises(RecsError, match="every candidate failed"):
        tune(plays, CHEAP[2:], workers=1)


def test_recs_tune_prints_the_trial_table_and_writes_records(hetrec_dir, tmp_path):
    out = tmp_path / "tune"
    done = subprocess.run(
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
            "--workers",
            "2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stderr
    assert "precision@10" in done.stdout and "popularity" in done.stdout
    assert "best by validation precision@10" in done.stdout
    doc = json.loads((out / "trials.json").read_text())
    assert len(doc["trials"]) == 3  # implicit's default ALS, the shipped default, one random draw
    best = yaml.safe_load((out / "best.yaml").read_text())["user_model"]
    assert best == doc["best"] and model_config(best).name in {*SPACE, "blend"}
    scores = {t["number"]: t["metrics"]["precision@10"] for t in doc["trials"] if not t["error"]}
    assert scores[doc["best_trial"]] == max(scores.values()) > 0

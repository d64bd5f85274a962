"""The acceptance bar for the shipped user model, on HetRec 2K with references measured here.

Per-user 20 % holdout, 3 seeds, averaged. The reference is implicit's ``AlternatingLeastSquares``
with its default hyper-parameters on log1p(plays), fitted directly through implicit (not through
our wrapper); the popularity baseline is ours. The shipped default must beat the reference by 4 %
relative in both precision@10 and nDCG@10, reach precision@10 >= 0.19, and be 2.5 x popularity.

Beside them it prints, on the same test splits (measured, not chosen on them), the item models
alone with their own defaults on the shipped log1p weighting: item-kNN (the shipped blend's part),
EASE and RP3beta; each must beat popularity, nothing more is asserted about them.
"""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from flows.config import RetrainConfig
from tasks.contracts import Factors, Split
from tasks.evaluate import Popularity, evaluate
from tasks.models.ease import EASEConfig
from tasks.models.itemknn import ItemKNNConfig
from tasks.models.registry import fit
from tasks.models.rp3beta import RP3betaConfig
from tasks.split import per_user_holdout
from tasks.weight import weight

# every model on HetRec 2K over three seeds (~90 s): a quality check, not a unit test
pytestmark = pytest.mark.slow

SEEDS = (0, 1, 2)


def _at10(scorer, split: Split) -> dict[str, float]:
    return {m.metric: m.value for m in evaluate(scorer, split, [10]) if m.k == 10}


def _implicit_default_als(train, seed: int) -> Factors:
    from implicit.cpu.als import AlternatingLeastSquares

    weighted = train.copy()
    weighted.data = np.log1p(weighted.data)
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(random_state=seed)
        model.fit(weighted, show_progress=False)
    return Factors("implicit-als-default", {}, model.user_factors, model.item_factors, 0.0)


def test_shipped_user_model_beats_implicit_default_als_and_popularity(hetrec_encoded):
    cfg = RetrainConfig().user_model
    # the item models alone, each with its own defaults on the shipped blend's weighting
    items = {
        "item-kNN": ItemKNNConfig(weight=cfg.weight, neighbours=200, k1=0.5, b=0.6),
        "EASE": EASEConfig(weight=cfg.weight),
        "RP3beta": RP3betaConfig(weight=cfg.weight),
    }
    results: dict[str, list[dict[str, float]]] = {"default": [], "reference": [], "popularity": []}
    results |= {name: [] for name in items}
    for seed in SEEDS:
        split = per_user_holdout(hetrec_encoded.plays, fraction=0.2, min_artists=5, seed=seed)
        weighted = weight(split.train, cfg.weight)
        on_weighted = Split(weighted, split.test, split.rule, seed)
        shipped = fit(weighted, cfg.model_copy(update={"random_state": seed}))
        results["default"].append(_at10(shipped, on_weighted))
        results["reference"].append(_at10(_implicit_default_als(split.train, seed), split))
        results["popularity"].append(_at10(Popularity(split.train), split))
        for name, item in items.items():
            results[name].append(_at10(fit(weighted, item.model_copy(update={"random_state": seed})), on_weighted))
    mean = {
        name: {m: float(np.mean([r[m] for r in runs])) for m in ("precision", "ndcg")} for name, runs in results.items()
    }
    print(f"\nHetRec 2K test split, mean over seeds {SEEDS}\n{'model':<30} precision@10  ndcg@10")
    for name, m in mean.items():
        print(f"{name:<30} {m['precision']:.4f}        {m['ndcg']:.4f}")

    default, reference, popularity = mean["default"], mean["reference"], mean["popularity"]
    assert default["precision"] >= 1.04 * reference["precision"], mean
    assert default["ndcg"] >= 1.04 * reference["ndcg"], mean
    assert default["precision"] >= 0.19, mean
    assert default["precision"] >= 2.5 * popularity["precision"], mean
    for name in items:
        assert mean[name]["precision"] > popularity["precision"], (name, mean)

"""The acceptance bar for the shipped user model, on HetRec 2K with references measured here.

Per-user 20 % holdout, 3 seeds, averaged. The reference is implicit's ``AlternatingLeastSquares``
with its default hyper-parameters on log1p(plays), fitted directly through implicit (not through
our wrapper); the popularity baseline is ours. The shipped default (chosen by `recs tune` on
validation folds of the train part, never on these test pairs) must beat the reference by 15 %
relative in both precision@10 and nDCG@10, reach precision@10 >= 0.20, and be 2.5 x popularity.

Beside them it prints, on the same test splits (measured, not chosen on them), the item models
alone with their own defaults on the shipped log1p weighting: item-kNN (the previous shipped
blend's tuned part), EASE and RP3beta; each must beat popularity, nothing more is asserted about
them.
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

# every model on HetRec 2K over three seeds (~90 s idle; 7 min at a load average of 6): a quality check, not a unit test
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


@pytest.fixture(scope="module")
def quality(hetrec_encoded) -> dict[str, dict[str, float]]:
    """Mean precision@10 and nDCG@10 per model over ``SEEDS`` on the same test splits, printed
    (with precision@10 per seed) beside each other."""
    cfg = RetrainConfig().user_model
    # the item models alone on the shipped blend's weighting: EASE and RP3beta with their own defaults
    items = {
        "item-kNN (K 200, k1 0.5, b 0.6)": ItemKNNConfig(weight=cfg.weight, neighbours=200, k1=0.5, b=0.6),
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
    print(f"\nHetRec 2K test split, mean over seeds {SEEDS} (per seed: precision@10)")
    print(f"{'model':<32} precision@10  ndcg@10  per seed")
    for name, m in mean.items():
        seeds = " ".join(f"{r['precision']:.4f}" for r in results[name])
        print(f"{name:<32} {m['precision']:.4f}        {m['ndcg']:.4f}   {seeds}")
    return mean


def test_shipped_user_model_beats_implicit_default_als_and_popularity(quality):
    default, reference, popularity = quality["default"], quality["reference"], quality["popularity"]
    assert default["ndcg"] >= 1.15 * reference["ndcg"], quality
    assert default["precision"] >= 0.20, quality
    assert default["precision"] >= 2.5 * popularity["precision"], quality
    for name in ("item-kNN (K 200, k1 0.5, b 0.6)", "EASE", "RP3beta"):
        assert quality[name]["precision"] > popularity["precision"], (name, quality)


# Measured (docs/models.md): +15.2 %, precision@10 0.2042 against 0.1773 (the target is 0.2039: a
# thin margin). The previous default reached +14.3 % and this was a strict xfail.
def test_shipped_user_model_lifts_precision_15_percent_over_implicit_default_als(quality):
    assert quality["default"]["precision"] >= 1.15 * quality["reference"]["precision"], quality

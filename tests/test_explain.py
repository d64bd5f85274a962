"""tasks.explain: the heard artist behind each recommendation, against per-user brute force.

Every model is fitted on real HetRec 2K listening (a slice of its users, to stay quick); the
reference walks each user's history with plain NumPy, the way the definitions read.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import tasks.explain as explain
from tasks.candidates import blend_top_n, two_stage_parts
from tasks.contracts import Factors
from tasks.index import IndexConfig, build_index, normalise
from tasks.models.base import fit
from tasks.models.blend import Blend, BlendConfig, BlendPart, standardise
from tasks.models.ease import EASEConfig
from tasks.models.implicit_mf import ALSConfig
from tasks.models.itemknn import ItemKNNConfig
from tasks.models.rp3beta import RP3betaConfig
from tasks.recommend import recommend, user_top_n
from tasks.weight import WeightConfig, weight

N = 10


@pytest.fixture(scope="module")
def plays(hetrec_encoded):
    """The first 300 users of HetRec 2K and the artists they heard (CSR, raw plays)."""
    rows = hetrec_encoded.plays[:300]
    heard = np.flatnonzero(np.diff(rows.tocsc().indptr))
    return sp.csr_matrix(rows[:, heard])


def reference(contribution, heard: sp.csr_matrix, ids: np.ndarray, floor: float) -> np.ndarray:
    """Per user and recommendation, the heard artist with the largest ``contribution(u, j, i)``."""
    out = np.full(ids.shape, -1, dtype=np.int32)
    for u in range(ids.shape[0]):
        row = heard[u]
        for r, i in enumerate(ids[u]):
            if i < 0:
                continue
            values = np.array([contribution(u, j, x, i) for j, x in zip(row.indices, row.data)])
            if len(values) and values.max() > floor:
                out[u, r] = row.indices[int(np.argmax(values))]
    return out


def agree(got: np.ndarray, expected: np.ndarray, values, ids) -> None:
    """Equal, or tied with the reference's choice (the same contribution to float32 precision)."""
    differ = np.argwhere(got != expected)
    for u, r in differ:
        i = ids[u, r]
        assert got[u, r] >= 0 and expected[u, r] >= 0, (u, r)
        assert values(u, got[u, r], i) == pytest.approx(values(u, expected[u, r], i), rel=1e-5, abs=1e-6)
    assert len(differ) <= 0.01 * (ids >= 0).sum()


@pytest.mark.parametrize(
    "model",
    [
        ItemKNNConfig(neighbours=50),
        RP3betaConfig(neighbours=50),
        EASEConfig(l2=300.0, max_artists=1500),
    ],
    ids=["itemknn", "rp3beta", "ease"],
)
def test_item_models_name_the_largest_term_of_the_score(plays, model, monkeypatch):
    # chunks of 40 cells: most chunks a handful of entries, a history of more than 40 one alone
    monkeypatch.setattr(explain, "BLOCK_CELLS", 40)
    scorer = fit(weight(plays, model.weight), model)
    ids = user_top_n(scorer, plays, N).ids
    dense = plays.toarray()
    if isinstance(model, ItemKNNConfig):
        w = scorer.similarity.toarray()

        def term(u, j, x, i):
            return w[j, i]
    elif isinstance(model, RP3betaConfig):
        w = scorer.weights.toarray()

        def term(u, j, x, i):
            return x * w[j, i]
    else:
        position = {a: p for p, a in enumerate(scorer.kept)}

        def term(u, j, x, i):
            return x * scorer.weights[position[j], position[i]] if j in position else 0.0

    got = explain.because(scorer, plays, ids)
    agree(got, reference(term, plays, ids, 0.0), lambda u, j, i: term(u, j, dense[u, j], i), ids)
    assert (got[ids >= 0] >= 0).mean() > 0.95  # almost every recommendation has a heard reason
    heard_pairs = plays[np.arange(len(ids))[:, None].repeat(N, 1)[got >= 0], got[got >= 0]]
    assert (np.asarray(heard_pairs) > 0).all()  # always one of the user's own artists


def test_factor_models_name_the_most_similar_heard_artist(plays, monkeypatch):
    model = ALSConfig(factors=16, iterations=5)
    scorer = fit(weight(plays, model.weight), model)
    ids = user_top_n(scorer, plays, N).ids
    unit = normalise(scorer.artist_factors)

    def cosine(u, j, i):
        return float(unit[j] @ unit[i])

    expected = reference(lambda u, j, x, i: cosine(u, j, i), plays, ids, -np.inf)
    agree(explain.because(scorer, plays, ids), expected, cosine, ids)
    monkeypatch.setattr(explain, "BLOCK_CELLS", 5_000)  # many small chunks give the same answer
    agree(explain.because(scorer, plays, ids), expected, cosine, ids)


def test_a_blend_names_the_reason_of_the_part_that_dominated(plays):
    model = BlendConfig(
        weight=WeightConfig(scheme="log"),
        parts=[
            BlendPart(model=ALSConfig(factors=16, iterations=5), weight=0.5),
            BlendPart(model=ItemKNNConfig(neighbours=50), weight=0.5),
        ],
    )
    blend = fit(weight(plays, model.weight), model)
    ids = user_top_n(blend, plays, N).ids
    users = np.arange(len(ids))
    (wf, factor), (wk, knn) = blend.parts
    z = [standardise(np.asarray(part.score(users, plays), dtype=np.float32), plays) for part in (factor, knn)]
    shares = np.stack([w * np.take_along_axis(s, ids, axis=1) for w, s in zip((wf, wk), z)])
    parts = np.stack([explain.because(part, plays, ids) for part in (factor, knn)])
    got = explain.because(blend, plays, ids)
    factor_won = (shares[0] >= shares[1]) | (parts[1] < 0)
    np.testing.assert_array_equal(got, np.where(factor_won, parts[0], parts[1]))
    assert 0 < factor_won.mean() < 1  # both parts explain some recommendations here


@pytest.fixture(scope="module")
def mixed(plays):
    """A blend of the shipped blend's kinds of part (ALS, item-kNN, RP3beta; small), plus the
    item-kNN part again at weight 0 between them: its share is 0 (as ``Blend.score`` weighs it),
    and the two-stage top-N, which leaves it out, gives shares for the other three only."""
    model = BlendConfig(
        weight=WeightConfig(scheme="log"),
        parts=[
            BlendPart(model=ALSConfig(factors=16, iterations=5), weight=0.4),
            BlendPart(model=ItemKNNConfig(neighbours=50), weight=0.4),
            BlendPart(model=RP3betaConfig(neighbours=50), weight=0.2),
        ],
    )
    blend = fit(weight(plays, model.weight), model)
    als, knn, rp3 = blend.parts
    return Blend(blend.params, [als, (0.0, knn[1]), knn, rp3], blend.fit_seconds)


def test_a_blend_asks_its_parts_in_order_of_their_shares(plays, mixed):
    """Per recommendation, straight from the definition: the parts by share (dense standardised
    scores, weighted), best first; the first whose own ``because`` names a heard artist gives it."""
    ids = user_top_n(mixed, plays, N).ids
    users = np.arange(len(ids))
    shares = np.stack(
        [
            w * np.take_along_axis(standardise(np.asarray(part.score(users, plays), dtype=np.float32), plays), ids, 1)
            for w, part in mixed.parts
        ]
    )
    named = np.stack([explain.because(part, plays, ids) for _, part in mixed.parts])
    expected = np.full(ids.shape, -1, dtype=np.int32)
    for u, r in np.argwhere(ids >= 0):
        asked = [p for p in np.argsort(-shares[:, u, r], kind="stable") if named[p, u, r] >= 0]
        expected[u, r] = named[asked[0], u, r] if asked else -1
    np.testing.assert_array_equal(explain.because(mixed, plays, ids), expected)
    assert set(np.unique(shares.argmax(axis=0)[ids >= 0])) == {0, 2, 3}  # each weighted part dominated some


def test_the_top_n_shares_give_the_same_reasons(plays, mixed):
    """``because`` fed the two-stage top-N's shares (all rows, or some: the rows the top-N ranked
    densely have none) names what it names computing them itself."""
    ranked = blend_top_n(two_stage_parts(mixed), plays, N, np.arange(plays.shape[0]))
    ids = ranked.top.ids
    computed = explain.because(mixed, plays, ids)
    np.testing.assert_array_equal(explain.because(mixed, plays, ids, shares=ranked.shares), computed)
    some = ranked.shares.copy()
    some[:, ::3] = np.nan
    np.testing.assert_array_equal(explain.because(mixed, plays, ids, shares=some), computed)
    # RP3beta made to dominate everything: where it names nobody the next part by share answers
    rp3 = explain.because(mixed.parts[3][1], plays, ids)
    assert (rp3[ids >= 0] < 0).any()
    forced, without = ranked.shares.copy(), ranked.shares.copy()
    forced[2], without[2] = 100.0, -np.inf  # -inf: that part cannot explain
    next_best = explain.because(mixed, plays, ids, shares=without)
    np.testing.assert_array_equal(explain.because(mixed, plays, ids, shares=forced), np.where(rp3 >= 0, rp3, next_best))


@pytest.mark.parametrize("engine", ["exact", "faiss"])
def test_the_recommend_stage_explains_from_its_top_n(plays, mixed, engine, tmp_path):
    """The recommend stage hands its two-stage top-N's shares to ``because`` (exact candidates,
    or the index's): the reasons are those ``because`` finds from scratch."""
    factors = mixed.parts[0][1]
    cfg = IndexConfig(engine=engine, two_stage=True).resolved(*plays.shape)
    index = (
        build_index(factors.artist_factors, cfg, tmp_path / "u.idx", inner_product=True) if engine != "exact" else None
    )
    done = recommend(factors, mixed, None, index, plays, N, cfg)
    np.testing.assert_array_equal(done.because, explain.because(mixed, plays, done.users.ids))


def test_padding_and_baselines_explain_nothing(plays):
    model = Factors("f", {}, np.ones((300, 2), np.float32), np.ones((plays.shape[1], 2), np.float32), 0.0)
    ids = np.full((300, N), -1, dtype=np.int32)
    ids[:, 0] = 0
    got = explain.because(model, plays, ids)
    assert (got[:, 1:] == -1).all() and (got[:, 0] >= 0).all()
    assert (explain.because(object(), plays, ids) == -1).all()  # type: ignore[arg-type]

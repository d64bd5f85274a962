"""tasks.index: Annoy and faiss indexes on disk, by cosine and by inner product."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.errors import RecsError
from tasks.index import IndexConfig, build_index, faiss_choices, n_lists, normalise, probe_ladder


def _factors(n: int = 300, f: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, f)).astype(np.float32)


def test_normalise_keeps_zero_rows():
    x = np.vstack([_factors(5), np.zeros((1, 8), np.float32)])
    unit = normalise(x)
    np.testing.assert_allclose(np.linalg.norm(unit[:5], axis=1), 1, rtol=1e-6)
    assert not unit[5].any() and unit.dtype == np.float32


def test_cosine_index_finds_cosine_neighbours(tmp_path):
    x = _factors()
    info = build_index(x, IndexConfig(engine="annoy", n_trees=20, search_k=-1), tmp_path / "related.ann")
    assert info.path.is_file() and (info.dim, info.n_items, info.n_trees) == (8, 300, 20)
    assert not info.inner_product and info.build_seconds > 0
    index = info.load()
    unit = normalise(x)
    cosine = unit @ unit.T
    np.fill_diagonal(cosine, -np.inf)
    # searching every node makes Annoy exact; its answer must be the cosine nearest neighbour
    nearest = [index.get_nns_by_item(i, 2, search_k=10**6)[1] for i in range(0, 300, 7)]
    assert nearest == cosine[::7].argmax(axis=1).tolist()


def test_inner_product_index_ranks_by_dot_product(tmp_path):
    x = _factors() * np.random.default_rng(1).uniform(0.1, 3, (300, 1)).astype(np.float32)  # varied norms
    user = _factors(1, seed=2)[0]
    info = build_index(x, IndexConfig(engine="annoy", n_trees=20), tmp_path / "users.ann", inner_product=True)
    assert info.dim == 9 and info.inner_product
    found = info.load().get_nns_by_vector(np.append(user, 0), 10, search_k=10**6)
    assert found == np.argsort(-(x @ user))[:10].tolist()


ENGINES = {"annoy": IndexConfig(engine="annoy", n_trees=10), "faiss": IndexConfig(engine="faiss", n_lists=4)}


@pytest.mark.parametrize("engine", ENGINES)
def test_same_seed_same_file(tmp_path, engine):
    a = build_index(_factors(), ENGINES[engine], tmp_path / "a.idx", seed=7)
    b = build_index(_factors(), ENGINES[engine], tmp_path / "b.idx", seed=7)
    assert a.engine == engine and a.path.read_bytes() == b.path.read_bytes()


def test_faiss_index_searches_by_cosine_and_inner_product(tmp_path):
    x = _factors() * np.random.default_rng(1).uniform(0.1, 3, (300, 1)).astype(np.float32)
    cfg = IndexConfig(engine="faiss", n_lists=4, n_probe=4, n_probe_users=4)  # every list: exact
    related = build_index(x, cfg, tmp_path / "related.faiss")
    assert (related.dim, related.n_items, related.n_lists, related.n_probe) == (8, 300, 4, 4)
    unit = normalise(x)
    found = related.searcher()(unit[:5], 3)
    assert found.dtype == np.int64 and found.tolist() == np.argsort(-(unit[:5] @ unit.T), axis=1)[:, :3].tolist()
    users = build_index(x, cfg, tmp_path / "users.faiss", inner_product=True)
    user = _factors(1, seed=2)
    assert (
        users.dim == 9
        and users.searcher()(np.hstack([user, [[0]]]), 10)[0].tolist() == np.argsort(-(x @ user[0]))[:10].tolist()
    )


def _clustered(n: int, f: int = 16, seed: int = 3) -> np.ndarray:
    """Factors around 40 cluster centres: an IVF index needs several lists to find a neighbour."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, f))
    return (centres[rng.integers(0, 40, n)] + 0.6 * rng.normal(size=(n, f))).astype(np.float32)


def test_calibrated_probe_is_the_fewest_lists_reaching_the_target(tmp_path):
    from tasks.recommend import related_approx, related_exact
    from tasks.topn import recall_at_n

    x, n, seed = _clustered(6_000), 10, 5
    cfg = IndexConfig(engine="faiss", n_lists=60, recall_sample=500, recall_target=0.95)
    info = build_index(x, cfg, tmp_path / "auto.faiss", seed=seed, n=n)
    # the sample calibration measured on, as build_index draws it; recall by recommend's own check
    rows = np.sort(np.random.default_rng(seed).choice(len(x), size=500, replace=False))
    exact = related_exact(x, n, rows)

    def recall(probe: int) -> float:
        pinned = build_index(x, cfg.model_copy(update={"n_probe": probe}), tmp_path / f"{probe}.faiss", seed=seed)
        return recall_at_n(related_approx(pinned, x, n), exact, rows)

    ladder = probe_ladder(60)
    assert 1 < info.n_probe < 60 and info.n_probe in ladder  # neither the first rung nor exhaustive search
    below = ladder[ladder.index(info.n_probe) - 1]
    assert recall(info.n_probe) >= 0.95 > recall(below)
    # on artists it was not calibrated on, the chosen count holds (within sampling noise)
    others = np.setdiff1d(np.arange(len(x)), rows)[:1_000]
    assert recall_at_n(related_approx(info, x, n), related_exact(x, n, others), others) >= 0.93
    # a higher target takes more lists; a pinned count and the user index's are kept as set
    strict = build_index(x, cfg.model_copy(update={"recall_target": 1.0}), tmp_path / "strict.faiss", seed=seed, n=n)
    assert strict.n_probe > info.n_probe
    assert build_index(x, cfg.model_copy(update={"n_probe": 7}), tmp_path / "p.faiss", n=n).n_probe == 7
    users = build_index(x, cfg.model_copy(update={"n_probe_users": 9}), tmp_path / "u.faiss", inner_product=True)
    assert users.n_probe == 9
    assert faiss_choices({"related": info, "users": users, "related-lsa": None}) == {
        "n_lists": {"related": 60, "users": 60},
        "n_probe": {"related": info.n_probe, "users": 9},
    }
    assert faiss_choices({"related": None}) == {}


def test_probe_ladder_steps_by_about_half_and_ends_with_every_list():
    assert probe_ladder(1) == [1] and probe_ladder(2) == [1, 2]
    assert probe_ladder(30) == [1, 2, 3, 4, 6, 8, 12, 16, 24, 30]
    assert probe_ladder(1643)[-3:] == [1024, 1536, 1643]


def test_faiss_lists_follow_the_catalogue():
    assert n_lists(300_000, None) == 1643  # about 3 sqrt(n), the user index's
    assert n_lists(300_000, None, per_sqrt=2) == 1095  # related artists'
    assert n_lists(300_000, 700, per_sqrt=2) == 700
    assert n_lists(400, None) == 10 and n_lists(400, 64) == 10  # at least 39 artists a list
    assert n_lists(20, None) == 1 and n_lists(100_000, 256) == 256


def test_related_and_user_indexes_get_their_own_list_counts(tmp_path):
    x = _clustered(20_000)
    cfg = IndexConfig(engine="faiss", n_probe=1)
    assert build_index(x, cfg, tmp_path / "r.faiss").n_lists == n_lists(20_000, None, per_sqrt=2) == 282
    assert build_index(x, cfg, tmp_path / "u.faiss", inner_product=True).n_lists == n_lists(20_000, None) == 424
    pinned = cfg.model_copy(update={"n_lists": 50})
    assert build_index(x, pinned, tmp_path / "p.faiss").n_lists == 50


@pytest.mark.parametrize("engine", ENGINES)
def test_bad_input_and_paths(tmp_path, engine):
    cfg = ENGINES[engine]
    bad = _factors()
    bad[3, 2] = np.nan
    with pytest.raises(RecsError, match="NaN"):
        build_index(bad, cfg, tmp_path / "x.idx")
    with pytest.raises(RecsError, match="non-empty"):
        build_index(np.empty((0, 4), np.float32), cfg, tmp_path / "x.idx")
    (tmp_path / "taken").mkdir()
    with pytest.raises(RecsError, match="cannot write"):  # the target is a directory
        build_index(_factors(), cfg, tmp_path / "taken")
    assert [p.name for p in tmp_path.rglob("*")] == ["taken"]  # no half-written index left behind
    info = build_index(_factors(), cfg, tmp_path / "gone.idx")
    info.path.unlink()
    with pytest.raises(RecsError, match="cannot load"):
        info.load()


def test_auto_engine_is_exact_for_small_catalogues_and_faiss_for_large_ones(tmp_path):
    from tasks.index import AUTO_EXACT_CELLS

    auto = IndexConfig()
    assert auto.engine == "auto" and auto.approximate_users is None
    hetrec = auto.resolved(1_892, 17_632)  # 3.4e8 inner products for exact search
    assert (hetrec.engine, hetrec.approximate_users) == ("exact", False)
    lastfm_360k = auto.resolved(360_000, 300_000)  # 2e11
    assert (lastfm_360k.engine, lastfm_360k.approximate_users) == ("faiss", True)
    # the boundary as documented: (users + artists) x artists against AUTO_EXACT_CELLS
    assert auto.resolved(AUTO_EXACT_CELLS // 50_000 - 50_000, 50_000).engine == "exact"
    assert auto.resolved(AUTO_EXACT_CELLS // 50_000 - 49_999, 50_000).engine == "faiss"
    # pinned choices stay pinned
    assert IndexConfig(engine="annoy").resolved(360_000, 300_000).engine == "annoy"
    assert IndexConfig(approximate_users=False).resolved(360_000, 300_000).approximate_users is False
    assert IndexConfig(engine="faiss").resolved(10, 10).approximate_users is True
    # a blend's users go two-stage from TWO_STAGE_MIN_ARTISTS artists up, unless pinned
    assert (hetrec.two_stage, auto.resolved(3_000, 4_000).two_stage, lastfm_360k.two_stage) == (True, False, True)
    assert IndexConfig(two_stage=False).resolved(360_000, 300_000).two_stage is False
    with pytest.raises(RecsError, match="resolve the config first"):
        build_index(_factors(), auto, tmp_path / "unused.idx")

"""tasks.index: Annoy indexes on disk, by cosine and by inner product."""

from __future__ import annotations

import numpy as np
import pytest

from flows.config import IndexConfig
from tasks.errors import RecsError
from tasks.index import build_index, normalise


def _factors(n: int = 300, f: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, f)).astype(np.float32)


def test_normalise_keeps_zero_rows():
    x = np.vstack([_factors(5), np.zeros((1, 8), np.float32)])
    unit = normalise(x)
    np.testing.assert_allclose(np.linalg.norm(unit[:5], axis=1), 1, rtol=1e-6)
    assert not unit[5].any() and unit.dtype == np.float32


def test_cosine_index_finds_cosine_neighbours(tmp_path):
    x = _factors()
    info = build_index(x, IndexConfig(n_trees=20, search_k=-1), tmp_path / "related.ann")
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
    info = build_index(x, IndexConfig(n_trees=20), tmp_path / "users.ann", inner_product=True)
    assert info.dim == 9 and info.inner_product
    found = info.load().get_nns_by_vector(np.append(user, 0), 10, search_k=10**6)
    assert found == np.argsort(-(x @ user))[:10].tolist()


def test_same_seed_same_file(tmp_path):
    a = build_index(_factors(), IndexConfig(n_trees=10), tmp_path / "a.ann", seed=7)
    b = build_index(_factors(), IndexConfig(n_trees=10), tmp_path / "b.ann", seed=7)
    assert a.path.read_bytes() == b.path.read_bytes()


def test_bad_input_and_paths(tmp_path):
    bad = _factors()
    bad[3, 2] = np.nan
    with pytest.raises(RecsError, match="NaN"):
        build_index(bad, IndexConfig(), tmp_path / "x.ann")
    with pytest.raises(RecsError, match="non-empty"):
        build_index(np.empty((0, 4), np.float32), IndexConfig(), tmp_path / "x.ann")
    (tmp_path / "taken").mkdir()
    with pytest.raises(RecsError, match="cannot write"):  # the target is a directory
        build_index(_factors(), IndexConfig(n_trees=2), tmp_path / "taken")
    assert [p.name for p in tmp_path.rglob("*")] == ["taken"]  # no half-written index left behind
    info = build_index(_factors(), IndexConfig(n_trees=2), tmp_path / "gone.ann")
    info.path.unlink()
    with pytest.raises(RecsError, match="cannot load"):
        info.load()

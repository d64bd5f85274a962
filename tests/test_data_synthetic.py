"""tasks.data.synthetic: the 360K file format, determinism, and the structure a recommender should find."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from implicit.als import AlternatingLeastSquares
from implicit.nearest_neighbours import bm25_weight
from threadpoolctl import threadpool_limits

from tasks.data.datasets import DataConfig, obtain, resolve
from tasks.data.download import file_sha256
from tasks.data.encode import encode
from tasks.data.parse import parse
from tasks.data.synthetic import SyntheticConfig, generate
from tasks.errors import RecsError

DEFAULT = SyntheticConfig()


@pytest.fixture(scope="module")
def default_file(tmp_path_factory) -> Path:
    """The default (small) size, as `recs run` uses it."""
    d = DEFAULT
    return generate(tmp_path_factory.mktemp("syn") / "plays.tsv", d.users, d.artists, d.rows, d.genres, d.seed)


def test_exact_360k_format(default_file: Path):
    lines = default_file.read_bytes().decode("utf-8").split("\n")
    assert lines[-1] == "" and len(lines) - 1 == DEFAULT.rows
    fields = [line.split("\t") for line in lines[:-1]]
    assert {len(f) for f in fields} == {4}
    users, mbids, names, plays = zip(*fields)
    assert all(re.fullmatch(r"[0-9a-f]{40}", u) for u in set(users))
    assert list(users) == sorted(users)  # grouped by user in sha1 order, like the original
    uuid = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
    assert all(m == "" or uuid.fullmatch(m) for m in set(mbids))
    assert 0 < mbids.count("") < len(mbids) / 4
    assert all(re.fullmatch(r"[A-Z][A-Za-z& ]*[a-z]", n) for n in set(names))
    assert all(p.isdigit() and int(p) > 0 for p in plays)
    # One name per artist, unique even after the 360K normalisation (case, spacing).
    by_name = {}
    for mbid, name in zip(mbids, names):
        by_name.setdefault(" ".join(name.lower().split()), set()).add(mbid)
    assert all(len(ids) == 1 for ids in by_name.values())


def test_parses_to_the_requested_size_with_every_user(default_file: Path):
    interactions = parse(default_file, "synthetic")
    assert interactions.bad_rows.counts == {} and interactions.dataset == "synthetic"
    enc = encode(interactions)
    assert enc.plays.nnz == DEFAULT.rows and enc.n_users == DEFAULT.users
    assert enc.n_artists <= DEFAULT.artists


def test_deterministic_by_seed(default_file: Path, tmp_path: Path):
    d = DEFAULT
    again = generate(tmp_path / "again.tsv", d.users, d.artists, d.rows, d.genres, d.seed)
    other = generate(tmp_path / "other.tsv", d.users, d.artists, d.rows, d.genres, d.seed + 1)
    assert again.read_bytes() == default_file.read_bytes()
    assert other.read_bytes() != default_file.read_bytes()


def test_power_law_popularity_and_activity_and_heavy_tailed_plays(default_file: Path):
    enc = encode(parse(default_file))
    listeners = np.sort(enc.listeners)[::-1]
    # Baseline: the same number of pairs spread uniformly over the artists.
    rng = np.random.default_rng(0)
    uniform = np.sort(np.bincount(rng.integers(0, enc.n_artists, enc.plays.nnz), minlength=enc.n_artists))[::-1]
    for share, factor in ((0.1, 2), (0.01, 4)):
        top = int(enc.n_artists * share)
        assert listeners[:top].sum() / listeners.sum() > factor * uniform[:top].sum() / uniform.sum()
    activity = np.diff(enc.plays.indptr)
    assert activity.max() > 5 * np.median(activity)
    plays = enc.plays.data
    assert np.quantile(plays, 0.99) > 10 * np.median(plays)


def _als_over_popularity(path: Path) -> float:
    """precision@10 of ALS divided by that of popularity, on a random 20% holdout."""
    plays = encode(parse(path)).plays.tocoo()
    rng = np.random.default_rng(0)
    per_user = np.bincount(plays.row, minlength=plays.shape[0])
    hold = (rng.random(plays.nnz) < 0.2) & (per_user[plays.row] >= 5)
    train = sp.csr_matrix((plays.data[~hold], (plays.row[~hold], plays.col[~hold])), shape=plays.shape)
    test = sp.csr_matrix((np.ones(hold.sum()), (plays.row[hold], plays.col[hold])), shape=plays.shape).toarray()
    heard = train.toarray() > 0
    users = np.flatnonzero(test.sum(axis=1))

    def precision(scores: np.ndarray) -> float:
        top = np.argpartition(-np.where(heard, -np.inf, scores), 10, axis=1)[:, :10]
        return np.take_along_axis(test, top, axis=1)[users].sum() / (10 * len(users))

    with threadpool_limits(1, "blas"):
        als = AlternatingLeastSquares(factors=32, iterations=10, regularization=0.05, random_state=0)
        als.fit(bm25_weight(train, K1=100, B=0.8).tocsr(), show_progress=False)
    popularity = np.broadcast_to(np.bincount(train.indices, minlength=plays.shape[1]).astype(float), plays.shape)
    return precision(als.user_factors @ als.item_factors.T) / precision(popularity)


def test_genres_give_a_factor_model_structure_to_find(default_file: Path, tmp_path: Path):
    """ALS beats popularity by far more on the default data than on the same size with one genre."""
    d = DEFAULT
    one_genre = generate(tmp_path / "one.tsv", d.users, d.artists, d.rows, 1, d.seed)
    with_genres, without = _als_over_popularity(default_file), _als_over_popularity(one_genre)
    assert with_genres > 1.5 and with_genres > 1.5 * without


def test_impossible_sizes_are_refused(tmp_path: Path):
    with pytest.raises(RecsError, match=r"synthetic size users=100, artists=10, rows=1,000, genres=40 is impossible"):
        generate(tmp_path / "x.tsv", users=100, artists=10, rows=1_000)
    assert not list(tmp_path.iterdir())


def test_obtain_generates_once_then_reuses_and_regenerates_a_damaged_file(tmp_path: Path):
    config = DataConfig(cache_dir=tmp_path, synthetic=SyntheticConfig(users=50, artists=200, rows=1_000, seed=4))
    first = obtain(resolve(config))
    assert not first.from_cache and first.sha256 == file_sha256(first.path)
    second = obtain(resolve(config))
    assert second.from_cache and second.path == first.path and second.sha256 == first.sha256
    first.path.write_text("damaged")
    third = obtain(resolve(config))
    assert not third.from_cache and third.sha256 == first.sha256


def test_recs_data_defaults_to_synthetic_offline_and_reuses_it(tmp_path: Path):
    from typer.testing import CliRunner

    from flows.cli import app

    runs = [CliRunner().invoke(app, ["data", "--cache-dir", str(tmp_path)]) for _ in range(2)]
    for result in runs:
        assert result.exit_code == 0, result.output
        out = " ".join(result.output.replace("│", " ").split())
        assert f"users {DEFAULT.users:,}" in out and f"pairs {DEFAULT.rows:,}" in out and "bad rows none" in out
    assert "(cached)" not in runs[0].output and "(cached)" in runs[1].output


def test_names_stay_unique_at_the_360k_catalogue_size():
    from tasks.data.synthetic import ADJECTIVES, GIVEN_NAMES, _names

    assert not {w.lower() for w in ADJECTIVES} & {w.lower() for w in GIVEN_NAMES}
    names = _names(np.random.default_rng(0), 300_000)
    normalised = np.char.lower(names)
    assert len(np.unique(normalised)) == 300_000

"""tasks.data.encode: the HetRec 2K matrix, key/name tables, and the listener/artist filters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from tasks.contracts import BadRows, Interactions
from tasks.data.encode import encode
from tasks.data.parse import parse
from tasks.data.synthetic import generate
from tasks.errors import RecsError


def test_hetrec_matrix_and_tables(hetrec_encoded, hetrec_dir: Path):
    raw = pd.read_csv(hetrec_dir / "user_artists.dat", sep="\t", dtype={"userID": str, "artistID": str})
    enc = hetrec_encoded
    assert isinstance(enc.plays, sp.csr_matrix) and enc.plays.dtype == np.float32
    assert enc.plays.shape == (1_892, 17_632) and enc.plays.nnz == 92_834
    assert enc.plays.has_sorted_indices and enc.plays.has_canonical_format
    assert enc.artist_plays.sum() == raw["weight"].sum()
    users = {key: code for code, key in enumerate(enc.user_keys)}
    artists = {key: code for code, key in enumerate(enc.artist_keys)}
    assert enc.artist_names[artists["89"]] == "Lady Gaga"
    for row in raw.sample(50, random_state=0).itertuples():
        assert enc.plays[users[row.userID], artists[row.artistID]] == row.weight
    assert all(isinstance(k, str) for k in (enc.user_keys[0], enc.artist_keys[0], enc.artist_names[0]))
    assert enc.listeners.sum() == enc.plays.nnz


def _naive_filter(frame: pd.DataFrame, min_listeners: int, min_artists: int) -> set[tuple[str, str]]:
    """Reference: drop rare artists and light users with groupby until nothing changes."""
    frame = frame.astype({"user": str, "artist": str})
    while True:
        listeners = frame.groupby("artist")["user"].transform("size")
        per_user = frame.groupby("user")["artist"].transform("size")
        kept = frame[(listeners >= min_listeners) & (per_user >= min_artists)]
        if len(kept) == len(frame):
            return set(zip(kept["user"], kept["artist"]))
        frame = kept


def test_filters_reach_the_same_pairs_as_a_naive_fixed_point(hetrec_dir: Path):
    interactions = parse(hetrec_dir)
    enc = encode(interactions, min_listeners=10, min_artists=20)
    coo = enc.plays.tocoo()
    pairs = set(zip(enc.user_keys[coo.row], enc.artist_keys[coo.col]))
    assert pairs == _naive_filter(interactions.frame, 10, 20)
    assert enc.listeners.min() >= 10 and np.diff(enc.plays.indptr).min() >= 20
    assert enc.n_artists < 17_632 and enc.n_users < 1_892


def test_plain_string_columns_encode_like_categoricals(tmp_path: Path):
    interactions = parse(generate(tmp_path / "p.tsv", users=100, artists=300, rows=2_000, genres=4, seed=1))
    plain = Interactions(
        interactions.frame.astype({c: str for c in ("user", "artist", "artist_name")}),
        interactions.bad_rows,
        interactions.dataset,
    )
    a, b = encode(interactions), encode(plain)
    assert (a.plays != b.plays).nnz == 0
    for name in ("user_keys", "artist_keys", "artist_names"):
        assert getattr(a, name).tolist() == getattr(b, name).tolist()


def test_first_name_per_artist_and_duplicates_summed():
    frame = pd.DataFrame(
        {
            "user": ["a", "b", "a"],
            "artist": ["x", "x", "x"],
            "artist_name": ["X one", "X two", "X three"],
            "plays": np.float32([1, 2, 3]),
        }
    )
    enc = encode(Interactions(frame, BadRows(3, 3), "test"))
    assert enc.artist_names.tolist() == ["X one"]
    assert enc.plays.toarray().tolist() == [[4.0], [2.0]]


def test_filters_that_leave_nothing_are_refused(hetrec_dir: Path):
    with pytest.raises(RecsError, match=r"no listening pairs left after filtering \(min_listeners=100000"):
        encode(parse(hetrec_dir), min_listeners=100_000)

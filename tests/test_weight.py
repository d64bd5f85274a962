"""tasks.weight: each scheme's shape/dtype contract and which axis it normalises over."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from tasks.errors import RecsError
from tasks.weight import WeightConfig, weight


def _plays() -> sp.csr_matrix:
    rng = np.random.default_rng(0)
    m = sp.random(40, 60, density=0.2, format="csr", dtype=np.float32, random_state=rng)
    m.data = np.ceil(m.data * 500).astype(np.float32)
    return m


@pytest.mark.parametrize("scheme", ["bm25", "tfidf", "log", "none"])
def test_contract(scheme):
    plays = _plays()
    before = plays.copy()
    out = weight(plays, WeightConfig(scheme=scheme))
    assert sp.isspmatrix_csr(out) and out.dtype == np.float32 and out.shape == plays.shape
    assert out.has_sorted_indices and np.all(out.data > 0)
    # same listened pairs, and the input is left alone
    assert (out != 0).toarray().tolist() == (plays != 0).toarray().tolist()
    assert (plays != before).nnz == 0


def test_bm25_idf_is_per_user_and_length_norm_per_artist():
    # artist 0 is popular (4 listeners), artist 3 rare (1 listener); user 0 heard 4 artists, user 3 one.
    plays = sp.csr_matrix(
        np.array(
            [
                [5, 5, 5, 5, 0, 0],
                [5, 5, 0, 0, 0, 0],
                [5, 0, 0, 0, 0, 0],
                [5, 0, 0, 0, 0, 0],
                [0, 0, 0, 0, 5, 50],
            ],
            dtype=np.float32,
        )
    )
    # b=0 switches the length norm off: only the idf is left, and it depends on the user alone
    w = weight(plays, WeightConfig(scheme="bm25", k1=100, b=0)).toarray()
    assert w[0, 0] == pytest.approx(w[0, 3])  # same user, same plays, popular vs rare artist: equal
    assert w[0, 0] < w[1, 0] < w[2, 0]  # same artist and plays: the user who heard more weighs less
    # b=1: an artist's weights shrink with its total plays (artist 5 has 10x the plays of artist 4)
    w = weight(plays, WeightConfig(scheme="bm25", k1=1, b=1)).toarray()
    assert w[4, 5] / 50 < w[4, 4] / 5


def test_tfidf_is_sqrt_plays_times_user_idf():
    plays = sp.csr_matrix(np.array([[4, 16, 0, 0, 0], [1, 0, 0, 0, 0], [9, 0, 0, 0, 0]], dtype=np.float32))
    w = weight(plays, WeightConfig(scheme="tfidf")).toarray()
    assert w[0, 1] / w[0, 0] == pytest.approx(2.0)  # within a user: sqrt(16) / sqrt(4), whatever the artist
    assert w[2, 0] / w[1, 0] == pytest.approx(3.0)  # users 1 and 2 heard one artist each: same idf


def test_log_and_none_values():
    plays = _plays()
    w = weight(plays, WeightConfig(scheme="log", alpha=2.0, eps=10.0))
    np.testing.assert_allclose(w.data, 2.0 * np.log1p(plays.data / 10.0), rtol=1e-6)
    np.testing.assert_array_equal(weight(plays, WeightConfig(scheme="none")).data, plays.data)


def test_bad_input_is_refused():
    plays = _plays()
    with pytest.raises(RecsError, match="CSR"):
        weight(plays.toarray(), WeightConfig())
    bad = plays.copy()
    bad.data[0] = -1
    with pytest.raises(RecsError, match=">= 0"):
        weight(bad, WeightConfig())
    bad.data[0] = np.nan
    with pytest.raises(RecsError, match="finite"):
        weight(bad, WeightConfig(scheme="log"))
    with pytest.raises(RecsError, match="eps"):
        weight(plays, WeightConfig(scheme="log", eps=0))

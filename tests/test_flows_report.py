"""flows/report.py: the content of the run's artifacts, built without Prefect."""

from __future__ import annotations

import base64

import numpy as np
import scipy.sparse as sp

from flows.report import metrics_rows, ranking_plot, showcase_artists
from tasks.contracts import Encoded, Metric


def _encoded(names: list[str], listeners: list[int]) -> Encoded:
    users = max(listeners)
    rows = np.concatenate([np.arange(n) for n in listeners])
    cols = np.repeat(np.arange(len(names)), listeners)
    plays = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(users, len(names)))
    return Encoded(
        plays=plays,
        user_keys=np.array([str(u) for u in range(users)], dtype=object),
        artist_keys=np.array(names, dtype=object),
        artist_names=np.array(names, dtype=object),
    )


def test_metrics_rows_put_each_model_beside_the_baselines():
    metrics = [
        Metric("als", "precision", 10, 0.2),
        Metric("blend", "precision", 10, 0.3),
        Metric("popularity", "precision", 10, 0.1),
        Metric("random", "precision", 10, 0.001),
        Metric("als", "rmse_binary", None, 0.4),
        Metric("annoy", "related_recall", 10, 0.97),
    ]
    rows = {(r["model"], r["metric"]): r for r in metrics_rows(metrics)}
    assert set(rows) == {
        ("als", "precision@10"),
        ("blend", "precision@10"),
        ("als", "rmse_binary"),
        ("annoy", "related_recall@10"),
    }
    assert rows[("blend", "precision@10")] == {
        "model": "blend",
        "metric": "precision@10",
        "value": 0.3,
        "popularity": 0.1,
        "random": 0.001,
        "vs_popularity": 3.0,
    }
    assert rows[("als", "rmse_binary")]["popularity"] is None
    assert rows[("als", "rmse_binary")]["vs_popularity"] is None


def test_ranking_plot_is_a_png_and_absent_without_ranking_metrics():
    uri = ranking_plot([Metric("als", "precision", 10, 0.2), Metric("popularity", "ndcg", 10, 0.1)])
    assert base64.b64decode(uri.removeprefix("data:image/png;base64,"))[:8] == b"\x89PNG\r\n\x1a\n"
    assert ranking_plot([Metric("als", "rmse_binary", None, 0.4)]) is None


def test_showcase_prefers_well_known_names_then_the_most_listened():
    encoded = _encoded(["x", "coldplay", "y", "z"], [1, 2, 5, 3])
    assert showcase_artists(encoded).tolist() == [1, 2, 3]  # Coldplay (any case), then by listeners

"""flows/report.py: the content of the run's artifacts, built without Prefect."""

from __future__ import annotations

import base64
import re

import numpy as np
import scipy.sparse as sp

from flows.report import (
    RunReport,
    embedding_layout,
    legible_labels,
    metrics_rows,
    params_rows,
    ranking_plot,
    render_report,
    showcase_artists,
)
from tasks.contracts import BadRows, Encoded, Metric
from tasks.curves import CURVE_SCORES, CURVE_USERS, als_curves, curve_model, curve_users
from tasks.evaluate import ranking_at_k
from tasks.models.blend import BlendConfig, BlendPart
from tasks.models.cosine_blend import CosineBlendConfig
from tasks.models.implicit_mf import ALSConfig
from tasks.models.itemknn import ItemKNNConfig
from tasks.models.registry import fit
from tasks.recommend import user_top_n
from tasks.split import per_user_holdout, validation_split
from tasks.weight import weight


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


def _fitted_report(encoded: Encoded, models: tuple[str, ...] = ("als", "lsa"), **extra) -> RunReport:
    """A RunReport of real fits of ``models`` on ``encoded`` (each weighted as its config says),
    related lists by exact cosine, the first model's factors drawn."""
    from tasks.models.registry import model_config
    from tasks.recommend import related_exact

    configs = {name: model_config({"name": name}) for name in models}
    factors = {name: fit(weight(encoded.plays, cfg.weight), cfg) for name, cfg in configs.items()}
    related = {name: related_exact(f.artist_factors, 10) for name, f in factors.items()}
    first = models[0]
    return RunReport(
        run_id="7",
        dataset="lastfm-2k",
        source="/data/hetrec",
        sha256="ab" * 32,
        encoded=encoded,
        bad_rows=BadRows(rows_read=encoded.plays.nnz, rows_kept=encoded.plays.nnz),
        split_rule="per-user holdout 20%",
        data_check="downloaded",
        test_pairs=100,
        models={"related artists": factors[first].params, "user recommendations": configs[first].params()},
        metrics=[Metric(first, "precision", 10, 0.2), Metric("popularity", "precision", 10, 0.1)],
        related=related[first],
        artist_factors=factors[first].artist_factors,
        related_by_model=related,
        **extra,
    )


def _png_size(uri: str) -> tuple[int, int]:
    from io import BytesIO

    from PIL import Image

    return Image.open(BytesIO(base64.b64decode(uri.removeprefix("data:image/png;base64,")))).size


def test_embedding_layout_keeps_planted_groups_apart_and_clusters_them():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 5
    group = np.repeat(np.arange(4), 60)
    factors = (centres[group] + rng.normal(size=(240, 16))).astype(np.float32)
    listeners = rng.permutation(240) + 1
    layout = embedding_layout(factors, listeners, top=200, clusters=4)
    assert layout.codes.tolist() == np.argsort(-listeners, kind="stable")[:200].tolist()  # most listened first
    planted = group[layout.codes]
    # each k-means cluster is one planted group, and t-SNE keeps a group's points together
    assert all(len(set(planted[layout.cluster == c])) == 1 for c in np.unique(layout.cluster))
    centroid = np.stack([layout.xy[planted == g].mean(axis=0) for g in range(4)])
    own = np.linalg.norm(layout.xy - centroid[planted], axis=1)
    other = np.min(
        [np.linalg.norm(layout.xy - centroid[g], axis=1) + np.where(planted == g, np.inf, 0) for g in range(4)], axis=0
    )
    assert (own < other).mean() > 0.95


def test_params_table_has_a_row_per_parameter_and_a_column_per_role():
    header, rows = params_rows(
        {
            "related artists": {"name": "als", "factors": 64, "weight": {"scheme": "bm25", "k1": 100}},
            "user recommendations": {"name": "blend", "parts": [1, 2], "weight": {"scheme": "log"}},
        }
    )
    assert header == ["parameter", "related artists", "user recommendations"]
    assert rows == [
        ["`name`", "als", "blend"],
        ["`factors`", "64", ""],
        ["`parts`", "", "[1, 2]"],
        ["`weight.k1`", "100", ""],
        ["`weight.scheme`", "bm25", "log"],
    ]


def test_report_shows_each_models_related_lists_side_by_side_and_readable_plots(hetrec_encoded):
    report = _fitted_report(hetrec_encoded, database="postgresql+psycopg://recs:***@db:5432/recs")
    markdown = render_report(report)
    assert "Published to `postgresql+psycopg://recs:***@db:5432/recs`." in markdown
    names = hetrec_encoded.artist_names
    for code in showcase_artists(hetrec_encoded):
        section = markdown.split(f"### {names[code]}\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
        assert section[0] == "| rank | als | lsa |"
        for rank, line in enumerate(section[2:]):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            expected = [str(names[report.related_by_model[m].ids[code, rank]]) for m in ("als", "lsa")]
            assert cells == [str(rank + 1), *expected]
        assert len(section) == 2 + 10
    # every plot under its own heading, at a size that reads
    plots = re.findall(r"## ([^\n]+)\n\n!\[[^\]]*\]\((data:image/png;base64,[^)]+)\)", markdown)
    assert [title for title, _ in plots] == [
        "Ranking quality by model",
        "Embedding map",
        "Embedding norm vs popularity",
    ]
    assert all(_png_size(uri)[0] >= 900 for _, uri in plots)
    assert "{'" not in markdown  # parameters are a table, not a dict's repr
    assert "| `factors` | 64 |" in markdown


def test_labels_skip_names_that_would_print_over_each_other():
    xy = np.array([[0.0, 0.0], [0.01, 0.0], [1.0, 1.0], [0.5, 0.5], [0.02, 0.01]])
    assert legible_labels(xy, count=3) == [0, 2, 3]  # 1 and 4 sit on top of 0
    assert legible_labels(xy, count=2) == [0, 2]


def test_curves_rank_fewer_users_on_a_wide_catalogue():
    assert curve_users(17_632) == CURVE_USERS  # HetRec 2K
    assert curve_users(300_000) == 1_000 == CURVE_SCORES // 300_000  # the 360K shape
    assert curve_users(10_000_000) == 500  # the floor
    assert [curve_users(n) for n in (10_000, 100_000, 1_000_000)] == sorted(
        [curve_users(n) for n in (10_000, 100_000, 1_000_000)], reverse=True
    )


def test_training_curves_fall_and_rise_on_a_validation_split_and_are_drawn(hetrec_encoded):

    split = per_user_holdout(hetrec_encoded.plays, 0.2, 5, seed=0)
    cfg = ALSConfig(factors=16, iterations=8)
    assert curve_model(ItemKNNConfig(), cfg) is cfg and curve_model(ItemKNNConfig()) is None
    # the shipped models: the related cosine blend's ALS part comes before the user blend's
    assert curve_model(CosineBlendConfig(), BlendConfig()) == CosineBlendConfig().parts[0]
    assert curve_model(ItemKNNConfig(), BlendConfig(parts=[BlendPart(model=cfg, weight=1.0)])) is not None
    curves = als_curves(split, cfg, k=10, max_users=500)
    assert len(curves.loss) == len(curves.precision) == 8 and curves.users == 500
    assert curves.loss[-1] < curves.loss[0]  # ALS's loss falls
    assert curves.precision[-1] > 2 * curves.precision[0]  # and the factors learn to rank
    # the last point is the precision of a plain fit with the same settings on the same validation users
    inner = validation_split(split)
    final = fit(weight(inner.train, cfg.weight), cfg)
    users = np.sort(
        np.random.default_rng(cfg.random_state).choice(
            np.flatnonzero(np.diff(inner.test.indptr) > 0), 500, replace=False
        )
    )

    expected = ranking_at_k(user_top_n(final, inner.train, 10, users=users).ids, inner.test[users], 10)["precision"]
    assert abs(curves.precision[-1] - expected) < 0.01
    # on a catalogue past fit_users, the fit takes a sample of users' rows (and ranks some of them)
    sampled = als_curves(split, cfg, k=10, max_users=300, fit_users=800)
    assert sampled.users == 300 and sampled.precision[-1] > 2 * sampled.precision[0]
    # by default the ranked users follow the catalogue: HetRec's 17.6K artists allow CURVE_USERS
    assert als_curves(split, cfg.model_copy(update={"iterations": 1})).users == min(
        CURVE_USERS, int((np.diff(inner.test.indptr) > 0).sum())
    )
    report = _fitted_report(hetrec_encoded, models=("als",), curves=curves)
    markdown = render_report(report)
    [uri] = re.findall(
        r"## Training curves\n\n[^\n]+\n\n!\[training curves\]\((data:image/png;base64,[^)]+)\)", markdown
    )
    assert _png_size(uri)[0] >= 1000

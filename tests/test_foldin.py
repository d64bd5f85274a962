"""New listeners without a retrain, and the read commands' output formats, over a real HetRec 2K
publish on SQLite and PostgreSQL.

The run is published the way the flow publishes (fitted on every pair, lists from
``tasks.recommend.user_top_n``, reasons from ``tasks.explain``, fold-in arrays from
``tasks.foldin``), with the shipped user model unless a test names another.
"""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.config import RetrainConfig
from storage.engine import make_engine
from storage.foldin import listened_recommendations, npy_pieces, parse_listened, read_fold_in
from storage.publish import RunOutputs, publish
from storage.queries import recommendations, related_artists
from tasks.contracts import Metric
from tasks.errors import RecsError
from tasks.explain import because
from tasks.foldin import fold_in_arrays, weight_rows
from tasks.models.base import fit
from tasks.models.itemknn import ItemKNNConfig
from tasks.models.lsa import LSAConfig
from tasks.recommend import related_exact, user_top_n
from tasks.weight import WeightConfig, weight

N = 10
SAMPLE = 40  # users folded back in per model


def hetrec_outputs(encoded, model) -> RunOutputs:
    """A run of HetRec 2K with ``model`` as its user model, as the flow would publish it."""
    config = RetrainConfig(user_model=model).model_dump(mode="json")
    scorer = fit(weight(encoded.plays, model.weight), model)
    top = user_top_n(scorer, encoded.plays, N)
    factors = getattr(scorer, "factor", scorer)
    related = related_exact(getattr(factors, "artist_factors", np.eye(encoded.n_artists, 2, dtype=np.float32)), N)
    return RunOutputs(
        encoded=encoded,
        related=related,
        recommendations=top,
        metrics=[Metric(model.name, "precision", 10, 0.1)],
        config=config,
        dataset="lastfm-2k",
        source="test",
        data_sha256="0" * 64,
        related_model=model.name,
        user_model=model.name,
        code_version="test",
        because=because(scorer, encoded.plays, top.ids),
        fold_in=fold_in_arrays(model, scorer, encoded.artist_plays),
    )


@pytest.fixture(scope="module")
def shipped(hetrec_encoded) -> RunOutputs:
    return hetrec_outputs(hetrec_encoded, RetrainConfig().user_model)


@pytest.fixture
def published(db_url, shipped):
    engine = make_engine(db_url)
    publish(engine, shipped)
    yield engine, db_url
    engine.dispose()


def history_of(encoded, user: int) -> list[tuple[str, float]]:
    row = encoded.plays[user]
    return [(str(encoded.artist_keys[a]), float(p)) for a, p in zip(row.indices, row.data)]


def sample_users(encoded) -> np.ndarray:
    return np.random.default_rng(0).choice(encoded.n_users, SAMPLE, replace=False)


@pytest.mark.parametrize("scheme", ["bm25", "tfidf", "log", "none"])
def test_new_rows_are_weighted_as_the_fitted_rows(hetrec_encoded, scheme):
    cfg = WeightConfig(scheme=scheme, k1=50.0, b=0.9)
    rows = np.arange(0, hetrec_encoded.n_users, 97)
    expected = weight(hetrec_encoded.plays, cfg)[rows]
    got = weight_rows(hetrec_encoded.plays[rows], cfg, hetrec_encoded.artist_plays)
    assert (got != expected).nnz == 0 or np.allclose(got.toarray(), expected.toarray(), rtol=1e-5, atol=1e-6)


def test_an_existing_user_folded_back_in_gets_nearly_their_published_list(published, shipped):
    """The shipped blend: its item-kNN part is the same sparse product; its ALS part solves the
    user's factors exactly (implicit's recalculate_user) where the fit stopped after 15 alternating
    conjugate-gradient sweeps, so entries near the cut-off may swap: overlap@10 >= 0.9 on average
    and >= 0.8 for nine users in ten (a user whose blended scores are close together can lose
    more), the top entry the same for eight in ten."""
    engine, _ = published
    encoded = shipped.encoded
    overlaps, same_top = [], []
    for user in sample_users(encoded):
        folded = listened_recommendations(engine, history_of(encoded, user), N, "lastfm-2k")
        stored = recommendations(engine, str(encoded.user_keys[user]), N, "lastfm-2k")
        got, expected = [r.artist_key for r in folded.rows], [r.artist_key for r in stored.rows]
        overlaps.append(len(set(got) & set(expected)) / len(expected))
        same_top.append(got[0] == expected[0])
        heard = {str(k) for k in encoded.artist_keys[encoded.plays[user].indices]}
        assert not heard & set(got)  # heard artists are never recommended
        assert {r.because_artist_key for r in folded.rows} <= heard  # every reason is one of them
    overlaps = np.array(overlaps)
    assert overlaps.mean() >= 0.9 and (overlaps >= 0.8).mean() >= 0.9 and np.mean(same_top) >= 0.8, overlaps


@pytest.mark.parametrize(
    "model", [ItemKNNConfig(neighbours=100), LSAConfig(factors=32, weight=WeightConfig(scheme="bm25"))], ids=str
)
def test_item_knn_and_lsa_fold_in_reproduce_the_published_lists(tmp_path, hetrec_encoded, model):
    """Both fold in with the very computation the fit gave the users (the same sparse product;
    LSA's projection x V Σ⁻¹ = U), so the lists are the published ones, reasons included."""
    outputs = hetrec_outputs(hetrec_encoded, model)
    engine = make_engine(f"sqlite:///{tmp_path / 'recs.db'}")
    publish(engine, outputs)
    for user in sample_users(hetrec_encoded)[:15]:
        folded = listened_recommendations(engine, history_of(hetrec_encoded, user), N)
        stored = recommendations(engine, str(hetrec_encoded.user_keys[user]), N)
        assert [r.artist_key for r in folded.rows] == [r.artist_key for r in stored.rows]
        assert [r.because_artist_key for r in folded.rows] == [r.because_artist_key for r in stored.rows]
        np.testing.assert_allclose([r.score for r in folded.rows], [r.score for r in stored.rows], rtol=1e-3)
    engine.dispose()


def test_names_and_play_counts_and_unknown_names(published, shipped):
    engine, _ = published
    folded = listened_recommendations(engine, [("radiohead", 50), ("COLDPLAY", 20), ("Muse", 1), ("muse", 4)], N)
    assert [(h.artist_name, h.plays) for h in folded.heard] == [("Radiohead", 50), ("Coldplay", 20), ("Muse", 5)]
    assert len(folded.rows) == N and not {"Radiohead", "Coldplay", "Muse"} & {r.artist_name for r in folded.rows}
    assert all(r.because_artist_name in {"Radiohead", "Coldplay", "Muse"} for r in folded.rows)
    with pytest.raises(RecsError, match=r"'radiohed' \(did you mean: Radiohead.*'zzqx' \(check the spelling\)"):
        listened_recommendations(engine, [("radiohed", 1), ("muse", 1), ("zzqx", 1)], N)
    with pytest.raises(RecsError, match="play counts must be positive"):
        listened_recommendations(engine, [("muse", 0)], N)


def test_fold_in_arrays_are_stored_per_run_and_pruned_with_it(db_url, shipped):
    engine = make_engine(db_url)
    publish(engine, shipped, retention=1)
    with engine.connect() as conn:
        arrays = read_fold_in(conn, 1)
    for name, array in shipped.fold_in.items():
        np.testing.assert_array_equal(arrays[name], array)
    # the shipped blend: ALS factors, item-kNN similarities, RP3beta weights, in its parts' order
    assert set(arrays) == {
        "artist_plays",
        "0.artist_factors",
        *(f"1.similarity.{a}" for a in ("data", "indices", "indptr")),
        *(f"2.weights.{a}" for a in ("data", "indices", "indptr")),
    }
    publish(engine, shipped, retention=1)
    with engine.connect() as conn:
        assert read_fold_in(conn, 1) == {} and set(read_fold_in(conn, 2)) == set(arrays)
    engine.dispose()


@pytest.mark.parametrize(
    "array",
    [np.arange(3000, dtype=np.float32).reshape(100, 30)[:, ::3], np.zeros(0, np.int64), np.arange(5, dtype=np.int64)],
    ids=["strided 2-d", "empty", "short"],
)
def test_stored_pieces_are_np_save_bytes_cut_to_size(array):
    saved = io.BytesIO()
    np.save(saved, array, allow_pickle=False)
    for size in (64, 1000, 1 << 24):
        pieces = [bytes(piece) for piece in npy_pieces(array, size)]
        assert b"".join(pieces) == saved.getvalue()
        assert all(len(piece) == size for piece in pieces[:-1] if size >= 128)
        np.testing.assert_array_equal(np.load(io.BytesIO(b"".join(pieces))), array)


def test_cli_recommend_listened_and_formats(published, shipped, tmp_path):
    engine, db_url = published
    runner = CliRunner()
    expected = listened_recommendations(engine, [("radiohead", 3), ("muse", 1)], 5)
    result = runner.invoke(
        app, ["recommend", "--listened", "radiohead:3,muse", "--n", "5", "--db", db_url, "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert [r["artist_key"] for r in document["rows"]] == [r.artist_key for r in expected.rows]
    assert [h["artist_name"] for h in document["heard"]] == ["Radiohead", "Muse"]
    listened = tmp_path / "listened.tsv"
    listened.write_text("Radiohead\t3\nmuse\t1\n", encoding="utf-8")
    result = runner.invoke(
        app, ["recommend", "--listened-file", str(listened), "--n", "5", "--db", db_url, "--format", "csv"]
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["key"] for r in rows] == [r.artist_key for r in expected.rows]
    assert [r["because you listened to"] for r in rows] == [r.because_artist_name for r in expected.rows]
    result = runner.invoke(app, ["recommend", "--listened", "radiohed", "--db", db_url])
    (line,) = result.stderr.strip().splitlines()
    assert result.exit_code == 1
    assert line.startswith("error: no artist named 'radiohed' in run 1 (lastfm-2k); did you mean: Radiohead, ")
    result = runner.invoke(app, ["recommend", "--db", db_url])
    assert result.exit_code == 1 and "give one of USER, --listened or --listened-file" in result.stderr
    # a known user: plain columns (stdout is no terminal here), with the reason
    user = str(shipped.encoded.user_keys[0])
    stored = recommendations(engine, user, 3)
    result = runner.invoke(app, ["recommend", user, "--n", "3", "--db", db_url])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"for user {user} (run 1, lastfm-2k)" and lines[1].split()[:4] == [
        "rank",
        "artist",
        "key",
        "score",
    ]
    assert not any(ch in result.stdout for ch in "│┃━─")
    for line, row in zip(lines[2:], stored.rows):
        assert row.artist_name in line and line.rstrip().endswith(row.because_artist_name or "")


def test_cli_unicode_lookup_related_and_runs_formats(published):
    engine, db_url = published
    runner = CliRunner()
    for typed in ("die ärzte", "DIE ÄRZTE", "океан ельзи"):
        result = runner.invoke(app, ["related", typed, "--n", "3", "--db", db_url, "--format", "json"])
        assert result.exit_code == 0, result.output
        document = json.loads(result.stdout)
        expected = related_artists(engine, typed, 3)
        assert document["artist_name"] in ("Die Ärzte", "Океан Ельзи")
        assert [r["artist_key"] for r in document["rows"]] == [r.artist_key for r in expected.rows]
    result = runner.invoke(app, ["related", "die ärzte", "--n", "3", "--db", db_url, "--format", "csv"])
    assert result.stdout.splitlines()[0] == "rank,artist,key,score" and len(result.stdout.splitlines()) == 4
    result = runner.invoke(app, ["runs", "--db", db_url, "--format", "json"])
    assert result.exit_code == 0, result.output
    (run,) = json.loads(result.stdout)
    assert run["run_id"] == 1 and run["current"] is True and run["status"] == "published"
    result = runner.invoke(app, ["runs", "--db", db_url, "--format", "csv"])
    header, *rows = list(csv.reader(io.StringIO(result.stdout)))
    assert header[:3] == ["run_id", "status", "started_at"] and rows[0][:2] == ["1", "published"]
    result = runner.invoke(app, ["runs", "--db", db_url])
    assert result.exit_code == 0 and "1 *" in result.stdout and not any(ch in result.stdout for ch in "│━─")


def test_a_run_without_fold_in_arrays_refuses_in_one_line(tmp_path, shipped):
    engine = make_engine(f"sqlite:///{tmp_path / 'recs.db'}")
    config = {**shipped.config, "user_model": {"name": "ease"}}
    publish(engine, RunOutputs(**{**shipped.__dict__, "fold_in": {}, "config": config}))
    with pytest.raises(RecsError, match="'ease' cannot score new listeners"):
        listened_recommendations(engine, [("muse", 1)], N)
    engine.dispose()


def test_listened_text_is_names_with_optional_play_counts():
    assert parse_listened("radiohead:40, coldplay ,Sunn O))):live,,muse:2.5") == [
        ("radiohead", 40.0),
        ("coldplay", 1.0),
        ("Sunn O))):live", 1.0),  # no number after the colon: part of the name
        ("muse", 2.5),
    ]
    assert parse_listened(" , ") == []

"""Unicode-aware artist lookups and the published "because" column, on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_storage import make_outputs

from storage.engine import make_engine
from storage.publish import publish
from storage.queries import artist_suggestions, recommendations, related_artists
from tasks.errors import RecsError
from tasks.names import search_key

NAMES = ["Die Ärzte", "Океан Ельзи", "Straße", "Björk", "SIGUR RÓS", "ﬁve"]


@pytest.fixture
def engine(db_url):
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def test_search_key_folds_case_and_unicode_forms():
    assert search_key("  DIE  ÄRZTE ") == search_key("die ärzte") == "die ärzte"
    assert search_key("Die A\u0308rzte") == "die ärzte"  # a combining diaeresis composes (NFKC)
    assert search_key("ОКЕАН ЕЛЬЗИ") == "океан ельзи" and search_key("STRASSE") == search_key("straße")
    assert search_key("ﬁve") == "five"


@pytest.mark.parametrize(
    "typed, stored",
    [
        ("die ärzte", "Die Ärzte"),
        ("DIE ÄRZTE", "Die Ärzte"),
        ("Die A\u0308rzte", "Die Ärzte"),
        ("океан ельзи", "Океан Ельзи"),
        ("strasse", "Straße"),
        ("sigur rós", "SIGUR RÓS"),
        ("five", "ﬁve"),
        ("key-3", "Björk"),  # an exact artist_key still matches
    ],
)
def test_related_finds_names_whatever_their_case_and_form(engine, typed, stored):
    outputs = make_outputs(1, names=NAMES)
    publish(engine, outputs)
    found = related_artists(engine, typed)
    code = list(outputs.encoded.artist_names).index(stored)
    assert found.artist_name == stored
    expected = [outputs.encoded.artist_names[i] for i in outputs.related.ids[code] if i >= 0]
    assert [row.artist_name for row in found.rows] == expected


def test_unknown_names_suggest_close_ones_by_search_key(engine):
    publish(engine, make_outputs(1, names=NAMES))
    with pytest.raises(
        RecsError, match=r"no artist named 'DIE ÄRTZE' in run 1 \(synthetic\); did you mean: Die Ärzte\?"
    ):
        related_artists(engine, "DIE ÄRTZE")
    with pytest.raises(RecsError, match="did you mean: Die Ärzte"):
        related_artists(engine, "ÄRZTE")  # contained in a key
    assert artist_suggestions(engine, "ок") == ["Океан Ельзи"]
    assert artist_suggestions(engine, "  ") == []


def test_views_carry_the_search_key_and_the_because_artist(engine):
    outputs = make_outputs(2, names=NAMES)
    rng = np.random.default_rng(0)
    because = rng.integers(-1, outputs.encoded.n_artists, size=outputs.recommendations.ids.shape).astype(np.int32)
    outputs = dataclasses.replace(outputs, because=because)
    publish(engine, outputs)
    keys, names = outputs.encoded.artist_keys, outputs.encoded.artist_names
    with engine.connect() as conn:
        stored = dict(
            conn.exec_driver_sql("SELECT DISTINCT artist_name, artist_search_key FROM current_related_artists").all()
        )
        assert stored == {name: search_key(name) for name in names if name in stored} and "Die Ärzte" in stored
        rows = conn.exec_driver_sql(
            "SELECT user_key, rank, because_artist_key, because_artist_name FROM current_user_recommendations"
        ).all()
    users = {key: code for code, key in enumerate(outputs.encoded.user_keys)}
    for user, rank, why_key, why_name in rows:
        code = because[users[user], rank - 1]
        assert (why_key, why_name) == ((keys[code], names[code]) if code >= 0 else (None, None))
    shown = recommendations(engine, "user-0")
    expected = [
        (keys[c], names[c]) if c >= 0 else (None, None)
        for c, i in zip(because[0], outputs.recommendations.ids[0])
        if i >= 0
    ]
    assert [(r.because_artist_key, r.because_artist_name) for r in shown.rows] == expected


def test_publish_refuses_because_of_the_wrong_shape(engine):
    outputs = make_outputs(3)
    wrong = dataclasses.replace(outputs, because=np.zeros((2, 2), dtype=np.int32))
    with pytest.raises(RecsError, match="because is"):
        publish(engine, wrong)

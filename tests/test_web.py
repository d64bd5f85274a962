"""`recs serve`: the read-only JSON API and the explorer page, as a user meets them.

A real HetRec 2K run published by `recs run`, `recs serve` as a subprocess on a free loopback port,
real HTTP, and the page driven in the system Chromium by Playwright (no browser download). Every
expected list is read from the database with plain sqlite3 in the same test. The browser test
saves screenshots of the page into docs/img/ (shown by the README).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from test_flows_cli import RECS, ROOT, _one_line_error, _recs
from test_storage import expected_related, make_outputs

from storage.engine import make_engine
from storage.foldin import listened_recommendations
from storage.publish import publish
from tasks.errors import RecsError
from tasks.evaluate import MAX_N

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "docs" / "img"


def get(base: str, path: str, **params) -> tuple[int, dict | list]:
    """(status, JSON body) of GET ``base + path?params`` over real HTTP."""
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def db_related(
    db: Path, artist_name: str, run_id: int | None = None, model: str | None = None
) -> list[tuple[str, str]]:
    """(key, name) of the related artists of ``artist_name`` in ``run_id`` (default: the current
    run) from ``model`` (default: the run's shipped related model), best first."""
    with sqlite3.connect(db) as con:
        if run_id is None:
            run_id = con.execute("SELECT run_id FROM current_runs").fetchone()[0]
        return con.execute(
            "SELECT b.artist_key, b.name FROM related_artists r JOIN runs m ON m.run_id = r.run_id "
            "JOIN artists a ON a.run_id = r.run_id AND a.artist_id = r.artist_id "
            "JOIN artists b ON b.run_id = r.run_id AND b.artist_id = r.related_artist_id "
            "WHERE r.run_id = ? AND a.name = ? AND r.model = coalesce(?, m.related_model) ORDER BY r.rank",
            (run_id, artist_name, model),
        ).fetchall()


def db_models(db: Path) -> list[str]:
    """The related models of the current run: the shipped one first, then by name."""
    with sqlite3.connect(db) as con:
        rows = con.execute(
            "SELECT DISTINCT r.model, r.model = m.related_model FROM related_artists r "
            "JOIN current_runs c ON c.run_id = r.run_id JOIN runs m ON m.run_id = r.run_id "
            "ORDER BY 2 DESC, 1"
        ).fetchall()
    return [model for model, _ in rows]


def start_server(tmp: Path, db: Path | str) -> tuple[subprocess.Popen, str]:
    """`recs serve` over ``db`` (a SQLite file or a URL) on a free port; (process, base URL) once
    it says where it listens."""
    proc = subprocess.Popen(
        [*RECS, "serve", "--db", db if isinstance(db, str) else f"sqlite:///{db}", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**_env(tmp), "COLUMNS": "300"},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the first line: the socket listens by then
    assert line.startswith("serving http://127.0.0.1:"), line + proc.stderr.read()
    return proc, line.split()[1].rstrip("/")


def _env(tmp: Path) -> dict:
    return {**os.environ, "PREFECT_HOME": str(tmp / "prefect-home"), "RECS_DATA_DIR": str(tmp / "data")}


@pytest.fixture(scope="module")
def published(tmp_path_factory, hetrec_dir) -> Path:
    """A SQLite database with one real HetRec 2K run of the shipped models (related artists from a
    cosine blend of ALS and LSA, and each part's lists too), published by `recs run`."""
    tmp = tmp_path_factory.mktemp("web")
    db = tmp / "recs.db"
    done = _recs(tmp, "run", "--dataset", "lastfm-2k", "--source", str(hetrec_dir), "--db", f"sqlite:///{db}")
    assert done.returncode == 0, done.stderr[-3000:]
    return db


@pytest.fixture(scope="module")
def server(published, tmp_path_factory):
    proc, base = start_server(tmp_path_factory.mktemp("serve"), published)
    yield base
    proc.terminate()
    proc.wait(timeout=30)


@pytest.mark.slow
def test_api_answers_what_the_database_holds(server, published):
    status, body = get(server, "/api/related", artist="radiohead", n=5)  # any letter case
    assert status == 200
    assert (body["artist_name"], body["dataset"]) == ("Radiohead", "lastfm-2k")
    models = body["models"]
    only = models[0]
    with sqlite3.connect(published) as con:
        run_id, related_model = con.execute(
            "SELECT run_id, related_model FROM runs WHERE status = 'published'"
        ).fetchone()
        user_rows = con.execute(
            "SELECT artist_key, artist_name FROM current_user_recommendations WHERE user_key = '2' ORDER BY rank"
        ).fetchall()
        because = con.execute(
            "SELECT because_artist_key, because_artist_name FROM current_user_recommendations "
            "WHERE user_key = '2' ORDER BY rank"
        ).fetchall()
    assert body["run_id"] == run_id and only["model"] == related_model
    assert [(r["artist_key"], r["artist_name"]) for r in only["rows"]] == db_related(published, "Radiohead")[:5]
    assert [r["rank"] for r in only["rows"]] == [1, 2, 3, 4, 5]
    assert [m["model"] for m in models] == db_models(published)  # every model's list, the shipped one first
    for listed in models:
        rows = [(r["artist_key"], r["artist_name"]) for r in listed["rows"]]
        assert rows == db_related(published, "Radiohead", model=listed["model"])[:5]
    status, body = get(server, "/api/related", artist="Radiohead", n=3, model=related_model)
    assert status == 200 and [m["model"] for m in body["models"]] == [related_model]
    status, body = get(server, "/api/related", artist="Radiohead", model="no-such-model")
    assert status == 404 and body["suggestions"] == sorted(db_models(published))

    status, body = get(server, "/api/recommend", user="2", n=7)
    assert status == 200 and [(r["artist_key"], r["artist_name"]) for r in body["rows"]] == user_rows[:7]
    assert [(r["because_artist_key"], r["because_artist_name"]) for r in body["rows"]] == because[:7]
    assert all(name is not None for _, name in because[:7])

    # a listener not in the data, folded into the run's user model: what storage.foldin gives
    engine = make_engine(f"sqlite:///{published}")
    try:
        folded = listened_recommendations(engine, [("radiohead", 40.0), ("Coldplay", 1.0), ("muse", 1.0)], 8)
    finally:
        engine.dispose()
    status, body = get(server, "/api/recommend", listened="radiohead:40,Coldplay,muse", n=8)
    assert status == 200 and body["user_key"] is None
    assert [h["artist_name"] for h in body["heard"]] == ["Radiohead", "Coldplay", "Muse"]
    assert [(r["artist_key"], r["because_artist_name"]) for r in body["rows"]] == [
        (r.artist_key, r.because_artist_name) for r in folded.rows
    ]
    assert not {"Radiohead", "Coldplay", "Muse"} & {r["artist_name"] for r in body["rows"]}
    status, body = get(server, "/api/recommend", listened="radiohed,muse")
    assert status == 404 and "Radiohead" in body["suggestions"]
    assert get(server, "/api/recommend", listened="muse:0")[0] == 422  # plays must be positive
    assert get(server, "/api/recommend")[0] == 422  # neither user nor listened
    assert get(server, "/api/recommend", user="2", listened="muse")[0] == 422

    # n is capped at the published length; n < 1 is refused by validation
    status, body = get(server, "/api/related", artist="Radiohead", n=10 * MAX_N)
    assert status == 200 and len(body["models"][0]["rows"]) == len(db_related(published, "Radiohead"))
    assert get(server, "/api/related", artist="Radiohead", n=0)[0] == 422

    # unknown names: 404, one line, close names to pick from
    status, body = get(server, "/api/related", artist="radiohed")
    assert status == 404 and "Radiohead" in body["suggestions"] and "\n" not in body["detail"]
    status, body = get(server, "/api/recommend", user="no-such-user")
    assert status == 404 and body["detail"].startswith("unknown user 'no-such-user'")
    # Unicode-aware lookups: the search key folds case beyond ASCII
    status, body = get(server, "/api/related", artist="DIE ÄRZTE", n=3)
    assert status == 200 and body["artist_name"] == "Die Ärzte"
    # parameters are bound, never spliced into SQL
    status, body = get(server, "/api/related", artist="x' OR '1'='1")
    assert status == 404

    status, body = get(server, "/api/artists", prefix="the b")
    with sqlite3.connect(published) as con:
        expected = [
            name
            for (name,) in con.execute(
                "SELECT name FROM artists WHERE run_id = ? AND lower(name) LIKE 'the b%' "
                "ORDER BY listeners DESC, artist_id LIMIT 10",
                (run_id,),
            )
        ]
    assert status == 200 and body == expected and "The Beatles" in body

    status, runs = get(server, "/api/runs")
    assert status == 200 and [(r["run_id"], r["status"], r["current"]) for r in runs] == [(run_id, "published", True)]
    status, spec = get(server, "/openapi.json")
    assert status == 200 and {"/api/related", "/api/recommend", "/api/runs", "/api/artists"} <= set(spec["paths"])


@pytest.mark.slow
def test_page_in_chromium_shows_the_database_lists(server, published):
    if not CHROMIUM.is_file():
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"no {CHROMIUM}; .ci/run installs Debian's chromium")
    from playwright.sync_api import expect, sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(server + "/")
        expect(page.locator("#run-info")).to_contain_text("run 1 (lastfm-2k")

        page.locator("#artist-input").press_sequentially("radioh", delay=40)
        completion = page.locator("#completions li", has_text="Radiohead")
        expect(completion).to_be_visible()
        completion.click()
        expect(page.locator("#related-title")).to_contain_text("Related to Radiohead")
        columns = page.locator("#related .model")
        models = db_models(published)
        expect(columns).to_have_count(len(models))
        for model, column in zip(models, columns.all(), strict=True):  # side by side, the shipped model first
            assert column.get_attribute("data-model") == model
            shown = [
                (item.get_attribute("data-key"), item.locator("a").inner_text()) for item in column.locator("li").all()
            ]
            assert shown == db_related(published, "Radiohead", model=model)[:10]
        shown = [
            (item.get_attribute("data-key"), item.locator("a").inner_text())
            for item in columns.first.locator("li").all()
        ]
        page.screenshot(path=SHOTS / "explorer.png", full_page=True)

        # a related artist is a link to its own lists
        second = shown[0][1]
        columns.first.locator("li a").first.click()
        expect(page.locator("#related-title")).to_contain_text(f"Related to {second}")
        assert [a.inner_text() for a in columns.first.locator("li a").all()] == [
            name for _, name in db_related(published, second)[:10]
        ]

        # a misspelt name: the message and the close names, as links
        page.locator("#artist-input").fill("radiohed")
        page.locator("#artist-input").press("Enter")
        expect(page.locator("#artist-message")).to_contain_text("no artist named 'radiohed'")
        expect(page.locator("#artist-message a", has_text="Radiohead")).to_be_visible()

        # the listener page
        page.locator("#nav-user").click()
        page.locator("#user-input").fill("2")
        page.locator("#user-input").press("Enter")
        expect(page.locator("#user-title")).to_contain_text("For user 2")
        with sqlite3.connect(published) as con:
            expected = con.execute(
                "SELECT artist_key, artist_name FROM current_user_recommendations WHERE user_key = '2' "
                "ORDER BY rank LIMIT 10"
            ).fetchall()
        rows = page.locator("#recommendations tbody tr").all()
        assert [(row.get_attribute("data-key"), row.locator("td").nth(1).inner_text()) for row in rows] == expected
        page.screenshot(path=SHOTS / "user.png", full_page=True)
        browser.close()


@pytest.mark.slow
def test_keeps_answering_while_a_run_publishes_and_then_switches(published, tmp_path, hetrec_dir):
    db = tmp_path / "recs.db"
    with sqlite3.connect(published) as src, sqlite3.connect(db) as dst:
        src.backup(dst)  # its own copy: the module's server keeps serving run 1
    before = db_related(db, "Radiohead")[:10]
    proc, base = start_server(tmp_path, db)
    answers: list[tuple[int, int, list]] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            status, body = get(base, "/api/related", artist="Radiohead", n=10)
            rows = [(r["artist_key"], r["artist_name"]) for r in body["models"][0]["rows"]] if status == 200 else []
            answers.append((status, body.get("run_id", 0) if isinstance(body, dict) else 0, rows))
            time.sleep(0.02)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        source = str(hetrec_dir)
        done = _recs(
            tmp_path, "run", "--dataset", "lastfm-2k", "--source", source, "--db", f"sqlite:///{db}", "--model", "lsa"
        )
        assert done.returncode == 0, done.stderr[-3000:]
        time.sleep(0.5)  # a few answers after the commit
    finally:
        stop.set()
        poller.join()
        proc.terminate()
        proc.wait(timeout=30)
    after = db_related(db, "Radiohead", run_id=2)[:10]
    assert before != after  # LSA's lists differ from ALS's, so the switch is visible
    assert all(status == 200 for status, _, _ in answers)
    # every answer is one whole run's list, run 1's until the commit, then run 2's for good
    assert all((run, rows) in ((1, before), (2, after)) for _, run, rows in answers)
    runs = [run for _, run, _ in answers]
    assert runs[0] == 1 and runs[-1] == 2 and runs == sorted(runs)


def test_serve_refuses_a_taken_port_and_a_missing_database(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        db = tmp_path / "recs.db"
        publish(make_engine(f"sqlite:///{db}"), make_outputs(1))
        done = subprocess.run(
            [*RECS, "serve", "--db", f"sqlite:///{db}", "--port", str(port)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env=_env(tmp_path),
        )
        assert (
            _one_line_error(done)
            == f"error: port {port} on 127.0.0.1 is already in use; stop what uses it or choose another --port"
        )
    done = subprocess.run(
        [*RECS, "serve", "--db", f"sqlite:///{tmp_path / 'none.db'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(tmp_path),
    )
    assert _one_line_error(done).startswith(f"error: no database at {tmp_path / 'none.db'}")
    assert not (tmp_path / "none.db").exists()


def test_read_only_engine_refuses_writes(db_url):
    publish(make_engine(db_url), make_outputs(2))
    engine = make_engine(db_url, read_only=True)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM runs")).scalar_one() == 1
    with pytest.raises(sa.exc.DBAPIError, match="read-only|readonly"), engine.connect() as conn:
        conn.execute(sa.text("UPDATE runs SET message = 'x'"))
    with make_engine(db_url).connect() as conn:
        assert conn.execute(sa.text("SELECT message FROM runs")).scalar_one() is None


def test_read_only_engine_needs_the_current_schema(tmp_path):
    db = tmp_path / "recs.db"
    make_engine(f"sqlite:///{db}")
    with sqlite3.connect(db) as con:
        con.execute("UPDATE recs_alembic_version SET version_num = '0002'")
    with pytest.raises(RecsError, match="has schema revision 0002, this code reads"):
        make_engine(f"sqlite:///{db}", read_only=True)


@pytest.mark.slow
def test_report_reads_in_chromium(hetrec_encoded, tmp_path):
    """The retrain report of real ALS and LSA fits on HetRec, rendered from its markdown as the
    Prefect UI does (tables, embedded PNGs) and opened in Chromium: the plots show at their full
    size and each model's related lists stand side by side. Saves docs/img/report.png."""
    if not CHROMIUM.is_file():
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"no {CHROMIUM}; .ci/run installs Debian's chromium")
    import markdown
    from playwright.sync_api import sync_playwright
    from test_flows_report import _fitted_report

    from flows.report import render_report
    from tasks.curves import als_curves
    from tasks.models.implicit_mf import ALSConfig
    from tasks.split import per_user_holdout

    split = per_user_holdout(hetrec_encoded.plays, 0.2, 5, seed=0)
    curves = als_curves(split, ALSConfig(factors=24, iterations=15), max_users=1000)
    report = _fitted_report(hetrec_encoded, database="sqlite:////srv/recs/recs.db", curves=curves)
    html = markdown.markdown(render_report(report), extensions=["tables"])
    page_file = tmp_path / "report.html"
    page_file.write_text(
        "<!doctype html><meta charset='utf-8'><style>body{font:15px system-ui;max-width:1100px;margin:1rem auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}img{max-width:100%}</style>" + html
    )
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1150, "height": 900})
        page.goto(page_file.as_uri())
        images = page.locator("img")
        assert images.count() == 4
        for image in images.all():  # decoded, and drawn at least 900 px wide
            assert image.evaluate("img => img.complete && img.naturalWidth") >= 900
            assert image.bounding_box()["width"] >= 900
        section = page.locator("h3", has_text="Coldplay").locator("xpath=following-sibling::table[1]")
        assert section.locator("th").all_inner_texts() == ["rank", "als", "lsa"]
        code = int(np.flatnonzero(hetrec_encoded.artist_names == "Coldplay")[0])
        first_row = section.locator("tbody tr").first.locator("td").all_inner_texts()
        names = hetrec_encoded.artist_names
        assert first_row == ["1", *(str(names[report.related_by_model[m].ids[code, 0]]) for m in ("als", "lsa"))]
        page.locator("h2", has_text="Related artists of each model").scroll_into_view_if_needed()
        page.screenshot(path=SHOTS / "report.png", full_page=True)
        browser.close()


def test_api_on_both_databases_matches_the_views(db_url, tmp_path):
    names = ["Sigur Rós", "Motörhead", "O'Brien", "100% _Pure_", "Mötley Crüe", "Artist 5 %"]
    outputs = make_outputs(3, names=names)
    publish(make_engine(db_url), outputs)
    expected = {(owner, rank): (key, name) for owner, _, rank, key, name, _ in expected_related(outputs)}
    listeners = outputs.encoded.listeners
    proc, base = start_server(tmp_path, db_url)
    try:
        for code, name in enumerate(names):
            # ASCII letters in another case: SQLite's lower() folds no others (search keys will)
            shouted = "".join(c.upper() if c.isascii() else c for c in name)
            status, body = get(base, "/api/related", artist=shouted, n=3)
            assert status == 200 and body["artist_name"] == name
            [listed] = body["models"]
            key = outputs.encoded.artist_keys[code]
            assert [(r["artist_key"], r["artist_name"]) for r in listed["rows"]] == [
                expected[(key, rank)] for rank in range(1, len(listed["rows"]) + 1)
            ]
        # completions: LIKE's wildcards in a prefix are literal, letter case does not matter
        for prefix in ("m", "100% _", "artist 5 %", "Mö"):
            status, body = get(base, "/api/artists", prefix=prefix)
            matching = [
                c for c in range(len(listeners)) if outputs.encoded.artist_names[c].lower().startswith(prefix.lower())
            ]
            matching.sort(key=lambda c: (-listeners[c], c))
            assert status == 200 and body == [outputs.encoded.artist_names[c] for c in matching][:10], prefix
        assert get(base, "/api/recommend", user="user-1")[0] == 200
        assert get(base, "/api/recommend", user="nobody")[0] == 404
    finally:
        proc.terminate()
        proc.wait(timeout=30)

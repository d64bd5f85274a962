"""A run's fold-in arrays in the database, and recommendations for a listener who is not in the data.

The arrays (``tasks.foldin.fold_in_arrays``) are stored in ``fold_in_arrays`` as ``.npy`` bytes
cut into ``CHUNK_BYTES`` pieces, written in the publish transaction and dropped with the run's rows
by retention, so any reader of the database can fold in from the current run with no files and no
refit: ``listened_recommendations``.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.lib.format as npy_format
import scipy.sparse as sp
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from storage.engine import database_errors
from storage.queries import RecommendationRow, UnknownName, _require_run, _unknown_names, find_artists, similar_names
from storage.schema import Artist, FoldInArray, Run
from tasks.errors import RecsError
from tasks.foldin import fold_in
from tasks.models.registry import model_config

# Bytes per stored piece: 16 MB keeps every statement's parameter far below both databases' limits
CHUNK_BYTES = 1 << 24


@dataclass(frozen=True)
class Heard:
    """One artist of a new listener's history, as matched in the run, with its plays."""

    artist_key: str
    artist_name: str
    plays: float


@dataclass(frozen=True)
class ListenerRecommendations:
    """Top-N for a listener who is not in the data, from the current run of ``dataset``."""

    run_id: int
    dataset: str
    heard: list[Heard]
    rows: list[RecommendationRow]


def write_fold_in(conn: Connection, run_id: int, arrays: dict[str, np.ndarray]) -> None:
    """Store ``arrays`` (name -> array) as run ``run_id``'s, inside ``conn``'s transaction."""
    for name, array in arrays.items():
        # one statement per 16 MB piece (~150 at the 360K shape); both drivers copy the view they bind
        for chunk, data in enumerate(npy_pieces(array, CHUNK_BYTES)):
            conn.execute(sa.insert(FoldInArray), {"run_id": run_id, "name": name, "chunk": chunk, "data": data})


def npy_pieces(array: np.ndarray, size: int) -> Iterator[bytes | memoryview]:
    """``np.save``'s bytes of ``array`` cut into pieces of ``size`` (the last one shorter, the first
    longer when ``size`` is below the header's ~128 bytes): the first piece is the header and the
    data's start, the others views of the array's own memory.
    ``np.save`` into a buffer copied the array first: 6.8 s of a 360K-shape publish's 2.2 GB."""
    array = np.ascontiguousarray(array)
    header = io.BytesIO()
    npy_format.write_array_header_1_0(header, npy_format.header_data_from_array_1_0(array))
    head = header.getvalue()
    data = array.reshape(-1).view(np.uint8).data
    first = max(size - len(head), 0)
    yield head + data[:first].tobytes()
    for start in range(first, len(data), size):
        yield data[start : start + size]


def drop_fold_in(conn: Connection, run_ids: list[int]) -> None:
    conn.execute(sa.delete(FoldInArray).where(FoldInArray.run_id.in_(run_ids)))


def read_fold_in(conn: Connection, run_id: int) -> dict[str, np.ndarray]:
    """Run ``run_id``'s arrays (name -> array); {} when it stored none."""
    pieces: dict[str, list[bytes]] = {}
    query = (
        sa.select(FoldInArray.name, FoldInArray.data)
        .where(FoldInArray.run_id == run_id)
        .order_by(FoldInArray.name, FoldInArray.chunk)
    )
    for name, data in conn.execute(query):
        pieces.setdefault(name, []).append(bytes(data))
    return {name: np.load(io.BytesIO(b"".join(parts)), allow_pickle=False) for name, parts in pieces.items()}


# A run's arrays never change once published, so a long-lived reader (a web app) reads them once:
# (database URL, run_id) -> arrays, for the last few runs asked about (2.2 GB each at the 360K
# shape with the shipped blend, most of it its item-kNN weights)
_CACHE: OrderedDict[tuple[str, int], dict[str, np.ndarray]] = OrderedDict()
CACHED_RUNS = 2
_CACHE_LOCK = threading.Lock()


def _arrays_of(conn: Connection, url: str, run_id: int) -> dict[str, np.ndarray]:
    key = (url, run_id)
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    arrays = read_fold_in(conn, run_id)
    with _CACHE_LOCK:
        _CACHE[key] = arrays
        while len(_CACHE) > CACHED_RUNS:
            _CACHE.popitem(last=False)
    return arrays


def listened_recommendations(
    engine: Engine, listened: list[tuple[str, float]], n: int, dataset: str | None = None
) -> ListenerRecommendations:
    """The top ``n`` of the current run of ``dataset`` for a listener with history ``listened``
    (artist name or key -> plays > 0; a name given twice adds up), folded into its user model.

    RecsError (one line) for an empty history, names the run does not have (with close names),
    or a run that stored nothing to fold in with."""
    if not listened:
        raise RecsError("no artists given; list what the listener heard, e.g. --listened 'radiohead,coldplay:3'")
    if any(not np.isfinite(plays) or plays <= 0 for _, plays in listened):
        raise RecsError("play counts must be positive numbers; write name:plays, e.g. radiohead:12")
    with database_errors(engine), engine.connect() as conn:
        run_id, dataset = _require_run(conn, engine, dataset)
        names = list(dict.fromkeys(name for name, _ in listened))
        matches = find_artists(conn, run_id, names)
        unknown = [name for name in names if matches[name] is None]
        if unknown:
            raise UnknownName(_unknown_names(conn, run_id, dataset, unknown), similar_names(conn, run_id, unknown[0]))
        raw = conn.execute(sa.select(Run.config).where(Run.run_id == run_id)).scalar_one()
        arrays = _arrays_of(conn, engine.url.render_as_string(hide_password=False), run_id)
        n_artists = conn.execute(sa.select(sa.func.count()).where(Artist.run_id == run_id)).scalar_one()
        plays_of: dict[int, float] = {}  # artist code -> summed plays, in the order first given
        for name, plays in listened:
            code = matches[name].artist_id  # type: ignore[union-attr]
            plays_of[code] = plays_of.get(code, 0.0) + plays
        codes = np.array(list(plays_of), dtype=np.int64)
        history = sp.csr_matrix(
            (np.array(list(plays_of.values()), dtype=np.float32), (np.zeros(len(codes), dtype=np.int64), codes)),
            shape=(1, n_artists),
        )
        folded = fold_in(model_config(raw["user_model"]), arrays, history, n)
        ids, because = folded.top.ids[0], folded.because[0]
        wanted = {int(code) for code in np.concatenate([ids, because, history.indices]) if code >= 0}
        artists = {
            row.artist_id: row
            for row in conn.execute(
                sa.select(Artist.artist_id, Artist.artist_key, Artist.name).where(
                    Artist.run_id == run_id, Artist.artist_id.in_(wanted)
                )
            )
        }

    def name_of(code: int) -> tuple[str | None, str | None]:
        return (artists[code].artist_key, artists[code].name) if code >= 0 else (None, None)

    rows = [
        RecommendationRow(
            rank + 1, artists[int(code)].artist_key, artists[int(code)].name, float(score), *name_of(int(why))
        )
        for rank, (code, score, why) in enumerate(zip(ids, folded.top.scores[0], because))
        if code >= 0
    ]
    heard = [Heard(artists[code].artist_key, artists[code].name, plays) for code, plays in plays_of.items()]
    return ListenerRecommendations(run_id, dataset, heard, rows)


def parse_listened(text: str) -> list[tuple[str, float]]:
    """``name[:plays],...`` -> (name, plays) pairs; plays default to 1. A ``:`` followed by
    something that is no number stays part of the name (e.g. ``Sunn O))):live``)."""
    history = []
    for item in text.split(","):
        name, _, plays = item.rpartition(":")
        try:
            history.append((name.strip(), float(plays)) if name.strip() else (item.strip(), 1.0))
        except ValueError:
            history.append((item.strip(), 1.0))
    return [(name, plays) for name, plays in history if name]

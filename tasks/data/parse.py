"""Parse: a dataset on local disk -> tidy play counts (``tasks.contracts.Interactions``).

Formats, detected from the path (``detect``):

- ``lastfm-2k``: the HetRec 2011 Last.fm 2K folder. ``user_artists.dat`` (``userID artistID
  weight``) with names from ``artists.dat`` (``id name url pictureURL``); tab-separated, CRLF,
  one header line, UTF-8. The artist key is the HetRec id (``"89"`` is Lady Gaga).
- ``lastfm-360k``: the Last.fm 360K play file ``usersha1-artmbid-artname-plays.tsv`` (or any
  header-less file of four tab-separated columns): user SHA-1, artist MusicBrainz id (may be
  empty), artist name, plays. The artist key is the mbid, else the normalised name (NFKC,
  lower-cased, trimmed, inner whitespace collapsed), so "The  Beatles" and "the beatles" meet.
- ``table``: ``.csv``/``.tsv``/``.txt`` with a header line (tab-separated if the header has a
  tab, else comma-separated; double quotes allowed), or ``.parquet``; columns ``user``,
  ``artist``, ``plays`` and optionally ``artist_name`` (any letter case).

Bad rows are dropped and counted by kind in ``BadRows.counts``; each dropped row is counted once,
under the first rule it breaks, in this order:

- ``missing_fields``: fewer fields than the format has, or an empty user or plays field;
- ``extra_fields``: more fields than the format has (cannot tell which one is the name);
- ``undecodable_bytes``: a field that is not valid UTF-8;
- ``empty_artist``: no artist key (no id, or in 360K neither mbid nor name);
- ``oversized_key``: a user or artist key longer than ``MAX_KEY_BYTES`` (1,024) bytes of UTF-8;
  keys are indexed in the database, and PostgreSQL refuses a btree row over ~2.7 KB;
- ``non_numeric_plays``: plays that is not a finite number (``"12x"``, ``"1e999"``);
- ``nan_plays``: plays that is ``NaN``;
- ``non_positive_plays``: plays of zero or less;
- ``overflowing_plays``: plays above the float32 maximum (~3.4e38, e.g. ``"1e300"``), which
  would become infinity in the matrix.

Rows repeating a (user, artist) pair are merged into the first: plays summed, the first display
name kept; ``duplicate_pairs`` counts the rows merged away. A pair whose sum overflows float32 is
dropped and counted once under ``overflowing_plays``. So ``rows_read == rows_kept +
bad_rows.total``. Display names longer than ``MAX_NAME_CHARS`` (500) characters are cut to that
length (the key, which identifies the artist, is never cut). A missing display name falls back to the artist key. A file in which more than
half of the rows are dropped is refused with a ``RecsError`` (probably the wrong file or format).

Files are read in blocks by pyarrow's streaming CSV reader and cleaned with vectorised pyarrow
compute, a few blocks at a time over the cores; strings are dictionary-encoded per block, so the
17.5 M-row 360K file stays well inside a few GB of memory.
"""

from __future__ import annotations

import csv
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from tasks.contracts import BadRows, Downloaded, Interactions, Parsed
from tasks.cores import cores
from tasks.data.records import file_sha256, matches_record, record, record_path
from tasks.errors import RecsError
from tasks.files import atomic_path

HETREC_PLAYS = "user_artists.dat"
HETREC_ARTISTS = "artists.dat"
LASTFM_360K_PLAYS = "usersha1-artmbid-artname-plays.tsv"
TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet")
# Kinds in the order rows are checked (module docstring); duplicates are counted last.
BAD_ROW_KINDS = (
    "missing_fields",
    "extra_fields",
    "undecodable_bytes",
    "empty_artist",
    "oversized_key",
    "non_numeric_plays",
    "nan_plays",
    "non_positive_plays",
    "overflowing_plays",
    "duplicate_pairs",
)
# Keys go into unique btree indexes (and names into one on lower(name)); PostgreSQL refuses an
# index row over ~2,704 bytes, so both stay well below it (500 characters are at most 2,000 bytes).
MAX_KEY_BYTES = 1024
MAX_NAME_CHARS = 500
_FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_BAD_SHARE = 0.5
# ~160K rows of the 360K file per block: big enough for pyarrow to be fast, small enough that
# the per-block dictionaries and the rare pure-Python fallback for undecodable bytes stay cheap.
BLOCK_SIZE = 16 << 20
# A block's cleaning (``_cleaned`` with its raw fields bound): given the Counter its bad rows
# are counted in, its kept rows.
Cleaning = Callable[[Counter[str]], pa.RecordBatch]
_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
_NAN = r"(?i)^[+-]?nan$"


def parse(path: Path, dataset: str | None = None) -> Interactions:
    """Read ``path`` (a file or an extracted folder) into tidy play counts.

    Returns ``Interactions`` whose frame has one row per (user, artist): ``user``, ``artist``,
    ``artist_name`` as pandas Categoricals of str (categories in order of first appearance) and
    ``plays`` float32 > 0. ``dataset`` names it (default: the detected format).
    Raises ``RecsError`` for a missing/unrecognised path or a file that is mostly bad rows.
    """
    fmt, file = detect(Path(path))
    bad: Counter[str] = Counter()
    if fmt == "lastfm-2k":
        batches = _hetrec_batches(file, bad)
    elif fmt == "lastfm-360k":
        batches = _lastfm360k_batches(file, bad)
    else:
        batches = _table_batches(file, bad)
    frame, rows_read = _collect(batches, bad)
    _refuse_mostly_bad(file, rows_read, bad)
    frame, merged, overflowed = _merge_duplicates(frame)
    if merged:
        bad["duplicate_pairs"] = merged
    bad["overflowing_plays"] += overflowed
    counts = {kind: bad[kind] for kind in BAD_ROW_KINDS if bad[kind]}
    bad_rows = BadRows(rows_read=rows_read, rows_kept=len(frame), counts=counts)
    return Interactions(frame=frame, bad_rows=bad_rows, dataset=dataset or fmt)


def parse_to_parquet(downloaded: Downloaded, dataset: str | None, out_dir: Path, keep: int | None = None) -> Parsed:
    """``parse`` the download and write its tidy frame as Parquet into ``out_dir``, named by the
    download's digest and the dataset, so a cached parse is a path and the bad-row counts. The
    file's SHA-256 is recorded beside it (``cached_parse_intact`` checks it on reuse). ``keep``:
    how many parses to keep in ``out_dir``, newest first (this one always); None keeps all."""
    interactions = parse(downloaded.path, dataset)
    path = Path(out_dir) / f"parsed-{downloaded.sha256[:16]}-{interactions.dataset}.parquet"
    with atomic_path(path) as temp:
        interactions.frame.to_parquet(temp, index=False)
        digest = file_sha256(temp)
    record(path, digest)
    if keep is not None:
        _prune_parsed(Path(out_dir), keep, path)
    return Parsed(path=path, bad_rows=interactions.bad_rows, dataset=interactions.dataset)


def cached_parse_intact(parsed: Parsed) -> bool:
    """Whether a (cached) parse's Parquet file is still there with the bytes recorded for it."""
    return matches_record(parsed.path)


def _prune_parsed(out_dir: Path, keep: int, current: Path) -> None:
    """Remove all but the ``keep`` newest parses (by mtime) in ``out_dir``, never ``current``."""
    parses = sorted(out_dir.glob("parsed-*.parquet"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for old in [p for p in parses if p != current][max(keep - 1, 0) :]:
        record_path(old).unlink(missing_ok=True)  # the record first: a half-pruned parse is not reused
        old.unlink(missing_ok=True)


def detect(path: Path) -> tuple[str, Path]:
    """The format (``lastfm-2k``, ``lastfm-360k`` or ``table``) and the play file to read."""
    if not path.exists():
        raise RecsError(f"{path} does not exist; check the path or download the dataset first")
    if path.is_dir():
        return _detect_dir(path)
    if path.stat().st_size == 0:
        raise RecsError(f"{path} is empty; check that the download or export completed")
    if path.name == HETREC_PLAYS:
        return "lastfm-2k", path
    if path.name == LASTFM_360K_PLAYS:
        return "lastfm-360k", path
    if path.suffix.lower() == ".parquet":
        return "table", path
    header = _first_line(path)
    if {"user", "artist", "plays"} <= set(_split_header(header)):
        return "table", path
    if header.count("\t") == 3:
        return "lastfm-360k", path
    raise RecsError(
        f"cannot tell the format of {path}: expected a header with columns user, artist, plays, "
        "or the Last.fm 360K layout (user, mbid, name, plays; tab-separated, no header)"
    )


def inputs(path: Path) -> list[Path]:
    """The files ``parse(path)`` reads, and no others: the play file ``detect`` picks and, for
    HetRec 2K, the ``artists.dat`` beside it. Raises ``RecsError`` as ``detect`` does."""
    fmt, file = detect(Path(path))
    names = file.with_name(HETREC_ARTISTS)
    return [file, names] if fmt == "lastfm-2k" and names.is_file() else [file]


def _detect_dir(folder: Path) -> tuple[str, Path]:
    # An archive may hold its files at the root or under one top folder.
    for name, fmt in ((HETREC_PLAYS, "lastfm-2k"), (LASTFM_360K_PLAYS, "lastfm-360k")):
        found = sorted(folder.glob(name)) or sorted(folder.glob(f"*/{name}"))
        if found:
            return fmt, found[0]
    tables = sorted(p for p in folder.iterdir() if p.suffix.lower() in TABLE_SUFFIXES)
    if len(tables) == 1:
        return detect(tables[0])
    raise RecsError(
        f"{folder} holds no {HETREC_PLAYS} (HetRec 2K), no {LASTFM_360K_PLAYS} (Last.fm 360K) "
        "and not exactly one .csv/.tsv/.parquet table; point --source at the play file itself"
    )


def _first_line(path: Path) -> str:
    with path.open("rb") as fh:
        return fh.readline(1 << 16).decode("utf-8", errors="replace").rstrip("\r\n")


def _split_header(line: str) -> list[str]:
    sep = "\t" if "\t" in line else ","
    return [field.strip().strip('"').lower() for field in line.split(sep)]


# --- readers: each yields record batches with binary columns user, artist, name, plays -----------


def _delimited(
    path: Path,
    names: list[str],
    keep: list[str],
    bad: Counter[str],
    *,
    delimiter: str,
    quoted: bool,
    header: bool,
) -> Iterator[pa.RecordBatch]:
    """Stream ``path`` as batches of the ``keep`` columns, all read as raw bytes.

    Bytes, not str, so one undecodable field costs its row rather than the whole file.
    Lines with the wrong number of fields are skipped and counted.
    """

    def wrong_width(row: pacsv.InvalidRow) -> str:
        bad["missing_fields" if row.actual_columns < row.expected_columns else "extra_fields"] += 1
        return "skip"

    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=1 if header else 0, block_size=BLOCK_SIZE),
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter,
                quote_char='"' if quoted else False,
                invalid_row_handler=wrong_width,
            ),
            convert_options=pacsv.ConvertOptions(
                include_columns=keep, column_types={name: pa.binary() for name in keep}
            ),
        )
        yield from reader
    except pa.ArrowInvalid as exc:
        message = str(exc).splitlines()[0]
        raise RecsError(f"cannot read {path}: {message}; check that it is a text table") from exc


def _lastfm360k_batches(path: Path, bad: Counter[str]) -> Iterator[Cleaning]:
    names = ["user", "mbid", "name", "plays"]
    for batch in _delimited(path, names, names, bad, delimiter="\t", quoted=False, header=False):
        yield partial(_cleaned, batch["user"], batch["mbid"], batch["name"], batch["plays"], True)


def _hetrec_batches(path: Path, bad: Counter[str]) -> Iterator[Cleaning]:
    artists_file = path.with_name(HETREC_ARTISTS)
    if not artists_file.is_file():
        raise RecsError(f"{artists_file} is missing beside {path.name}; extract the whole HetRec 2K archive")
    artists = hetrec_artists(artists_file)
    ids = pa.array(artists["id"].tolist(), pa.string())
    names = pa.array(artists["name"].tolist(), pa.string())
    columns = ["user", "artist", "plays"]
    for batch in _delimited(path, columns, columns, bad, delimiter="\t", quoted=False, header=True):
        artist = batch["artist"]
        name = pc.take(names, pc.index_in(pc.utf8_trim_whitespace(_lenient(artist)), value_set=ids))
        yield partial(_cleaned, batch["user"], artist, name, batch["plays"], False)


def hetrec_artists(artists_file: Path) -> pd.DataFrame:
    """HetRec's ``artists.dat`` as columns ``id`` (trimmed str) and ``name`` (str), file order.

    17,632 lines of metadata: pandas is simplest, and a bad name here must not cost plays
    (undecodable bytes become U+FFFD, malformed lines are skipped)."""
    artists = pd.read_csv(
        artists_file,
        sep="\t",
        quoting=csv.QUOTE_NONE,
        usecols=[0, 1],
        dtype=str,
        keep_default_na=False,
        encoding="utf-8",
        encoding_errors="replace",
        on_bad_lines="skip",
    )
    return pd.DataFrame({"id": artists.iloc[:, 0].str.strip(), "name": artists.iloc[:, 1]})


def _table_batches(path: Path, bad: Counter[str]) -> Iterator[Cleaning]:
    if path.suffix.lower() == ".parquet":
        yield from _parquet_batches(path, bad)
        return
    line = _first_line(path)
    header, delimiter = _split_header(line), "\t" if "\t" in line else ","
    keep: list[str] = [c for c in ("user", "artist", "artist_name", "plays") if c in header]
    for batch in _delimited(path, header, keep, bad, delimiter=delimiter, quoted=True, header=True):
        name = batch["artist_name"] if "artist_name" in keep else None
        yield partial(_cleaned, batch["user"], batch["artist"], name, batch["plays"], False)


def _parquet_batches(path: Path, bad: Counter[str]) -> Iterator[Cleaning]:
    try:
        table_file = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise RecsError(f"cannot read {path}: not a readable Parquet file ({exc})") from exc
    columns = {c.lower(): c for c in table_file.schema_arrow.names}
    missing = {"user", "artist", "plays"} - columns.keys()
    if missing:
        raise RecsError(f"{path} lacks column(s) {', '.join(sorted(missing))}; needs user, artist, plays")
    wanted = [columns[c] for c in ("user", "artist", "artist_name", "plays") if c in columns]
    schema = table_file.schema_arrow
    for name in wanted:
        kind = schema.field(name).type
        if pa.types.is_dictionary(kind):
            kind = kind.value_type
        if not (
            pa.types.is_string(kind)
            or pa.types.is_large_string(kind)
            or _is_binary(kind)
            or pa.types.is_integer(kind)
            or pa.types.is_floating(kind)
            or pa.types.is_decimal(kind)
        ):
            raise RecsError(
                f"{path}: column {name} is of type {kind}, not text or a number; "
                "write user, artist, artist_name and plays as plain columns"
            )
    for batch in table_file.iter_batches(batch_size=1 << 20, columns=wanted):
        col = {name.lower(): _as_bytes(batch[name]) for name in batch.schema.names}
        yield partial(_cleaned, col["user"], col["artist"], col.get("artist_name"), col["plays"], False)


def _is_binary(kind: pa.DataType) -> bool:
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind)


def _as_bytes(column: pa.Array) -> pa.Array:
    """A Parquet column (text, bytes or numbers) as raw bytes; binary is passed through undecoded,
    so a row of invalid UTF-8 counts as ``undecodable_bytes`` instead of failing the file."""
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if _is_binary(column.type):
        return column.cast(pa.binary())
    return column.cast(pa.string()).cast(pa.binary())


# --- cleaning --------------------------------------------------------------------------------


def _decode(column: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Binary -> UTF-8 strings, and a mask of the rows that were not valid UTF-8 (decoded as "")."""
    try:
        return column.cast(pa.string()), np.zeros(len(column), dtype=bool)
    except pa.ArrowInvalid:
        pass
    # Rare: only a block holding an undecodable field pays for this per-value loop.
    values, invalid = [], np.zeros(len(column), dtype=bool)
    for i, raw in enumerate(column.to_pylist()):
        try:
            values.append(None if raw is None else raw.decode("utf-8"))
        except UnicodeDecodeError:
            values.append("")
            invalid[i] = True
    return pa.array(values, pa.string()), invalid


def _text(column: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """A raw field (bytes or str) -> trimmed UTF-8 strings, "" where missing, and the mask of
    rows that were not valid UTF-8."""
    if pa.types.is_binary(column.type):
        strings, invalid = _decode(column)
    else:
        strings, invalid = column, np.zeros(len(column), dtype=bool)
    if strings.null_count:
        strings = pc.fill_null(strings, "")
    return pc.utf8_trim_whitespace(strings), invalid


def _lenient(column: pa.Array) -> pa.Array:
    return _decode(column)[0]


def _normalised(names: pa.Array) -> pa.Array:
    folded = pc.utf8_lower(pc.utf8_normalize(names, form="NFKC"))
    return pc.utf8_trim_whitespace(pc.replace_substring_regex(folded, r"\s+", " "))


def _cleaned(
    user: pa.Array,
    artist: pa.Array,
    name: pa.Array | None,
    plays: pa.Array,
    key_from_name: bool,
    bad: Counter[str],
) -> pa.RecordBatch:
    """One block of raw fields -> the kept rows as (user, artist, artist_name, plays).

    ``key_from_name``: the 360K rule, an empty ``artist`` (mbid) is replaced by the normalised name.
    """
    n = len(user)
    user, bad_user = _text(user)
    artist, bad_artist = _text(artist)
    plays, bad_plays = _text(plays)
    name, bad_name = (artist, np.zeros(n, dtype=bool)) if name is None else _text(name)
    if key_from_name:
        no_id = pc.equal(artist, "")
        if pc.any(no_id).as_py():  # normalise only the names that become keys (few rows)
            artist = pc.replace_with_mask(artist, no_id, _normalised(pc.filter(name, no_id)))
    name = pc.if_else(pc.equal(name, ""), artist, name)
    if n and pc.max(pc.utf8_length(name)).as_py() > MAX_NAME_CHARS:
        name = pc.utf8_slice_codeunits(name, 0, MAX_NAME_CHARS)

    values, non_numeric, is_nan = _plays(plays)
    with np.errstate(over="ignore"):
        overflowing = np.isfinite(values) & np.isinf(values.astype(np.float32))
    rules: list[tuple[str, np.ndarray]] = [
        # an undecodable field reads as "", but it was there: it counts as undecodable below
        ("missing_fields", _mask(pc.equal(user, "")) & ~bad_user | _mask(pc.equal(plays, "")) & ~bad_plays),
        ("undecodable_bytes", bad_user | bad_artist | bad_plays | bad_name),
        ("empty_artist", _mask(pc.equal(artist, ""))),
        (
            "oversized_key",
            _mask(pc.greater(pc.binary_length(user), MAX_KEY_BYTES))
            | _mask(pc.greater(pc.binary_length(artist), MAX_KEY_BYTES)),
        ),
        ("non_numeric_plays", non_numeric),
        ("nan_plays", is_nan),
        ("non_positive_plays", values <= 0),
        ("overflowing_plays", overflowing),
    ]
    keep = np.ones(n, dtype=bool)
    for kind, broken in rules:
        dropped = broken & keep
        bad[kind] += int(dropped.sum())
        keep &= ~dropped
    kept = pa.array(keep)
    return pa.RecordBatch.from_arrays(
        [
            pc.dictionary_encode(pc.filter(user, kept)),
            pc.dictionary_encode(pc.filter(artist, kept)),
            pc.dictionary_encode(pc.filter(name, kept)),
            pa.array(values[keep].astype(np.float32)),
        ],
        names=["user", "artist", "artist_name", "plays"],
    )


def _plays(plays: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Trimmed plays strings -> float64 values and masks of non-numeric (or infinite) and NaN ones.

    One strict cast per block when every value is a number (the usual case); the regex
    classification only for blocks where that cast fails. Both classify a value the same way.
    """
    try:
        values = pc.cast(plays, pa.float64()).to_numpy(zero_copy_only=False)
        return values, np.isinf(values), np.isnan(values)
    except pa.ArrowInvalid:
        pass
    numeric = _mask(pc.match_substring_regex(plays, _NUMBER))
    values = pc.cast(pc.if_else(pa.array(numeric), plays, "0"), pa.float64()).to_numpy()
    is_nan = ~numeric & _mask(pc.match_substring_regex(plays, _NAN))
    return values, ~numeric & ~is_nan | ~np.isfinite(values), is_nan


def _mask(result: pa.Array) -> np.ndarray:
    return result.to_numpy(zero_copy_only=False).astype(bool)


def _collect(blocks: Iterator[Cleaning], bad: Counter[str]) -> tuple[pd.DataFrame, int]:
    """All blocks cleaned, as one frame (Categorical strings), and the number of data rows read."""
    kept = _cleaned_in_threads(blocks, bad)
    rows_read = sum(b.num_rows for b in kept) + sum(bad.values())
    if not kept:
        schema = pa.schema(
            [(c, pa.dictionary(pa.int32(), pa.string())) for c in ("user", "artist", "artist_name")]
            + [("plays", pa.float32())]
        )
        table = schema.empty_table()
    else:
        table = pa.Table.from_batches(kept)
    del kept
    # to_pandas unifies the per-block dictionaries into one set of categories per column.
    frame = table.unify_dictionaries().to_pandas(split_blocks=True, self_destruct=True)
    return frame, rows_read


def _cleaned_in_threads(blocks: Iterator[Cleaning], bad: Counter[str]) -> list[pa.RecordBatch]:
    """Every block cleaned, in file order, a few at a time over the cores: pyarrow's compute
    releases the GIL, and cleaning on one core was 9.3 s of the 17 s the 360K file took. At most
    two blocks a core wait, so memory holds a few raw blocks, not the file. Each block counts its
    bad rows in its own Counter, added to ``bad`` once the reader (whose own count of malformed
    lines goes to ``bad`` as it reads) is done."""
    workers = cores()
    kept: list[pa.RecordBatch] = []
    counts: list[Counter[str]] = []
    with ThreadPoolExecutor(workers) as pool:
        pending: deque[Future[pa.RecordBatch]] = deque()
        for block in blocks:
            counts.append(Counter())
            pending.append(pool.submit(block, counts[-1]))
            if len(pending) > 2 * workers:
                kept.append(pending.popleft().result())
        kept += [job.result() for job in pending]
    for counted in counts:
        bad.update(counted)
    return kept


def _refuse_mostly_bad(path: Path, rows_read: int, bad: Counter[str]) -> None:
    dropped = sum(bad.values())
    if rows_read == 0:
        raise RecsError(f"{path} has no data rows; check that the download or export completed")
    if dropped > MAX_BAD_SHARE * rows_read:
        kinds = ", ".join(f"{k}: {v:,}" for k, v in bad.most_common() if v)
        raise RecsError(
            f"{path}: {dropped:,} of {rows_read:,} rows are bad ({kinds}); "
            "check the file's format and encoding (UTF-8, columns user, artist, plays)"
        )


def _merge_duplicates(frame: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
    """Sum plays of repeated (user, artist) pairs into their first row; returns the frame, the rows
    merged away, and the pairs dropped because their sum overflows float32."""
    users = frame["user"].cat.codes.to_numpy().astype(np.int64)
    artists = frame["artist"].cat.codes.to_numpy().astype(np.int64)
    pair = users * max(len(frame["artist"].cat.categories), 1) + artists
    ordered = np.sort(pair)
    if not (ordered[1:] == ordered[:-1]).any():  # the usual case, and a sort beats hashing here
        return frame, 0, 0
    del ordered
    repeated = pd.Series(pair).duplicated().to_numpy()
    merged = int(repeated.sum())
    totals = pd.Series(frame["plays"].to_numpy(np.float64)).groupby(pair, sort=False).sum()
    first = frame.loc[~repeated].reset_index(drop=True)
    summed = totals.reindex(pair[~repeated]).to_numpy()
    fits = summed <= _FLOAT32_MAX
    overflowed = int((~fits).sum())
    if overflowed:  # rare: drop the pairs, and the users and artists only they had
        first = first.loc[fits].reset_index(drop=True)
        for column in ("user", "artist", "artist_name"):
            first[column] = first[column].cat.remove_unused_categories()
    first["plays"] = summed[fits].astype(np.float32)
    return first, merged, overflowed

"""tasks.data.parse on the real HetRec 2K files, generated 360K-format files and hand-made bad rows."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tasks.data.parse
from tasks.data.parse import detect, parse
from tasks.data.synthetic import generate
from tasks.errors import RecsError


def tidy(frame: pd.DataFrame) -> list[tuple[str, str, str, float]]:
    """The frame as sorted plain tuples, so Categorical and str columns compare equal."""
    return sorted(
        zip(
            frame["user"].astype(str),
            frame["artist"].astype(str),
            frame["artist_name"].astype(str),
            frame["plays"].astype(float),
        )
    )


def test_hetrec_counts_names_and_total_plays(hetrec_dir: Path):
    with (hetrec_dir / "user_artists.dat").open(newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))[1:]
    interactions = parse(hetrec_dir)
    frame = interactions.frame
    assert (frame["user"].nunique(), frame["artist"].nunique(), len(frame)) == (1_892, 17_632, 92_834)
    assert frame["plays"].dtype == np.float32
    assert frame["plays"].to_numpy(np.float64).sum() == sum(int(r[2]) for r in rows)
    assert interactions.bad_rows.rows_read == interactions.bad_rows.rows_kept == len(rows)
    assert interactions.bad_rows.counts == {}
    names = dict(zip(frame["artist"].astype(str), frame["artist_name"].astype(str)))
    assert names["89"] == "Lady Gaga" and names["51"] == "Duran Duran"
    # artists.dat is UTF-8: a name with non-ASCII letters arrives intact, without a CR at the end.
    assert any(not n.isascii() for n in names.values()) and not any(n.endswith("\r") for n in names.values())
    assert detect(hetrec_dir / "user_artists.dat") == ("lastfm-2k", hetrec_dir / "user_artists.dat")


def test_hetrec_without_artists_dat_is_refused(hetrec_dir: Path, tmp_path: Path):
    shutil.copy(hetrec_dir / "user_artists.dat", tmp_path)
    with pytest.raises(RecsError, match=r"artists.dat is missing beside user_artists.dat; extract the whole"):
        parse(tmp_path)


GOOD = [
    "u1\tm-1\tAlpha\t10",
    "u1\tm-2\tBeta\t5",
    "u2\tm-1\tAlpha\t7",
    "u2\t\tThe  Beatles\t3",
    "u3\t\tthe beatles\t4",
    "u3\tm-3\tGamma\t2.5\r",
] + [f"u{i}\tm-1\tAlpha\t1" for i in range(10, 40)]
BAD = {
    "missing_fields": ["u4\tm-1\tAlpha", "u4\tm-1\tAlpha\t", "\tm-1\tAlpha\t3"],
    "extra_fields": ["u4\tm-1\tAlpha\t3\tsurprise"],
    "undecodable_bytes": [b"u4\tm-5\tCaf\xe9\t3"],
    "empty_artist": ["u4\t\t\t3", "u4\t\t   \t3"],
    "non_numeric_plays": ["u4\tm-1\tAlpha\tlots", "u4\tm-1\tAlpha\t1e999", "u4\tm-1\tAlpha\t12abc"],
    "nan_plays": ["u4\tm-1\tAlpha\tNaN", "u4\tm-1\tAlpha\tnan"],
    "non_positive_plays": ["u4\tm-1\tAlpha\t0", "u4\tm-1\tAlpha\t-3", "u4\tm-1\tAlpha\t-0.0"],
    "duplicate_pairs": ["u1\tm-1\tAlpha (live)\t4", "u2\t\t THE BEATLES \t1"],
}


def _write_lines(path: Path, lines) -> Path:
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
    return path


def test_each_bad_row_kind_is_counted_and_the_rest_kept(tmp_path: Path):
    lines = GOOD[:3] + [row for rows in BAD.values() for row in rows] + GOOD[3:]
    interactions = parse(_write_lines(tmp_path / "plays.tsv", lines))
    bad = interactions.bad_rows
    assert bad.counts == {kind: len(rows) for kind, rows in BAD.items()}
    assert bad.rows_read == len(lines) and bad.rows_kept == bad.rows_read - bad.total
    assert interactions.dataset == "lastfm-360k"
    kept = {(u, a): (n, p) for u, a, n, p in tidy(interactions.frame)}
    assert kept[("u1", "m-1")] == ("Alpha", 14.0)  # duplicate summed, the first name kept
    # No mbid: keyed by the normalised name; the duplicate came first in the file, so its name stays.
    assert kept[("u2", "the beatles")] == ("THE BEATLES", 4.0)
    assert kept[("u3", "the beatles")] == ("the beatles", 4.0)
    assert kept[("u3", "m-3")] == ("Gamma", 2.5)
    assert len(kept) == len(GOOD)


def test_blocks_do_not_change_the_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Small read blocks (many per-block dictionaries, cleaned several at a time in threads, bad
    rows of every kind spread over them) give the same frame, codes and counts as one block."""
    plays = generate(tmp_path / "plays.tsv", users=200, artists=800, rows=8_000, genres=8, seed=5)
    lines = plays.read_bytes().splitlines()
    bad = [
        row if isinstance(row, bytes) else row.encode()
        for kind, rows in BAD.items()
        if kind != "duplicate_pairs"
        for row in rows
    ]
    step = len(lines) // len(bad)
    for i, row in enumerate(bad):  # one every ~500 lines, so they fall in different blocks
        lines.insert((i + 1) * (step + 1), row)
    _write_lines(plays, lines)
    whole = parse(plays)
    monkeypatch.setattr(tasks.data.parse, "BLOCK_SIZE", 1 << 14)
    blocks = parse(plays)
    assert blocks.frame.equals(whole.frame)  # the same rows in the same order: the same codes
    assert blocks.bad_rows == whole.bad_rows
    assert whole.bad_rows.counts == {kind: len(rows) for kind, rows in BAD.items() if kind != "duplicate_pairs"}


def test_generated_360k_file_matches_a_plain_pandas_reading(tmp_path: Path):
    plays = generate(tmp_path / "plays.tsv", users=300, artists=1_000, rows=12_000, genres=6, seed=9)
    raw = pd.read_csv(
        plays,
        sep="\t",
        header=None,
        names=["user", "mbid", "name", "plays"],
        dtype=str,
        keep_default_na=False,
        quoting=csv.QUOTE_NONE,
    )
    key = raw["mbid"].where(raw["mbid"] != "", raw["name"].str.lower().str.split().str.join(" "))
    expected = sorted(zip(raw["user"], key, raw["name"], raw["plays"].astype(float)))
    assert (raw["mbid"] == "").any()
    assert tidy(parse(plays).frame) == expected


def test_tables_csv_tsv_and_parquet(tmp_path: Path):
    csv_file = tmp_path / "plays.csv"
    csv_file.write_text('User,Artist,Plays\nann,"Crosby, Stills & Nash",5\nann,Air,2\nbob,Air,1\n')
    assert tidy(parse(csv_file).frame) == [
        ("ann", "Air", "Air", 2.0),
        ("ann", "Crosby, Stills & Nash", "Crosby, Stills & Nash", 5.0),
        ("bob", "Air", "Air", 1.0),
    ]
    tsv_file = tmp_path / "plays.tsv"
    tsv_file.write_text("user\tartist\tartist_name\tplays\nann\t89\tLady Gaga\t3\n")
    parsed = parse(tsv_file)
    assert parsed.dataset == "table" and tidy(parsed.frame) == [("ann", "89", "Lady Gaga", 3.0)]

    parquet_file = tmp_path / "plays.parquet"
    pq.write_table(
        pa.table(
            {"user": [1, 1, 2, 2], "artist": ["Air", "Blur", "Air", "Cher"], "plays": [3.0, float("nan"), 0.0, 4.0]}
        ),
        parquet_file,
    )
    parsed = parse(parquet_file)
    assert tidy(parsed.frame) == [("1", "Air", "Air", 3.0), ("2", "Cher", "Cher", 4.0)]
    assert parsed.bad_rows.counts == {"nan_plays": 1, "non_positive_plays": 1}
    assert detect(tmp_path / "plays.csv") == ("table", csv_file)


def test_mostly_bad_file_is_refused(tmp_path: Path):
    lines = [f"u{i}\tm-1\tAlpha\t{'x' if i < 6 else 1}" for i in range(10)]
    path = _write_lines(tmp_path / "plays.tsv", lines)
    with pytest.raises(RecsError) as info:
        parse(path)
    assert str(info.value) == (
        f"{path}: 6 of 10 rows are bad (non_numeric_plays: 6); "
        "check the file's format and encoding (UTF-8, columns user, artist, plays)"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty; check that the download or export completed"),
        (b"a,b,c\n1,2,3\n", "cannot tell the format of"),
        (b"user,artist,plays\n", "has no data rows; check that the download or export completed"),
    ],
)
def test_unusable_files_are_refused(tmp_path: Path, content: bytes, message: str):
    path = tmp_path / "plays.csv"
    path.write_bytes(content)
    with pytest.raises(RecsError, match=message) as info:
        parse(path)
    assert "\n" not in str(info.value)


def test_missing_path_and_unrecognised_folder(tmp_path: Path):
    with pytest.raises(RecsError, match="does not exist; check the path"):
        parse(tmp_path / "nothing")
    (tmp_path / "a.csv").write_text("user,artist,plays\n")
    (tmp_path / "b.csv").write_text("user,artist,plays\n")
    with pytest.raises(RecsError, match="not exactly one .csv/.tsv/.parquet table"):
        parse(tmp_path)


# --- issue 17: sizes and values the database and the matrix cannot hold ------------------------


def test_oversized_keys_are_counted_and_long_names_cut_with_the_key_intact(tmp_path: Path):
    from tasks.data.parse import MAX_KEY_BYTES, MAX_NAME_CHARS

    long_name = "Ä" * 8_000  # 16 KB of UTF-8: one such row used to break every PostgreSQL publish
    lines = [
        "user,artist,artist_name,plays",
        *[f"u{i},a{i % 3},Name {i % 3},2" for i in range(20)],
        f"{'u' * (MAX_KEY_BYTES + 1)},a1,x,3",
        f"u1,{'é' * (MAX_KEY_BYTES // 2 + 1)},x,3",
        f"u1,big,{long_name},5",
    ]
    parsed = parse(_write_lines(tmp_path / "plays.csv", lines))
    assert parsed.bad_rows.counts == {"oversized_key": 2}
    frame = parsed.frame
    names = dict(zip(frame["artist"].astype(str), frame["artist_name"].astype(str)))
    assert names["big"] == "Ä" * MAX_NAME_CHARS
    assert frame["user"].astype(str).str.len().max() <= MAX_KEY_BYTES


def test_plays_that_overflow_float32_are_counted_not_infinite(tmp_path: Path):
    lines = ["user,artist,plays", *[f"u{i},a{i % 4},3" for i in range(20)]]
    lines += ["u1,a9,1e300", "u2,dup,3e38", "u2,dup,3e38", "u3,a1,3.4e38"]
    parsed = parse(_write_lines(tmp_path / "plays.csv", lines))
    bad = parsed.bad_rows
    # 1e300 alone; the duplicate pair whose sum (6e38) overflows counts once, its repeat as a duplicate
    assert bad.counts == {"overflowing_plays": 2, "duplicate_pairs": 1}
    assert bad.rows_read == bad.rows_kept + bad.total == 24
    plays = parsed.frame["plays"].to_numpy()
    assert np.isfinite(plays).all() and plays.max() == np.float32(3.4e38)
    assert "dup" not in set(parsed.frame["artist"].cat.categories)


def test_malformed_parquet_columns_give_one_line(tmp_path: Path):
    nested = tmp_path / "nested.parquet"
    pq.write_table(pa.table({"user": [["u1"], ["u2"]], "artist": ["a", "b"], "plays": [1, 2]}), nested)
    with pytest.raises(RecsError) as info:
        parse(nested)
    assert str(info.value).startswith(f"{nested}: column user is of type list<element: string>, not text")
    assert "\n" not in str(info.value)
    struct = tmp_path / "struct.parquet"
    pq.write_table(pa.table({"user": ["u1"], "artist": [{"id": 1}], "plays": [1]}), struct)
    with pytest.raises(RecsError, match=r"column artist is of type struct<id: int64>, not text or a number"):
        parse(struct)


def test_invalid_utf8_in_parquet_binary_is_counted_as_undecodable(tmp_path: Path):
    users = [f"u{i}".encode() for i in range(10)] + [b"caf\xe9"]
    table = pa.table(
        {"user": pa.array(users, pa.binary()), "artist": ["a"] * 11, "plays": pa.array(range(1, 12), pa.int64())}
    )
    path = tmp_path / "plays.parquet"
    pq.write_table(table, path)
    parsed = parse(path)
    assert parsed.bad_rows.counts == {"undecodable_bytes": 1} and len(parsed.frame) == 10


def test_parsed_cache_keeps_the_newest_and_verifies_its_files(tmp_path: Path):
    import os

    from tasks.contracts import Downloaded
    from tasks.data.parse import cached_parse_intact, parse_to_parquet

    out = tmp_path / "parsed"
    made = []
    for i in range(4):
        plays = _write_lines(
            tmp_path / f"plays{i}.csv", ["user,artist,plays", *[f"u{j},a{j},{i + 1}" for j in range(5)]]
        )
        made.append(parse_to_parquet(Downloaded(str(plays), plays, str(i) * 64, False, "local"), None, out, keep=2))
        os.utime(made[-1].path, ns=(i * 10**9, i * 10**9))  # distinct ages, oldest first
    assert sorted(p.name for p in out.glob("*.parquet")) == sorted(p.path.name for p in made[2:])
    assert cached_parse_intact(made[3])
    made[3].path.write_bytes(made[3].path.read_bytes()[:50])
    assert not cached_parse_intact(made[3]) and not cached_parse_intact(made[0])

"""tasks.spark.parse against tasks.data.parse on the same files: the same rows, the same bad-row
counts (the bad-row fixtures of tests/test_data_parse.py, the real HetRec 2K folder, a
generated 360K file, CSV/TSV/Parquet tables)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.data.parse import MAX_KEY_BYTES, parse
from tasks.data.synthetic import generate
from tasks.errors import RecsError
from tasks.spark.parse import parse as spark_parse
from tests.test_data_parse import BAD, GOOD, _write_lines, tidy

pytestmark = pytest.mark.slow


def assert_same(spark, path: Path) -> None:
    expected = parse(path)
    got = spark_parse(spark, path)
    assert got.bad_rows == expected.bad_rows
    assert got.dataset == expected.dataset
    assert tidy(got.frame.drop("row").toPandas()) == tidy(expected.frame)


def test_bad_row_fixtures_match_the_pandas_parser(spark, tmp_path: Path):
    lines = GOOD[:3] + [row for rows in BAD.values() for row in rows] + GOOD[3:]
    path = _write_lines(tmp_path / "plays.tsv", lines)
    assert_same(spark, path)
    assert spark_parse(spark, path).bad_rows.counts == {kind: len(rows) for kind, rows in BAD.items()}


def test_hetrec_folder_matches(spark, hetrec_dir: Path):
    assert_same(spark, hetrec_dir)


def test_generated_360k_with_undecodable_and_blank_lines_matches(spark, tmp_path: Path):
    plays = generate(tmp_path / "plays.tsv", users=200, artists=800, rows=6_000, genres=8, seed=5)
    with plays.open("ab") as fh:
        fh.write(b"ffff\t\tBad \xff Name\t3\n\n" + b"ffff\tm-9\tFine\t0\r\n" + b"ffff\t\t  Caf\xc3\xa9  \t2\n")
    assert_same(spark, plays)


def test_tables_keys_overflow_and_parquet_match(spark, tmp_path: Path):
    csv_file = tmp_path / "plays.csv"
    csv_file.write_text(
        'User,Artist,Plays\nann,"Crosby, Stills & Nash",5\nann,"Say ""Hi""",2\nbob,Air,1\nbob,Air\nbob,x,1,2\n'
        + "".join(f"u{i},a{i % 3},{i + 1}\n" for i in range(10))
    )
    assert_same(spark, csv_file)
    keys = [
        "user,artist,artist_name,plays",
        *[f"u{i},a{i % 3},Name {i % 3},2" for i in range(20)],
        f"{'u' * (MAX_KEY_BYTES + 1)},a1,x,3",
        f"u1,{'é' * (MAX_KEY_BYTES // 2 + 1)},x,3",
        f"u1,big,{'Ä' * 800},5",
        "u2,dup,,3e38",
        "u2,dup,,3e38",
        "u3,a9,,1e300",
        "u4,a1,,NaN",
    ]
    assert_same(spark, _write_lines(tmp_path / "keys.csv", keys))
    parquet_file = tmp_path / "plays.parquet"
    users = [f"u{i}".encode() for i in range(10)] + [b"caf\xe9", b"u1"]
    pq.write_table(
        pa.table(
            {
                "User": pa.array(users, pa.binary()),
                "artist": ["a", "b"] * 6,
                "plays": [3.0, float("nan"), 0.0] + [float(i) for i in range(1, 10)],
            }
        ),
        parquet_file,
    )
    assert_same(spark, parquet_file)


def test_mostly_bad_file_is_refused_with_the_pandas_message(spark, tmp_path: Path):
    path = _write_lines(tmp_path / "plays.tsv", [f"u{i}\tm\tA\t{'x' if i < 6 else 1}" for i in range(10)])
    with pytest.raises(RecsError) as pandas_error:
        parse(path)
    with pytest.raises(RecsError) as spark_error:
        spark_parse(spark, path)
    assert str(spark_error.value) == str(pandas_error.value)

"""Parse on Spark: the play files -> a tidy Spark DataFrame, with ``tasks.data.parse``'s rules.

The same formats (``tasks.data.parse.detect``: HetRec 2K folder, Last.fm 360K TSV, CSV/TSV/
Parquet tables), the same bad-row kinds in the same order, the same duplicate merge, so the same
file gives the same rows and the same ``BadRows`` counts as the pandas parser
(tests/test_spark_parse.py checks both on the same files, bad-row fixtures included).

How the rules map onto Spark SQL:

- text files are read as lines (``spark.read.text`` splits on ``\\n``, ``\\r\\n`` and ``\\r`` and
  skips nothing; empty lines are dropped as pyarrow does). Lines keep their raw bytes, so
  ``is_valid_utf8`` tells an undecodable line; Spark's field split decodes, turning a bad byte
  into U+FFFD, which marks the field it was in (a field of an invalid line holding U+FFFD);
- fields are split on the tab (or, for quoted CSV tables, on delimiters outside double quotes,
  then unquoted with ``""`` -> ``"``), and counted for ``missing_fields`` / ``extra_fields``;
- the 360K key of a row without an mbid is its name normalised (NFKC, lower-cased, whitespace
  collapsed) by a pandas UDF over those rows only;
- duplicates are merged by a ``groupBy(user, artist)``: plays summed, the name of the row first
  in the file (``min_by`` over the line number) kept.

Returns ``SparkParsed``: the frame ``row long, user, artist, artist_name string, plays float``
(``row``: the first line of the pair, for "first seen" orders downstream) and ``BadRows``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from tasks.contracts import BadRows
from tasks.data.parse import (
    _NAN,
    _NUMBER,
    BAD_ROW_KINDS,
    HETREC_ARTISTS,
    MAX_KEY_BYTES,
    MAX_NAME_CHARS,
    _first_line,
    _refuse_mostly_bad,
    _split_header,
    detect,
    hetrec_artists,
)
from tasks.errors import RecsError
from tasks.spark.session import first

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

_FLOAT32_MAX = float(np.finfo(np.float32).max)
_REPLACEMENT = "\ufffd"
# a delimiter outside double quotes: an even number of quotes follows it to the end of the line
_OUTSIDE_QUOTES = '(?=(?:[^"]*"[^"]*")*[^"]*$)'
# a text file's column -> the field it fills (360K: mbid is the artist key, name the display name)
_TARGETS = {
    "user": "user",
    "artist": "artist",
    "mbid": "artist",
    "artist_name": "name",
    "name": "name",
    "plays": "plays",
}


@dataclass(frozen=True)
class SparkParsed:
    """A parse on Spark: ``frame`` (lazy; ``row``, ``user``, ``artist``, ``artist_name``,
    ``plays`` float > 0, one row per pair), its ``BadRows`` and the dataset name."""

    frame: DataFrame
    bad_rows: BadRows
    dataset: str


def parse(spark: SparkSession, path: Path, dataset: str | None = None) -> SparkParsed:
    """Read ``path`` (a file or an extracted folder) on Spark, as ``tasks.data.parse.parse`` does.

    Raises ``RecsError`` for a missing/unrecognised path or a file that is mostly bad rows.
    """
    from pyspark.sql import functions as F

    fmt, file = detect(Path(path))
    if fmt == "lastfm-2k":
        raw = _hetrec(spark, file)
    elif fmt == "lastfm-360k":
        raw = _lines(spark, file, ["user", "mbid", "name", "plays"], header=False, delimiter="\t", quoted=False)
    elif file.suffix.lower() == ".parquet":
        raw = _parquet(spark, file)
    else:
        line = _first_line(file)
        header, delimiter = _split_header(line), "\t" if "\t" in line else ","
        raw = _lines(spark, file, header, header=True, delimiter=delimiter, quoted=True)
    checked = _classified(raw, key_from_name=fmt == "lastfm-360k").cache()
    counts = {r["kind"]: r["n"] for r in checked.groupBy("kind").agg(F.count("*").alias("n")).collect()}
    rows_read = sum(counts.values())
    bad = {kind: n for kind, n in counts.items() if kind is not None}
    _refuse_mostly_bad(file, rows_read, _counter(bad))
    merged = (
        checked.where(F.col("kind").isNull())
        .groupBy("user", "artist")
        .agg(
            F.min("row").alias("row"),
            F.min_by("artist_name", "row").alias("artist_name"),
            F.sum("value").alias("total"),
            F.count("*").alias("rows"),
        )
        .cache()
    )
    totals = first(
        merged.agg(
            F.count("*").alias("pairs"),
            F.sum(F.col("rows") - 1).alias("duplicates"),
            F.sum((F.col("total") > _FLOAT32_MAX).cast("long")).alias("overflowed"),
        )
    )
    checked.unpersist()
    if totals["duplicates"]:
        bad["duplicate_pairs"] = int(totals["duplicates"])
    if totals["overflowed"]:
        bad["overflowing_plays"] = bad.get("overflowing_plays", 0) + int(totals["overflowed"])
    frame = merged.where(F.col("total") <= _FLOAT32_MAX).select(
        "row", "user", "artist", "artist_name", F.col("total").cast("float").alias("plays")
    )
    bad_rows = BadRows(
        rows_read=rows_read,
        rows_kept=int(totals["pairs"]) - int(totals["overflowed"] or 0),
        counts={kind: bad[kind] for kind in BAD_ROW_KINDS if bad.get(kind)},
    )
    return SparkParsed(frame=frame, bad_rows=bad_rows, dataset=dataset or fmt)


def _counter(counts: dict[str, int]):
    from collections import Counter

    return Counter(counts)


# --- readers: each gives row, fields (kept columns, decoded), bad_<field> flags, n_fields ------


def _lines(
    spark: SparkSession, file: Path, names: list[str], *, header: bool, delimiter: str, quoted: bool
) -> DataFrame:
    """The text file's lines as raw fields ``user``, ``artist``, ``name`` (if any), ``plays``."""
    from pyspark.sql import functions as F

    lines = spark.read.text(str(file)).withColumn("row", F.monotonically_increasing_id())
    if header:  # the first line of the first split
        lines = lines.where(F.col("row") > 0)
    lines = lines.where(F.col("value") != "")
    pattern = delimiter + (_OUTSIDE_QUOTES if quoted else "")
    fields = F.split(F.col("value"), pattern, -1)
    invalid = ~F.is_valid_utf8("value")
    out = [F.col("row"), F.size(fields).alias("n_fields"), F.lit(len(names)).alias("expected")]
    for name, target in _TARGETS.items():
        if name not in names:
            continue
        value = F.get(fields, names.index(name))
        if quoted:  # "a ""b""" -> a "b"
            value = F.regexp_replace(F.regexp_replace(value, r'^"(.*)"$', "$1"), '""', '"')
        out += [value.alias(target), (invalid & value.contains(_REPLACEMENT)).alias(f"bad_{target}")]
    frame = lines.select(*out)
    if "name" not in frame.columns:
        frame = frame.withColumn("name", F.lit(None).cast("string")).withColumn("bad_name", F.lit(False))
    return frame


def _hetrec(spark: SparkSession, file: Path) -> DataFrame:
    """``user_artists.dat`` with names joined from ``artists.dat`` (by trimmed id, first match)."""
    from pyspark.sql import functions as F

    artists_file = file.with_name(HETREC_ARTISTS)
    if not artists_file.is_file():
        raise RecsError(f"{artists_file} is missing beside {file.name}; extract the whole HetRec 2K archive")
    names = hetrec_artists(artists_file).drop_duplicates("id")
    lookup = spark.createDataFrame(names.rename(columns={"id": "name_id", "name": "looked_up"}))
    plays = _lines(spark, file, ["user", "artist", "plays"], header=True, delimiter="\t", quoted=False)
    joined = plays.join(F.broadcast(lookup), _trimmed(F.col("artist")) == F.col("name_id"), "left")
    return joined.drop("name", "name_id").withColumnRenamed("looked_up", "name")


def _parquet(spark: SparkSession, file: Path) -> DataFrame:
    """A Parquet table's user, artist, artist_name, plays (any letter case) as strings; binary
    columns keep their bytes, so invalid UTF-8 is found per field."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    frame = spark.read.parquet(str(file))
    columns = {name.lower(): name for name in frame.columns}
    missing = {"user", "artist", "plays"} - columns.keys()
    if missing:
        raise RecsError(f"{file} lacks column(s) {', '.join(sorted(missing))}; needs user, artist, plays")
    atomic = (T.StringType, T.BinaryType, T.NumericType)
    out = [F.monotonically_increasing_id().alias("row"), F.lit(4).alias("n_fields"), F.lit(4).alias("expected")]
    for name, target in (("user", "user"), ("artist", "artist"), ("artist_name", "name"), ("plays", "plays")):
        if name not in columns:
            out += [F.lit(None).cast("string").alias(target), F.lit(False).alias(f"bad_{target}")]
            continue
        kind = frame.schema[columns[name]].dataType
        if not isinstance(kind, atomic):
            raise RecsError(
                f"{file}: column {columns[name]} is of type {kind.simpleString()}, not text or a number; "
                "write user, artist, artist_name and plays as plain columns"
            )
        text = F.col(columns[name]).cast("string")
        out += [text.alias(target), F.coalesce(~F.is_valid_utf8(text), F.lit(False)).alias(f"bad_{target}")]
    return frame.select(*out)


# --- cleaning --------------------------------------------------------------------------------


def _trimmed(column: Column) -> Column:
    """Unicode whitespace off both ends (pyarrow's ``utf8_trim_whitespace``); null -> ""."""
    from pyspark.sql import functions as F

    return F.regexp_replace(F.coalesce(column, F.lit("")), r"(?U)^\s+|\s+$", "")


def _normalised_names(frame: DataFrame) -> DataFrame:
    """360K: rows without an mbid get their normalised name as the artist key; only those rows
    go through Python (NFKC has no Spark SQL function)."""
    from pyspark.sql import functions as F
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("string")  # type: ignore[call-overload]
    def normalise(names: pd.Series) -> pd.Series:
        folded = names.str.normalize("NFKC").str.lower()
        return folded.str.replace(r"\s+", " ", regex=True).str.strip()

    no_id = F.col("artist") == ""
    keyed = frame.where(no_id).withColumn("artist", normalise(F.col("name")))
    return frame.where(~no_id).unionByName(keyed)


def _classified(raw: DataFrame, *, key_from_name: bool) -> DataFrame:
    """Every data row with its cleaned fields and ``kind``: the first rule it breaks, or null."""
    from pyspark.sql import functions as F

    text = {c: F.when(F.col(f"bad_{c}"), F.lit("")).otherwise(_trimmed(F.col(c))) for c in ("user", "artist", "name")}
    plays = F.when(F.col("bad_plays"), F.lit("")).otherwise(_trimmed(F.col("plays")))
    frame = raw.select(
        "row",
        "n_fields",
        "expected",
        text["user"].alias("user"),
        text["artist"].alias("artist"),
        text["name"].alias("name"),
        plays.alias("plays"),
        (F.col("bad_user") | F.col("bad_artist") | F.col("bad_plays") | F.col("bad_name")).alias("undecodable"),
        F.col("bad_user"),
        F.col("bad_plays"),
    )
    if key_from_name:
        frame = _normalised_names(frame)
    name = F.when(F.col("name") == "", F.col("artist")).otherwise(F.col("name"))
    numeric = F.col("plays").rlike(_NUMBER)
    value = F.when(numeric, F.col("plays").try_cast("double"))
    is_nan = ~numeric & F.col("plays").rlike(_NAN)
    infinite = value.isin(float("inf"), float("-inf"))
    kind = (
        F.when(F.col("n_fields") < F.col("expected"), "missing_fields")
        .when(F.col("n_fields") > F.col("expected"), "extra_fields")
        .when(
            (F.col("user") == "") & ~F.col("bad_user") | (F.col("plays") == "") & ~F.col("bad_plays"),
            "missing_fields",
        )
        .when(F.col("undecodable"), "undecodable_bytes")
        .when(F.col("artist") == "", "empty_artist")
        .when(
            (F.octet_length("user") > MAX_KEY_BYTES) | (F.octet_length("artist") > MAX_KEY_BYTES),
            "oversized_key",
        )
        .when(~numeric & ~is_nan | F.coalesce(infinite, F.lit(False)), "non_numeric_plays")
        .when(is_nan, "nan_plays")
        .when(value <= 0, "non_positive_plays")
        .when(value.cast("float").isin(float("inf")), "overflowing_plays")
    )
    return frame.select(
        "row",
        "user",
        "artist",
        F.substring(name, 1, MAX_NAME_CHARS).alias("artist_name"),
        value.alias("value"),
        kind.alias("kind"),
    )

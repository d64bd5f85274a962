"""The named datasets, and turning a ``DataConfig`` into a file on local disk.

``resolve(config)`` says what to obtain (plain data, no I/O); ``obtain(source)`` downloads it
(``tasks.data.download.fetch``) or generates it (``tasks.data.synthetic.generate``) into the cache and
returns ``Downloaded``, whose ``path`` ``tasks.data.parse.parse`` reads. The flow calls
``obtain`` -> ``parse`` -> ``encode`` as three tasks; ``prepare`` chains the same three for
``recs data`` and tuning.
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from tasks.contracts import DownloadCheck, Downloaded, Encoded, Interactions, StageConfig
from tasks.data.download import (
    USER_AGENT,
    Limits,
    cache_entry,
    cached_check,
    fetch,
    file_sha256,
    read_recorded,
    record,
)
from tasks.data.encode import encode
from tasks.data.parse import HETREC_PLAYS, LASTFM_360K_PLAYS, inputs, parse
from tasks.data.synthetic import GENERATOR_VERSION, SyntheticConfig, generate
from tasks.errors import RecsError
from tasks.files import DATA_DIR
from tasks.urls import with_masked_source


class DataConfig(StageConfig):
    """Where the listening data comes from and how it is filtered."""

    dataset: Literal["lastfm-2k", "lastfm-360k", "synthetic"] = "synthetic"
    source: str | None = Field(None, description="A path or URL overriding the dataset's own location.")
    sha256: str | None = Field(None, description="Expected SHA-256 of the download; enforced when given.")
    cache_dir: Path = DATA_DIR / "cache"
    min_listeners: int = Field(1, ge=1, description="Drop artists with fewer listeners.")
    min_artists: int = Field(1, ge=1, description="Drop users with fewer artists.")
    refresh: bool = Field(False, description="Download a URL again even when the cached copy is current.")
    limits: Limits = Limits()
    synthetic: SyntheticConfig = SyntheticConfig()

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        """Refused before any download: a typo here would otherwise fail only after it."""
        if value is None:
            return None
        digest = value.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError(f"{value!r} is not a SHA-256 (64 hex digits)")
        return digest


@dataclass(frozen=True)
class Dataset:
    """A dataset users can name. ``url`` is None for generated data; ``expect`` is the play file's
    path inside the archive, checked before the download is accepted."""

    name: str
    url: str | None
    expect: str
    description: str


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(
            "lastfm-2k",
            "https://files.grouplens.org/datasets/hetrec2011/hetrec2011-lastfm-2k.zip",
            HETREC_PLAYS,
            "HetRec 2011 Last.fm 2K: 1,892 users, 17,632 artists, 92,834 play counts (GroupLens)",
        ),
        Dataset(
            "lastfm-360k",
            "http://mtg.upf.edu/static/datasets/last.fm/lastfm-dataset-360K.tar.gz",
            f"lastfm-dataset-360K/{LASTFM_360K_PLAYS}",
            "Last.fm 360K: ~360K users, ~300K artists, 17.5 M play counts (MTG, UPF; 543 MB)",
        ),
        Dataset(
            "synthetic",
            None,
            LASTFM_360K_PLAYS,
            "generated locally in the Last.fm 360K format; size and seed from data.synthetic",
        ),
    )
}


@dataclass(frozen=True)
class Source:
    """What to obtain for one run.

    ``dataset``: the name recorded with the data (None: the user's own file, named by its format
    when parsed). ``location``: URL or path, None for generated data. ``expect``: the play file
    inside an archive or folder, if known. ``synthetic``: the generator's parameters, if generated.
    """

    dataset: str | None
    location: str | None
    sha256: str | None
    expect: str | None
    cache_dir: Path
    synthetic: SyntheticConfig | None = None
    refresh: bool = False
    limits: Limits = field(default_factory=Limits)


def resolve(config: DataConfig) -> Source:
    """The ``Source`` for ``config``: its ``source`` (a user's own file, or a mirror of the named
    dataset when ``dataset`` is not the default ``synthetic``) or the named dataset's own location."""
    named = DATASETS[config.dataset]
    if config.source:
        mirror = named.url is not None
        return Source(
            dataset=named.name if mirror else None,
            location=config.source,
            sha256=config.sha256,
            expect=named.expect if mirror else None,
            cache_dir=config.cache_dir,
            refresh=config.refresh,
            limits=config.limits,
        )
    if named.url is None:
        return Source(named.name, None, None, None, config.cache_dir, config.synthetic)
    return Source(
        named.name,
        named.url,
        config.sha256,
        named.expect,
        config.cache_dir,
        refresh=config.refresh,
        limits=config.limits,
    )


def obtain(source: Source, attempts: int = 4) -> Downloaded:
    """Download (or reuse from the cache) or generate ``source``; see ``tasks.data.download.fetch``.

    ``attempts``: tries of a transient network failure. The flow passes 1 because its download
    task retries instead, so the retries show in the Prefect UI and are not multiplied.
    """
    if source.synthetic is None:
        location = source.location
        assert location is not None
        return with_masked_source(
            location,
            lambda: fetch(
                location,
                source.cache_dir,
                source.sha256,
                expect=source.expect,
                attempts=attempts,
                refresh=source.refresh,
                limits=source.limits,
            ),
        )
    return _synthetic(source.synthetic, source.cache_dir)


def fingerprint(source: Source) -> list:
    """What identifies ``source``'s content before it is obtained, for a cache key: location,
    expected digest, archive member, cache folder, limits, generator parameters, and

    - a local source: size and mtime_ns of each file the parser reads (``_local_stamp``);
    - a URL pinned by ``sha256``: nothing more, the digest names the content;
    - any other URL: the validator the server sends now (``probe``), so a changed ETag or
      Last-Modified misses the cache; with neither, or with ``refresh``, a fresh random value,
      so the download step runs (and revalidates) every time.
    """
    return [
        source.location,
        source.sha256,
        source.expect,
        str(Path(source.cache_dir).resolve()),
        source.limits.model_dump(),
        source.synthetic.model_dump() if source.synthetic else None,
        _local_stamp(source.location) if not _is_url(source.location) else _url_stamp(source),
    ]


def _is_url(location: str | None) -> bool:
    return location is not None and urllib.parse.urlparse(location).scheme in ("http", "https")


def _url_stamp(source: Source) -> str | None:
    if source.sha256 and not source.refresh:
        return None
    validator = None if source.refresh else probe(str(source.location))
    return validator or f"unvalidated-{uuid.uuid4()}"


def probe(url: str, timeout: float = 30.0) -> str | None:
    """The server's current validator for ``url`` from a HEAD request (``etag:<value>`` or
    ``last-modified:<value>``), or None when it sends neither or the request fails (the
    download step then runs and reports the failure)."""
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            etag, modified = response.headers.get("ETag"), response.headers.get("Last-Modified")
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return f"etag:{etag}" if etag else f"last-modified:{modified}" if modified else None


def check_of_cached(source: Source) -> DownloadCheck:
    """The ``Downloaded.check`` of a download the flow's cache returned: the key matched, so the
    content is what ``fingerprint`` vouched for (a pinned digest, the server's unchanged validator,
    or a local source's unchanged files)."""
    if source.synthetic is not None or not _is_url(source.location):
        return "local"
    if source.sha256:
        return "sha256-pinned"
    return cached_check(str(source.location), source.cache_dir)


# A file modified this recently may change again within the same mtime tick, unseen by
# (size, mtime_ns): its content is hashed too (git's "racy" rule).
RACY_SECONDS = 2.0


def _local_stamp(location: str | None) -> list | None:
    """(name, size, mtime_ns[, sha256 if modified in the last RACY_SECONDS]) of each file the
    parser reads from a local file or folder (``tasks.data.parse.inputs``: at most one folder down,
    so unrelated trees such as a .venv are never walked); None for generated data."""
    if location is None:
        return None
    parsed = urllib.parse.urlparse(location)
    path = Path(urllib.request.url2pathname(parsed.path) if parsed.scheme == "file" else location).expanduser()
    try:
        files = inputs(path) if path.is_dir() else [path]
        stamps = []
        for file in files:
            info = file.stat()
            racy = time.time() - info.st_mtime_ns / 1e9 < RACY_SECONDS
            stamps.append([str(file), info.st_size, info.st_mtime_ns, file_sha256(file) if racy else None])
    except (OSError, RecsError):
        return None  # the download step reports the missing path or unknown layout
    return stamps


@dataclass(frozen=True)
class Prepared:
    """A dataset obtained, parsed and encoded in one go (for ``recs data`` and tuning)."""

    downloaded: Downloaded
    interactions: Interactions
    encoded: Encoded


def prepare(config: DataConfig) -> Prepared:
    """``resolve`` -> ``obtain`` -> ``parse`` -> ``encode`` for ``config``, outside any flow."""
    plan = resolve(config)
    downloaded = obtain(plan)
    interactions = parse(downloaded.path, plan.dataset)
    return Prepared(downloaded, interactions, encode(interactions, config.min_listeners, config.min_artists))


def _synthetic(params: SyntheticConfig, cache_dir: Path) -> Downloaded:
    """The generated file for ``params``, made once per size and seed and reused after."""
    key = (
        f"synthetic-v{GENERATOR_VERSION}-u{params.users}-a{params.artists}-r{params.rows}"
        f"-g{params.genres}-s{params.seed}"
    )
    file = cache_entry(cache_dir, key, key) / LASTFM_360K_PLAYS
    recorded = read_recorded(file)
    if recorded and file.is_file() and file_sha256(file) == recorded:
        return Downloaded(source=key, path=file, sha256=recorded, from_cache=True, check="local")
    generate(file, params.users, params.artists, params.rows, params.genres, params.seed)
    digest = file_sha256(file)
    record(file, digest)
    return Downloaded(source=key, path=file, sha256=digest, from_cache=False, check="local")

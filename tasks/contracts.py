"""The typed values that travel between pipeline stages.

Each arrow of the flow (download -> parse -> encode -> split -> weight -> factorize -> index ->
recommend -> evaluate -> publish) carries one of these, so any stage can be read, tested and
replaced alone. Stage logic lives in plain functions in the sibling modules; these are only the
shapes they agree on, and ``StageConfig``, the base of every stage's own configuration.

Conventions used throughout:
- "user code" / "artist code" is the 0-based row / column of the encoded matrix.
- Sparse matrices are ``scipy.sparse.csr_matrix`` (users x artists unless stated), float32,
  sorted indices, no explicit zeros.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict


class StageConfig(BaseModel):
    """Base of every stage's configuration. Unknown keys are an error, so a typo in a config
    file is not silently ignored."""

    model_config = ConfigDict(extra="forbid")


# How a run knows its downloaded data is current (``Downloaded.check``).
DownloadCheck = Literal["etag", "last-modified", "sha256-pinned", "downloaded", "local"]


@dataclass(frozen=True)
class Downloaded:
    """A dataset on local disk.

    ``path`` is the downloaded file, or the directory an archive was extracted into.
    ``sha256`` is the hex digest of the downloaded bytes (the archive, not its members).
    ``check`` says how this run knows the content is current: ``etag`` / ``last-modified`` (the
    server answered a conditional request with 304 Not Modified), ``sha256-pinned`` (the cached
    copy matches the expected SHA-256, no request made), ``downloaded`` (fetched in full this
    run), ``local`` (a local file or folder, or generated data, read as it is now).
    """

    source: str
    path: Path
    sha256: str
    from_cache: bool
    check: DownloadCheck = "downloaded"


@dataclass(frozen=True)
class BadRows:
    """What parsing dropped or merged, counted by kind (e.g. ``non_numeric_plays``: 3).

    ``rows_read`` counts data rows seen (header excluded); ``rows_kept`` the rows in the tidy
    frame after duplicates were summed.
    """

    rows_read: int
    rows_kept: int
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class Parsed:
    """A parse result kept on disk: ``path`` is a Parquet file of the tidy ``Interactions.frame``
    (so a cached parse is a path and counts, never the frame)."""

    path: Path
    bad_rows: BadRows
    dataset: str


@dataclass(frozen=True)
class Interactions:
    """Tidy play counts: one row per (user, artist).

    ``frame`` columns: ``user`` (str, the source's user id), ``artist`` (str, the source's artist
    key: HetRec id, MusicBrainz id, or normalised name), ``artist_name`` (str, display name),
    ``plays`` (float32, > 0).
    """

    frame: pd.DataFrame
    bad_rows: BadRows
    dataset: str


@dataclass(frozen=True)
class Encoded:
    """Users and artists as categorical codes, play counts as a sparse matrix.

    ``plays``: CSR, users x artists, float32 raw play counts.
    ``user_keys[code]`` -> source user id; ``artist_keys[code]`` -> source artist key;
    ``artist_names[code]`` -> display name. All three are 1-D object arrays of str.
    """

    plays: sp.csr_matrix
    user_keys: np.ndarray
    artist_keys: np.ndarray
    artist_names: np.ndarray

    @property
    def n_users(self) -> int:
        return self.plays.shape[0]

    @property
    def n_artists(self) -> int:
        return self.plays.shape[1]

    @property
    def listeners(self) -> np.ndarray:
        """int64, per artist code: number of users with plays > 0."""
        return np.bincount(self.plays.indices, minlength=self.n_artists)

    @property
    def artist_plays(self) -> np.ndarray:
        """float64, per artist code: total plays."""
        return np.asarray(self.plays.sum(axis=0, dtype=np.float64)).ravel()


@dataclass(frozen=True)
class Split:
    """A holdout split of one matrix: ``train + test`` has the same pairs as the input.

    Both CSR, users x artists, same shape and dtype as the input; disjoint non-zeros.
    ``rule`` names how it was made (e.g. ``per-user 0.2 min=5``), ``seed`` makes it repeatable.
    """

    train: sp.csr_matrix
    test: sp.csr_matrix
    rule: str
    seed: int


@runtime_checkable
class Scorer(Protocol):
    """Anything that scores artists for users: factor models, item-kNN, blends, baselines.

    ``name`` labels its metrics; ``params`` are the hyper-parameters it was fitted with
    (JSON-ready); ``fit_seconds`` the wall time of its fit (0 for baselines).
    """

    @property
    def name(self) -> str: ...

    @property
    def params(self) -> dict[str, Any]: ...

    @property
    def fit_seconds(self) -> float: ...

    def score(self, users: np.ndarray, heard: sp.csr_matrix) -> np.ndarray:
        """Scores for ``users`` (int array of user codes) against every artist.

        ``heard`` is the rows of the training matrix for those users (CSR, len(users) x artists);
        models that score from a user's history (item-kNN) use it, factor models ignore it.
        Returns dense float32, len(users) x n_artists. Callers batch users so this stays small.
        """
        ...


@runtime_checkable
class Ranker(Protocol):
    """A ``Scorer`` that picks a user's top N without scoring every artist (the baselines: one
    order for everyone, or a random one); ``tasks.recommend.user_top_n`` prefers this."""

    @property
    def name(self) -> str: ...

    def top_n(self, users: np.ndarray, heard: sp.csr_matrix, n: int) -> TopN:
        """The ``n`` best artists for ``users``, none of them in ``heard`` (their training rows,
        CSR, len(users) x artists); padded with -1 / NaN where fewer exist."""
        ...


@dataclass(frozen=True)
class Factors:
    """A fitted latent-factor model.

    ``user_factors``: float32, n_users x f.  ``artist_factors``: float32, n_artists x f.
    Score of (u, a) is ``user_factors[u] @ artist_factors[a]``. ``fit_seconds`` is wall time of
    the fit alone; ``params`` the hyper-parameters actually used (JSON-serialisable).
    """

    name: str
    params: dict
    user_factors: np.ndarray
    artist_factors: np.ndarray
    fit_seconds: float

    def score(self, users: np.ndarray, heard: sp.csr_matrix) -> np.ndarray:
        return self.user_factors[users] @ self.artist_factors.T

    @property
    def similarity_factors(self) -> np.ndarray:
        """What related artists are compared by (their cosine): float32, n_artists x f'. The
        artist factors, except for a model that compares artists in a space of its own
        (``tasks.models.cosine_blend``)."""
        return self.artist_factors


@dataclass(frozen=True)
class TopN:
    """Top-N lists, one row per code (artist codes for related artists, user codes for users).

    ``ids``: int32, n x N artist codes, best first, padded with -1 where fewer than N exist.
    ``scores``: float32, n x N, same layout (NaN where padded).
    """

    ids: np.ndarray
    scores: np.ndarray

    @property
    def n(self) -> int:
        return self.ids.shape[1]


@dataclass(frozen=True)
class Recommended:
    """What the recommend stage publishes, and how well the index matched exact search.

    ``related``: artists x n; ``users``: users x n; ``recall``: the index's recall@n on a
    sample (``related_recall``, and ``user_recall`` when users went through the index);
    ``seconds``: wall seconds of its parts (``related``: the related model's lists;
    ``related_compared``: the compared models' lists; ``users``, ``because``, ``recall_check``);
    ``other_related``: artists x n of each other factor model compared with the related model,
    by model name. ``because``: int32, the shape of ``users.ids``: the heard artist code behind
    each recommendation (-1: none; ``tasks.explain.because``).
    """

    related: TopN
    users: TopN
    recall: list[Metric]
    seconds: dict[str, float] = field(default_factory=dict)
    other_related: dict[str, TopN] = field(default_factory=dict)
    because: np.ndarray | None = None


@dataclass(frozen=True)
class Metric:
    """One evaluation figure. ``k`` is None for metrics without a cut-off (RMSE; the index's
    recall uses k=N). ``model`` is the model name, or ``popularity`` / ``random`` for baselines, or
    the index engine (``annoy`` / ``faiss``) for index recall."""

    model: str
    metric: str
    k: int | None
    value: float

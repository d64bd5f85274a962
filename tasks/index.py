"""Nearest-neighbour indexes over artist factors, built once per run and saved to disk.

Two index engines (``index.engine``; ``exact`` builds none, ``auto`` picks exact or faiss by size,
``IndexConfig.resolved``), each over one of two vector sets:

- related artists: the artist factors normalised to unit length, so neighbours are by cosine;
- user top-N (``inner_product=True``): the artist factors with one extra dimension that gives
  every row the same norm (implicit's ``augment_inner_product_matrix``, after Bachrach et al.,
  "Speeding Up the Xbox Recommender System"), so that the nearest neighbours of a user vector
  padded with 0 are its top inner products.

``annoy`` (spotify/annoy, ``angular``): random-projection trees, one query per C call, which
holds the GIL. ``faiss`` (faiss-cpu ``IndexIVFScalarQuantizer``, float16, inner product): k-means
lists, searched for a whole batch of queries per call on every core; it is the engine for large
catalogues, where on 2 cores Annoy is no faster than exact search at recall@10 >= 0.95
(docs/performance.md).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np
from annoy import AnnoyIndex
from implicit.utils import augment_inner_product_matrix
from pydantic import Field

from tasks.candidates import TWO_STAGE_MIN_ARTISTS
from tasks.contracts import StageConfig
from tasks.errors import RecsError
from tasks.files import atomic_path
from tasks.topn import inner_topk, recall_at_n, rescored, without_self

# Exact search while (artists + users) x artists inner products stay below this: at 300K artists
# x 360K users implicit's exact similar_items + batch recommend did 2e11 of them in about 400 s
# on 2 cores (docs/performance.md), so 1e10 is ~20 s of exact search, where an index's build and
# its recall below 1 are not worth it. HetRec 2K (17.6K artists, 1.9K users): 3.4e8, exact.
AUTO_EXACT_CELLS = 10**10


class IndexConfig(StageConfig):
    """Nearest-neighbour index for related artists and approximate user top-N."""

    # auto: exact search for small catalogues, faiss for large ones (AUTO_EXACT_CELLS); annoy is
    # kept for pinning only: at 300K artists on 2 cores it was no faster than exact search at
    # recall@10 >= 0.95, faiss IVF more than 15x faster (docs/performance.md).
    engine: Literal["auto", "exact", "annoy", "faiss"] = Field(
        "auto", description="auto (exact below AUTO_EXACT_CELLS, else faiss), exact, annoy (trees) or faiss (IVF lists)"
    )
    # 100 trees: on a 300K-artist synthetic catalogue 50 trees reached recall@10 0.93 at Annoy's
    # default search_k, 100 trees 0.98 (docs/models.md "Exact search vs Annoy and faiss", benchmarks/related.py).
    n_trees: int = Field(100, ge=1, description="annoy: trees")
    search_k: int = Field(-1, ge=-1, description="annoy: nodes a query inspects; -1: Annoy's default (n_trees * k)")
    n_lists: int | None = Field(
        None, ge=1, description="faiss: k-means lists; None: about 2 sqrt(artists) for related artists, 3 for users"
    )
    # None: calibrated per index (calibrated_probe), as recall at a probe count depends on how the
    # factors cluster: at the 360K shape 8 of 1,643 lists reached recall@10 0.993, 24 lists 0.9996
    # at 1.8x the query time (docs/performance.md)
    n_probe: int | None = Field(
        None, ge=1, description="faiss: lists a related-artists query scans; None: the fewest reaching recall_target"
    )
    recall_target: float = Field(
        0.99,
        gt=0,
        le=1,
        description="faiss, n_probe None: related recall@n against exact search on recall_sample artists",
    )
    # 96 of 1,643 lists: recall@10 0.96 on 64-d ALS factors of 300K synthetic artists (a sweep of
    # 64-96 on 20,000 users); a blend's two-stage lists rescore these candidates exactly: with the
    # shipped blend at the 360K shape its lists' recall against the dense blend was 0.9998 at 96
    # and 0.9972 at 4 (docs/performance.md, "Tried this session and dropped")
    n_probe_users: int = Field(96, ge=1, description="faiss: lists a user query scans (inner product)")
    recall_sample: int = Field(1_000, ge=10, description="artists/users checked against exact search")
    # None follows the engine: an index (annoy, faiss) also serves user top-N, exact search does
    # not; with faiss at 300K artists the index was 4.8x quicker at recall@10 0.96 (docs/performance.md)
    approximate_users: bool | None = Field(
        None, description="the index (inner product) for user top-N; None: whenever there is an index"
    )

    # None: from TWO_STAGE_MIN_ARTISTS artists up (tasks/candidates.py); either way a blend's
    # lists are the dense blend's unless the user index gives its candidates
    two_stage: bool | None = Field(
        None, description="rank a blend's users in two stages (candidates, then exact scores); None: by catalogue size"
    )

    def resolved(self, n_users: int, n_artists: int) -> IndexConfig:
        """This config with ``engine``, ``approximate_users`` and ``two_stage`` decided for
        ``n_users`` x ``n_artists`` (what a run records); pinned values are kept."""
        engine = self.engine
        if engine == "auto":
            engine = "exact" if (n_users + n_artists) * n_artists <= AUTO_EXACT_CELLS else "faiss"
        users = self.approximate_users if self.approximate_users is not None else engine != "exact"
        two_stage = self.two_stage if self.two_stage is not None else n_artists >= TWO_STAGE_MIN_ARTISTS
        return self.model_copy(
            update={"engine": engine, "approximate_users": users and engine != "exact", "two_stage": two_stage}
        )


Search = Callable[[np.ndarray, int | np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ArtistIndex:
    """An index file and how it was built.

    ``path``: the saved index. ``engine``: ``annoy`` or ``faiss``. ``dim``: vector length in the
    index (factors, +1 for inner product). ``n_items``: artists indexed (item i is artist code i).
    ``n_trees``/``search_k``: Annoy's trees and the value to query with (-1 is Annoy's default,
    n_trees * k). ``n_lists``/``n_probe``: faiss's k-means lists and how many a query scans.
    ``build_seconds``: wall time of building (add + build, or train + add).
    """

    path: Path
    engine: str
    dim: int
    n_items: int
    inner_product: bool
    build_seconds: float
    n_trees: int = 0
    search_k: int = -1
    n_lists: int = 0
    n_probe: int = 0

    def load(self) -> Any:
        """The engine's own index object: an ``AnnoyIndex`` (memory-mapped, cheap) or a faiss
        index read into memory with ``nprobe`` set."""
        if not self.path.is_file():
            raise RecsError(f"cannot load the {self.engine} index {self.path}; rebuild it with build_index")
        if self.engine == "faiss":
            index: Any = faiss.read_index(str(self.path))
            index.nprobe = self.n_probe
            return index
        annoy = AnnoyIndex(self.dim, "angular")
        if not annoy.load(str(self.path)):
            raise RecsError(f"cannot load the Annoy index {self.path}; rebuild it with build_index")
        return annoy

    def searcher(self) -> Search:
        """``search(vectors, k)``: for float32 ``vectors`` (queries x dim, the index's space) the
        ``k`` nearest items, int64 codes nearest first, -1 where fewer exist. ``k`` is one count
        for all queries or one per query (int array); the result is ``max(k)`` wide. faiss searches
        the batch at the largest ``k``; Annoy, whose cost grows with ``k`` (its default
        ``search_k`` is ``n_trees * k``), asks each query for its own."""
        index = self.load()
        if self.engine == "faiss":
            return lambda vectors, k: index.search(_simd_padded(vectors), int(np.max(k)))[1]

        def search(vectors: np.ndarray, k: int | np.ndarray) -> np.ndarray:
            counts = np.broadcast_to(np.asarray(k, dtype=np.int64), (len(vectors),))
            ids = np.full((len(vectors), int(counts.max(initial=0))), -1, dtype=np.int64)
            # Annoy answers one query per call: the loop body is a single C call
            for i, (vector, count) in enumerate(zip(vectors, counts.tolist())):
                found = index.get_nns_by_vector(vector, count, search_k=self.search_k)
                ids[i, : len(found)] = found
            return ids

        return search


def faiss_choices(indexes: dict[str, ArtistIndex | None]) -> dict[str, dict[str, int]]:
    """What a run records of its faiss indexes (name -> index, None for exact search): the k-means
    lists each has and the lists each query scans, pinned or chosen from the data, as
    ``{"n_lists": {name: lists}, "n_probe": {name: count}}``; nothing without a faiss index."""
    built = {name: index for name, index in indexes.items() if index is not None and index.engine == "faiss"}
    if not built:
        return {}
    return {
        "n_lists": {name: index.n_lists for name, index in built.items()},
        "n_probe": {name: index.n_probe for name, index in built.items()},
    }


def normalise(factors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32; all-zero rows stay zero)."""
    norms = np.linalg.norm(factors, axis=1, keepdims=True)
    return (factors / np.where(norms > 0, norms, 1)).astype(np.float32)


def index_vectors(artist_factors: np.ndarray, inner_product: bool) -> np.ndarray:
    """What an index holds for ``artist_factors`` (float32, n_artists x f): unit rows (cosine), or
    the augmented rows (inner product, n_artists x f+1), float32, C-contiguous."""
    if inner_product:
        return np.ascontiguousarray(augment_inner_product_matrix(artist_factors.astype(np.float32))[1], np.float32)
    return normalise(artist_factors)


def build_index(
    artist_factors: np.ndarray,
    cfg: IndexConfig,
    path: Path,
    *,
    inner_product: bool = False,
    seed: int = 42,
    n: int = 10,
) -> ArtistIndex:
    """Build and save an index (``cfg.engine``) over ``artist_factors`` (float32, n_artists x f).

    ``inner_product=False`` indexes the normalised factors (related artists by cosine); ``True``
    the augmented ones (user top-N by inner product). ``seed`` fixes Annoy's random projections,
    faiss's k-means and the artists a calibrated ``n_probe`` is measured on; ``n`` is the list
    length it is calibrated for. The file is written under a temporary name and renamed, so a
    failed build leaves nothing.
    """
    if artist_factors.ndim != 2 or not len(artist_factors):
        raise RecsError(f"build_index needs a non-empty 2-D factor matrix, got shape {artist_factors.shape}")
    if not np.all(np.isfinite(artist_factors)):
        raise RecsError("artist factors contain NaN/inf; the model diverged — lower the learning rate or regularise")
    if cfg.engine not in ("annoy", "faiss"):
        raise RecsError(f"build_index needs engine annoy or faiss, got {cfg.engine!r}; resolve the config first")
    vectors = index_vectors(artist_factors, inner_product)
    path = Path(path)
    start = time.perf_counter()
    build = _build_faiss if cfg.engine == "faiss" else _build_annoy
    save, settings = build(vectors, cfg, inner_product, seed, n)
    seconds = time.perf_counter() - start
    try:
        with atomic_path(path) as temp:
            save(str(temp))
    except (OSError, RuntimeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
        raise RecsError(
            f"cannot write the {cfg.engine} index to {path}: {reason}; check space and permissions"
        ) from None
    return ArtistIndex(
        path=path,
        engine=cfg.engine,
        dim=vectors.shape[1],
        n_items=len(vectors),
        inner_product=inner_product,
        build_seconds=seconds,
        **settings,
    )


def _build_annoy(vectors: np.ndarray, cfg: IndexConfig, inner_product: bool, seed: int, n: int):
    index = AnnoyIndex(vectors.shape[1], "angular")
    index.set_seed(seed)
    # Annoy takes items one call at a time; the loop body is a single C call per artist.
    for i, row in enumerate(vectors):
        index.add_item(i, row)
    # one thread: with more, Annoy's threads interleave their nodes in the file, so the index (and
    # the lists it answers) would change from run to run for the same seed
    index.build(cfg.n_trees, n_jobs=1)

    def save(path: str) -> None:
        try:
            if not index.save(path):
                raise OSError(f"Annoy could not save {path}")
        finally:
            index.unload()

    return save, {"n_trees": cfg.n_trees, "search_k": cfg.search_k}


def _simd_padded(vectors: np.ndarray) -> np.ndarray:
    """float32, C-contiguous ``vectors`` with zero columns up to a multiple of 8 (inner products
    and cosines unchanged)."""
    extra = -vectors.shape[1] % 8
    return np.ascontiguousarray(np.pad(vectors, ((0, 0), (0, extra))) if extra else vectors, dtype=np.float32)


# k-means lists per sqrt(items). A related-artists index is searched once for every artist right
# after it is built, so its build weighs as much as its searches: at the 360K shape 2 sqrt(n) lists
# were 12-18 % quicker in total than 3 sqrt(n) on each of the three related factor sets, at the
# same calibrated recall (docs/performance.md). The user index keeps the 3 sqrt(n) its
# n_probe_users was measured at.
RELATED_LISTS_PER_SQRT = 2
USER_LISTS_PER_SQRT = 3


def n_lists(n_items: int, requested: int | None, per_sqrt: int = USER_LISTS_PER_SQRT) -> int:
    """faiss k-means lists: ``requested``, else about ``per_sqrt`` sqrt(n) (3: 1,643 at 300K
    artists, 2: 1,095); never fewer than 39 artists a list, below which faiss's k-means has too
    few points to place them."""
    lists = requested or int(per_sqrt * math.sqrt(n_items))
    return max(1, min(lists, n_items // 39))


def _build_faiss(vectors: np.ndarray, cfg: IndexConfig, inner_product: bool, seed: int, n: int):
    lists = n_lists(len(vectors), cfg.n_lists, USER_LISTS_PER_SQRT if inner_product else RELATED_LISTS_PER_SQRT)
    # float16 rows, zero-padded to whole SIMD words of 8: scanning a list is ~1.5x quicker than
    # float32 at the same recall@10 (candidates are rescored exactly); the searcher pads queries
    vectors = _simd_padded(vectors)
    dim = vectors.shape[1]
    index = faiss.IndexIVFScalarQuantizer(
        faiss.IndexFlatIP(dim), dim, lists, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
    )
    index.cp.seed = seed
    # k-means on a sample of 48 artists a list, 8 rounds: at 300K artists x 64 factors 2 s to
    # build against 14-17 s with faiss's defaults (256, 25), recall@10 0.972 against 0.964
    index.cp.max_points_per_centroid, index.cp.niter = 48, 8
    index.train(vectors)
    index.add(vectors)
    if inner_product:
        probe = cfg.n_probe_users
    elif cfg.n_probe is not None:
        probe = cfg.n_probe
    else:
        rows = np.random.default_rng(seed).choice(
            len(vectors), size=min(cfg.recall_sample, len(vectors)), replace=False
        )
        probe = calibrated_probe(index, vectors, np.sort(rows), n, cfg.recall_target)
    return (lambda path: faiss.write_index(index, path)), {"n_lists": lists, "n_probe": min(probe, lists)}


def probe_ladder(n_lists: int) -> list[int]:
    """Probe counts tried in turn, each about 1.5x the last: 1, 2, 3, 4, 6, 8, 12, ... up to
    ``n_lists`` (every list: exact search), which always ends the ladder."""
    steps = sorted({s for e in range(n_lists.bit_length()) for s in (1 << e, 3 << e >> 1) if 0 < s < n_lists})
    return [*steps, n_lists]


def calibrated_probe(index: Any, unit: np.ndarray, rows: np.ndarray, n: int, target: float) -> int:
    """The fewest lists of ``index`` (a trained, filled faiss IVF index over ``unit``, float32
    unit rows, SIMD-padded) whose searches, rescored and self excluded as ``related_approx``'s,
    reach ``recall_at_n`` ``target`` against the exact ``n`` related artists of ``rows`` (codes).

    The exact lists of a sample cost sample / artists of exact search for all (1,000 of 300K
    artists: 0.6 s of 188 s), the ladder's searches about twice the last one; recall grows with
    the probe count, so the first count that reaches ``target`` is the fewest on the ladder.
    """
    k = min(n, len(unit) - 1)
    ladder = probe_ladder(index.nlist)
    if k < 1:
        return ladder[0]
    queries, sample = unit[rows], np.arange(len(rows))
    exact = without_self(*inner_topk(unit, queries, k + 1), rows, k)  # one more, for the artist itself
    for probe in ladder:
        index.nprobe = probe
        found = without_self(*rescored(queries, unit, index.search(queries, k + 1)[1]), rows, k)
        if recall_at_n(found, exact, sample) >= target:
            return probe
    return ladder[-1]

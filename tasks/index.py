"""Annoy indexes over artist factors, built once per run and saved to disk.

Two kinds, both Annoy ``angular`` (Euclidean distance between unit vectors, so ranking by it is
ranking by cosine):

- related artists: the artist factors normalised to unit length, so neighbours are by cosine;
- user top-N (``inner_product=True``): the artist factors with one extra dimension that gives
  every row the same norm (implicit's ``augment_inner_product_matrix``, after Bachrach et al.,
  "Speeding Up the Xbox Recommender System"), so that the angular neighbours of a user vector
  padded with 0 are its top inner products.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from annoy import AnnoyIndex
from implicit.utils import augment_inner_product_matrix

from flows.config import IndexConfig
from tasks.errors import RecsError
from tasks.files import atomic_path


@dataclass(frozen=True)
class ArtistIndex:
    """An Annoy index file and how it was built.

    ``path``: the saved index. ``dim``: vector length in the index (factors, +1 for inner
    product). ``n_items``: artists indexed (item i is artist code i). ``search_k``: the value to
    query with (-1 is Annoy's default, n_trees * n). ``build_seconds``: wall time of add + build.
    """

    path: Path
    dim: int
    n_items: int
    n_trees: int
    search_k: int
    inner_product: bool
    build_seconds: float

    def load(self) -> AnnoyIndex:
        """Memory-map the saved index (cheap: pages are shared and loaded on demand)."""
        index = AnnoyIndex(self.dim, "angular")
        if not self.path.is_file() or not index.load(str(self.path)):
            raise RecsError(f"cannot load the Annoy index {self.path}; rebuild it with build_index")
        return index


def normalise(factors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32; all-zero rows stay zero)."""
    norms = np.linalg.norm(factors, axis=1, keepdims=True)
    return (factors / np.where(norms > 0, norms, 1)).astype(np.float32)


def build_index(artist_factors: np.ndarray, cfg: IndexConfig, path: Path, *, inner_product: bool = False,
                seed: int = 42) -> ArtistIndex:
    """Build and save an Annoy index over ``artist_factors`` (float32, n_artists x f).

    ``inner_product=False`` indexes the normalised factors (related artists by cosine); ``True``
    the augmented ones (user top-N by inner product). ``seed`` fixes Annoy's random projections.
    The file is written under a temporary name and renamed, so a failed build leaves nothing.
    """
    if artist_factors.ndim != 2 or not len(artist_factors):
        raise RecsError(f"build_index needs a non-empty 2-D factor matrix, got shape {artist_factors.shape}")
    if not np.all(np.isfinite(artist_factors)):
        raise RecsError("artist factors contain NaN/inf; the model diverged — lower the learning rate or regularise")
    if inner_product:
        vectors = augment_inner_product_matrix(artist_factors.astype(np.float32))[1]
    else:
        vectors = normalise(artist_factors)
    path = Path(path)
    start = time.perf_counter()
    index = AnnoyIndex(vectors.shape[1], "angular")
    index.set_seed(seed)
    # Annoy takes items one call at a time; the loop body is a single C call per artist.
    for i, row in enumerate(vectors):
        index.add_item(i, row)
    index.build(cfg.n_trees, n_jobs=1)
    seconds = time.perf_counter() - start
    try:
        with atomic_path(path) as temp:
            index.save(str(temp))
    except OSError as exc:
        raise RecsError(f"cannot write the Annoy index to {path}: {exc.strerror}; check space and permissions") from None
    finally:
        index.unload()
    return ArtistIndex(path=path, dim=vectors.shape[1], n_items=len(vectors), n_trees=cfg.n_trees,
                       search_k=cfg.search_k, inner_product=inner_product, build_seconds=seconds)

"""Encode: tidy play counts -> users x artists CSR with code -> key/name tables (``Encoded``).

Users and artists become 0-based categorical codes in order of first appearance in the frame
(dropped ones removed, order kept), so the same input always gives the same codes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp

from tasks.contracts import Encoded, Interactions, Parsed
from tasks.errors import RecsError


def encode(interactions: Interactions, min_listeners: int = 1, min_artists: int = 1) -> Encoded:
    """Build ``Encoded`` from ``interactions.frame`` (columns user, artist, artist_name, plays).

    ``min_listeners``: drop artists heard by fewer users; ``min_artists``: drop users who heard
    fewer artists. Both are applied together until neither drops anything more, so every kept
    artist has >= min_listeners users and every kept user >= min_artists artists.
    Returns CSR, users x artists, float32 plays (duplicate pairs summed), and object arrays of str
    for ``user_keys``, ``artist_keys`` and ``artist_names`` (the first name seen for each artist).
    Raises ``RecsError`` when the filters leave nothing.
    """
    frame = interactions.frame
    users, user_keys = _codes(frame["user"])
    artists, artist_keys = _codes(frame["artist"])
    names, name_values = _codes(frame["artist_name"])
    plays = frame["plays"].to_numpy(dtype=np.float32)

    keep = _filtered(users, artists, len(user_keys), len(artist_keys), min_listeners, min_artists)
    if not keep.any():
        raise RecsError(
            f"no listening pairs left after filtering (min_listeners={min_listeners}, "
            f"min_artists={min_artists}); lower the filters"
        )
    if not keep.all():
        users, artists, names, plays = users[keep], artists[keep], names[keep], plays[keep]
    user_map, user_keys = _compact(users, user_keys)
    artist_map, artist_keys = _compact(artists, artist_keys)
    users, artists = user_map[users], artist_map[artists]

    first_row = pd.Series(artists).drop_duplicates()
    artist_names = np.empty(len(artist_keys), dtype=object)
    artist_names[first_row.to_numpy()] = name_values[names[first_row.index.to_numpy()]]

    matrix = sp.csr_matrix((plays, (users, artists)), shape=(len(user_keys), len(artist_keys)), dtype=np.float32)
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    return Encoded(plays=matrix, user_keys=user_keys, artist_keys=artist_keys, artist_names=artist_names)


def encode_parsed(parsed: Parsed, min_listeners: int = 1, min_artists: int = 1) -> Encoded:
    """``encode`` the Parquet file a parse wrote (``tasks.data.parse.parse_to_parquet``)."""
    try:
        frame = pd.read_parquet(parsed.path)
    except (OSError, pa.ArrowException) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RecsError(
            f"cannot read the cached parse {parsed.path} ({reason}); delete it and run again to rebuild it"
        ) from exc
    return encode(
        Interactions(frame=frame, bad_rows=parsed.bad_rows, dataset=parsed.dataset),
        min_listeners=min_listeners,
        min_artists=min_artists,
    )


def _codes(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """int32 codes and the object array of str they index (Categoricals are used as they are)."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        codes, values = column.cat.codes.to_numpy(), column.cat.categories
    else:
        codes, values = pd.factorize(column)
    return codes.astype(np.int32, copy=False), np.asarray(pd.Index(values).astype(str), dtype=object)


def _filtered(
    users: np.ndarray,
    artists: np.ndarray,
    n_users: int,
    n_artists: int,
    min_listeners: int,
    min_artists: int,
) -> np.ndarray:
    """Mask of the rows surviving both filters, iterated to a fixed point (one pass if no filter)."""
    keep = np.ones(len(users), dtype=bool)
    if min_listeners <= 1 and min_artists <= 1:
        return keep
    while True:
        listeners = np.bincount(artists[keep], minlength=n_artists)
        per_user = np.bincount(users[keep], minlength=n_users)
        still = keep & (listeners >= min_listeners)[artists] & (per_user >= min_artists)[users]
        if still.sum() == keep.sum():
            return still
        keep = still


def _compact(codes: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber the codes in use as 0..k-1 (order kept): old -> new map and the kept values."""
    used = np.bincount(codes, minlength=len(values)) > 0
    mapping = (np.cumsum(used) - 1).astype(np.int32)
    return mapping, values[used]

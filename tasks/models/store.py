"""A fitted ``Factors`` on disk: ``factors.npz`` (float32 arrays) + ``params.json``, per model
under the run's folder, for inspection and reuse."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tasks.contracts import Factors
from tasks.errors import RecsError
from tasks.files import atomic_path, write_text_atomic

FACTORS_FILE = "factors.npz"
PARAMS_FILE = "params.json"


def save(model: Factors, directory: Path) -> Path:
    """Write ``model`` to ``directory`` as ``factors.npz`` (float32 arrays) + ``params.json``.

    Each file is written to a temporary name and renamed, so a crash leaves no half-written file.
    Returns ``directory``.
    """
    directory = Path(directory)
    meta = {"name": model.name, "params": model.params, "fit_seconds": model.fit_seconds}
    with atomic_path(directory / FACTORS_FILE) as temp, open(temp, "wb") as fh:
        np.savez(fh, user_factors=model.user_factors, artist_factors=model.artist_factors)
    write_text_atomic(directory / PARAMS_FILE, json.dumps(meta, indent=2))
    return directory


def load(directory: Path) -> Factors:
    """Read a ``Factors`` written by ``save``."""
    directory = Path(directory)
    try:
        meta = json.loads((directory / PARAMS_FILE).read_text())
        with np.load(directory / FACTORS_FILE) as npz:
            user, artist = npz["user_factors"], npz["artist_factors"]
    except (OSError, ValueError, KeyError) as exc:
        raise RecsError(f"cannot load a model from {directory}: {exc}; re-run the retrain that wrote it") from None
    return Factors(
        name=meta["name"],
        params=meta["params"],
        user_factors=user,
        artist_factors=artist,
        fit_seconds=meta["fit_seconds"],
    )

"""The search key of an artist name: how a typed name finds a stored one on any database.

``search_key`` is Unicode NFKC, then full case folding (``str.casefold``: "Die Ärzte" and
"DIE ÄRZTE" -> "die ärzte", "Straße" -> "strasse"), NFKC again (folding can un-normalise), runs of
white space as one space, ends trimmed. The publish stores it per artist and the lookups compare
with it, because SQLite's ``lower()`` folds ASCII letters only and PostgreSQL's depends on the
database's collation.
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np
import pandas as pd

_SPACES = re.compile(r"\s+")


def search_key(name: str) -> str:
    """The search key of one name (see the module docstring)."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    return _SPACES.sub(" ", folded).strip()


def search_keys(names: np.ndarray) -> np.ndarray:
    """``search_key`` of every name in ``names`` (1-D array of str): object array of str, same length."""
    folded = pd.Series(names, dtype=object).str.normalize("NFKC").str.casefold().str.normalize("NFKC")
    return folded.str.replace(_SPACES, " ", regex=True).str.strip().to_numpy(dtype=object)

"""The two roles a run fits models for: related artists and user recommendations.

A run names one model per role. When both roles name the same configuration it is fitted once;
when they name the same model with different settings, each is labelled with its role so their
metrics stay apart. The related-artists model must have artist factors: related artists are
nearest neighbours in that space.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import scipy.sparse as sp

from tasks.contracts import Factors, Scorer
from tasks.errors import RecsError
from tasks.models.cosine_blend import CosineBlend
from tasks.models.registry import ModelConfig


@dataclass(frozen=True)
class Fitted:
    """One fitted model: its config, the ``Scorer`` and the weighted train matrix it was fitted
    on (CSR, users x artists, float32 confidences)."""

    model: ModelConfig
    scorer: Scorer
    train: sp.csr_matrix


def distinct(related: ModelConfig, users: ModelConfig) -> list[ModelConfig]:
    """The configurations to fit: both roles', or one when they are equal."""
    return [related] if related.model_dump() == users.model_dump() else [related, users]


def named(fitted: list[Fitted]) -> list[Fitted]:
    """``fitted`` (what ``distinct`` asked to fit, in its order), each model labelled with its
    role when both roles' models share a name."""
    if len(fitted) == 2 and fitted[0].scorer.name == fitted[1].scorer.name:
        return [
            dataclasses.replace(f, scorer=_renamed(f.scorer, f"{f.scorer.name}-{role}"))
            for f, role in zip(fitted, ("related", "users"))
        ]
    return fitted


def assign(fitted: list[Fitted]) -> tuple[Fitted, Fitted]:
    """``(related, users)`` from what ``distinct`` asked to fit, in that order.

    Raises ``RecsError`` when the related-artists model has no artist factors."""
    related = fitted[0]
    if not isinstance(related.scorer, Factors):
        raise RecsError(
            f"related_model {related.model.name!r} has no artist factors to compare artists by; "
            "use a factor model (als, lsa, bpr, lmf, explicit, spark_als, cosine_blend) for related_model"
        )
    return related, fitted[-1]


def compared(related: Factors, users: Scorer) -> dict[str, Factors]:
    """The other factor models whose related lists a run publishes beside ``related``'s, by name:
    the parts of a cosine blend (e.g. its ALS and LSA), and the user model when it is a factor
    model fitted apart (as ``<name>-users`` when its name is taken)."""
    found = {part.name: part for part in related.parts} if isinstance(related, CosineBlend) else {}
    if isinstance(users, Factors) and users is not related:
        taken = users.name in found or users.name == related.name
        found[f"{users.name}-users" if taken else users.name] = users
    return found


def _renamed(scorer: Scorer, name: str) -> Scorer:
    """A copy of ``scorer`` under another ``name`` (frozen dataclasses and plain objects alike)."""
    if isinstance(scorer, Factors):
        return dataclasses.replace(scorer, name=name)
    clone: Any = copy.copy(scorer)
    clone.name = name
    return clone

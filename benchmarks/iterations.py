"""How much ALS work the shipped user model needs: its validation precision@10 at each count of
passes and of conjugate-gradient steps per pass.

    python -m benchmarks.iterations                                   # HetRec 2K, 5 folds
    python -m benchmarks.iterations --iterations 27 --cg-steps 3 2 1
    python -m benchmarks.iterations --path plays.tsv --folds 2 --max-users 10000

The shipped user model (``RetrainConfig().user_model``) with its ALS part's ``iterations`` set to
each of ``--iterations`` and its ``cg_steps`` to each of ``--cg-steps`` (default: as shipped),
everything else as shipped, scored like ``recs tune`` scores a trial:
validation folds carved from the train part of the retrain flow's split (``tasks.tune.validation_of``;
the test split is never read), the model's own weighting, train artists excluded. ``--path``
reads any 360K-format or HetRec file instead (a generated one: ``tasks.data.synthetic.generate``);
``--max-users`` samples the evaluated users there as the run does. Each fold is scored by
``tasks.tune.score_on``, a tuning trial's own scoring (one thread). Prints one line per setting:
precision@10 on each fold, their mean and the fit seconds summed over the folds. docs/models.md
("ALS passes") has the runs that set the shipped counts. The related model's counterpart:
``benchmarks.related_quality --als-iterations``.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

from benchmarks.related_quality import HETREC
from flows.config import RetrainConfig
from tasks.models.blend import BlendConfig
from tasks.models.implicit_mf import ALSConfig
from tasks.tune import score_on, validation_of


def with_als(model: BlendConfig, **update: int) -> BlendConfig:
    """``model`` with the given fields (``iterations``, ``cg_steps``) of every ALS part replaced."""
    parts = [
        p.model_copy(update={"model": p.model.model_copy(update=update)}) if isinstance(p.model, ALSConfig) else p
        for p in model.parts
    ]
    return model.model_copy(update={"parts": parts})


def main(argv: list[str] | None = None) -> None:
    from tasks.data.encode import encode
    from tasks.data.parse import parse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, nargs="+", default=[27, 20, 15, 12, 10])
    parser.add_argument("--cg-steps", type=int, nargs="+", help="CG steps per pass (default: as shipped)")
    parser.add_argument("--path", type=Path, default=HETREC, help="a HetRec folder or 360K-format file")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--max-users", type=int, help="evaluated users per fold (default: all)")
    args = parser.parse_args(argv)
    shipped = RetrainConfig().user_model
    if not isinstance(shipped, BlendConfig):
        raise SystemExit("the shipped user model is no blend; nothing to vary")
    plays = encode(parse(args.path)).plays
    folds = [validation_of(plays, fold=f) for f in range(args.folds)]
    print(f"{args.path.name}: {plays.shape[0]:,} users x {plays.shape[1]:,} artists, {plays.nnz:,} pairs", flush=True)
    steps = args.cg_steps or sorted({p.model.cg_steps for p in shipped.parts if isinstance(p.model, ALSConfig)})
    for iterations, cg_steps in itertools.product(args.iterations, steps):
        cfg = with_als(shipped, iterations=iterations, cg_steps=cg_steps)
        scored = [score_on(cfg, fold, 10, args.max_users) for fold in folds]
        values, seconds = [m["precision@10"] for m, _, _ in scored], sum(f for _, f, _ in scored)
        shown = " ".join(f"{v:.4f}" for v in values)
        print(
            f"ALS x {iterations}, {cg_steps} CG steps: precision@10 {shown}, mean {np.mean(values):.4f}, fit {seconds:.1f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()

"""``benchmarks.iterations``: the shipped user model with only its ALS passes and CG steps changed, scored on
validation folds of the train part (never the test split)."""

from __future__ import annotations

import re

from benchmarks.iterations import main, with_als
from flows.config import RetrainConfig
from tasks.models.implicit_mf import ALSConfig


def test_with_als_changes_only_the_als_passes_and_steps():
    shipped = RetrainConfig().user_model
    changed = with_als(shipped, iterations=3, cg_steps=1)
    assert [type(p.model) for p in changed.parts] == [type(p.model) for p in shipped.parts]
    for old, new in zip(shipped.parts, changed.parts, strict=True):
        if isinstance(old.model, ALSConfig):
            assert (new.model.iterations, new.model.cg_steps) == (3, 1)
            changed_fields = {"iterations", "cg_steps"}
            assert new.model.model_dump(exclude=changed_fields) == old.model.model_dump(exclude=changed_fields)
        else:
            assert new == old
    assert changed.model_dump(exclude={"parts"}) == shipped.model_dump(exclude={"parts"})


def test_one_line_per_setting_with_a_precision_per_fold(hetrec_dir, capsys):
    main(["--path", str(hetrec_dir), "--folds", "2", "--iterations", "3", "1", "--cg-steps", "2", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("hetrec2011-lastfm-2k: 1,892 users x 17,632 artists")
    rows = [
        re.fullmatch(r"ALS x (\d+), (\d) CG steps: precision@10 ([\d.]+) ([\d.]+), mean ([\d.]+), fit [\d.]+ s", line)
        for line in lines[1:]
    ]
    assert all(rows) and [(int(r.group(1)), int(r.group(2))) for r in rows] == [(3, 2), (3, 1), (1, 2), (1, 1)]
    for r in rows:
        folds = [float(r.group(3)), float(r.group(4))]
        assert all(0 < p < 1 for p in folds)
        assert abs(float(r.group(5)) - sum(folds) / 2) < 1e-4
    # fewer CG steps are a different fit: the figures move
    assert rows[0].group(3, 4) != rows[1].group(3, 4)

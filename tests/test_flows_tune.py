"""flows.tune: where a search's records go by default."""

from __future__ import annotations

from pathlib import Path

from flows.config import RetrainConfig
from flows.tune import TUNE_DIR, run_tune
from tasks.workspace import prune_run_dirs, run_dir


def test_tune_records_live_outside_the_pruned_run_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default data/ folder is relative to the working directory
    config = RetrainConfig.model_validate(
        {
            "data": {
                "dataset": "synthetic",
                "cache_dir": str(tmp_path / "cache"),
                "synthetic": {"users": 100, "artists": 120, "rows": 2000, "genres": 4},
            },
            "work_dir": str(tmp_path / "data" / "runs"),
        }
    )
    _, out = run_tune(config, trials=1, workers=1)
    assert out.parent == TUNE_DIR
    assert (out / "best.yaml").is_file() and (out / "trials.json").is_file()
    work = Path(config.work_dir).resolve()
    assert not out.resolve().is_relative_to(work)
    # a run's retention keeps one folder: the tuning records survive it
    current = run_dir(config.work_dir, "run-1")
    prune_run_dirs(config.work_dir, keep=1, current=current)
    assert (out / "best.yaml").is_file()

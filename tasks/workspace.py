"""A run's working folder (factors, index files) under ``work_dir``, their retention, and the
code version a run records."""

from __future__ import annotations

import shutil
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def run_dir(work_dir: Path, name: str) -> Path:
    """``work_dir/name``, created if needed."""
    path = Path(work_dir) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def prune_run_dirs(work_dir: Path, keep: int, current: Path) -> None:
    """Keep the ``keep`` newest run folders under ``work_dir``, like the database keeps its last
    published runs; the current one is never removed."""
    runs = sorted((p for p in Path(work_dir).iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in runs[keep:]:
        if old.resolve() != current.resolve():
            shutil.rmtree(old, ignore_errors=True)


def code_version() -> str:
    """The package version, plus the git commit when running from a checkout."""
    try:
        text = version("lastfm-recs")
    except PackageNotFoundError:
        text = "unknown"
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{text}+{commit}" if commit else text

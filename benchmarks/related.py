"""Related artists and user top-N: exact search vs Annoy and faiss, time and recall, on two catalogues.

    python -m benchmarks.related               # HetRec 2K + a 360K-shaped synthetic run (300K artists)
    python -m benchmarks.related --quick       # HetRec 2K + a small synthetic run (< 2 minutes)
    python -m benchmarks.related --clustered   # 300K artists from random clustered factors, no fit
    python -m benchmarks.related --work-dir D  # keep the generated file and fitted factors in D, reuse them

Per catalogue, with the shipped ``related_model``'s ALS part and the ``IndexConfig`` defaults:

- ``exact``: ``tasks.recommend.related_exact`` and, as the raw-library yardstick, implicit's exact
  ``similar_items`` (``benchmarks.raw.exact_similar``), both on the same sample of artists and
  extrapolated linearly to every artist (brute force: per-row cost does not depend on the row);
- ``annoy`` and ``faiss`` (each engine of ``index.engine``): ``build_index`` + ``related_approx``
  for **every** artist, measured in full, and its recall@N (``recall_at_n``) against both exact
  answers on the sample;
- ``users``: exact ``user_top_n`` vs ``user_top_n_approx`` with each engine on a sample of users
  (time extrapolated), recall of the approximate paths against the exact one.

Prints one JSON object. Timings are wall clock on whatever else the machine is doing; the JSON
records the load average, and the ratios (same run, same data) are the figures to compare.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from benchmarks import raw
from flows.config import RetrainConfig
from tasks.contracts import Factors
from tasks.index import ArtistIndex, IndexConfig, build_index
from tasks.models.base import fit
from tasks.models.cosine_blend import CosineBlendConfig
from tasks.models.store import load, save
from tasks.recommend import related_approx, related_exact, user_top_n, user_top_n_approx
from tasks.topn import recall_at_n
from tasks.weight import weight

HETREC = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "hetrec2011-lastfm-2k"
FULL = {"users": 360_000, "artists": 300_000, "rows": 17_500_000}
QUICK = {"users": 3_000, "artists": 20_000, "rows": 150_000}
SAMPLE = 2_000
ENGINES = ("annoy", "faiss")


def _timed(call, *args, **kwargs):
    started = time.perf_counter()
    out = call(*args, **kwargs)
    return out, time.perf_counter() - started


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)  # stdout is the JSON


def hetrec(config: RetrainConfig) -> tuple[Factors, sp.csr_matrix, str]:
    from tasks.data.encode import encode
    from tasks.data.parse import parse

    folder = Path(os.environ.get("RECS_SHARED_DATASETS", HETREC.parent)) / HETREC.name
    plays = encode(parse(folder)).plays
    return (
        fit(weight(plays, config.related_model.weight), config.related_model),
        plays,
        "HetRec 2K, default related_model",
    )


def synthetic(config: RetrainConfig, size: dict, work: Path) -> tuple[Factors, sp.csr_matrix, str]:
    """Generate, parse, encode and fit; the file and the factors are reused from ``work`` when a
    previous run with the same size left them there (the fit is most of the time at full size)."""
    from tasks.data.encode import encode
    from tasks.data.parse import parse
    from tasks.data.synthetic import generate

    name = "synthetic-{users}-{artists}-{rows}".format(**size)
    tsv = work / f"{name}.tsv"
    if not tsv.is_file():
        _, seconds = _timed(generate, tsv, **size)
        _log(f"generated {size} in {seconds:.0f}s")
    plays = encode(parse(tsv)).plays
    # one directory per model config, so a changed default is refitted rather than reused
    digest = hashlib.sha1(config.related_model.model_dump_json().encode()).hexdigest()[:12]
    saved = work / f"{name}-{config.related_model.name}-{digest}"
    if (saved / "params.json").is_file():
        model = load(saved)
        _log(f"reusing the factors in {saved} (fitted in {model.fit_seconds:.0f}s)")
    else:
        model = fit(weight(plays, config.related_model.weight), config.related_model)
        save(model, saved)
        _log(f"fitted {config.related_model.name} on {plays.shape} ({plays.nnz:,} pairs) in {model.fit_seconds:.0f}s")
    label = f"tasks.data.synthetic 360K-format run {size}, default related_model"
    return model, plays, label


def clustered(artists: int, factors: int, seed: int = 0) -> tuple[Factors, sp.csr_matrix, str]:
    """NOT a fitted model: random factors around 200 Gaussian cluster centres, with a Zipf-like
    spread of norms, for when there is no time to fit at full size. No users."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(200, factors))
    x = centres[rng.integers(0, 200, artists)] + 0.5 * rng.normal(size=(artists, factors))
    x *= (1 + np.arange(artists)[rng.permutation(artists)] / 30.0)[:, None] ** -0.5
    model = Factors("clustered-random", {"centres": 200}, np.empty((0, factors), np.float32), x.astype(np.float32), 0.0)
    return model, sp.csr_matrix((0, artists), dtype=np.float32), "random clustered factors (not a fitted model)"


def _settings(info: ArtistIndex) -> dict:
    """How ``info`` was built: faiss's lists and the probe count used (pinned or calibrated)."""
    if info.engine == "faiss":
        return {"n_lists": info.n_lists, "n_probe": info.n_probe}
    return {"n_trees": info.n_trees, "search_k": info.search_k}


def measure(model: Factors, plays: sp.csr_matrix, label: str, cfg: IndexConfig, n: int, work: Path) -> dict:
    artists = model.artist_factors.shape[0]
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(artists, min(SAMPLE, artists), replace=False))
    exact, exact_seconds = _timed(related_exact, model.artist_factors, n, rows)
    library = raw.exact_similar(model, rows, n)
    exact_all = exact_seconds * artists / len(rows)
    out = {
        "catalogue": label,
        "artists": artists,
        "factors": model.artist_factors.shape[1],
        "fit_seconds": round(model.fit_seconds, 2),
        "sample": len(rows),
        "exact_all_seconds": round(exact_all, 2),
        "implicit_exact_all_seconds": round(library.seconds, 2),
        "exact_vs_implicit": round(exact_all / library.seconds, 3),
    }
    for engine in ENGINES:
        engine_cfg = cfg.model_copy(update={"engine": engine})
        info = build_index(model.artist_factors, engine_cfg, work / f"related-{artists}.{engine}", n=n)
        approx, query_seconds = _timed(related_approx, info, model.artist_factors, n)
        total = info.build_seconds + query_seconds
        out[engine] = {
            "settings": _settings(info),
            "build_seconds": round(info.build_seconds, 2),
            "query_all_seconds": round(query_seconds, 2),
            "speedup_vs_exact": round(exact_all / total, 2),
            "speedup_vs_implicit_exact": round(library.seconds / total, 2),
            "recall": round(recall_at_n(approx, exact, rows), 4),
            "recall_vs_implicit": round(recall_at_n(approx, library.exact, rows), 4),
        }
    _log(json.dumps(out))
    if plays.shape[0]:
        out["users"] = measure_users(model, plays, cfg, n, work)
    return out


def measure_users(model: Factors, heard: sp.csr_matrix, cfg: IndexConfig, n: int, work: Path) -> dict:
    users = np.sort(np.random.default_rng(1).choice(heard.shape[0], min(SAMPLE, heard.shape[0]), replace=False))
    exact, exact_seconds = _timed(user_top_n, model, heard, n, users=users)
    scale = heard.shape[0] / len(users)
    out = {"users": heard.shape[0], "sample": len(users), "exact_all_seconds": round(exact_seconds * scale, 2)}
    for engine in ENGINES:
        engine_cfg = cfg.model_copy(update={"engine": engine})
        info = build_index(model.artist_factors, engine_cfg, work / f"users.{engine}", inner_product=True)
        approx, seconds = _timed(
            user_top_n_approx, info, model.user_factors, model.artist_factors, heard, n, users=users
        )
        out[engine] = {
            "settings": _settings(info),
            "build_seconds": round(info.build_seconds, 2),
            "all_seconds": round(seconds * scale, 2),
            "speedup_vs_exact": round(exact_seconds * scale / (info.build_seconds + seconds * scale), 2),
            # both lists are in ``users`` order, so approx is indexed by sample position here
            "recall": round(recall_at_n(approx, exact, np.arange(len(users))), 4),
        }
    _log(json.dumps(out))
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.related", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"small synthetic run: {QUICK}")
    parser.add_argument("--clustered", action="store_true", help="300K random clustered factors instead of a fit")
    parser.add_argument("--users", type=int)
    parser.add_argument("--artists", type=int)
    parser.add_argument("--rows", type=int)
    parser.add_argument("--work-dir", type=Path, help="keep data and fitted factors here (default: a temp dir)")
    args = parser.parse_args(argv)
    # one factor model against implicit's and the indexes' own search: the shipped related
    # model's ALS part (the cosine blend's index is the same search over its joined unit rows)
    shipped = RetrainConfig().related_model
    config = RetrainConfig(related_model=shipped.parts[0] if isinstance(shipped, CosineBlendConfig) else shipped)
    size = dict(QUICK if args.quick else FULL)
    size.update({k: v for k in size if (v := getattr(args, k)) is not None})
    results = {"load_average": os.getloadavg(), "cores": os.cpu_count(), "n": config.n}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        results["hetrec"] = measure(*hetrec(config), config.index, config.n, work)
        if args.clustered:
            large = clustered(size["artists"], config.related_model.factors)
        else:
            large = synthetic(config, size, work)
        results["large"] = measure(*large, config.index, config.n, work)
    results["load_average_after"] = os.getloadavg()
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()

"""What each retrain leaves in the Prefect UI: a metrics table and a markdown report with plots.

The content is built by plain functions (``metrics_rows``, ``render_report``) so tests can read it
without Prefect; ``publish_artifacts`` is the one call that talks to the Prefect API. Artifacts are
keyed (``ARTIFACT_KEYS``), so the Artifacts page shows the latest run's version of each and keeps
the history of earlier ones.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from storage.queries import flatten
from tasks.contracts import BadRows, Encoded, Metric, TopN
from tasks.curves import Curves
from tasks.evaluate import FIT_METRICS

METRICS_KEY = "retrain-metrics"
REPORT_KEY = "retrain-report"
ARTIFACT_KEYS = (METRICS_KEY, REPORT_KEY)
BASELINES = ("popularity", "random")
# what the index step measures against exact search (tasks.topn.recall_at_n); the model is the engine
RECALL_METRICS = ("related_recall", "user_recall")
# Shown in the report's related-artists section when present in the catalogue; otherwise the
# most-listened artists stand in (the synthetic dataset has made-up names).
WELL_KNOWN = ("Coldplay", "Bob Dylan", "The Beatles", "Radiohead")
MAX_POINTS = 20_000  # artists drawn in the norm-vs-popularity scatter
MAP_ARTISTS = 2_000  # the embedding map's artists, most listened first (t-SNE is O(n log n) per step)
MAP_CLUSTERS = 10  # k-means clusters colouring it (the tab10 palette's colours)
MAP_LABELS = 20  # names written on it
RELATED_SHOWN = 10  # rows of the side-by-side related lists


@dataclass(frozen=True, kw_only=True)
class ReportSummary:
    """What every report states about a run, whichever engine made it. No arrays: a Spark run,
    whose matrices stay on the executors, fills it from counts and metrics alone.

    ``shape``: users, artists, pairs and total plays of the encoded data.
    ``timings``: wall seconds per stage, in flow order.
    ``gate``: the quality gate's decision with both precision@10 figures (None: nothing compared).
    ``stability``: overlap@10 with the dataset's previous current run, metric -> share in [0, 1]
    (empty for a dataset's first run; None when the engine does not measure it, the Spark path).
    ``choices``: what the run chose from the data's shape beyond the config (``runs.choices``:
    index engine, user top-N path, ...).
    """

    run_id: str
    dataset: str
    source: str
    sha256: str
    shape: tuple[int, int, int, float]
    bad_rows: BadRows
    split_rule: str
    test_pairs: int
    models: dict[str, dict]
    metrics: list[Metric]
    timings: dict[str, float] = field(default_factory=dict)
    gate: str | None = None
    stability: dict[str, float] | None = field(default_factory=dict)
    data_check: str = ""  # Downloaded.check: how the data was known to be current
    database: str = ""  # the URL the run was published to, password masked
    choices: dict = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class RunReport(ReportSummary):
    """A single-machine run's report: the summary plus the arrays its plots and lists need; its
    ``shape`` follows from ``encoded``.

    ``related``: TopN over artist codes (artists x N) from the related-artists model.
    ``artist_factors``: float32, artists x f, of the related-artists model (for the norm plot).
    ``related_by_model``: model name -> TopN over artist codes, for the side-by-side lists (empty:
    only ``related``, under the name of the related-artists model).
    """

    encoded: Encoded
    related: TopN
    artist_factors: np.ndarray
    curves: Curves | None = None  # an ALS model's training curves (None: the run has no ALS model)
    related_by_model: dict[str, TopN] = field(default_factory=dict)  # every related model's TopN, shipped first
    shape: tuple[int, int, int, float] = field(init=False)

    def __post_init__(self) -> None:
        enc = self.encoded
        object.__setattr__(self, "shape", (enc.n_users, enc.n_artists, enc.plays.nnz, float(enc.plays.sum())))


def _label(metric: Metric) -> str:
    return metric.metric if metric.k is None else f"{metric.metric}@{metric.k}"


def metrics_rows(metrics: list[Metric]) -> list[dict]:
    """One row per (model, metric): the model's value beside the popularity and random baselines.

    ``vs_popularity`` is the model's value divided by popularity's (None where popularity has no
    such metric or scored 0). Baselines and the index's recall get rows of their own with the model
    columns filled as they apply, so nothing measured is dropped.
    """
    by_key = {(m.model, m.metric, m.k): m.value for m in metrics}
    rows = []
    for m in metrics:
        if m.model in BASELINES or m.metric in FIT_METRICS:
            continue
        pop = by_key.get(("popularity", m.metric, m.k))
        rnd = by_key.get(("random", m.metric, m.k))
        rows.append(
            {
                "model": m.model,
                "metric": _label(m),
                "value": round(m.value, 4),
                "popularity": None if pop is None else round(pop, 4),
                "random": None if rnd is None else round(rnd, 4),
                "vs_popularity": round(m.value / pop, 2) if pop else None,
            }
        )
    return rows


def fit_rows(metrics: list[Metric]) -> list[list]:
    """Per published model: the pairs it was fitted on, and whether its metrics come from that
    same fit or from a sibling fit on the train part (and its pairs)."""
    pairs = {(m.model, m.metric): int(m.value) for m in metrics if m.metric in FIT_METRICS}
    rows = []
    for (model, metric), fitted in pairs.items():
        if metric != "fit_pairs":
            continue
        measured = pairs.get((model, "evaluated_fit_pairs"), fitted)
        source = "the same fit" if measured == fitted else f"a sibling fit on {measured:,} train pairs"
        rows.append([model, f"{fitted:,}", source])
    return rows


# Figures are drawn at FIGSIZE inches and DPI: ~1000 px wide, readable at the width the Prefect UI
# shows an artifact, with fonts sized for that (matplotlib's 10 pt at 72 dpi came out 391 px wide).
FIGSIZE = (10, 5)
DPI = 100
FONT: dict[Any, Any] = {"font.size": 13, "axes.titlesize": 15, "axes.labelsize": 13, "legend.fontsize": 11}


def _figure(size: tuple[float, float] = FIGSIZE, ncols: int = 1):
    """A new (fig, ax) in the report's style (``ncols`` > 1: an array of axes side by side);
    matplotlib is imported on first use (Agg: no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context(FONT):
        return plt.subplots(1, ncols, figsize=size, layout="constrained")


def _png_data_uri(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    with plt.rc_context(FONT):
        fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def ranking_plot(metrics: list[Metric]) -> str | None:
    """Bar chart of precision@K and nDCG@K per model and baseline, as a PNG data URI.

    None when the run measured neither (nothing to draw).
    """
    wanted = [m for m in metrics if m.metric in ("precision", "ndcg") and m.k is not None]
    if not wanted:
        return None
    labels = sorted({_label(m) for m in wanted})
    models = sorted({m.model for m in wanted}, key=lambda name: (name in BASELINES, name))
    values = {(m.model, _label(m)): m.value for m in wanted}
    fig, ax = _figure()
    width = 0.8 / len(models)
    x = np.arange(len(labels))
    for i, model in enumerate(models):
        ax.bar(x + i * width, [values.get((model, lab), 0.0) for lab in labels], width, label=model)
    ax.set_xticks(x + 0.4 - width / 2, labels)
    ax.set_ylabel("per-user mean on holdout")
    ax.set_title("Ranking quality by model")
    ax.legend()
    return _png_data_uri(fig)


def norm_plot(artist_factors: np.ndarray, listeners: np.ndarray) -> str:
    """Scatter of artist embedding norm against listeners (log x), as a PNG data URI.

    Popular artists get long vectors in implicit models; the plot makes that bias visible (and is
    why related artists are ranked by cosine, not by inner product).
    """
    norms = np.linalg.norm(artist_factors, axis=1)
    shown = np.arange(len(norms))
    if len(shown) > MAX_POINTS:  # a fixed sample keeps the plot (and the PNG) small at 300K artists
        shown = np.random.default_rng(0).choice(shown, MAX_POINTS, replace=False)
    fig, ax = _figure()
    ax.scatter(np.maximum(listeners[shown], 1), norms[shown], s=4, alpha=0.3)
    ax.set_xscale("log")
    ax.set_xlabel("listeners")
    ax.set_ylabel("artist factor norm")
    ax.set_title("Embedding norm vs popularity")
    return _png_data_uri(fig)


@dataclass(frozen=True)
class EmbeddingLayout:
    """The embedding map's points: ``codes`` (artist codes, most-listened first), ``xy`` (float,
    len(codes) x 2, t-SNE coordinates) and ``cluster`` (int, a k-means cluster per point)."""

    codes: np.ndarray
    xy: np.ndarray
    cluster: np.ndarray


def embedding_layout(
    artist_factors: np.ndarray,
    listeners: np.ndarray,
    top: int = MAP_ARTISTS,
    clusters: int = MAP_CLUSTERS,
    seed: int = 0,
) -> EmbeddingLayout:
    """2-D t-SNE of the unit-length factors of the ``top`` most-listened artists, and a k-means
    cluster of those factors per artist. Unit length because related artists are ranked by cosine:
    the map shows the neighbourhoods the lists come from, not popularity (the norm plot does)."""
    from scipy.cluster.vq import kmeans2
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    codes = np.argsort(-listeners, kind="stable")[: min(top, len(listeners))]
    unit = artist_factors[codes] / np.maximum(np.linalg.norm(artist_factors[codes], axis=1, keepdims=True), 1e-12)
    perplexity = min(30.0, (len(codes) - 1) / 3)  # t-SNE needs fewer neighbours than points
    with threadpool_limits(1, "blas"):
        xy = TSNE(2, perplexity=perplexity, init="pca", max_iter=750, random_state=seed).fit_transform(unit)
        _, cluster = kmeans2(unit.astype(np.float64), min(clusters, len(codes)), seed=seed, minit="++")
    return EmbeddingLayout(codes, xy, cluster)


def curves_plot(curves: Curves) -> str:
    """Training loss and validation precision@k per ALS iteration, side by side; a PNG data URI."""
    fig, (loss, precision) = _figure((12, 4.5), ncols=2)
    steps = np.arange(1, len(curves.loss) + 1)
    loss.plot(steps, curves.loss, marker="o")
    loss.set_xlabel("iteration")
    loss.set_ylabel("training loss")
    loss.set_title(f"{curves.model}: training loss")
    precision.plot(steps, curves.precision, marker="o", color="tab:orange")
    precision.set_xlabel("iteration")
    precision.set_ylabel(f"precision@{curves.k}")
    precision.set_title(f"validation precision@{curves.k} ({curves.users:,} users)")
    return _png_data_uri(fig)


def legible_labels(xy: np.ndarray, count: int, spacing: float = 0.06, among: int = 200) -> list[int]:
    """Up to ``count`` of the first ``among`` points (most listened first) to label, skipping any
    closer than ``spacing`` (a share of the map's extent) to one already labelled, so the names
    do not print over each other where popular artists crowd together."""
    extent = np.ptp(xy, axis=0).max() or 1.0
    chosen: list[int] = []
    for i in range(min(among, len(xy))):  # at most `among` small distance checks
        if len(chosen) == count:
            break
        if not chosen or np.linalg.norm(xy[chosen] - xy[i], axis=1).min() >= spacing * extent:
            chosen.append(i)
    return chosen


def embedding_map(artist_factors: np.ndarray, encoded: Encoded, labelled: int = MAP_LABELS) -> str:
    """``embedding_layout`` drawn, coloured by cluster, the ``labelled`` most-listened names
    written on it; a PNG data URI."""
    layout = embedding_layout(artist_factors, encoded.listeners)
    fig, ax = _figure((11, 8))
    ax.scatter(layout.xy[:, 0], layout.xy[:, 1], c=layout.cluster, cmap="tab10", s=10, alpha=0.7)
    for i in legible_labels(layout.xy, labelled):
        ax.annotate(
            str(encoded.artist_names[layout.codes[i]]),
            layout.xy[i],
            fontsize=11,
            xytext=(3, 3),
            textcoords="offset points",
        )
    ax.set_title(f"Artist factors of the {len(layout.codes):,} most-listened artists (t-SNE; colour: k-means cluster)")
    ax.set_xticks([])
    ax.set_yticks([])
    return _png_data_uri(fig)


def showcase_artists(encoded: Encoded, count: int = 3) -> np.ndarray:
    """Artist codes to show related artists for: the well-known names present, else the most listened."""
    names = encoded.artist_names.astype(str)
    lowered = np.char.lower(names)
    codes = [int(np.flatnonzero(lowered == w.lower())[0]) for w in WELL_KNOWN if (lowered == w.lower()).any()]
    if len(codes) < count:
        popular = np.argsort(-encoded.listeners, kind="stable")
        codes += [int(c) for c in popular if int(c) not in codes][: count - len(codes)]
    return np.asarray(codes[:count], dtype=np.int64)


def related_side_by_side(report: RunReport, shown: int = RELATED_SHOWN) -> list[str]:
    """Markdown: per showcased artist, a table whose columns are the related lists of each model
    (``related_by_model``, else ``related`` under the related-artists model's name), rank by rank."""
    lists = report.related_by_model or {
        str(report.models.get("related artists", {}).get("name", "related")): report.related
    }
    names = report.encoded.artist_names
    lines = []
    for code in showcase_artists(report.encoded):
        columns = [[str(names[i]) for i in top.ids[code][top.ids[code] >= 0][:shown]] for top in lists.values()]
        depth = max((len(c) for c in columns), default=0)
        rows = [[rank + 1, *(_md_cell(c[rank]) if rank < len(c) else "" for c in columns)] for rank in range(depth)]
        lines += [f"### {_md_cell(str(names[code]))}", ""]
        lines += _md_table(["rank", *map(_md_cell, lists)], rows) + [""]
    return lines


def params_rows(models: dict[str, dict]) -> tuple[list[str], list[list]]:
    """(header, rows) of the models' parameters: one row per parameter (nested ones dotted, e.g.
    ``parts.0.weight``), one column per role; a blank cell where a role's model has no such one."""
    flat = {role: flatten(params) for role, params in models.items()}
    keys = sorted({key for params in flat.values() for key in params}, key=lambda k: (k != "name", k))
    rows = [[f"`{key}`", *(_md_cell(_value(flat[role].get(key))) for role in flat)] for key in keys]
    return ["parameter", *flat], rows


def _value(value: object) -> str:
    return "" if value is None else json.dumps(value) if isinstance(value, list | bool) else str(value)


def _md_cell(text: str) -> str:
    """``text`` safe inside a markdown table cell (pipes escaped, on one line)."""
    return " ".join(text.split()).replace("|", "\\|")


def _md_table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
    return out


def render_report(report: RunReport) -> str:
    """The run's markdown report: dataset, bad rows, models, metrics, the quality gate's decision,
    stability against the previous current run, index recall, the related artists of each model
    for a few well-known artists side by side, timings per stage, and embedded PNG plots (ranking
    quality, embedding map, embedding norm vs popularity), each under its own heading."""
    lines = _summary_lines(report)
    lines += ["", f"## Related artists of each model (first {RELATED_SHOWN})", ""]
    lines += related_side_by_side(report)
    lines += ["## Embedding map", "", f"![embedding map]({embedding_map(report.artist_factors, report.encoded)})", ""]
    lines += ["## Training curves", ""]
    if report.curves is None:
        lines += ["- not drawn: the run has no ALS model"]
    else:
        lines += [
            f"A fit of {report.curves.model} on a validation split of the train part (not the test split); "
            f"final validation precision@{report.curves.k}: **{report.curves.precision[-1]:.4f}**.",
            "",
            f"![training curves]({curves_plot(report.curves)})",
        ]
    lines += ["", "## Embedding norm vs popularity", ""]
    lines += [f"![embedding norm vs popularity]({norm_plot(report.artist_factors, report.encoded.listeners)})"]
    return "\n".join(lines + _timing_lines(report)) + "\n"


def render_spark_report(summary: ReportSummary) -> str:
    """The markdown report of a Spark run (``engine: spark``): the sections of ``render_report``
    that need no driver-side arrays. The lists themselves are in the database; the embedding
    plots are left out because the factors stay on the executors."""
    lines = _summary_lines(summary)
    lines += [
        "",
        "## Embedding plots",
        "",
        "- not drawn on the Spark path: the factors stay on the executors (query the published lists "
        "with `recs related` / `recs recommend`, or the explorer page)",
    ]
    return "\n".join(lines + _timing_lines(summary)) + "\n"


def _summary_lines(summary: ReportSummary) -> list[str]:
    """The report's sections up to the ranking plot: where it was published, the data, bad rows,
    models, what was fitted on what, metrics, index recall, quality gate and stability."""
    users, artists, pairs, plays = summary.shape
    density = pairs / max(1, users * artists)
    bad = summary.bad_rows
    lines = [
        f"# Retrain report — run `{summary.run_id}`",
        "",
        f"Published to `{summary.database}`." if summary.database else "Not published (no database named).",
        "",
        "## Dataset",
        "",
        f"- **{summary.dataset}** from `{summary.source}` (sha256 `{summary.sha256[:12]}…`)",
        f"- data check: **{summary.data_check}** (`tasks.contracts.Downloaded.check`)",
        f"- {users:,} users × {artists:,} artists, {pairs:,} pairs (density {density:.2e}), {plays:,.0f} plays",
        f"- split: {summary.split_rule}; {summary.test_pairs:,} held-out pairs",
        "",
        "## Bad rows",
        "",
        f"{bad.rows_read:,} rows read, {bad.rows_kept:,} kept, {bad.total:,} dropped or merged.",
        "",
    ]
    if bad.counts:
        lines += _md_table(["kind", "rows"], [[k, f"{v:,}"] for k, v in sorted(bad.counts.items())])
        lines.append("")
    lines += ["## Models", ""]
    lines += _md_table(*params_rows(summary.models))
    if summary.choices:
        lines += ["", "Chosen for this data: " + ", ".join(f"{k} `{v}`" for k, v in summary.choices.items())]
    lines += ["", "## What was published, and what was measured", ""]
    lines += _md_table(["model", "fitted on (pairs)", "metrics from"], fit_rows(summary.metrics))
    lines += ["", "## Metrics (holdout, train-heard artists excluded)", ""]
    rows = metrics_rows(summary.metrics)
    lines += _md_table(
        ["model", "metric", "value", "popularity", "random", "× popularity"],
        [[r["model"], r["metric"], r["value"], r["popularity"], r["random"], r["vs_popularity"]] for r in rows],
    )
    recall = [m for m in summary.metrics if m.metric in RECALL_METRICS]
    lines += ["", "## Index recall vs exact search", ""]
    lines += [f"- {m.model} {m.metric}@{m.k}: **{m.value:.3f}**" for m in recall] or ["- not measured"]
    lines += ["", "## Quality gate", "", summary.gate or "not applied: no current run of this dataset to compare with"]
    lines += ["", "## Stability vs the previous current run (overlap@10, matched by source key)", ""]
    if summary.stability is None:
        lines += ["- not measured on this engine"]
    else:
        lines += [f"- {metric}: **{value:.3f}**" for metric, value in summary.stability.items()] or [
            "- not measured: the dataset's first published run"
        ]
    ranking = ranking_plot(summary.metrics)
    if ranking:
        lines += ["", "## Ranking quality by model", "", f"![ranking quality by model]({ranking})"]
    return lines


def _timing_lines(summary: ReportSummary) -> list[str]:
    lines = ["", "## Timings (wall seconds per stage)", ""]
    lines += _md_table(["stage", "seconds"], [[k, f"{v:.2f}"] for k, v in summary.timings.items()])
    return [*lines, f"| **total** | **{sum(summary.timings.values()):.2f}** |"]


def publish_artifacts(run_id: str, metrics: list[Metric], markdown: str) -> None:
    """Create the keyed table (``metrics``) and markdown (the rendered report) artifacts of run
    ``run_id`` for the current flow run."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    create_table_artifact(
        table=metrics_rows(metrics),
        key=METRICS_KEY,
        description=f"Holdout metrics of run {run_id}, each model beside the baselines",
    )
    create_markdown_artifact(markdown=markdown, key=REPORT_KEY, description=f"Retrain report of run {run_id}")


def render_failure(stage: str, reason: str, timings: dict[str, float]) -> str:
    """Markdown of a failed run: the stage that failed, why, and the stages that finished (seconds)."""
    lines = [
        "# Retrain failed",
        "",
        f"**Stage:** `{stage}`",
        "",
        f"**Why:** {reason}",
        "",
        "Nothing was published; readers keep the previous run.",
    ]
    if timings:
        lines += ["", "| stage | seconds |", "| --- | ---: |"]
        lines += [f"| {name} | {seconds:.1f} |" for name, seconds in timings.items()]
    return "\n".join(lines) + "\n"


def publish_failure_report(stage: str, reason: str, timings: dict[str, float]) -> None:
    """The markdown report of a failed run under ``REPORT_KEY``, so the latest report says so."""
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(
        markdown=render_failure(stage, reason, timings), key=REPORT_KEY, description=f"Failed retrain ({stage})"
    )

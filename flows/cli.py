"""The ``recs`` command line: the front door for engineers and analysts.

Each command is a thin shell over plain functions in tasks/, storage/ and flows/; a
``RecsError`` becomes one line on stderr and exit code 1.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from tasks.errors import RecsError

app = typer.Typer(
    help="Last.fm related artists and per-user recommendations, published into SQL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable)


def one_line_errors(fn: F) -> F:
    """Turn a RecsError into ``error: <message>`` on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RecsError as exc:
            err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def _run_config(config_file, dataset, source, db, model):
    """RetrainConfig from an optional file, then the flags on top (validated as a whole)."""
    import yaml
    from pydantic import ValidationError

    from flows.config import RetrainConfig

    try:
        raw = (RetrainConfig.from_file(config_file) if config_file else RetrainConfig()).model_dump()
        if dataset:
            raw["data"]["dataset"] = dataset
        if source:
            raw["data"]["source"] = source
        if db:
            raw["storage"]["db"] = db
        if model:
            raw["related_model"] = _switched(raw["related_model"], model)
            raw["user_model"] = _switched(raw["user_model"], model)
        return RetrainConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RecsError(f"invalid config: {where}: {first['msg']}; fix the config file or flag") from None
    except (OSError, ValueError, yaml.YAMLError) as exc:
        reason = " ".join(str(exc).split())
        raise RecsError(f"cannot read config {config_file}: {reason}; give a readable .yaml or .toml file") from None


def _switched(model: dict, name: str) -> dict:
    """``model`` (a config mapping) as model ``name``, keeping the settings that model also has
    (weighting, seed, factors...); an unknown name is left for validation to refuse."""
    from tasks.models.registry import MODELS

    fields = MODELS[name].model_fields if name in MODELS else {}
    return {k: v for k, v in model.items() if k in fields} | {"name": name}


def _die_with_parent() -> None:
    """``preexec_fn``: the kernel sends this child SIGKILL when its parent dies (even by SIGKILL)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _tethered_server() -> None:
    """Register Prefect's temporary API server (started on first use) as one that cannot outlive
    this process: the server is a singleton per port, so Prefect's own lookups get this one."""
    from prefect.server.api.server import SubprocessASGIServer

    class Tethered(SubprocessASGIServer):
        def _run_uvicorn_command(self) -> subprocess.Popen:
            popen = subprocess.Popen
            subprocess.Popen = functools.partial(popen, preexec_fn=_die_with_parent)  # type: ignore[misc,assignment]
            try:
                return super()._run_uvicorn_command()
            finally:
                subprocess.Popen = popen  # type: ignore[misc]

    if sys.platform == "linux":
        Tethered()


def _without_secrets(config):
    """``config`` with no secret in it, so none becomes a flow-run parameter value: a ``--db``
    password moves into ``PGPASSWORD`` (libpq reads it), a ``--source`` URL with a token or a
    password into ``RECS_SOURCE`` (the flow takes it from there, flows.retrain.unmasked), and the
    config keeps their masked forms."""
    from storage.config import masked_url, without_password

    db, password = without_password(config.storage.db)
    if password is not None:
        os.environ["PGPASSWORD"] = password
    source = config.data.source
    if source and masked_url(source) != source:
        os.environ["RECS_SOURCE"] = source
        source = masked_url(source)
    return config.model_copy(
        update={
            "storage": config.storage.model_copy(update={"db": db}),
            "data": config.data.model_copy(update={"source": source}),
        }
    )


def _example_query(db: str, artist: str) -> str:
    """A shell command that shows ``artist``'s related artists; every word is ``shlex.quote``d so
    a name such as ``$(touch x)`` stays data when the line is pasted."""
    import shlex

    from sqlalchemy.engine import make_url

    url = make_url(db)
    sqlite = url.get_backend_name() == "sqlite"
    score = "score" if sqlite else "score::numeric"  # PostgreSQL has no round(real, integer)
    sql = (
        f"SELECT rank, related_artist_name, round({score}, 3) FROM current_related_artists "
        f"WHERE lower(artist_name) = lower('{artist.replace(chr(39), chr(39) * 2)}') ORDER BY rank;"
    )
    if sqlite:
        return f"sqlite3 {shlex.quote(str(url.database))} {shlex.quote(sql)}"
    plain = url.set(drivername="postgresql").render_as_string(hide_password=True)
    return f"psql {shlex.quote(plain)} -c {shlex.quote(sql)}"


@app.command()
@one_line_errors
def run(
    config_file: Path = typer.Option(
        None, "--config", exists=True, dir_okay=False, help="YAML or TOML RetrainConfig; flags below override it."
    ),
    dataset: str = typer.Option(None, help="lastfm-2k | lastfm-360k | synthetic"),
    source: str = typer.Option(None, help="A path or URL overriding the dataset's own location."),
    db: str = typer.Option(None, help="SQLAlchemy URL to publish into (default sqlite:///data/recs.db)."),
    model: str = typer.Option(None, help="Model for both related artists and user recommendations."),
) -> None:
    """Retrain once (the `retrain` Prefect flow) and publish the run; prints a summary.

    Uses the Prefect API in PREFECT_API_URL when set (the run then shows in that server's UI),
    else a temporary local one that lives as long as the command.
    """
    # Before Prefect is imported: offline, and a patient start for the temporary API on a busy machine.
    for name, value in (
        ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
        ("DO_NOT_TRACK", "1"),
        ("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120"),
    ):
        os.environ.setdefault(name, value)
    from rich.table import Table

    from flows.report import metrics_rows
    from flows.retrain import retrain

    config = _without_secrets(_run_config(config_file, dataset, source, db, model))
    # a scheduler's timeout (SIGTERM) stops the run as Ctrl-C does: the flow ends, the server stops
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if not os.environ.get("PREFECT_API_URL"):
        _tethered_server()
    try:
        result = retrain(config)
    except RecsError:
        raise
    except Exception as exc:  # a bug or an environment failure: still one line, details in the log above
        reason = " ".join(str(exc).split())
        raise RecsError(f"retrain failed: {type(exc).__name__}: {reason}; see the log above") from None

    table = Table("model", "metric", "value", "popularity", "× popularity", title=f"run {result.run_id}")
    for row in metrics_rows(result.metrics):
        table.add_row(
            escape(row["model"]),
            row["metric"],
            f"{row['value']:.4f}",
            "" if row["popularity"] is None else f"{row['popularity']:.4f}",
            "" if row["vs_popularity"] is None else f"{row['vs_popularity']:.2f}",
        )
    console.print(table)
    console.print(
        f"published run [bold]{result.run_id}[/bold] to {escape(result.db)} "
        f"in {sum(result.timings.values()):.1f} s (related artists: {escape(result.related_model)}, "
        f"user recommendations: {escape(result.user_model)})",
        highlight=False,
        soft_wrap=True,
    )
    console.print(
        "try: " + escape(_example_query(config.storage.db, result.example_artist)), highlight=False, soft_wrap=True
    )


@app.command()
@one_line_errors
def deploy() -> None:
    """Register the weekly retrain with the Prefect server in PREFECT_API_URL.

    Creates the process work pool named in deployments/prefect.yaml if it is missing, then runs
    `prefect --no-prompt deploy --prefect-file deployments/prefect.yaml --all` from the project root.
    """
    import subprocess

    import yaml
    from prefect.settings import PREFECT_API_URL

    project = Path(__file__).resolve().parents[1]
    spec = project / "deployments" / "prefect.yaml"
    env = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", **os.environ}
    api = PREFECT_API_URL.value()  # from the environment or the active Prefect profile
    if not api:
        raise RecsError(
            "PREFECT_API_URL is not set; start a server (prefect server start) and "
            "export PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    pools = {d["work_pool"]["name"] for d in yaml.safe_load(spec.read_text())["deployments"]}

    def prefect(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "prefect", *args], cwd=project, env=env, capture_output=True, text=True
        )

    for pool in sorted(pools):
        if prefect("work-pool", "inspect", pool).returncode != 0:
            done = prefect("work-pool", "create", pool, "--type", "process")
            if done.returncode != 0:
                raise RecsError(f"cannot create work pool {pool}: {_last_line(done)}; is {api} up?")
            console.print(f"created process work pool [bold]{escape(pool)}[/bold]")
    done = prefect("--no-prompt", "deploy", "--prefect-file", str(spec.relative_to(project)), "--all")
    if done.returncode != 0:
        raise RecsError(f"prefect deploy failed: {_last_line(done)}; run it by hand to see the details")
    console.print(
        escape(
            f"registered the deployments of {spec.relative_to(project)}; start a worker with: "
            f"prefect worker start --pool {' / '.join(sorted(pools))}"
        ),
        highlight=False,
        soft_wrap=True,
    )


def _last_line(done) -> str:
    lines = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    return lines[-1] if lines else f"exit code {done.returncode}"


_READ_DB = typer.Option(
    None, "--db", envvar="RECS_DB", help="SQLAlchemy URL to read (default: the config's, sqlite:///data/recs.db)."
)


def _read_engine(db: str | None):
    from flows.config import StorageConfig
    from storage.engine import make_engine

    return make_engine(db or StorageConfig().db)


def _top_table(title: str, rows) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table("rank", "artist", "key", "score", title=Text(title))
    for row in rows:
        table.add_row(str(row.rank), Text(row.artist_name), Text(row.artist_key), f"{row.score:.4f}")
    console.print(table)


@app.command()
@one_line_errors
def related(
    artist: str = typer.Argument(..., help="Artist name (any letter case) or the source's artist key."),
    n: int = typer.Option(10, min=1, help="How many related artists to show."),
    db: str = _READ_DB,
) -> None:
    """Related artists of ARTIST in the latest published run."""
    from storage.queries import related_artists
    from tasks.evaluate import MAX_N

    result = related_artists(_read_engine(db), artist, min(n, MAX_N))  # no published list is longer
    _top_table(f"related to {result.artist_name} (run {result.run_id})", result.rows)


@app.command()
@one_line_errors
def recommend(
    user: str = typer.Argument(..., help="The source's user id."),
    n: int = typer.Option(10, min=1, help="How many artists to show."),
    db: str = _READ_DB,
) -> None:
    """New artists for USER from the latest published run."""
    from storage.queries import recommendations
    from tasks.evaluate import MAX_N

    result = recommendations(_read_engine(db), user, min(n, MAX_N))  # no published list is longer
    _top_table(f"for user {result.user_key} (run {result.run_id})", result.rows)


@app.command()
@one_line_errors
def runs(
    limit: int = typer.Option(20, min=1, help="How many of the newest runs to list."),
    db: str = _READ_DB,
) -> None:
    """Published, failed, rejected and pruned runs, newest first."""
    from rich.table import Table
    from rich.text import Text

    from storage.queries import list_runs

    table = Table("run", "status", "started (UTC)", "dataset", "models", "rows", "p@10")
    notes = []
    for r in list_runs(_read_engine(db), limit):
        table.add_row(
            str(r.run_id),
            r.status,
            f"{r.started_at:%Y-%m-%d %H:%M}",
            Text(r.dataset),
            Text(f"{r.related_model}/{r.user_model}"),
            f"{r.n_related + r.n_recommendations:,}",
            "" if r.precision_at_10 is None else f"{r.precision_at_10:.4f}",
        )
        if r.message:
            notes.append(Text(f"run {r.run_id}: {r.message}"))
    console.print(table)
    for note in notes:
        console.print(note, soft_wrap=True)


@app.command()
@one_line_errors
def data(
    dataset: str = typer.Option(
        "synthetic", help="lastfm-2k | lastfm-360k | synthetic (generated locally, no network)."
    ),
    source: str = typer.Option(
        None,
        help="Your own file, folder, archive or URL: HetRec 2K, Last.fm 360K TSV, "
        "or CSV/TSV/Parquet with columns user, artist, plays.",
    ),
    cache_dir: Path = typer.Option(None, help="Download cache (default data/cache)."),
    sha256: str = typer.Option(None, help="Expected SHA-256 of the download; a mismatch is an error."),
    min_listeners: int = typer.Option(1, min=1, help="Drop artists with fewer listeners."),
    min_artists: int = typer.Option(1, min=1, help="Drop users with fewer artists."),
) -> None:
    """Download (or reuse the cache), parse and encode a dataset; print what it holds."""
    from pydantic import ValidationError
    from rich.table import Table
    from rich.text import Text

    from tasks.data.datasets import DataConfig, prepare

    fields = {
        "dataset": dataset,
        "source": source,
        "sha256": sha256,
        "cache_dir": cache_dir,
        "min_listeners": min_listeners,
        "min_artists": min_artists,
    }
    try:
        config = DataConfig.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise RecsError(
            f"invalid option --{'-'.join(map(str, first['loc'])).replace('_', '-')}: {first['msg']}"
        ) from None
    prepared = prepare(config)
    downloaded, interactions, encoded = prepared.downloaded, prepared.interactions, prepared.encoded

    bad = interactions.bad_rows
    table = Table(title=Text(interactions.dataset), show_header=False)
    table.add_column("what", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_row("source", Text(downloaded.source + (" (cached)" if downloaded.from_cache else "")))
    table.add_row("path", Text(str(downloaded.path)))
    table.add_row("sha256", downloaded.sha256)
    table.add_row("users", f"{encoded.n_users:,}")
    table.add_row("artists", f"{encoded.n_artists:,}")
    table.add_row("pairs", f"{encoded.plays.nnz:,}")
    table.add_row("total plays", f"{encoded.artist_plays.sum():,.0f}")
    table.add_row("rows read / kept", f"{bad.rows_read:,} / {bad.rows_kept:,}")
    table.add_row("bad rows", ", ".join(f"{kind}: {n:,}" for kind, n in bad.counts.items()) or "none")
    console.print(table)


@app.command()
@one_line_errors
def tune(
    config_file: Path = typer.Option(
        None,
        "--config",
        exists=True,
        dir_okay=False,
        help="YAML or TOML RetrainConfig (data, eval holdout, user_model anchor).",
    ),
    dataset: str = typer.Option(None, help="lastfm-2k | lastfm-360k | synthetic"),
    source: str = typer.Option(None, help="A path or URL overriding the dataset's own location."),
    trials: int = typer.Option(30, min=1, help="Random candidates besides the two anchors."),
    seed: int = typer.Option(0, help="Seed of the candidate sample."),
    workers: int = typer.Option(None, min=1, help="Parallel trials (default: the cores available)."),
    objective: str = typer.Option("precision", help="precision | ndcg | map | recall, at K=10."),
    out: Path = typer.Option(None, help="Where trials.json/.csv and best.yaml go (default data/runs/tune-<time>)."),
) -> None:
    """Search models, weightings and hyper-parameters on a validation split; print the trial table."""
    from flows.tune import run_tune
    from tasks.tune import describe_params, format_table

    config = _run_config(config_file, dataset, source, None, None)

    def progress(t) -> None:
        what = f"error: {t.error}" if t.error else f"{t.model['name']} {describe_params(t.model)}"
        err_console.print(f"trial {t.number}: {escape(what)}", highlight=False, soft_wrap=True)

    result, out_dir = run_tune(config, trials, seed, workers, objective, out, on_trial=progress)
    console.print(escape(format_table(result)), highlight=False, soft_wrap=True)
    console.print(
        f"best by validation {result.objective}: trial {result.best_trial} ({result.validation_rule})",
        highlight=False,
        soft_wrap=True,
    )
    console.print(
        escape(f"records: {out_dir / 'trials.json'}, {out_dir / 'trials.csv'}; config: {out_dir / 'best.yaml'}"),
        highlight=False,
        soft_wrap=True,
    )

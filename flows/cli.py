"""The ``recs`` command line: the front door for engineers and analysts.

Each command is a thin shell over plain functions in tasks/, storage/ and flows/; a
``RecsError`` becomes one line on stderr and exit code 1.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import logging
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

from flows.output import Format, Listing, emit
from tasks.errors import RecsError

app = typer.Typer(
    help="Last.fm related artists and per-user recommendations, published into SQL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)
config_app = typer.Typer(help="The effective retrain configuration and its schema.", no_args_is_help=True)
app.add_typer(config_app, name="config")

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


def _version(show: bool) -> None:
    if show:
        from tasks.workspace import code_version

        console.print(f"lastfm-recs {code_version()}", highlight=False)
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version (and git commit) and exit."
    ),
) -> None:
    """Last.fm related artists and per-user recommendations, published into SQL."""


@config_app.command("show")
@one_line_errors
def config_show(
    config_file: Path = typer.Option(
        None, "--config", exists=True, dir_okay=False, help="YAML or TOML RetrainConfig to apply over the defaults."
    ),
) -> None:
    """Print the effective RetrainConfig (defaults included) as YAML, ready to edit and pass to --config."""
    import yaml

    config = _run_config(config_file, None, None, None, None)
    sys.stdout.write(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


@config_app.command("schema")
def config_schema() -> None:
    """Print the JSON schema of RetrainConfig (what --config files and deployment parameters accept)."""
    import json

    from flows.config import RetrainConfig

    sys.stdout.write(json.dumps(RetrainConfig.model_json_schema(), indent=2) + "\n")


def _run_config(config_file, dataset, source, db, model, engine=None):
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
        if engine:
            raw["engine"] = engine
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

    if model.get("name") == "cosine_blend" and model.get("parts"):
        model = model["parts"][0]  # its own weight is "none" (raw plays for its parts): take its first part's
    fields = MODELS[name].model_fields if name in MODELS else {}
    kept = {k: v for k, v in model.items() if k in fields and not (name == "cosine_blend" and k == "weight")}
    return kept | {"name": name}


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
    db: str = typer.Option(
        None, envvar="RECS_DB", help="SQLAlchemy URL to publish into (default sqlite:///data/recs.db)."
    ),
    model: str = typer.Option(None, help="Model for both related artists and user recommendations."),
    engine: str = typer.Option(None, help="local (default) | spark: every stage after the download on Spark."),
    verbose: bool = typer.Option(
        False, "--verbose", help="Show tracebacks here too (the Prefect log always has them)."
    ),
    force: bool = typer.Option(
        False, "--force", help="Retrain even when data, config and code equal the dataset's current run."
    ),
    refresh: bool = typer.Option(False, "--refresh", help="Download a URL again even if the cached copy is current."),
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
    from flows.retrain import ORIGIN_ENV, retrain

    config = _without_secrets(_run_config(config_file, dataset, source, db, model, engine))
    origin = os.environ.get(ORIGIN_ENV)
    os.environ[ORIGIN_ENV] = "cli"  # failure messages name the fix as a flag of this command
    if not verbose:
        _no_tracebacks_on_terminal()
    if force:
        config = config.model_copy(update={"storage": config.storage.model_copy(update={"skip_unchanged": False})})
    if refresh:
        config = config.model_copy(update={"data": config.data.model_copy(update={"refresh": True})})
    from prefect.settings import PREFECT_API_URL

    # no API configured (environment, profile or a test harness): Prefect starts a temporary one
    if not PREFECT_API_URL.value():
        _tethered_server()
    # a scheduler's timeout (SIGTERM) stops the run as Ctrl-C does: the flow ends, the server stops
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        result = retrain(config)
    except KeyboardInterrupt:
        # the flow already logged its crash; the user still gets the one line of every failure
        err_console.print(
            "[red]error:[/red] the run was stopped (Ctrl-C or SIGTERM); a run stopped before its publish "
            "committed published nothing and readers keep the current run (`recs runs` shows it); "
            "run `recs run` again",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(130)
    except RecsError:
        raise
    except Exception as exc:  # a bug or an environment failure: still one line, details in the Prefect log
        reason = " ".join(str(exc).split())
        where = "the log above" if verbose else "the traceback with --verbose or in the Prefect log"
        raise RecsError(f"retrain failed: {type(exc).__name__}: {reason}; see {where}") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        # `recs run` called in-process (tests, notebooks) leaves the caller's origin as it was
        if origin is None:
            os.environ.pop(ORIGIN_ENV, None)
        else:
            os.environ[ORIGIN_ENV] = origin
    if result.status == "unchanged":
        console.print(f"{result.message} in {result.db}; nothing retrained (--force retrains)", highlight=False)
        return

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
    if result.message:
        console.print(result.message, highlight=False, soft_wrap=True)
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


class _NoTraceback(logging.Formatter):
    """Formats a record as ``inner`` does, without its traceback or stack."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        # a copy: the record also goes to Prefect's API handler, which keeps the traceback
        bare = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None, "stack_info": None})
        return self.inner.format(bare)


def _no_tracebacks_on_terminal() -> None:
    """Progress lines stay on the terminal; tracebacks go only to the Prefect log (the API handler)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    for logger in (logging.getLogger(), *logging.Logger.manager.loggerDict.values()):
        for handler in getattr(logger, "handlers", ()):
            if isinstance(handler, PrefectConsoleHandler) and not isinstance(handler.formatter, _NoTraceback):
                handler.setFormatter(_NoTraceback(handler.formatter))


@app.command()
@one_line_errors
def deploy(
    alert_webhook: str = typer.Option(
        None,
        envvar="RECS_ALERT_WEBHOOK",
        help="URL to POST to when a retrain fails or is rejected (registers deployments/alerts.yaml).",
    ),
) -> None:
    """Register the weekly retrain with the Prefect server in PREFECT_API_URL.

    Creates the process work pool named in deployments/prefect.yaml if it is missing, then runs
    `prefect --no-prompt deploy --prefect-file deployments/prefect.yaml --all` from the project root,
    then, given a webhook URL, the failure alert of deployments/alerts.yaml.
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
    if not alert_webhook:
        console.print(
            "no failure alert registered: pass --alert-webhook URL or set RECS_ALERT_WEBHOOK", highlight=False
        )
        return
    name = _register_alert(project / "deployments" / "alerts.yaml", alert_webhook)
    console.print(
        f"registered the automation [bold]{name}[/bold]: failed retrains POST to {alert_webhook}", highlight=False
    )


ALERT_BLOCK = "recs-alerts"


def _register_alert(spec: Path, webhook: str) -> str:
    """Save ``webhook`` as the notification block ``ALERT_BLOCK`` and (re)create the automation of
    ``spec`` sending to it, replacing any of the same name; returns the automation's name."""
    import yaml
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import get_client
    from prefect.events.schemas.automations import AutomationCore
    from pydantic import ValidationError

    block = CustomWebhookNotificationBlock(
        name=ALERT_BLOCK, url=webhook, json_data={"subject": "{{subject}}", "text": "{{body}}"}
    )
    try:
        block_id = block.save(ALERT_BLOCK, overwrite=True)
        automation = yaml.safe_load(spec.read_text())
        for action in automation["actions"]:
            action["block_document_id"] = str(block_id)
        with get_client(sync_client=True) as client:
            for old in client.read_automations_by_name(automation["name"]):  # deploying twice leaves one
                client.delete_automation(old.id)
            client.create_automation(AutomationCore.model_validate(automation))
    except (ValidationError, OSError) as exc:
        reason = " ".join(str(exc).split())[:300]
        raise RecsError(
            f"cannot register the alert of {spec.name}: {reason}; check --alert-webhook and the server"
        ) from exc
    return automation["name"]


def _last_line(done) -> str:
    lines = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    return lines[-1] if lines else f"exit code {done.returncode}"


_READ_DB = typer.Option(
    None, "--db", envvar="RECS_DB", help="SQLAlchemy URL to read (default: the config's, sqlite:///data/recs.db)."
)


_READ_DATASET = typer.Option(
    None, help="Dataset whose current run to read (default: the one whose run became current last)."
)


def _read_engine(db: str | None):
    from flows.config import StorageConfig
    from storage.engine import make_engine

    return make_engine(db or StorageConfig().db, create=False)


_FORMAT = typer.Option(
    Format.table, "--format", help="table (plain columns when stdout is not a terminal), json or csv."
)


@app.command()
@one_line_errors
def related(
    artist: str = typer.Argument(..., help="Artist name (any letter case or Unicode form) or the source's artist key."),
    n: int = typer.Option(10, min=1, help="How many related artists to show."),
    db: str = _READ_DB,
    dataset: str = _READ_DATASET,
    model: str = typer.Option(None, help="Which of the run's factor models (default: the shipped related model)."),
    fmt: Format = _FORMAT,
) -> None:
    """Related artists of ARTIST in the current run of a dataset."""
    from storage.queries import related_artists
    from tasks.evaluate import MAX_N

    result = related_artists(_read_engine(db), artist, min(n, MAX_N), dataset, model)  # no list is longer
    listing = Listing(
        title=f"related to {result.artist_name} (run {result.run_id}, {result.dataset}, {result.model})",
        columns=("rank", "artist", "key", "score"),
        rows=[(r.rank, r.artist_name, r.artist_key, r.score) for r in result.rows],
        document=result,
    )
    emit(listing, fmt, console)


@app.command()
@one_line_errors
def recommend(
    user: str = typer.Argument(None, help="The source's user id (or give --listened / --listened-file)."),
    n: int = typer.Option(10, min=1, help="How many artists to show."),
    listened: str = typer.Option(
        None,
        help="A listener who is not in the data: comma-separated artist names, each optionally "
        "name:plays (e.g. 'radiohead:40,coldplay,muse'; a name with a comma: --listened-file); "
        "scored by the current run, no retrain.",
    ),
    listened_file: Path = typer.Option(
        None, exists=True, dir_okay=False, help="Like --listened, from a file of artist<TAB>plays lines."
    ),
    db: str = _READ_DB,
    dataset: str = _READ_DATASET,
    fmt: Format = _FORMAT,
) -> None:
    """New artists for USER (or for a new listener) from the current run of a dataset, each with
    the heard artist that contributed most to it ("because")."""
    from tasks.evaluate import MAX_N

    given = [what for what in (user, listened, listened_file) if what is not None]
    if len(given) != 1:
        raise RecsError(
            "give one of USER, --listened or --listened-file; e.g. recs recommend --listened 'radiohead,muse'"
        )
    engine, n = _read_engine(db), min(n, MAX_N)  # no published list is longer
    if user is not None:
        from storage.queries import recommendations

        result = recommendations(engine, user, n, dataset)
        title, rows, document = f"for user {result.user_key}", result.rows, result
    else:
        from storage.foldin import listened_recommendations, parse_listened

        history = parse_listened(listened) if listened is not None else read_listened(listened_file)
        folded = listened_recommendations(engine, history, n, dataset)
        title, rows, document, result = f"for a listener of {len(folded.heard)} artists", folded.rows, folded, folded
    listing = Listing(
        title=f"{title} (run {result.run_id}, {result.dataset})",
        columns=("rank", "artist", "key", "score", "because you listened to"),
        rows=[(r.rank, r.artist_name, r.artist_key, r.score, r.because_artist_name) for r in rows],
        document=document,
    )
    emit(listing, fmt, console)


def read_listened(path: Path) -> list[tuple[str, float]]:
    """The ``artist<TAB>plays`` lines of ``path`` (plays may be left out: 1); RecsError naming the
    first bad line."""
    history = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise RecsError(f"cannot read {path}: {exc}; give a UTF-8 file of artist<TAB>plays lines") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        name, _, plays = line.partition("\t")
        try:
            history.append((name.strip(), float(plays) if plays.strip() else 1.0))
        except ValueError:
            raise RecsError(
                f"{path} line {number}: {plays.strip()!r} is not a play count; write artist<TAB>plays"
            ) from None
    return history


@app.command()
@one_line_errors
def serve(
    db: str = _READ_DB,
    host: str = typer.Option("127.0.0.1", help="Address to listen on (the default answers this machine only)."),
    port: int = typer.Option(8000, min=0, max=65535, help="TCP port (0: any free one, printed)."),
) -> None:
    """Serve the explorer page and the read-only JSON API (/docs) over the current published runs."""
    from flows.config import StorageConfig
    from flows.web.serve import serve as run_server
    from storage.config import masked_url

    url = db or StorageConfig().db

    def ready(bound_host: str, bound_port: int) -> None:
        where = f"[{bound_host}]" if ":" in bound_host else bound_host
        console.print(
            f"serving http://{where}:{bound_port}/ (API docs at /docs) over {masked_url(url)}; Ctrl-C stops",
            highlight=False,
            soft_wrap=True,
        )
        sys.stdout.flush()

    run_server(url, host, port, ready)


runs_app = typer.Typer(
    help="Runs: list them (bare `recs runs`), show one, compare two, make an earlier one current again.",
    invoke_without_command=True,
)
app.add_typer(runs_app, name="runs")


@runs_app.callback()
@one_line_errors
def runs(
    ctx: typer.Context,
    limit: int = typer.Option(20, min=1, help="How many of the newest runs to list."),
    db: str = _READ_DB,
    fmt: Format = _FORMAT,
) -> None:
    """Published, failed, rejected, pruned and unchanged runs, newest first (* = the current run
    of its dataset); `recs runs show RUN_ID` has row counts and everything else."""
    if ctx.invoked_subcommand is not None:
        return
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from storage.queries import RunSummary, list_runs

    found = list_runs(_read_engine(db), limit)
    notes = [f"run {r.run_id}: {text}" for r in found for text in (r.message, r.flow_run_url) if text]
    if fmt is not Format.table or not console.is_terminal:
        rows = [
            (
                f"{r.run_id}{' *' if r.current else ''}",
                r.status,
                f"{r.started_at:%Y-%m-%d %H:%M}",
                r.dataset,
                f"{r.related_model}/{r.user_model}",
                (r.config_hash or "")[:CONFIG_HASH_SHOWN],
                None if r.seconds is None else round(r.seconds),
                r.precision_at_10,
            )
            for r in found
        ]
        if fmt is Format.csv:  # whole values for scripts
            rows = [dataclasses.astuple(r) for r in found]
        columns = [f.name for f in dataclasses.fields(RunSummary)] if fmt is Format.csv else RUN_COLUMNS
        emit(Listing("runs (* = current run of its dataset)", columns, rows, found, notes), fmt, console)
        return
    # compact (no rules between columns) so that an 80-column terminal shows every column whole
    table = Table(*RUN_COLUMNS, box=box.SIMPLE_HEAD)
    for r in found:
        table.add_row(
            f"{r.run_id}{' *' if r.current else ''}",
            r.status,
            f"{r.started_at:%Y-%m-%d %H:%M}",
            Text(r.dataset),
            Text(f"{r.related_model}/{r.user_model}"),
            (r.config_hash or "")[:CONFIG_HASH_SHOWN],
            "" if r.seconds is None else f"{r.seconds:.0f}",
            "" if r.precision_at_10 is None else f"{r.precision_at_10:.4f}",
        )
    console.print(table)
    for note in notes:
        console.print(Text(note), soft_wrap=True)


RUN_COLUMNS = ("run", "status", "started (UTC)", "dataset", "models", "config", "secs", "p@10")


# hex digits of runs.config_hash shown in lists (the full hash is in `recs runs show`)
CONFIG_HASH_SHOWN = 8


@runs_app.command("show")
@one_line_errors
def runs_show(run_id: int = typer.Argument(..., help="The run to show."), db: str = _READ_DB) -> None:
    """The record of RUN_ID: status, models, config, metrics, timings and choices."""
    import yaml
    from rich.table import Table
    from rich.text import Text

    from storage.queries import run_details

    details = run_details(_read_engine(db), run_id)
    row = details.row
    skip = {"config", "timings", "choices"}
    console.print(f"run {run_id}{' (current)' if details.current else ''}", highlight=False)
    for name, value in row.items():  # one line per field, so that hashes and URLs stay whole
        if name not in skip and value is not None:
            console.print(Text(f"  {name}: {value}"), soft_wrap=True)
    metrics = Table("model", "metric", "value", title="metrics")
    for (model, metric, k), value in details.metrics.items():
        metrics.add_row(Text(model), metric if k is None else f"{metric}@{k}", f"{value:.4f}")
    console.print(metrics)
    timings = Table("stage", "seconds", title="timings")
    for name, seconds in (row["timings"] or {}).items():
        timings.add_row(name, f"{seconds:.2f}")
    console.print(timings)
    console.print("choices:", Text(json_line(row["choices"])), highlight=False, soft_wrap=True)
    console.print("config:", highlight=False)
    console.print(Text(yaml.safe_dump(row["config"], sort_keys=False, allow_unicode=True)), soft_wrap=True)


def json_line(value) -> str:
    import json

    return json.dumps(value, sort_keys=True, ensure_ascii=False)


@runs_app.command("diff")
@one_line_errors
def runs_diff(
    a: int = typer.Argument(..., help="The first run."),
    b: int = typer.Argument(..., help="The second run."),
    db: str = _READ_DB,
) -> None:
    """Compare runs A and B: the config keys that differ, and every metric side by side."""
    from rich.table import Table
    from rich.text import Text

    from storage.queries import config_changes, run_details

    engine = _read_engine(db)
    first, second = run_details(engine, a), run_details(engine, b)
    changes = config_changes(first.row["config"], second.row["config"])
    config = Table("key", f"run {a}", f"run {b}", title="config changes")
    for key, (before, after) in changes.items():
        config.add_row(key, Text(json_line(before)), Text(json_line(after)))
    console.print(config if changes else "config: the same", highlight=False)
    metrics = Table("model", "metric", f"run {a}", f"run {b}", "change", title="metrics")
    for measured in sorted(first.metrics.keys() | second.metrics.keys(), key=lambda m: (m[0], m[1], m[2] or 0)):
        model, metric, k = measured
        x, y = first.metrics.get(measured), second.metrics.get(measured)
        change = "" if x is None or y is None else f"{y - x:+.4f}" + (f" ({(y - x) / x:+.1%})" if x else "")
        metrics.add_row(
            Text(model),
            metric if k is None else f"{metric}@{k}",
            "" if x is None else f"{x:.4f}",
            "" if y is None else f"{y:.4f}",
            change,
        )
    console.print(metrics)


@runs_app.command("promote")
@one_line_errors
def runs_promote(run_id: int = typer.Argument(..., help="A published (not pruned) run."), db: str = _READ_DB) -> None:
    """Make RUN_ID the current run of its dataset again (atomically; readers switch at once)."""
    from storage.publish import promote

    dataset = promote(_read_engine(db), run_id)
    console.print(f"run {run_id} is the current run of {dataset} again", highlight=False)


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
    refresh: bool = typer.Option(False, "--refresh", help="Download a URL again even if the cached copy is current."),
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
        "refresh": refresh,
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
    trials: int = typer.Option(
        30, min=1, help="Optuna trials to add to the study (besides the two anchors, run once per study)."
    ),
    seed: int = typer.Option(0, help="Seed of the TPE sampler."),
    workers: int = typer.Option(
        None, "--workers", "--n-jobs", min=1, help="Parallel worker processes (default: the cores available)."
    ),
    objective: str = typer.Option("precision", help="precision | ndcg | map | recall, at K=10."),
    out: Path = typer.Option(
        None,
        help="Where trials.json/.csv and best.yaml go (default data/tune/<time>, outside the pruned run folders).",
    ),
    storage: str = typer.Option(
        None, help="SQLAlchemy URL of Optuna's trial storage (default sqlite:///data/tune.db); a rerun resumes it."
    ),
    folds: int = typer.Option(2, min=1, help="Validation folds per trial (a trial may be pruned after each)."),
    models: str = typer.Option(
        "als,itemknn,ease,rp3beta,blend", help="Models searched, comma-separated (blend: blends of the others)."
    ),
    blends: str = typer.Option(
        None,
        help="Only these blends, comma-separated, e.g. als+itemknn+rp3beta (with --models blend: that blend alone).",
    ),
) -> None:
    """Search models, weightings and hyper-parameters with Optuna on validation folds; print the trial table."""
    from flows.tune import TUNE_DB, run_tune
    from tasks.tune import describe_params, format_recheck, format_table

    config = _run_config(config_file, dataset, source, None, None)

    def progress(t) -> None:
        what = f"error: {t.error}" if t.error else f"{t.state} {t.model.get('name')} {describe_params(t.model)}"
        err_console.print(f"trial {t.number}: {escape(what)}", highlight=False, soft_wrap=True)

    result, out_dir = run_tune(
        config,
        trials,
        seed,
        workers,
        objective,
        out,
        on_trial=progress,
        storage=storage or TUNE_DB,
        folds=folds,
        models=[m.strip() for m in models.split(",") if m.strip()],
        blends=[b.strip() for b in blends.split(",") if b.strip()] if blends else None,
    )
    console.print(escape(format_table(result)), highlight=False, soft_wrap=True)
    console.print(escape(format_recheck(result)), highlight=False, soft_wrap=True)
    console.print(
        escape(
            f"best by validation {result.objective}: trial {result.best_trial} ({result.validation_rule}); "
            f"study {result.study} at {result.storage}, {len(result.trials)} trials"
        ),
        highlight=False,
        soft_wrap=True,
    )
    console.print(
        escape(f"records: {out_dir / 'trials.json'}, {out_dir / 'trials.csv'}; config: {out_dir / 'best.yaml'}"),
        highlight=False,
        soft_wrap=True,
    )

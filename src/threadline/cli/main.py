"""The `threadline` command. Its contract (names, options, "API key on the last line") is relied on by other
tooling: keep it stable. Every command honours THREADLINE_DATABASE_URL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from threadline.config import Settings
from threadline.errors import ThreadlineError
from threadline.services import auth, retention
from threadline.storage.engine import create_engine, create_sessionmaker, upgrade

app = typer.Typer(help="Threadline: persistent LLM conversation threads.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
users_app = typer.Typer(help="Users.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
retention_app = typer.Typer(help="Retention: purge what the limits say is due.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(users_app, name="users")
app.add_typer(db_app, name="db")
app.add_typer(retention_app, name="retention")

T = TypeVar("T")

# Exit codes: 1 = bad input or conflict (an import: some thread failed), 2 = usage (typer), 3 = not found,
# 4 = unavailable.
_EXIT_CODES = {"NotFound": 3, "UpstreamError": 4, "DatabaseUnavailable": 4}


def _settings() -> Settings:
    try:
        return Settings()
    except Exception as exc:  # pydantic's ValidationError, a bad TOML file…
        typer.echo(f"error: invalid settings: {exc}", err=True)
        raise typer.Exit(2) from exc


def run_in_transaction(settings: Settings, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """The CLI's unit of work: migrate, open one session, commit on success; map errors to exit codes."""
    upgrade(settings.database_url)

    async def _run() -> T:
        engine = create_engine(settings.database_url)
        try:
            async with create_sessionmaker(engine)() as session:
                result = await work(session)
                await session.commit()
                return result
        finally:
            await engine.dispose()

    return _run_mapped(_run())


def _run_mapped(work: Coroutine[Any, Any, T]) -> T:
    """Run `work`; a Threadline error becomes its message on stderr and its exit code."""
    try:
        return asyncio.run(work)
    except ThreadlineError as exc:
        typer.echo(f"error: {exc.message} ({exc.code})", err=True)
        code = next((c for cls in type(exc).__mro__ for n, c in _EXIT_CODES.items() if cls.__name__ == n), 1)
        raise typer.Exit(code) from exc


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind (default from settings: 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default from settings: 8000).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
) -> None:
    """Apply migrations, then serve the API (and the web UI)."""
    import logging.config

    import uvicorn

    from threadline.observability.logs import logging_config

    settings = _settings()
    log_config = logging_config(settings.log_format, settings.log_level)
    logging.config.dictConfig(log_config)
    upgrade(settings.database_url)
    bind_host = host or settings.host
    bind_port = port or settings.port
    logging.getLogger("threadline.cli").info(
        "Threadline on http://%s:%s (database: %s)", bind_host, bind_port, _redacted(settings.database_url)
    )
    options: dict[str, Any] = {
        "host": bind_host,
        "port": bind_port,
        "log_config": log_config,
        "access_log": False,  # the app writes one line per request (observability/logs.py)
        # Past the app's own drain (shutdown_grace_seconds), the server waits this much more for connections.
        "timeout_graceful_shutdown": 5,
        # X-Forwarded-For / -Proto are believed only from the proxies named in forwarded_allow_ips (deploy/).
        "proxy_headers": True,
        "forwarded_allow_ips": settings.forwarded_allow_ips,
    }
    if workers == 1:
        from threadline.api.app import create_app

        uvicorn.run(create_app(settings, drain_on_sigterm=True, tune_gc=True), **options)
        return
    # Several workers: each builds its app through `worker_app`, and Prometheus' multiprocess mode adds up
    # their metrics in a directory of files that lives as long as this command.
    with tempfile.TemporaryDirectory(prefix="threadline-metrics-") as metrics_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        uvicorn.run("threadline.cli.main:worker_app", factory=True, workers=workers, **options)


@app.command()
def worker() -> None:
    """Run queued jobs (background responses, webhook deliveries…) without serving HTTP: more job capacity for a
    PostgreSQL deployment (every `serve` process runs jobs too). SIGTERM or Ctrl-C: drain, then stop."""
    import logging.config

    from threadline.observability.logs import logging_config

    settings = _settings()
    logging.config.dictConfig(logging_config(settings.log_format, settings.log_level))
    upgrade(settings.database_url)
    logging.getLogger("threadline.cli").info("Threadline worker (database: %s)", _redacted(settings.database_url))
    asyncio.run(_work(settings))


async def _work(settings: Settings) -> None:
    """The app's lifespan (job runner, crash recovery, retention sweeper) with no HTTP server in front of it."""
    import signal

    from threadline.api.app import create_app

    application = create_app(settings, tune_gc=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with application.router.lifespan_context(application):
        await stop.wait()
        # Running jobs get the grace to finish; what still runs then is given back to the queue.
        await application.state.observer.lifecycle.drain(settings.shutdown_grace_seconds)


def worker_app() -> Any:
    """The app of one `serve --workers N` worker process (a uvicorn factory)."""
    from threadline.api.app import create_app

    return create_app(Settings(), drain_on_sigterm=True, tune_gc=True)


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@app.command("chat")
def chat_command(
    thread: Annotated[
        str | None, typer.Argument(help="The thread to chat on (created if missing; default: a new one).")
    ] = None,
    org: Annotated[str, typer.Option("--org", help="Organization name or id (created if missing).")] = "local",
    email: Annotated[str, typer.Option("--email", help="Whom the chat's messages are from (created if missing).")] = (
        "you@localhost"
    ),
    model: Annotated[
        str | None, typer.Option("--model", help="A configured model (default: the default model).")
    ] = None,
    show_context: Annotated[
        bool, typer.Option("--show-context", help="After each answer, show what the model saw (also /context).")
    ] = False,
) -> None:
    """Chat on a thread in the terminal, with the embedded model or any configured one, streaming as it generates."""
    from threadline.cli.chat import ChatOptions, chat

    settings = _settings()
    upgrade(settings.database_url)
    options = ChatOptions(thread_id=thread, org=org, email=email, model=model, show_context=show_context)
    code = asyncio.run(chat(settings, options, sys.stdin, sys.stdout))
    raise typer.Exit(code)


@keys_app.command("create")
def keys_create(
    org: Annotated[str, typer.Option("--org", help="Organization name or id (created if missing).")],
    email: Annotated[str, typer.Option("--email", help="The key's user (created if missing).")],
    name: Annotated[str | None, typer.Option("--name", help="A label for the key.")] = None,
) -> None:
    """Create an API key; the key itself is printed as the last line of stdout (shown only once)."""
    settings = _settings()
    key, secret = run_in_transaction(settings, lambda s: auth.create_api_key(s, org, email, name))
    typer.echo(f"Created API key {key.id} for {email} in organization {key.organization_id}.")
    typer.echo(secret)


@keys_app.command("list")
def keys_list(org: Annotated[str, typer.Option("--org", help="Organization id.")]) -> None:
    """List an organization's API keys (never the secrets)."""
    settings = _settings()
    keys = run_in_transaction(settings, lambda s: auth.list_api_keys(s, org))
    for key in keys:
        state = "revoked" if key.revoked_at else "active"
        typer.echo(f"{key.id}\t{key.display_prefix}…\t{state}\t{key.name or ''}")


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_…).")],
    org: Annotated[str, typer.Option("--org", help="Organization id.")],
) -> None:
    """Revoke an API key: it stops working at once."""
    settings = _settings()
    run_in_transaction(settings, lambda s: auth.revoke_api_key(s, org, key_id))
    typer.echo(f"Revoked {key_id}.")


@users_app.command("create")
def users_create(
    org: Annotated[str, typer.Option("--org", help="Organization name or id (created if missing).")],
    email: Annotated[str, typer.Option("--email")],
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from stdin.")] = False,
) -> None:
    """Create or update a user with a password (for POST /v1/auth/token)."""
    if not password_stdin:
        typer.echo("error: pass --password-stdin and the password on standard input", err=True)
        raise typer.Exit(2)
    password = sys.stdin.readline().rstrip("\r\n")
    settings = _settings()
    user = run_in_transaction(settings, lambda s: auth.set_password(s, org, email, password))
    typer.echo(f"User {user.id} <{user.email}> can now log in.")


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Apply migrations up to REVISION (default: head)."""
    settings = _settings()
    upgrade(settings.database_url, revision)
    typer.echo(f"Database at {revision}.")


@retention_app.command("run")
def retention_run(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what is due; change nothing.")] = False,
) -> None:
    """Run one retention sweep now (the server also runs one every retention_interval_seconds)."""
    settings = _settings()
    upgrade(settings.database_url)

    async def _run() -> retention.RetentionReport:
        engine = create_engine(settings.database_url)
        try:
            return await retention.sweep(create_sessionmaker(engine), settings, dry_run=dry_run)
        finally:
            await engine.dispose()

    report = asyncio.run(_run())
    if not report.ran:
        typer.echo("error: another retention sweep is running; nothing done", err=True)
        raise typer.Exit(4)
    verb = "would purge" if dry_run else "purged"
    for category, count in report.counts.items():
        typer.echo(f"{category}\t{count}")
    typer.echo(f"{'Dry run: ' if dry_run else ''}{verb} {report.total} in all.")


@app.command("export")
def export_command(
    org: Annotated[str, typer.Option("--org", help="Organization name or id.")] = "local",
    thread: Annotated[str | None, typer.Option("--thread", help="Only this thread.")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here (default: standard output).")
    ] = None,
    include_hidden: Annotated[
        bool, typer.Option("--include-hidden", help="Hidden threads too (store=false, not visible in the UI).")
    ] = False,
) -> None:
    """Export an organization's threads as JSON Lines (docs/export-format.md), streamed; progress on stderr."""
    from rich.console import Console

    from threadline.cli import thread_data

    settings = _settings()
    upgrade(settings.database_url)
    console = Console(stderr=True)
    with output.open("wb") if output is not None else contextlib.nullcontext(thread_data.stdout_binary()) as out:
        work = thread_data.export(settings, org, out, thread_id=thread, include_hidden=include_hidden, console=console)
        count = _run_mapped(work)
    console.print(f"Exported {count} threads.")


@app.command("import")
def import_command(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="An export (.jsonl) or conversations.json.")
    ],
    import_format: Annotated[
        str | None,
        typer.Option("--format", help="chatgpt or threadline (default: chatgpt for .json, else threadline)."),
    ] = None,
    org: Annotated[str, typer.Option("--org", help="Organization name or id (created if missing).")] = "local",
    email: Annotated[str, typer.Option("--email", help="Whom the threads belong to (created if missing).")] = (
        "you@localhost"
    ),
    atomic: Annotated[bool, typer.Option("--atomic", help="Any error: import nothing.")] = False,
) -> None:
    """Import threads; a thread imported before from the same source is skipped. Exit 1 if any thread failed."""
    from rich.console import Console

    from threadline.cli import thread_data

    settings = _settings()
    upgrade(settings.database_url)
    console = Console(stderr=True)
    report = _run_mapped(
        thread_data.import_file(settings, org, email, file, import_format, atomic=atomic, console=console)
    )
    for error in report.errors:
        where = next((f"{k} {error[k]}" for k in ("line", "conversation") if k in error), "")
        typer.echo(f"error: {where}: {error['message']} ({error['code']})", err=True)
    for warning in report.warnings:
        typer.echo(f"warning: {warning['thread_id']}: {'; '.join(warning['messages'])}", err=True)
    typer.echo(f"created {report.created}, skipped {report.skipped}, failed {report.failed}")
    if report.failed:
        raise typer.Exit(1)


if __name__ == "__main__":
    app()

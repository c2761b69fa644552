"""The `tickhub` command (also `python -m tickhub`)."""

from __future__ import annotations

import gc
import signal
import sys
from pathlib import Path
from typing import Any

import attrs
import click
import httpx
import trio

from tickhub.config import Settings, SettingsError, data_path, load_settings
from tickhub.logs import configure_logging


def _settings(**overrides: Any) -> Settings:
    try:
        settings = load_settings(**overrides)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    configure_logging(settings.log_level, settings.log_pretty)
    return settings


def _tune_gc() -> None:
    """A long-running server: take everything loaded at start-up out of the collector's sight
    and collect less often. The hot paths allocate many short-lived containers (rows, events,
    frames); at CPython's default thresholds (700, 10, 10) a collection ran every 700 of them
    and the full ones walked every connection's objects — about 30 % of a gateway's CPU in
    `bench/fanout.py` (docs/performance.md §4)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _run(settings: Settings, on_serving: Any = None) -> None:
    from tickhub.process import run_process

    _tune_gc()
    try:
        trio.run(lambda: run_process(settings, on_serving=on_serving))
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    except Exception as exc:
        import structlog

        structlog.get_logger(actor="process").exception("process failed", error=str(exc))
        sys.exit(1)


def _with_embedded_postgres(settings: Settings) -> tuple[Settings, Any]:
    """With no DATABASE_URL, start (or reuse) the embedded PostgreSQL under the data dir."""
    if settings.database_url:
        return settings, None
    from tickhub.sql.embedded import EmbeddedPostgres, EmbeddedPostgresError

    embedded = EmbeddedPostgres(data_path(settings, "postgres") / "data")
    try:
        url = embedded.start()
    except EmbeddedPostgresError as exc:
        raise click.ClickException(str(exc)) from None
    return attrs.evolve(settings, database_url=url), embedded


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """tickhub: market-data ticks in over webhooks, candles in PostgreSQL, live updates over SSE."""


@main.command()
@click.option("--port", type=int, default=None, help="Port of the one server (default 8080).")
@click.option("--no-feeder", is_flag=True, help="Do not start the synthetic feeder.")
def up(port: int | None, no_feeder: bool) -> None:
    """Everything in one process on this machine: embedded Postgres, all roles, the feeder."""
    settings = _settings()
    port = port or settings.port or 8080
    keys = settings.api_keys or ("dev-key",)
    roles = ("all",) if no_feeder else ("all", "feeder")
    host = "127.0.0.1" if settings.host == "0.0.0.0" else settings.host
    feeder = attrs.evolve(
        settings.feeder,
        base_url=f"http://127.0.0.1:{port}{settings.api_prefix}",
        api_key=keys[0],
    )
    settings = attrs.evolve(
        settings, roles=roles, port=port, host=host, api_key=keys[0], feeder=feeder
    )
    settings, embedded = _with_embedded_postgres(settings)

    def serving(url: str) -> None:
        click.echo(f"tickhub is up: dashboard http://127.0.0.1:{port}/  (API key {keys[0]!r})")
        click.echo(f"  readiness http://127.0.0.1:{port}/ops/health/readiness  Ctrl-C stops")

    try:
        _run(settings, serving)
    finally:
        if embedded is not None:
            embedded.stop()


@main.command()
@click.option(
    "--role",
    "roles",
    default=None,
    help="ROLE[,ROLE]: api, gateway, consumer, feeder, all (default: TICKHUB_ROLE, else all).",
)
def run(roles: str | None) -> None:
    """Run the given roles (production entry point; binds HOST:PORT)."""
    overrides = {"roles": tuple(r.strip() for r in roles.split(","))} if roles else {}
    settings = _settings(**overrides)
    embedded = None
    if "all" in settings.roles:
        settings, embedded = _with_embedded_postgres(settings)
    try:
        _run(settings)
    finally:
        if embedded is not None:
            embedded.stop()


@main.group()
def migrate() -> None:
    """Apply, revert or list schema migrations (DATABASE_URL, else the embedded Postgres)."""


def _with_db(work: Any) -> Any:
    settings = _settings()
    settings, embedded = _with_embedded_postgres(settings)

    async def main_() -> Any:
        from tickhub.bridge import open_bridge
        from tickhub.sql.db import open_database

        async with open_bridge(), open_database(settings.database_url) as db:
            return await work(db)

    try:
        return trio.run(main_)
    finally:
        if embedded is not None:
            embedded.stop()


@migrate.command("up")
def migrate_up_cmd() -> None:
    """Apply every pending migration."""
    from tickhub.sql.migrate import migrate_up

    applied = _with_db(migrate_up)
    click.echo("applied: " + ", ".join(applied) if applied else "up to date")


@migrate.command("down")
@click.argument("steps", type=click.IntRange(min=1), default=1)
def migrate_down_cmd(steps: int) -> None:
    """Revert the latest STEPS migrations (default 1)."""
    from tickhub.sql.migrate import migrate_down

    reverted = _with_db(lambda db: migrate_down(db, steps))
    click.echo("reverted: " + ", ".join(reverted) if reverted else "nothing to revert")


@migrate.command("status")
def migrate_status_cmd() -> None:
    """List migrations and whether each is applied."""
    from tickhub.sql.migrate import migration_status

    for name, applied in _with_db(migration_status):
        click.echo(f"{'applied' if applied else 'pending':8} {name}")


def _readiness(url: str) -> tuple[int, dict]:
    try:
        response = httpx.get(url.rstrip("/") + "/ops/health/readiness", timeout=5)
        return response.status_code, response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise click.ClickException(f"cannot read readiness from {url}: {exc}") from None


@main.command()
@click.argument("url", default="http://127.0.0.1:8080")
def status(url: str) -> None:
    """The actor table of a running tickhub; exit 1 when it is not ready."""
    code, body = _readiness(url)
    click.echo(
        f"{url}: {body.get('status', code)}  checks: "
        + ", ".join(f"{k}={v}" for k, v in body.get("checks", {}).items())
    )
    rows = body.get("actors", [])
    click.echo(f"{'ACTOR':32} {'STATE':10} {'RESTARTS':>8} {'MAILBOX':>7}  LAST ERROR")
    for a in rows:
        click.echo(
            f"{a['name']:32} {a['state']:10} {a['restarts']:>8} {a['mailboxDepth']:>7}  "
            f"{a.get('lastError') or ''}"
        )
    states = body.get("actorStates", {})
    shown = f" ({len(rows)} shown)" if sum(states.values()) > len(rows) else ""
    click.echo(
        "actors: " + ", ".join(f"{n} {state}" for state, n in sorted(states.items())) + shown
    )
    sys.exit(0 if code == 200 else 1)


@main.command()
def healthcheck() -> None:
    """Exit 0 when the local process (PORT) is ready, 1 otherwise (container health check)."""
    from tickhub.process import port_of

    settings = load_settings()
    try:
        response = httpx.get(
            f"http://127.0.0.1:{port_of(settings)}/ops/health/readiness", timeout=4
        )
    except httpx.HTTPError:
        sys.exit(1)
    sys.exit(0 if response.status_code == 200 else 1)


async def _until_signal(work: Any) -> Any:
    """Run `work()` until it returns or SIGINT/SIGTERM cancels it (so it can flush)."""
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        result = await work()
        nursery.cancel_scope.cancel()
        return result


@main.command()
def feed() -> None:
    """Post synthetic ticks to ORCHESTRATOR_BASE_URL until Ctrl-C (`run --role feeder` adds
    the ops server)."""
    from tickhub.feeder.feeder import Feeder

    settings = _settings().feeder
    feeder = Feeder(settings)
    trio.run(_until_signal, feeder.run)


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--speed", default="max", show_default=True, help="A factor (1 = real time) or max.")
@click.option(
    "--from", "from_ts", default=None, help="Skip rows before this time (epoch s, ms or ISO-8601)."
)
@click.option("--on-error", type=click.Choice(["skip", "stop"]), default="skip", show_default=True)
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Default: FILE.checkpoint.json next to FILE.",
)
@click.option("--source", default=None, help="Source in /stats (default replay:<file stem>).")
@click.option("--batch-size", type=click.IntRange(1, 5000), default=500, show_default=True)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 64),
    default=4,  # replay.DEFAULT_CONCURRENCY, not imported before the command runs (a test)
    show_default=True,
    help="Batches in flight at once; the checkpoint only passes batches all acknowledged.",
)
def replay(
    file: Path,
    speed: str,
    from_ts: str | None,
    on_error: str,
    checkpoint: Path | None,
    source: str | None,
    batch_size: int,
    concurrency: int,
) -> None:
    """Post a CSV (symbol,ts,price,volume[,id]) to ORCHESTRATOR_BASE_URL in order; resumable."""
    from tickhub.feeder.client import RetryPolicy, open_webhook_client
    from tickhub.feeder.replay import ReplayError, parse_speed, parse_ts, replay_csv

    settings = _settings().feeder
    try:
        factor = parse_speed(speed)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--speed") from None
    try:
        start_ts = parse_ts(from_ts) if from_ts else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--from") from None

    async def work() -> Any:
        async with open_webhook_client(
            settings.base_url, settings.api_key, retry=RetryPolicy.from_settings(settings)
        ) as client:
            return await replay_csv(
                file,
                client,
                speed=factor,
                start_ts=start_ts,
                on_error=on_error,
                checkpoint_path=checkpoint,
                source=source,
                batch_size=batch_size,
                flush_ms=settings.flush_ms,
                concurrency=concurrency,
            )

    try:
        report = trio.run(_until_signal, work)
    except ReplayError as exc:
        raise click.ClickException(str(exc)) from None
    if report is None:
        click.echo("interrupted; run the same command again to resume", err=True)
        sys.exit(130)
    click.echo(
        f"{report.posted} rows posted ({report.accepted} new, {report.duplicates} already "
        f"stored), {report.bad_rows} bad, {report.out_of_order} out of order; "
        f"checkpoint {report.checkpoint} at line {report.last_line}"
    )
    if report.stopped_at is not None:
        click.echo(
            f"stopped at line {report.stopped_at.line}: {report.stopped_at.message}", err=True
        )
        if report.posted_past_stop:
            click.echo(
                f"{report.posted_past_stop} of the rows posted come after it (their batches"
                " were in flight): they are stored, and a resumed run posts them again as"
                " duplicates",
                err=True,
            )
        sys.exit(1)


def _with_redis(work: Any) -> Any:
    settings = _settings()
    if not settings.redis_url:
        raise click.ClickException("REDIS_URL: required (dead letters live in Redis)")

    async def main_() -> Any:
        from tickhub.bridge import open_bridge
        from tickhub.redis.link import RedisUnavailable, StreamNames, open_redis

        names = StreamNames(
            f"{settings.queue_prefix}:{settings.ticks_queue}", settings.pubsub_channel
        )
        try:
            async with open_bridge(), open_redis(settings.redis_url, names) as link:
                return await work(link)
        except RedisUnavailable as exc:
            raise click.ClickException(f"Redis: {exc}") from None

    return trio.run(main_)


@main.group("dead-letters")
def dead_letters() -> None:
    """Ticks-stream entries whose data the store kept refusing (split mode, REDIS_URL)."""


@dead_letters.command("list")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
def dead_letters_list(limit: int) -> None:
    """The oldest dead letters: id, original entry, refusals, ticks, error."""
    letters = _with_redis(lambda link: link.dead_letters(limit))
    click.echo(f"{'ID':24} {'ENTRY':24} {'REFUSALS':>8} {'TICKS':>6}  ERROR")
    for d in letters:
        ticks = "?" if d["items"] is None else d["items"]
        click.echo(f"{d['id']:24} {d['entry']:24} {d['refusals']:>8} {ticks:>6}  {d['error']}")
    click.echo(f"{len(letters)} dead letter(s)")


@dead_letters.command("replay")
@click.argument("ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Replay every dead letter.")
def dead_letters_replay(ids: tuple[str, ...], everything: bool) -> None:
    """Put dead letters back on the ticks stream (after fixing what refused them)."""
    if not ids and not everything:
        raise click.UsageError("name the dead letters to replay, or --all")

    async def work(link: Any) -> list[str]:
        chosen = list(ids) or [d["id"] for d in await link.dead_letters(100_000)]
        return await link.replay_dead(chosen)

    replayed = _with_redis(work)
    click.echo(f"{len(replayed)} dead letter(s) replayed as new entries")


@main.group()
def ui() -> None:
    """The dashboard's static files."""


@ui.command("build")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option(
    "--api-base-url",
    envvar="VITE_API_BASE_URL",
    default=None,
    help="REST base, e.g. https://api.example.com/api/v1 (env VITE_API_BASE_URL; "
    "default: the page's origin).",
)
@click.option(
    "--realtime-url",
    envvar="VITE_REALTIME_URL",
    default=None,
    help="SSE URL, e.g. https://gw.example.com/realtime/ticks (env VITE_REALTIME_URL; "
    "default: the page's origin).",
)
def ui_build(out_dir: Path, api_base_url: str | None, realtime_url: str | None) -> None:
    """Write the dashboard as a static site with the given API and stream URLs."""
    from tickhub.ui.build import UiBuildError, build_static

    try:
        written = build_static(out_dir, api_base_url, realtime_url)
    except UiBuildError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"dashboard written to {written}")


@main.command()
@click.option("--split", is_flag=True, required=True, help="Run each role as its own process.")
def dev(split: bool) -> None:
    """The split system on this machine: embedded Postgres and Redis; api (3030), two
    consumers, two gateways (4000, 4001) and the feeder as separate processes."""
    from tickhub.dev import EmbeddedRedis, EmbeddedRedisError, run_split

    settings = _settings()
    settings, embedded = _with_embedded_postgres(settings)
    redis = EmbeddedRedis(data_path(settings, "redis"))
    try:
        redis_url = settings.redis_url or redis.start()
        key = settings.api_keys[0] if settings.api_keys else "dev-key"
        sys.exit(run_split(settings.database_url, redis_url, key, click.echo))
    except EmbeddedRedisError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        redis.stop()
        if embedded is not None:
            embedded.stop()

"""The `loyalty` command: serve, follow, migrate, keys, projections, audit, bench."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from service.config import Settings, settings_from_env
from service.logs import configure_logging

log = logging.getLogger("service.cli")


def _running_embedded(settings: Settings) -> Settings | None:
    """The embedded servers of a `loyalty serve` already running on this data dir, if any."""
    import json
    import socket
    from urllib.parse import urlsplit

    path = settings.data_dir / "servers.json"
    try:
        urls = json.loads(path.read_text())
        for url in (urls["database_url"], urls["nats_url"]):
            parts = urlsplit(url)
            with socket.create_connection((parts.hostname, parts.port), timeout=0.5):
                pass
    except (OSError, ValueError, KeyError):
        return None
    return settings.with_overrides(
        database_url=urls["database_url"],
        nats_url=urls["nats_url"],
        master_key=_embedded_master_key(settings),
    )


def _embedded_master_key(settings: Settings) -> str | None:
    """In embedded mode the master key, unless given, lives in the data dir (created once)."""
    if settings.master_key:
        return settings.master_key
    from service.store.keys import load_or_create_master_key

    return load_or_create_master_key(settings.data_dir / "master.key")


@contextlib.contextmanager
def servers(settings: Settings, *, reuse_running: bool = False) -> Iterator[Settings]:
    """The settings with server URLs: the configured ones, those of a running embedded
    `serve` (when `reuse_running`), or embedded servers started now."""
    if settings.embedded and reuse_running:
        running = _running_embedded(settings)
        if running is not None:
            yield running
            return
    if not settings.embedded:
        if settings.database_url is None or settings.nats_url is None:
            raise SystemExit("set both LOYALTY_DATABASE_URL and LOYALTY_NATS_URL, or neither (embedded)")
        yield settings
        return
    from devtools.embedded import EmbeddedServers, mask_password

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with EmbeddedServers(settings.data_dir) as urls:
        # The URLs carry the generated passwords: shown masked, whole only in servers.json (0600).
        database_url, nats_url = mask_password(urls.database_url), mask_password(urls.nats_url)
        log.info("embedded servers started", extra={"database_url": database_url, "nats_url": nats_url})
        print(
            f"database: {database_url}\nnats:     {nats_url}\n"
            f"(with their passwords in {settings.data_dir / 'servers.json'})",
            flush=True,
        )
        yield settings.with_overrides(
            database_url=urls.database_url, nats_url=urls.nats_url, master_key=_embedded_master_key(settings)
        )


def _run_http(app: Any, settings: Settings, port: int) -> None:
    """uvicorn with the service's limits (service/http_server.py) until SIGTERM/SIGINT."""
    from service.http_server import HttpLimits, run_http

    run_http(app, host=settings.host, port=port, limits=HttpLimits.from_settings(settings))


def cmd_serve(settings: Settings) -> int:
    from service.app import create_app
    from service.followers import FollowerProcess
    from service.processes import serve_processes, this_request_process

    me = this_request_process(settings)
    if me is not None:
        return _serve_request_process(settings, me)
    if settings.processes > 1 and settings.followers == "inline":
        raise SystemExit("loyalty serve: LOYALTY_PROCESSES > 1 needs LOYALTY_FOLLOWERS=process or off")
    with servers(settings) as resolved:
        followers = FollowerProcess(resolved) if resolved.followers == "process" else None
        if followers is not None:
            followers.start()
        try:
            if resolved.processes > 1:
                serve_processes(resolved)
            else:
                _run_http(create_app(resolved), resolved, resolved.port)
        finally:
            # Last, so that the relay publishes what the drained requests committed.
            if followers is not None:
                followers.stop()
    return 0


def _serve_request_process(settings: Settings, me: Any) -> int:
    """One of the request processes of `serve` (ADR 25): the API on the inherited port, each
    member's requests routed to the process that owns it."""
    from service.app import create_app
    from service.followers import exit_with_parent
    from service.http_server import HttpLimits, run_http
    from service.routing import Router

    exit_with_parent()
    app = Router(create_app(settings), me, keepalive_seconds=settings.http_keepalive_seconds)
    run_http(
        app,
        host=settings.host,
        port=settings.port,
        limits=HttpLimits.from_settings(settings),
        listener=me.listener(),
        internal_path=me.own_socket_path,
    )
    return 0


def cmd_follow(settings: Settings) -> int:
    """The relay and the projections, leading, with /health and /metrics on the follower port."""
    from service.app import create_follower_app
    from service.followers import exit_with_parent

    exit_with_parent()
    with servers(settings, reuse_running=True) as resolved:
        _run_http(create_follower_app(resolved), resolved, resolved.follower_http_port)
    return 0


def cmd_migrate(settings: Settings) -> int:
    import asyncpg

    from service.store.migrate import migrate

    async def run(url: str) -> list[str]:
        conn = await asyncpg.connect(url)
        try:
            return await migrate(conn)
        finally:
            await conn.close()

    with servers(settings, reuse_running=True) as resolved:
        assert resolved.database_url is not None
        applied = asyncio.run(run(resolved.database_url))
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    return 0


def cmd_keys_create(settings: Settings, channel: str, scopes: list[str], name: str | None) -> int:
    import asyncpg

    from service.store.access import ADMIN_CHANNEL, SCOPES, Access, Channel, ChannelExists
    from service.store.migrate import migrate

    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise SystemExit(f"unknown scopes: {', '.join(unknown)} (known: {', '.join(SCOPES)})")

    async def run(url: str) -> str:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
            access = Access(pool)
            if channel == ADMIN_CHANNEL:
                with contextlib.suppress(ChannelExists):
                    await access.create_channel(Channel(ADMIN_CHANNEL, "Administration", "internal"))
            _, key = await access.create_key(channel=channel, scopes=scopes, name=name)
            return key
        finally:
            await pool.close()

    with servers(settings, reuse_running=True) as resolved:
        assert resolved.database_url is not None
        key = asyncio.run(run(resolved.database_url))
    print(f"created a key for channel {channel!r} with scopes {', '.join(sorted(set(scopes)))}")
    print(key)  # the last line is the key itself, for scripts
    return 0


def cmd_keys_rotate_master(settings: Settings) -> int:
    """`loyalty keys rotate-master`: re-wrap every member key and the service secrets from
    LOYALTY_MASTER_KEY to LOYALTY_NEW_MASTER_KEY (generated, and printed last, when unset)."""
    import asyncpg

    from service.store.keys import MasterKeyError, new_master_key, parse_master_key
    from service.store.master_key import rotate_master_key
    from service.store.migrate import migrate

    new_text = settings.new_master_key or new_master_key()

    async def run(url: str, current: bytes, new: bytes) -> None:
        conn = await asyncpg.connect(url)
        try:
            await migrate(conn)
            done = await rotate_master_key(conn, current, new)
            # Printed as soon as it is committed: from now on only the new key opens the keys.
            print(
                f"re-wrapped {done.rewrapped} member key(s) ({done.already} already under the new key,"
                f" {done.shredded} shredded); service secrets"
                f" {'re-wrapped' if done.secrets_rewrapped else 'already under the new key'}"
            )
            if not settings.new_master_key:
                print(new_text, flush=True)  # the last line is the generated key: keep it safe now
        finally:
            await conn.close()

    with servers(settings, reuse_running=True) as resolved:
        assert resolved.database_url is not None
        try:
            if not resolved.master_key:
                raise MasterKeyError("LOYALTY_MASTER_KEY (the current key) is required")
            current = parse_master_key(resolved.master_key)
            asyncio.run(
                run(resolved.database_url, current, parse_master_key(new_text, "LOYALTY_NEW_MASTER_KEY"))
            )
        except MasterKeyError as exc:
            raise SystemExit(f"loyalty keys rotate-master: {exc}") from None
    return 0


def cmd_projections(settings: Settings, action: str, name: str | None, workers: int | None = None) -> int:
    """`loyalty projections status` / `rebuild NAME` (safe while the service runs)."""
    import asyncpg

    from projections.runner import UnknownProjection, projection_status, rebuild
    from service.services import open_keyring
    from service.store.codec import EventCodec
    from service.store.event_store import EventStore
    from service.store.migrate import migrate

    async def run(resolved: Settings) -> int:
        assert resolved.database_url is not None
        pool = await asyncpg.create_pool(resolved.database_url, min_size=1, max_size=4)
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
            if action == "status":
                row = "{:<12} {:>10} {:>10} {:>8} {:>8}"
                print(row.format("projection", "position", "head", "lag", "lag_s"))
                for st in await projection_status(pool):
                    print(row.format(st.name, st.position, st.head, st.lag_events, f"{st.lag_seconds:.2f}"))
                return 0
            if not resolved.master_key:
                raise SystemExit("LOYALTY_MASTER_KEY is required to rebuild (projections decode events)")
            async with pool.acquire() as conn:
                keyring = await open_keyring(resolved, conn)
            store = EventStore(pool, EventCodec(keyring), keyring)
            try:
                report = await rebuild(
                    pool, store, name or "", database_url=resolved.database_url, workers=workers
                )
            except UnknownProjection:
                raise SystemExit(f"unknown projection {name!r}") from None
            print(
                f"rebuilt {report.name}: {report.events} events in {report.seconds:.2f} s"
                f" ({report.events_per_second:,.0f} events/s, {report.workers} process(es)),"
                f" now at position {report.position}"
            )
            return 0
        finally:
            await pool.close()

    with servers(settings, reuse_running=True) as resolved:
        return asyncio.run(run(resolved))


def cmd_replay(settings: Settings, until: str, schema: str | None) -> int:
    """`loyalty replay --until INSTANT|POSITION`: every projection as it was then, in a scratch
    schema (the live tables are not touched)."""
    from datetime import datetime

    import asyncpg

    from projections.replay import replay_until
    from service.services import open_keyring
    from service.store.codec import EventCodec
    from service.store.event_store import EventStore

    try:
        position, at = (int(until), None) if until.isdigit() else (None, datetime.fromisoformat(until))
    except ValueError:
        raise SystemExit("loyalty replay: --until is neither an ISO 8601 instant nor a position") from None
    if at is not None and at.tzinfo is None:
        raise SystemExit("loyalty replay: --until needs a time zone offset (e.g. 2026-11-29T12:00:00+00:00)")
    target = schema or (f"replay_p{position}" if position is not None else "replay")

    async def run(resolved: Settings) -> int:
        assert resolved.database_url is not None
        if not resolved.master_key:
            raise SystemExit("LOYALTY_MASTER_KEY is required to replay (projections decode events)")
        pool = await asyncpg.create_pool(resolved.database_url, min_size=1, max_size=2)
        try:
            async with pool.acquire() as conn:
                keyring = await open_keyring(resolved, conn)
            store = EventStore(pool, EventCodec(keyring), keyring)
            try:
                report = await replay_until(pool, store, schema=target, position=position, at=at)
            except ValueError as exc:
                raise SystemExit(f"loyalty replay: {exc}") from None
        finally:
            await pool.close()
        when = "" if report.at is None else f", decided at {report.at.isoformat()}"
        print(f"replayed {report.events} events up to position {report.position}{when}", end="")
        print(f" in {report.seconds:.2f} s")
        print(f"schema {report.schema}: {', '.join(report.tables)}")
        return 0

    with servers(settings, reuse_running=True) as resolved:
        return asyncio.run(run(resolved))


def cmd_audit(
    settings: Settings, action: str, after: int, output: Path | None, held_file: Path | None = None
) -> int:
    """`loyalty audit verify` (exit 1 at a break; `--checkpoints FILE`: checkpoints the auditor
    kept, as JSON Lines) / `export` (JSON Lines to stdout or a file)."""
    import asyncpg
    import msgspec

    from service.services import open_keyring
    from service.store.audit import ChainVerifier, Checkpoint, SignedCheckpoint, Verification, audit_lines

    held: list[Checkpoint] = []
    if held_file is not None:
        decode = msgspec.json.Decoder(SignedCheckpoint).decode
        try:
            held = [
                Checkpoint.from_wire(decode(line))
                for line in held_file.read_bytes().splitlines()
                if line.strip()
            ]
        except (OSError, ValueError, msgspec.DecodeError) as exc:
            raise SystemExit(f"loyalty: --checkpoints {held_file}: {exc}") from None

    async def verify(resolved: Settings) -> int:
        assert resolved.database_url is not None
        # Checkpoints are checked against the stored key the master key opens (none without it).
        public_key = None
        conn = await asyncpg.connect(resolved.database_url)
        try:
            if resolved.master_key:
                key = (await open_keyring(resolved, conn)).checkpoint_key
                public_key = key.public_key().public_bytes_raw()
            verifier = await ChainVerifier.resumed(conn, after, public_key=public_key, held=held)
            result = verifier if isinstance(verifier, Verification) else await verifier.run(conn)
        finally:
            await conn.close()
        broken = result.broken
        report = {
            "ok": result.ok,
            "after": result.after,
            "position": result.position,
            "global_hash": result.global_hash.hex(),
            "events_checked": result.events_checked,
            "checkpoints_checked": result.checkpoints_checked,
            "break": None if broken is None else {
                "position": broken.position,
                "stream": broken.stream,
                "version": broken.version,
                "reason": broken.reason,
                "detail": broken.detail,
            },
        }  # fmt: skip
        print(msgspec.json.encode(report).decode())
        return 0 if result.ok else 1

    async def export(resolved: Settings) -> int:
        assert resolved.database_url is not None
        pool = await asyncpg.create_pool(resolved.database_url, min_size=1, max_size=2)
        out = sys.stdout.buffer if output is None else output.open("wb")
        try:
            async for chunk in audit_lines(pool, after=after):
                out.write(chunk)
            out.flush()
        finally:
            if output is not None:
                out.close()
            await pool.close()
        return 0

    with servers(settings, reuse_running=True) as resolved:
        return asyncio.run(verify(resolved) if action == "verify" else export(resolved))


def parser(*, with_devtools: bool = True) -> argparse.ArgumentParser:
    """The command line; `with_devtools`: the arguments of `bench` and `demo` (developers' tools,
    imported only when one of them runs)."""
    p = argparse.ArgumentParser(prog="loyalty", description="The loyalty ledger service.")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the HTTP API (embedded servers unless configured)")
    serve.add_argument("--database-url")
    serve.add_argument("--nats-url")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--data-dir", type=Path)
    serve.add_argument(
        "--processes", type=int, help="request processes on the port, each serving its own members (ADR 25)"
    )

    follow = sub.add_parser(
        "follow", help="run the relay and the projections (what `serve` starts beside itself)"
    )
    follow.add_argument("--database-url")
    follow.add_argument("--nats-url")
    follow.add_argument("--data-dir", type=Path)

    migrate = sub.add_parser("migrate", help="apply pending database migrations")
    migrate.add_argument("--database-url")
    migrate.add_argument("--data-dir", type=Path)

    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create an API key; prints it on the last line")
    create.add_argument("--channel", default="admin")
    create.add_argument("--scopes", default="all", help="comma-separated scopes, or 'all'")
    create.add_argument("--name")
    create.add_argument("--database-url")
    create.add_argument("--data-dir", type=Path)
    rotate = keys_sub.add_parser(
        "rotate-master",
        help="re-wrap the stored keys from LOYALTY_MASTER_KEY to LOYALTY_NEW_MASTER_KEY"
        " (generated and printed on the last line when unset); see the operations guide",
    )
    rotate.add_argument("--database-url")
    rotate.add_argument("--data-dir", type=Path)

    projections = sub.add_parser("projections", help="read models: status, rebuild")
    projections_sub = projections.add_subparsers(dest="projections_command", required=True)
    status = projections_sub.add_parser("status", help="each projection's position and lag")
    rebuild = projections_sub.add_parser("rebuild", help="rebuild one from position 0 and swap it in")
    rebuild.add_argument("name", help="balances or members")
    rebuild.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes folding a long log (default: one per CPU; 1 leaves a core to a service"
        " on the same machine)",
    )
    for sub_parser in (status, rebuild):
        sub_parser.add_argument("--database-url")
        sub_parser.add_argument("--data-dir", type=Path)

    replay = sub.add_parser("replay", help="every projection as it was at an instant or position")
    replay.add_argument("--until", required=True, help="an instant with its offset, or a log position")
    replay.add_argument("--schema", help="the scratch schema to write (default: replay, or replay_pN)")
    replay.add_argument("--database-url")
    replay.add_argument("--data-dir", type=Path)

    audit = sub.add_parser("audit", help="the log's hash chains: verify, export (ADR 14)")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser(
        "verify", help="recompute the hash chains; print the first break (exit 1) or ok"
    )
    export = audit_sub.add_parser("export", help="the log with its hashes as JSON Lines")
    export.add_argument("--output", "-o", type=Path, help="a file to write (default: stdout)")
    verify.add_argument(
        "--checkpoints",
        type=Path,
        help="signed checkpoints you kept (JSON Lines, as published on NATS): each is checked too",
    )
    for sub_parser in (verify, export):
        sub_parser.add_argument(
            "--after", type=int, default=0, help="start after this position (a checkpoint's)"
        )
        sub_parser.add_argument("--database-url")
        sub_parser.add_argument("--data-dir", type=Path)

    demo = sub.add_parser("demo", help="seed a realistic program into a running service (for the console)")
    if with_devtools:
        from devtools.demo.cli import add_arguments as add_demo_arguments

        add_demo_arguments(demo)
    bench = sub.add_parser("bench", help="load-test a running service")
    if with_devtools:
        # Only then: the load generator (devtools) is no part of what `serve` imports.
        from devtools.bench.cli import add_arguments as add_bench_arguments

        add_bench_arguments(bench)
    return p


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    args = parser(with_devtools=given[:1] in (["bench"], ["demo"])).parse_args(given)
    try:
        settings = settings_from_env().with_overrides(
            database_url=getattr(args, "database_url", None),
            nats_url=getattr(args, "nats_url", None),
            host=getattr(args, "host", None),
            port=getattr(args, "port", None),
            data_dir=getattr(args, "data_dir", None),
            processes=getattr(args, "processes", None),
        )
    except ValueError as exc:  # a flag out of range: say which, no traceback
        raise SystemExit(f"loyalty: {exc}") from None
    configure_logging(settings.log_format)
    if args.command == "serve":
        return cmd_serve(settings)
    if args.command == "follow":
        return cmd_follow(settings)
    if args.command == "migrate":
        return cmd_migrate(settings)
    if args.command == "keys" and args.keys_command == "rotate-master":
        return cmd_keys_rotate_master(settings)
    if args.command == "keys":
        from service.store.access import SCOPES

        scopes = (
            list(SCOPES) if args.scopes == "all" else [s.strip() for s in args.scopes.split(",") if s.strip()]
        )
        return cmd_keys_create(settings, args.channel, scopes, args.name)
    if args.command == "projections":
        return cmd_projections(
            settings, args.projections_command, getattr(args, "name", None), getattr(args, "workers", None)
        )
    if args.command == "replay":
        return cmd_replay(settings, args.until, args.schema)
    if args.command == "audit":
        return cmd_audit(
            settings,
            args.audit_command,
            args.after,
            getattr(args, "output", None),
            getattr(args, "checkpoints", None),
        )
    if args.command == "bench":
        from devtools.bench.cli import run

        return run(args)
    if args.command == "demo":
        from devtools.demo.cli import run as run_demo

        return run_demo(args, host=settings.host, port=settings.port)
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""``oubli token create | list | revoke | rotate``: bearer tokens in the data database.

The commands work on the database directly (``--database-url`` / ``OUBLI_DATABASE_URL``,
else ``DATA_DIR/oubli.db``), like the servers that read it: a change is seen by every
replica from its next call, without a restart. They need no KMS (vault.access.tokens).
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from vault.app.config import ConfigError, ServerConfig
from vault.errors import InvalidArgument, OubliError

if TYPE_CHECKING:  # vault.access.tokens loads the database layer: only for these commands
    from vault.access.tokens import IssuedToken, TokenInfo, TokenRegistry

#: vault.access.tokens.DEFAULT_EXPIRY and DEFAULT_GRACE (a test keeps them equal).
DEFAULT_EXPIRES_IN = "90d"
DEFAULT_GRACE = "1h"

token_app = typer.Typer(
    help="Bearer tokens: hashes in the data database, checked by every replica on every call."
)
err = Console(stderr=True)

DataDir = Annotated[Path | None, typer.Option(help="embedded default's directory")]
DatabaseUrl = Annotated[str | None, typer.Option(help="SQLAlchemy URL of the data database")]
ExpiresIn = Annotated[
    str,
    typer.Option(help="lifetime: a number and s, m, h, d or w (at most 365d)"),
]


def _fail(prefix: str, error: Exception, code: int | None = None) -> typer.Exit:
    """Exit 2 for a usage error (a malformed or out-of-range argument), else 1."""
    # escape(): messages quote patterns such as [a-z0-9] that rich would eat as markup.
    err.print(f"[red]{prefix}[/red] {escape(str(error))}")
    if code is None:
        code = 2 if isinstance(error, InvalidArgument) else 1
    return typer.Exit(code)


def _config(data_dir: Path | None, database_url: str | None) -> ServerConfig:
    try:
        return ServerConfig.from_env(os.environ, data_dir=data_dir, database_url=database_url)
    except ConfigError as e:
        raise _fail("invalid configuration:", e, code=2) from None


def _registry(config: ServerConfig) -> TokenRegistry:
    from vault.app.server import token_registry

    try:
        return token_registry(config)
    except OubliError as e:
        raise _fail("cannot open the database:", e) from None


def _duration(text: str, option: str) -> timedelta:
    from vault.access.tokens import parse_duration

    try:
        return parse_duration(text)
    except ValueError as e:
        raise _fail(f"invalid {option}:", e, code=2) from None


def _check_caller(config: ServerConfig, caller: str) -> None:
    from vault.access.caller_policy import CallerPolicy, CallerPolicyError

    try:
        CallerPolicy.load(config.callers_path).rule(caller)
    except (CallerPolicyError, OubliError) as e:
        raise _fail("unknown caller:", e, code=2) from None


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds").replace("+00:00", "Z")


def _announce(issued: IssuedToken) -> None:
    """The token alone on stdout (for ``$(oubli token create …)``); the rest on stderr."""
    info = issued.info
    print(issued.token)
    err.print(f"{info.token_id} for {info.caller}, expires {_iso(info.expires_at)}")


@token_app.command("create")
def token_create(
    caller: str,
    expires_in: ExpiresIn = DEFAULT_EXPIRES_IN,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    tokens_file: Annotated[Path | None, typer.Option(hidden=True)] = None,
) -> None:
    """Make a bearer token for CALLER (a name from the caller policy). The token is
    printed once; only its hash is stored. Running servers accept it from their next
    call."""
    if tokens_file is not None:
        raise _fail(
            "--tokens-file is gone:",
            ValueError(
                "tokens live in the data database (--database-url / --data-dir); "
                "servers import an existing tokens file when they start"
            ),
            code=2,
        )
    config = _config(data_dir, database_url)
    _check_caller(config, caller)
    lifetime = _duration(expires_in, "--expires-in")
    registry = _registry(config)
    try:
        issued = registry.create(caller, lifetime)
    except OubliError as e:
        raise _fail("token create failed:", e) from None
    finally:
        registry.table.engine.dispose()
    _announce(issued)


def _row(info: TokenInfo, now: datetime) -> dict[str, str | None]:
    return {
        "token_id": info.token_id,
        "caller": info.caller,
        "created": _iso(info.created_at),
        "expires": _iso(info.expires_at),
        "status": info.status(now),
        "revoked": _iso(info.revoked_at),
        "replaced_by": info.replaced_by,
        "last_used": _iso(info.last_used_at),
        "source": info.source,
    }


@token_app.command("list")
def token_list(
    caller: Annotated[str | None, typer.Option(help="only this caller's tokens")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Every token: id, caller, created, expires, status (active, expired, revoked), what
    replaced it, when last used (to the nearest few minutes). Never a token or a hash."""
    registry = _registry(_config(data_dir, database_url))
    try:
        tokens = registry.tokens(caller)
        now = registry.clock()
    except OubliError as e:
        raise _fail("token list failed:", e) from None
    finally:
        registry.table.engine.dispose()
    rows = [_row(t, now) for t in tokens]
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return
    columns = ("token_id", "caller", "created", "expires", "status", "replaced_by", "last_used")
    table = [[c.upper().replace("_", " ") for c in columns]]
    table += [[row[c] or "-" for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    for line in table:
        cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        print("  ".join(cells).rstrip())


@token_app.command("revoke")
def token_revoke(
    token_id: str,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Revoke the token TOKEN_ID (see token list): every server refuses it from its next
    call, with UNAUTHENTICATED / TOKEN_REVOKED."""
    registry = _registry(_config(data_dir, database_url))
    try:
        info, revoked_now = registry.revoke(token_id)
    except OubliError as e:
        raise _fail("token revoke failed:", e) from None
    finally:
        registry.table.engine.dispose()
    when = "" if revoked_now else " already"
    print(f"{info.token_id} ({info.caller}) revoked{when} at {_iso(info.revoked_at)}")


@token_app.command("rotate")
def token_rotate(
    target: Annotated[str, typer.Argument(metavar="CALLER|TOKEN_ID")],
    grace: Annotated[
        str, typer.Option(help="how long the replaced tokens keep working (at most 30d)")
    ] = DEFAULT_GRACE,
    now: Annotated[
        bool, typer.Option("--now", help="revoke the replaced tokens at once, no grace")
    ] = False,
    expires_in: ExpiresIn = DEFAULT_EXPIRES_IN,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Make a new token for a caller and retire the old ones: every active token of
    CALLER, or the one token TOKEN_ID. The new token is printed once; the old ones keep
    working for --grace (default 1h), or stop at once with --now."""
    from vault.access.tokens import is_token_id

    config = _config(data_dir, database_url)
    overlap = None if now else _duration(grace, "--grace")
    lifetime = _duration(expires_in, "--expires-in")
    registry = _registry(config)
    try:
        caller = registry.get(target).caller if is_token_id(target) else target
        _check_caller(config, caller)
        rotation = registry.rotate(target, grace=overlap, expires_in=lifetime)
    except OubliError as e:
        raise _fail("token rotate failed:", e) from None
    finally:
        registry.table.engine.dispose()
    _announce(rotation.issued)
    for old in rotation.replaced:
        if old.revoked_at is not None:
            err.print(f"{old.token_id} revoked")
        else:
            err.print(f"{old.token_id} expires {_iso(old.expires_at)}")

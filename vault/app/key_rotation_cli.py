"""``oubli keys rotate`` and ``oubli keys ages``: key rotation through a running server's
KeyAdminService (the caller needs the ``key-admin`` policy).

``rotate`` runs passes until nothing is due: the first pass fixes the cut-off (the
cryptoperiod, or now with ``--all``), later passes reuse it, so a rotation interrupted
anywhere is resumed by running the command again. Prints ids-free counts only.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from oubli_client import KEY_KINDS, RotationPass
from oubli_client.errors import OubliClientError
from vault.app.receipt_cli import keys_app

err = Console(stderr=True)

Target = Annotated[
    str, typer.Option("--target", envvar="OUBLI_TARGET", help="host:port of the server")
]


def _fail(prefix: str, error: Exception | str) -> typer.Exit:
    err.print(f"[red]{prefix}[/red] {escape(str(error))}")
    return typer.Exit(1)


@keys_app.command("rotate")
def keys_rotate(
    kind: Annotated[str, typer.Argument(help="subjects | buckets | deks | index | signing")],
    target: Target = "127.0.0.1:50051",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="report what is due; change nothing")
    ] = False,
    force: Annotated[
        bool, typer.Option("--all", help="rotate every key, due or not (e.g. after a compromise)")
    ] = False,
    limit: Annotated[int, typer.Option(help="keys per pass (1 to 10 000)")] = 1000,
    rate: Annotated[float, typer.Option(help="keys per second at most (0: no limit)")] = 0.0,
) -> None:
    """Rotate every key of KIND that is due (older than its cryptoperiod), pass after
    pass, until none is left; exits non-zero if a key could not be rotated."""
    from vault.app.cli import _client_call

    if kind not in KEY_KINDS:
        raise _fail("keys rotate:", f"KIND must be one of {', '.join(KEY_KINDS)}")
    totals = {"rotated": 0, "trimmed": 0, "failed": 0, "records": 0, "kms_calls": 0}
    last: RotationPass | None = None
    try:
        with _client_call(target) as client:
            while True:
                last = client.rotate_keys(
                    kind,
                    dry_run=dry_run,
                    force=force,
                    limit=limit,
                    rotated_before=last.rotated_before if last else None,
                    rate=rate,
                )
                for name in totals:
                    totals[name] += getattr(last, name)
                err.print(
                    f"{kind}: {last.rotated} rotated, {last.trimmed} trimmed, "
                    f"{last.failed} failed, {last.remaining} remaining"
                )
                # Done, a dry run (one pass tells), or a pass that moved nothing on.
                if dry_run or last.remaining == 0 or last.rotated == 0:
                    break
    except OubliClientError as e:
        raise _fail("keys rotate failed:", e) from None
    summary = {
        "kind": kind,
        "dry_run": dry_run,
        **({"due": last.due, "trimmable": last.trimmed} if dry_run else totals),
        "remaining": last.remaining,
        "rotated_before": last.rotated_before.isoformat(),
    }
    print(json.dumps(summary, sort_keys=True))
    if totals["failed"] or (not dry_run and last.remaining):
        raise typer.Exit(1)


@keys_app.command("ages")
def keys_ages(target: Target = "127.0.0.1:50051") -> None:
    """The oldest key of each kind, its cryptoperiod, and whether a rotation is due."""
    from vault.app.cli import _client_call

    try:
        with _client_call(target) as client:
            ages = client.key_ages()
    except OubliClientError as e:
        raise _fail("keys ages failed:", e) from None
    for age in ages:
        print(
            json.dumps(
                {
                    "kind": age.kind,
                    "oldest": age.oldest.isoformat() if age.oldest else None,
                    "cryptoperiod_days": age.cryptoperiod.days,
                    "due": age.due,
                },
                sort_keys=True,
            )
        )

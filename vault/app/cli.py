"""The ``oubli`` command line: run the server, run a dev stack, act on subjects."""

from __future__ import annotations

import base64
import itertools
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from grpc import StatusCode
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from kms.base import KmsError
from kms.signatures import PublishedKey
from oubli_client import AuditCheckpoint, OubliClient, RetentionSummary
from oubli_client.errors import OubliClientError
from vault.access.caller_policy import CallerPolicyError
from vault.app import key_rotation_cli  # noqa: F401 - registers `keys rotate` and `keys ages`
from vault.app.config import ConfigError, ServerConfig, parse_host_port
from vault.app.logs import configure_logging
from vault.app.receipt_cli import keys_app, read_public_keys, receipt_app
from vault.app.token_cli import token_app
from vault.catalog import CatalogError
from vault.errors import OubliError
from vault.private_files import PRIVATE_FILE_MODE, OpenToOthers
from vault.usecases.receipts import receipt_text

app = typer.Typer(help="oubli: encrypted personal-data vault with crypto-shredding.")
subject_app = typer.Typer(help="Act on one subject through a running server.")
app.add_typer(subject_app, name="subject")
retention_app = typer.Typer(help="Retention: expire what is due by destroying keys.")
app.add_typer(retention_app, name="retention")
audit_app = typer.Typer(help="The tamper-evident audit trail.")
app.add_typer(audit_app, name="audit")
app.add_typer(token_app, name="token")
app.add_typer(keys_app, name="keys")
app.add_typer(receipt_app, name="receipt")
err = Console(stderr=True)

LedgerUrl = Annotated[
    str | None,
    typer.Option(help="the erasure ledger's database URL (default DATA_DIR/ledger/erasures.db)"),
]
Target = Annotated[
    str, typer.Option("--target", envvar="OUBLI_TARGET", help="host:port of the server")
]


def _fail(prefix: str, error: Exception, code: int = 1) -> typer.Exit:
    # escape(): messages quote patterns such as [a-z0-9] that rich would eat as markup.
    err.print(f"[red]{prefix}[/red] {escape(str(error))}")
    return typer.Exit(code)


def _run_server(config: ServerConfig, ready_file: Path | None) -> None:
    from vault.app.server import serve

    try:
        code = serve(config, ready_file)
    except (
        OubliError,
        CatalogError,
        CallerPolicyError,
        ConfigError,
        KmsError,
        OpenToOthers,
    ) as e:
        raise _fail("cannot start:", e) from None
    if code:
        raise typer.Exit(code)


def _config(config_file: Path | None = None, **overrides: object) -> ServerConfig:
    """Defaults, then ``config_file`` (if any), then the environment, then the flags."""
    from vault.app.config_file import load_config

    try:
        if config_file is not None:
            return load_config(config_file, os.environ, **overrides)
        return ServerConfig.from_env(os.environ, **overrides)
    except ConfigError as e:
        raise _fail("invalid configuration:", e, code=2) from None


ConfigFileOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        envvar="OUBLI_CONFIG",
        help="TOML file of settings (keys: ServerConfig's field names, a [vault] table); "
        "flags and the environment win over it (deploy/oubli.toml)",
    ),
]
CheckOption = Annotated[
    bool,
    typer.Option(
        "--check",
        help="validate the configuration, print it (secrets redacted, each value's "
        "source) and exit without serving",
    ),
]


def _print_effective(
    config: ServerConfig, config_file: Path | None, overrides: dict[str, object]
) -> None:
    from vault.app.config_file import effective_toml, read_config_file, setting_sources

    file = read_config_file(config_file) if config_file is not None else None
    sys.stdout.write(effective_toml(config, setting_sources(file, os.environ, overrides)))


@app.command()
def serve(
    listen: Annotated[str | None, typer.Option(help="host:port (default 127.0.0.1:50051)")] = None,
    metrics_listen: Annotated[
        str | None, typer.Option(help="host:port for Prometheus metrics over HTTP (default off)")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="embedded default's directory")] = None,
    database_url: Annotated[str | None, typer.Option(help="SQLAlchemy URL")] = None,
    kms: Annotated[str | None, typer.Option(help="local | vault")] = None,
    keystore: Annotated[Path | None, typer.Option(help="local keystore file")] = None,
    vault_addr: Annotated[str | None, typer.Option(help="Vault/OpenBao address")] = None,
    vault_token: Annotated[
        str | None, typer.Option(help="Vault token (prefer the VAULT_TOKEN variable)")
    ] = None,
    vault_mount: Annotated[str | None, typer.Option(help="Transit mount path")] = None,
    vault_auth: Annotated[
        str | None,
        typer.Option(help="Vault auth: token (default) | token-file | approle | kubernetes"),
    ] = None,
    vault_token_file: Annotated[
        Path | None, typer.Option(help="token file kept by a Vault/OpenBao Agent sink")
    ] = None,
    vault_role_id_file: Annotated[Path | None, typer.Option(help="AppRole role id file")] = None,
    vault_secret_id_file: Annotated[
        Path | None, typer.Option(help="AppRole secret id file (read at every login)")
    ] = None,
    vault_k8s_role: Annotated[str | None, typer.Option(help="Kubernetes auth role")] = None,
    vault_k8s_jwt_file: Annotated[
        Path | None, typer.Option(help="service-account JWT file (Kubernetes auth)")
    ] = None,
    vault_auth_mount: Annotated[
        str | None, typer.Option(help="auth method mount (default approle / kubernetes)")
    ] = None,
    vault_cacert: Annotated[
        Path | None, typer.Option(help="CA bundle verifying Vault's TLS certificate")
    ] = None,
    vault_client_cert: Annotated[
        Path | None, typer.Option(help="client certificate for Vault (mTLS)")
    ] = None,
    vault_client_key: Annotated[Path | None, typer.Option(help="its key (mTLS)")] = None,
    vault_namespace: Annotated[str | None, typer.Option(help="Vault namespace")] = None,
    catalog: Annotated[Path | None, typer.Option(help="policy catalog TOML")] = None,
    callers: Annotated[Path | None, typer.Option(help="caller policy TOML")] = None,
    tokens_file: Annotated[
        Path | None, typer.Option(help="pre-0007 token hashes, imported at start")
    ] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="server certificate (PEM)")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="server key (PEM)")] = None,
    tls_client_ca: Annotated[
        Path | None, typer.Option(help="require client certificates from this CA (mTLS)")
    ] = None,
    ready_file: Annotated[
        Path | None, typer.Option(help="write the bound port here once serving")
    ] = None,
    ledger_url: LedgerUrl = None,
    ledger_mirror_dir: Annotated[
        Path | None,
        typer.Option(help="also append each erasure ledger entry here as a JSON line"),
    ] = None,
    fence_interval: Annotated[
        float | None, typer.Option(help="seconds between restore fence passes (default 300)")
    ] = None,
    accept_ledger_behind: Annotated[
        bool,
        typer.Option(
            "--accept-ledger-behind",
            help="serve although the erasure ledger is behind the database (it was lost "
            "or restored): the database's position is reset to the ledger's head",
        ),
    ] = False,
    drain_seconds: Annotated[
        float | None,
        typer.Option(help="on SIGTERM, how long calls in flight may take to finish (default 5)"),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="server processes sharing the port (SO_REUSEPORT), each with its own DEK "
            "cache and database pool (default 1)"
        ),
    ] = None,
    config_file: ConfigFileOption = None,
    check: CheckOption = False,
) -> None:
    """Serve gRPC. Default: SQLite + local keystore under ./oubli-data; callers
    authenticate with bearer tokens (oubli token create CALLER) or client certificates.
    Calls are served once the restore fence has reconciled the erasure ledger, the KMS
    and the database. SIGTERM drains: health NOT_SERVING, new calls refused, calls in
    flight finish (up to --drain-seconds), exit 0. With --workers N, this process
    supervises N server processes: SIGTERM drains them all; if one dies, the others
    are stopped and the exit code is 1."""
    overrides: dict[str, object] = dict(
        ledger_url=ledger_url,
        ledger_mirror_dir=ledger_mirror_dir,
        fence_interval_seconds=fence_interval,
        accept_ledger_behind=accept_ledger_behind or None,
        callers_path=callers,
        tokens_path=tokens_file,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=tls_client_ca,
        listen=listen,
        metrics_listen=metrics_listen,
        data_dir=data_dir,
        database_url=database_url,
        kms=kms,
        keystore_path=keystore,
        vault_addr=vault_addr,
        vault_token=vault_token,
        vault_mount=vault_mount,
        vault_auth=vault_auth,
        vault_token_file=vault_token_file,
        vault_role_id_file=vault_role_id_file,
        vault_secret_id_file=vault_secret_id_file,
        vault_k8s_role=vault_k8s_role,
        vault_k8s_jwt_file=vault_k8s_jwt_file,
        vault_auth_mount=vault_auth_mount,
        vault_cacert=vault_cacert,
        vault_client_cert=vault_client_cert,
        vault_client_key=vault_client_key,
        vault_namespace=vault_namespace,
        catalog_path=catalog,
        drain_seconds=drain_seconds,
        workers=workers,
    )
    config = _config(config_file, **overrides)
    if check:
        _print_effective(config, config_file, overrides)
        return
    configure_logging()
    _run_server(config, ready_file)


#: What `oubli dev` decides itself (throwaway data, its own OpenBao): the keys of a
#: configuration file it ignores.
_DEV_OWNED = frozenset(
    [
        "data_dir",
        "database_url",
        "ledger_url",
        "ledger_mirror_dir",
        "keystore_path",
        "tokens_path",
        "kms",
        "vault.address",
        "vault.token",
    ]
)


@app.command()
def dev(
    listen: Annotated[str | None, typer.Option(help="host:port (default 127.0.0.1:50051)")] = None,
    metrics_listen: Annotated[
        str | None, typer.Option(help="host:port for Prometheus metrics over HTTP (default off)")
    ] = None,
    ready_file: Annotated[Path | None, typer.Option(help="write the bound port here")] = None,
    tokens_out: Annotated[
        Path | None, typer.Option(help="write one bearer token per default caller here")
    ] = None,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="take the other settings (tenant, callers, TLS, caches…) from this "
            "file; its data, KMS and Vault address/token keys are ignored",
        ),
    ] = None,
) -> None:
    """Start a throwaway OpenBao dev server and oubli wired to it (data is temporary).
    Makes one bearer token per caller of the caller policy, in files named
    CALLER.token. The environment is not read."""
    import dataclasses

    from vault.access.caller_policy import CallerPolicy
    from vault.app.config_file import apply_config_file, read_config_file
    from vault.app.openbao_process import OpenBaoDevServer, OpenBaoNotFound, find_bao
    from vault.app.server import token_registry
    from vault.private_files import make_private_dir, write_private

    file = None
    try:  # refused before OpenBao starts, like serve's invalid settings
        if metrics_listen:
            parse_host_port(metrics_listen, "--metrics-listen")
        if config_file is not None:
            file = read_config_file(config_file)
    except ConfigError as e:
        raise _fail("invalid configuration:", e, code=2) from None
    if file is not None:
        ignored = [key for key in file.keys if key in _DEV_OWNED]
        if ignored:
            err.print(f"oubli dev ignores these keys of {config_file}: {', '.join(ignored)}")
        file = dataclasses.replace(
            file,
            settings={k: v for k, v in file.settings.items() if k not in _DEV_OWNED},
            vault={k: v for k, v in file.vault.items() if f"vault.{k}" not in _DEV_OWNED},
        )
    try:  # before anything starts: say how to get OpenBao when it is missing
        find_bao()
    except OpenBaoNotFound as e:
        raise _fail("cannot start:", e) from None
    configure_logging()
    with (
        tempfile.TemporaryDirectory(prefix="oubli-dev-") as tmp,
        OpenBaoDevServer(Path(tmp) / "openbao.log") as bao,
    ):
        err.print(f"OpenBao dev server at {bao.address}; data in {tmp} (deleted on exit)")
        settings: dict[str, object] = dict(
            listen=listen,
            metrics_listen=metrics_listen,
            data_dir=Path(tmp),
            kms="vault",
            vault_addr=bao.address,
            vault_token=bao.token,
        )
        try:
            if file is not None:
                config = apply_config_file(file, {}, **settings)
            else:
                config = ServerConfig.from_env({}, **settings)
        except ConfigError as e:
            raise _fail("invalid configuration:", e, code=2) from None
        token_dir = make_private_dir(tokens_out or Path(tmp) / "tokens")
        registry = token_registry(config)
        for caller in CallerPolicy.load(config.callers_path).callers:
            write_private(token_dir / f"{caller}.token", registry.create(caller).token.encode())
        registry.table.engine.dispose()
        err.print(f"bearer tokens (OUBLI_TOKEN_FILE=...): {token_dir}/CALLER.token")
        _run_server(config, ready_file)


@app.command()
def reconcile(
    data_dir: Annotated[Path | None, typer.Option(help="embedded default's directory")] = None,
    database_url: Annotated[str | None, typer.Option(help="SQLAlchemy URL")] = None,
    kms: Annotated[str | None, typer.Option(help="local | vault")] = None,
    keystore: Annotated[Path | None, typer.Option(help="local keystore file")] = None,
    vault_addr: Annotated[str | None, typer.Option(help="Vault/OpenBao address")] = None,
    vault_mount: Annotated[str | None, typer.Option(help="Transit mount path")] = None,
    ledger_url: LedgerUrl = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="list what would be done; change nothing")
    ] = False,
    accept_ledger_behind: Annotated[
        bool,
        typer.Option(
            "--accept-ledger-behind", help="reconcile although the ledger is behind the database"
        ),
    ] = False,
) -> None:
    """After a restore: run the restore fence once (as `oubli serve` does before serving).
    Keys the erasure ledger names that the KMS holds again are destroyed, subjects it
    names that the database shows live are erased. Prints ids and positions only."""
    from vault.app.server import build_erasure, build_vault
    from vault.usecases.restore_fence import RestoreFence

    config = _config(
        data_dir=data_dir,
        database_url=database_url,
        kms=kms,
        keystore_path=keystore,
        vault_addr=vault_addr,
        vault_mount=vault_mount,
        ledger_url=ledger_url,
        accept_ledger_behind=accept_ledger_behind or None,
    )
    try:
        vault = build_vault(config)
        fence = RestoreFence(
            build_erasure(config, vault), accept_ledger_behind=config.accept_ledger_behind
        )
        plan = fence.plan() if dry_run else fence.run().plan
    except (OubliError, CatalogError, KmsError, OpenToOthers) as e:
        raise _fail("reconcile failed:", e) from None
    verb = "would" if dry_run else "did"
    print(
        f"ledger head {plan.ledger_head}, database position {plan.database_position} "
        f"({plan.ledger_entries} ledger entries)"
    )
    for key_id in plan.keys_to_destroy:
        print(f"{verb} destroy key {key_id}")
    for subject_id in plan.subjects_to_erase:
        print(f"{verb} erase subject {subject_id}")
    for bucket_id in plan.buckets_to_finish:
        print(f"{verb} finish bucket {bucket_id}")
    for bucket_id in plan.buckets_to_destroy:
        print(f"{verb} destroy bucket {bucket_id}")
    for key_id in plan.keys_to_record:
        print(f"{verb} record key {key_id} in the ledger")
    if dry_run:
        print(f"{plan.keys_checked} shredded keys checked (dry run: nothing changed)")
    else:
        print(f"{plan.keys_checked} shredded keys confirmed destroyed")


def _client_call(target: str) -> OubliClient:
    """A client authenticated by OUBLI_TOKEN (or the file OUBLI_TOKEN_FILE names); TLS
    when OUBLI_CA names the server's CA (mTLS with OUBLI_CLIENT_CERT/OUBLI_CLIENT_KEY)."""
    token = os.environ.get("OUBLI_TOKEN")
    if not token and os.environ.get("OUBLI_TOKEN_FILE"):
        token = Path(os.environ["OUBLI_TOKEN_FILE"]).read_text().strip()

    def read(name: str) -> bytes | None:
        return Path(os.environ[name]).read_bytes() if os.environ.get(name) else None

    return OubliClient(
        target,
        token=token,
        root_certificates=read("OUBLI_CA"),
        client_cert=read("OUBLI_CLIENT_CERT"),
        client_key=read("OUBLI_CLIENT_KEY"),
    )


@subject_app.command("create")
def subject_create(target: Target = "127.0.0.1:50051") -> None:
    """Create a subject; prints its id."""
    try:
        with _client_call(target) as client:
            print(client.create_subject().subject_id)
    except OubliClientError as e:
        raise _fail("error:", e) from None


@subject_app.command("export")
def subject_export(
    subject_id: str,
    target: Target = "127.0.0.1:50051",
    output: Annotated[Path | None, typer.Option("-o", help="file (default stdout)")] = None,
    purpose: Annotated[str, typer.Option(help="why the data is read")] = "portability",
) -> None:
    """Export a subject's data as JSON (portability). The server's document is streamed
    and written as it arrives (compact JSON, one record per line), so memory stays
    bounded whatever the subject's size; a file given with -o appears only complete."""
    try:
        with _client_call(target) as client:
            chunks = client.stream_export(subject_id, purpose)
            if output is None:
                _stream_to_stdout(chunks)
            else:
                _stream_to_file(chunks, output)
    except OubliClientError as e:
        raise _fail("error:", e) from None


def _stream_to_stdout(chunks: Iterator[bytes]) -> None:
    """Write the chunks as they come (a stream that fails midway leaves them written)."""
    sys.stdout.flush()
    out = sys.stdout.buffer
    for chunk in chunks:
        out.write(chunk)
        out.flush()


def _stream_to_file(chunks: Iterator[bytes], output: Path) -> None:
    """Write the chunks to ``output``: a regular file is replaced only once the whole
    document arrived (a failed export leaves it untouched), and is 0600 whatever the
    umask or the mode of the file it replaces, as it holds personal data; anything else
    (a FIFO, a device, a symlink such as /dev/stdout) is written as the chunks come.
    Nothing is opened before the first chunk, so an export the server refuses writes
    nothing."""
    first = next(chunks, None)
    if first is None:  # pragma: no cover - the server always sends the document's end
        raise OubliClientError(StatusCode.UNKNOWN, "the server sent no data")
    if output.is_symlink() or (output.exists() and not output.is_file()):
        # the mode only matters when a dangling symlink makes the file
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
        with os.fdopen(fd, "wb") as sink:
            for chunk in itertools.chain((first,), chunks):
                sink.write(chunk)
        return
    fd, partial = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".part")
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
        with os.fdopen(fd, "wb") as sink:
            for chunk in itertools.chain((first,), chunks):
                sink.write(chunk)
        os.replace(partial, output)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


@subject_app.command("shred")
def subject_shred(
    subject_id: str,
    target: Target = "127.0.0.1:50051",
    yes: Annotated[bool, typer.Option("--yes", help="do not ask for confirmation")] = False,
) -> None:
    """Erase a subject for good by destroying its key; prints the signed receipt as JSON
    (`oubli receipt verify` checks it as it is) and, on stderr, the residual risk."""
    if not yes and not typer.confirm(f"Destroy subject {subject_id} for good?"):
        raise typer.Exit(1)
    try:
        with _client_call(target) as client:
            receipt = client.shred_subject(subject_id)
    except OubliClientError as e:
        raise _fail("error:", e) from None
    sys.stdout.write(receipt_text(receipt))
    err.print(f"residual risk: {escape(receipt.residual_risk)}")


@retention_app.command("run")
def retention_run(
    target: Target = "127.0.0.1:50051",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="list what would be destroyed; destroy nothing")
    ] = False,
) -> None:
    """Carry out everything due (expired buckets, scheduled erasures). For a scheduler:
    exits non-zero on failure; safe to run again (idempotent)."""
    summary: RetentionSummary | None = None
    try:
        with (
            _client_call(target) as client,
            Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err,
                transient=True,
            ) as progress,
        ):
            task = progress.add_task("planning" if dry_run else "destroying", total=None)
            for item in client.run_retention(dry_run=dry_run):
                if isinstance(item, RetentionSummary):
                    summary = item
                    continue
                progress.update(task, completed=item.done, total=item.total)
                what = "subject" if item.kind == "erase_subject" else "bucket"
                if item.error:
                    print(f"FAILED {what} {item.target}: {item.error} (retried next run)")
                    continue
                verb = "would destroy" if dry_run else "destroyed"
                print(f"{verb} {what} {item.target} ({item.records} records)")
    except OubliClientError as e:
        raise _fail("retention run failed:", e) from None
    if summary is None:
        raise _fail("retention run failed:", RuntimeError("no summary from the server"))
    print(
        json.dumps(
            {
                "dry_run": summary.dry_run,
                "subjects_erased": summary.subjects_erased,
                "buckets_destroyed": summary.buckets_destroyed,
                "records_destroyed": summary.records_destroyed,
                "failures": summary.failures,
                "ran_at": _iso(summary.ran_at),
            }
        )
    )
    if summary.failures:
        raise typer.Exit(1)


@audit_app.command("verify")
def audit_verify(
    target: Target = "127.0.0.1:50051",
    full: Annotated[
        bool,
        typer.Option(
            "--full",
            help="walk the whole chain, not only what follows the newest checkpoint "
            "(the server allows one full walk per interval)",
        ),
    ] = False,
    checkpoints: Annotated[
        Path | None,
        typer.Option(
            "--checkpoints", help="also check the chain against this export-checkpoints file"
        ),
    ] = None,
) -> None:
    """Check the audit hash chain; exit 1 naming the first broken entry (2 when the
    verification itself could not run)."""
    exported = _read_checkpoints(checkpoints) if checkpoints is not None else []
    try:
        with _client_call(target) as client:
            result = client.verify_audit(full=full, exported=exported)
    except OubliClientError as e:
        raise _fail("audit verify failed:", e, code=2) from None
    print(
        json.dumps(
            {
                "ok": result.ok,
                "checked": result.checked,
                "first_broken_seq": result.first_broken_seq,
                "reason": result.reason,
                "checkpoint_seq": result.checkpoint_seq,
                "full": result.full,
                "exported_checked": result.exported_checked,
                "detail": result.detail,
            }
        )
    )
    if not result.ok:
        raise typer.Exit(1)


@audit_app.command("export-checkpoints")
def audit_export_checkpoints(
    target: Target = "127.0.0.1:50051",
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="file (default stdout), written 0600")
    ] = None,
    public_key: Annotated[
        Path | None,
        typer.Option(
            "--public-key",
            help="PEM file `oubli keys public` wrote: every version of the signing key, "
            "for checkpoints signed before a rotation",
        ),
    ] = None,
) -> None:
    """Copy every signed checkpoint out of the database, as JSON lines (seq, hash, at,
    key_id, key_version, signature and the public key it verifies with, base64). Keep
    the copy elsewhere: `audit verify --checkpoints FILE` then catches checkpoints
    deleted from the database to hide a rewritten or truncated chain. Each checkpoint's
    signature is checked first, with the server's latest public key or the published
    key of its version (`--public-key`); nothing is written if one does not verify."""
    published = read_public_keys(public_key) if public_key is not None else []
    lines: list[str] = []
    try:
        with _client_call(target) as client:
            after = 0
            while True:
                page = client.list_audit_checkpoints(after_seq=after, limit=_CHECKPOINT_PAGE)
                for checkpoint in page.checkpoints:
                    served = [
                        PublishedKey(raw, page.key_id, version)
                        for version, raw in page.public_keys.items()
                    ]
                    lines.append(
                        _checkpoint_line(checkpoint, page.public_key, [*published, *served])
                    )
                if len(page.checkpoints) < _CHECKPOINT_PAGE:
                    break
                after = page.checkpoints[-1].seq
    except OubliClientError as e:
        raise _fail("audit export-checkpoints failed:", e) from None
    except _ForgedCheckpoint as e:
        raise _fail("audit export-checkpoints failed:", e) from None
    text = "".join(line + "\n" for line in lines)
    if output is None:
        sys.stdout.write(text)
    else:
        _write_private(output, text)
    err.print(f"{len(lines)} checkpoints exported")


_CHECKPOINT_PAGE = 1000
#: What one VerifyAudit compares (the newest alone vouches for every entry before it).
_MAX_EXPORTED = 10_000


class _ForgedCheckpoint(Exception):
    pass


def _checkpoint_line(
    checkpoint: AuditCheckpoint, latest: bytes, published: Sequence[PublishedKey]
) -> str:
    """The export line of ``checkpoint`` once its signature verifies offline: with the
    published key of the version it names (or a published key of no stated version), or
    with the server's ``latest`` public key."""
    from kms.signatures import signature_key_version, verify_offline
    from vault.audit.entries import checkpoint_message

    message = checkpoint_message(checkpoint.seq, checkpoint.hash)
    version = signature_key_version(checkpoint.signature)
    candidates = [
        key.raw
        for key in published
        if key.version in (None, version) and key.key_id in (None, checkpoint.key_id)
    ]
    public_key = next(
        (k for k in [*candidates, latest] if verify_offline(k, message, checkpoint.signature)),
        None,
    )
    if public_key is None:
        if version is not None and not any(k.version == version for k in published):
            raise _ForgedCheckpoint(
                f"the checkpoint at seq {checkpoint.seq} (signing key version {version}) does "
                "not verify with the signing key's latest public key: if the key was rotated "
                "since, give the file `oubli keys public` wrote (--public-key); else the "
                "database's checkpoints were altered; nothing written"
            )
        raise _ForgedCheckpoint(
            f"the checkpoint at seq {checkpoint.seq} does not verify with the signing key's "
            "public key: the database's checkpoints were altered; nothing written"
        )
    return json.dumps(
        {
            "seq": checkpoint.seq,
            "hash": checkpoint.hash,
            "at": _iso(checkpoint.at),
            "key_id": checkpoint.key_id,
            "key_version": checkpoint.key_version,
            "signature": base64.b64encode(checkpoint.signature).decode("ascii"),
            "public_key": base64.b64encode(public_key).decode("ascii"),
        }
    )


def _read_checkpoints(path: Path) -> list[AuditCheckpoint]:
    """The newest checkpoints of an export-checkpoints file (exit 2 if unreadable)."""
    found: list[AuditCheckpoint] = []
    try:
        with path.open(encoding="utf-8") as source:
            for number, line in enumerate(source, 1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                    found.append(
                        AuditCheckpoint(
                            int(item["seq"]),
                            str(item["hash"]),
                            datetime.fromisoformat(item["at"]),
                            base64.b64decode(item["signature"], validate=True),
                            str(item["key_id"]),
                            int(item["key_version"]),
                        )
                    )
                except (ValueError, KeyError, TypeError) as e:
                    raise _fail(
                        "invalid checkpoints file:",
                        ValueError(f"line {number}: {type(e).__name__}"),
                        code=2,
                    ) from None
    except OSError as e:
        raise _fail("cannot read the checkpoints file:", e, code=2) from None
    found.sort(key=lambda c: c.seq)
    return found[-_MAX_EXPORTED:]


def _write_private(output: Path, text: str) -> None:
    """Write ``text`` to ``output`` as exports are written (0600, replaced whole)."""
    _stream_to_file(iter([text.encode("utf-8")]), output)


@audit_app.command("query")
def audit_query(
    target: Target = "127.0.0.1:50051",
    subject: Annotated[str, typer.Option(help="subject id")] = "",
    caller: Annotated[str, typer.Option(help="caller name")] = "",
    since: Annotated[datetime | None, typer.Option(help="from this UTC time (inclusive)")] = None,
    until: Annotated[datetime | None, typer.Option(help="until this UTC time (exclusive)")] = None,
    limit: Annotated[int, typer.Option(help="at most this many (<= 1000)")] = 0,
) -> None:
    """Audit entries (JSON lines) by subject, caller and time."""
    try:
        with _client_call(target) as client:
            entries = client.query_audit(
                subject_id=subject,
                caller=caller,
                since=_utc(since),
                until=_utc(until),
                limit=limit,
            )
    except OubliClientError as e:
        raise _fail("audit query failed:", e) from None
    for entry in entries:
        print(
            json.dumps(
                {
                    "seq": entry.seq,
                    "at": _iso(entry.at),
                    "caller": entry.caller,
                    "action": entry.action,
                    "subject_id": entry.subject_id,
                    "categories": list(entry.categories),
                    "fields": list(entry.fields),
                    "purpose": entry.purpose,
                    "outcome": entry.outcome,
                }
            )
        )


@subject_app.command("find")
def subject_find(
    purpose: Annotated[str, typer.Option(help="why the subject is looked up")],
    target: Target = "127.0.0.1:50051",
    email: Annotated[str, typer.Option(help="e-mail address")] = "",
    phone: Annotated[str, typer.Option(help="phone number")] = "",
) -> None:
    """Find subject ids by e-mail or phone (blind index)."""
    try:
        with _client_call(target) as client:
            found = client.find_subject(email=email, phone=phone, purpose=purpose)
    except OubliClientError as e:
        raise _fail("error:", e) from None
    for subject_id in found:
        print(subject_id)


def _utc(value: datetime | None) -> datetime | None:
    """A CLI time: naive means UTC; with an offset, converted to UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


if __name__ == "__main__":  # pragma: no cover
    app()

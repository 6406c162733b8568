"""KeyAdminService and `oubli keys rotate` / `keys ages`, against a real server: SQLite
with the local keystore, PostgreSQL with real OpenBao (where the old Transit versions
must end below min_decryption_version)."""

from __future__ import annotations

import json

import grpc
import pytest
from typer.testing import CliRunner

from oubli_client import OubliClient
from oubli_client.errors import InvalidArgument
from oubli_client.v1 import vault_pb2 as pb
from oubli_client.v1 import vault_pb2_grpc as pb_grpc
from tests.stack import TEST_TOKEN, Stack
from vault.app.cli import app

CONTACT = {"email": "rotate@example.org", "city": "Lyon"}
LOG = {"ip_address": "198.51.100.4", "event": "login"}


def populate(client: OubliClient, n: int = 3) -> list[tuple[str, str, str]]:
    made = []
    for _ in range(n):
        sid = client.create_subject().subject_id
        contact = client.create_record(sid, "contact", CONTACT).record_id
        log = client.create_record(sid, "technical_logs", LOG).record_id
        made.append((sid, contact, log))
    return made


def reads_back(stack: Stack, made: list[tuple[str, str, str]]) -> None:
    crypto = stack.server.vault.crypto
    for sid, contact, log in made:
        crypto.cache.evict(stack.storage.subject(sid).key_id)
        assert stack.client.get_record(sid, contact, "service").fields == CONTACT
        assert stack.client.get_record(sid, log, "security").fields == LOG


def test_a_subject_key_rotation_retires_every_old_version(stack: Stack) -> None:
    made = populate(stack.client)
    keys = {sid: stack.storage.subject(sid).key_id for sid, _, _ in made}

    plan = stack.client.rotate_keys("subjects", dry_run=True, force=True)
    assert (plan.dry_run, plan.due, plan.rotated, plan.kms_calls) == (True, 3, 0, 0)
    done = stack.client.rotate_keys("subjects", force=True)

    assert (done.rotated, done.failed, done.remaining) == (3, 0, 0)
    assert done.kms_calls >= 9  # rotate, rewrap, minimum: per key
    for key_id in keys.values():
        versions = stack.kms.key_versions(key_id)
        assert versions.latest == versions.min_decryption == 2  # v1 below the minimum
    reads_back(stack, made)
    # The cut-off the first pass returned: nothing left under it.
    again = stack.client.rotate_keys("subjects", rotated_before=done.rotated_before)
    assert (again.due, again.rotated) == (0, 0)


def test_bucket_keys_rotate_too(stack: Stack) -> None:
    made = populate(stack.client, 2)
    log = stack.storage.record(made[0][0], made[0][2])
    assert log is not None and log.bucket_id is not None
    bucket = stack.storage.bucket(log.bucket_id)
    assert bucket is not None
    done = stack.client.rotate_keys("buckets", force=True)
    assert done.rotated >= 1 and done.failed == 0 and done.remaining == 0
    versions = stack.kms.key_versions(bucket.key_id)
    assert versions.latest == versions.min_decryption == 2  # v1 below the minimum
    reads_back(stack, made)


def test_a_dek_rotation_moves_every_subject_to_a_new_key(stack: Stack) -> None:
    made = populate(stack.client, 2)
    old = {sid: stack.storage.subject(sid).key_id for sid, _, _ in made}
    done = stack.client.rotate_keys("deks", force=True)
    assert (done.rotated, done.failed, done.remaining) == (2, 0, 0)
    for sid, key_id in old.items():
        assert stack.storage.subject(sid).key_id != key_id
        assert not stack.kms.key_exists(key_id)
    reads_back(stack, made)


def test_key_ages_name_every_kind_and_its_cryptoperiod(stack: Stack) -> None:
    populate(stack.client, 1)
    ages = {age.kind: age for age in stack.client.key_ages()}
    assert set(ages) == {"subjects", "buckets", "deks", "index", "signing"}
    assert ages["subjects"].oldest is not None and not ages["subjects"].due
    assert ages["subjects"].cryptoperiod.days == 365
    assert ages["index"].cryptoperiod.days == 730


def test_bad_rotation_requests_are_refused_with_the_field_named(stack: Stack) -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        stack.client.rotate_keys("everything")
    with pytest.raises(InvalidArgument):
        stack.client.rotate_keys("subjects", limit=10_001)
    with pytest.raises(InvalidArgument):
        stack.client.rotate_keys("subjects", rate=-1)
    stub = pb_grpc.KeyAdminServiceStub(grpc.insecure_channel(stack.target))
    with pytest.raises(grpc.RpcError) as raised:
        stub.RotateKeys(
            pb.RotateKeysRequest(kind=pb.KEY_KIND_UNSPECIFIED),
            metadata=(("authorization", f"Bearer {TEST_TOKEN}"),),
            timeout=10,
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "kind" in (raised.value.details() or "")


def test_the_cli_rotates_until_nothing_is_due(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = populate(stack.client, 3)
    monkeypatch.setenv("OUBLI_TOKEN", TEST_TOKEN)
    runner = CliRunner()
    target = ["--target", stack.target]

    plan = runner.invoke(app, ["keys", "rotate", "subjects", *target, "--dry-run", "--all"])
    assert plan.exit_code == 0, plan.output
    assert json.loads(plan.stdout.splitlines()[-1])["due"] == 3

    result = runner.invoke(app, ["keys", "rotate", "subjects", *target, "--all", "--limit", "2"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.splitlines()[-1])
    assert (summary["rotated"], summary["failed"], summary["remaining"]) == (3, 0, 0)
    reads_back(stack, made)

    ages = runner.invoke(app, ["keys", "ages", *target])
    assert ages.exit_code == 0, ages.output
    kinds = [json.loads(line)["kind"] for line in ages.stdout.splitlines()]
    assert kinds == ["subjects", "buckets", "deks", "index", "signing"]

    bad = runner.invoke(app, ["keys", "rotate", "everything", *target])
    assert bad.exit_code == 1


def test_the_signing_key_rotates_and_old_checkpoints_still_verify(stack: Stack) -> None:
    populate(stack.client, 1)
    audit = stack.server.audit.audit
    before = audit.checkpoint()
    plan = stack.client.rotate_keys("signing", dry_run=True)
    assert (plan.due, plan.rotated) == (0, 0)  # made at start: within its cryptoperiod
    done = stack.client.rotate_keys("signing", force=True)
    assert (done.rotated, done.failed, done.remaining) == (1, 0, 0)
    populate(stack.client, 1)
    after = audit.checkpoint()
    assert before is not None and after is not None
    assert (before.key_version, after.key_version) == (1, 2)
    page = stack.client.list_audit_checkpoints()
    assert set(page.public_keys) == {1, 2}
    assert stack.client.verify_audit().ok
    assert stack.client.rotate_keys("signing").due == 0

"""``-m openbao`` and ``-m postgres`` select every test that talks to the real OpenBao or
PostgreSQL (tests/conftest.py marks them at collection): collected the way a developer
would run them, in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COLLECT = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]

#: One or more test files for each way a test reaches OpenBao or PostgreSQL.
FILES = [
    "tests/vault/app/test_cli.py",  # the stack fixture; `oubli dev` (marked by hand)
    "tests/vault/storage/test_storage.py",  # storage <- database_url
    "tests/kms/test_contract.py",  # any_kms
    "tests/kms/test_openbao_raft.py",  # starts OpenBaoRaftServer itself
    "tests/integration/test_faults.py",  # a fixture that starts OpenBao; PostgresCluster
    "tests/integration/test_two_processes.py",  # the openbao fixture; a backend parameter
    "tests/scenarios/test_seed_policies.py",  # the scenario fixture (vault_kms, by param)
    "tests/api/test_fuzz.py",  # a module-scoped fixture picking pg/OpenBao by param
]


def collected(marker: str) -> set[str]:
    result = subprocess.run(
        [*COLLECT, "-m", marker, *FILES],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return {line for line in result.stdout.splitlines() if "::" in line}


@pytest.fixture(scope="module")
def openbao_tests() -> set[str]:
    return collected("openbao")


@pytest.fixture(scope="module")
def postgres_tests() -> set[str]:
    return collected("postgres")


@pytest.fixture(scope="module")
def other_tests() -> set[str]:
    return collected("not openbao and not postgres")


def test_openbao_selects_every_way_of_reaching_openbao(openbao_tests: set[str]) -> None:
    for expected in [
        "tests/vault/app/test_cli.py::test_dev_starts_openbao_and_serves",
        "tests/vault/app/test_cli.py::test_subject_create_prints_an_id[postgresql+vault]",
        "tests/kms/test_contract.py::test_round_trip[vault]",
        "tests/kms/test_openbao_raft.py::test_transit_keys_survive_a_restart",
        "tests/integration/test_faults.py::"
        "test_a_hung_kms_is_answered_unavailable_at_once_and_leaves_workers_free",
        "tests/integration/test_faults.py::"
        "test_kms_killed_and_restarted_under_load_loses_no_acknowledged_write",
    ]:
        assert expected in openbao_tests
    # Both backends of the two-process test use OpenBao.
    assert sum(t.startswith("tests/integration/test_two_processes.py") for t in openbao_tests) == 2
    assert any(t.startswith("tests/scenarios/") and "[sqlite]" in t for t in openbao_tests)
    assert any(t.startswith("tests/api/test_fuzz.py") for t in openbao_tests)
    assert not any(
        "[sqlite+local]" in t or "[local]" in t or "[memory]" in t for t in openbao_tests
    )
    assert (
        "tests/integration/test_faults.py::"
        "test_postgresql_stopped_under_load_loses_no_acknowledged_write" not in openbao_tests
    )


def test_postgres_selects_every_way_of_reaching_postgresql(postgres_tests: set[str]) -> None:
    for expected in [
        "tests/vault/app/test_cli.py::test_subject_create_prints_an_id[postgresql+vault]",
        "tests/integration/test_faults.py::"
        "test_postgresql_stopped_under_load_loses_no_acknowledged_write",
    ]:
        assert expected in postgres_tests
    assert any(t.startswith("tests/vault/storage/test_storage.py") for t in postgres_tests)
    assert any(t.startswith("tests/scenarios/") for t in postgres_tests)
    assert any(t.startswith("tests/api/test_fuzz.py") for t in postgres_tests)
    assert not any("[sqlite" in t for t in postgres_tests)
    assert not any(t.startswith("tests/kms/test_contract.py") for t in postgres_tests)


def test_the_rest_reaches_neither(
    openbao_tests: set[str], postgres_tests: set[str], other_tests: set[str]
) -> None:
    assert (
        "tests/vault/app/test_cli.py::test_subject_create_prints_an_id[sqlite+local]" in other_tests
    )
    assert "tests/kms/test_contract.py::test_round_trip[memory]" in other_tests
    assert not other_tests & (openbao_tests | postgres_tests)
    assert not any("postgresql" in t or "[vault]" in t for t in other_tests)

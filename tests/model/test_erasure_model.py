"""The erasure protocol's Promela model (vault/usecases/erasure.pml), checked by spin.

Each test generates the verifier (``spin -a``), compiles it with gcc and runs the
exhaustive search. The model's two configurations must hold P1 and P2 in every state;
each broken variant must make spin report the violation of the property it breaks,
which shows the properties are not vacuous. spin comes from Debian's ``spin`` package
(``scripts/test`` installs it): without it these tests fail, they never skip.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

MODEL = Path(__file__).resolve().parents[2] / "vault" / "usecases" / "erasure.pml"

#: What a failed assertion's text holds, per property (spin prints the expression).
P1_TEXT = "acked[0]"  # P1: no acknowledged subject readable
P2_TEXT = "ackver[0]"  # P2: every acknowledged write kept


@dataclass(frozen=True)
class Search:
    """One run of pan: its report and what it found."""

    report: str
    errors: int
    states: int


def _run(command: list[str], cwd: Path) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout}{result.stderr}"
    return result.stdout


def _require(name: str) -> None:
    if shutil.which(name) is None:
        pytest.fail(
            f"{name} is not installed: the erasure model cannot be checked "
            "(Debian: apt-get install spin gcc; ./scripts/test installs them)"
        )


def search(tmp_path: Path, defines: list[str], optimize: str = "-O0") -> Search:
    """Generate, compile and run the verifier of the model with ``defines`` (``-O1``
    for the full searches: faster to compile than ``-O2``, and as fast here)."""
    _require("spin")
    _require("gcc")
    shutil.copy(MODEL, tmp_path / MODEL.name)
    _run(["spin", *defines, "-a", MODEL.name], tmp_path)
    _run(["gcc", optimize, "-DSAFETY", "-o", "pan", "pan.c"], tmp_path)
    started = time.monotonic()
    # Exit status 0 with or without errors; -w22: a hash table sized for these bounds.
    report = _run(["./pan", "-w22"], tmp_path)
    seconds = time.monotonic() - started
    errors = re.search(r"errors: (\d+)", report)
    states = re.search(r"(\d+) states, stored", report)
    assert errors and states, report
    assert "max search depth too small" not in report, report
    print(f"{' '.join(defines) or 'default'}: {states[1]} states, {seconds:.1f} s")
    return Search(report, int(errors[1]), int(states[1]))


def story(work: Path, defines: list[str]) -> str:
    """The counterexample the last search left in ``work``, replayed: the model's printf
    lines and the failed assertion."""
    replay = _run(["spin", *defines, "-t", MODEL.name], work)
    return "\n".join(line.strip() for line in replay.splitlines() if line.strip())


@pytest.mark.parametrize("defines", [[], ["-DRESTORE"]], ids=["crashes", "restores"])
def test_the_protocol_keeps_both_properties_in_every_state(
    tmp_path: Path, defines: list[str]
) -> None:
    found = search(tmp_path, defines, "-O1")
    assert "Full statespace search" in found.report
    assert found.errors == 0, story(tmp_path, defines)
    assert found.states > 10_000  # the search explored the model, not an empty one


#: Each variant, the property it must break, and why (the model's header says more).
BROKEN = {
    # The ledger inside the database: a full restore (database and KMS) resurrects.
    "no-ledger": (["-DRESTORE", "-DNO_LEDGER"], P1_TEXT),
    # The fence destroys the ledger's keys but leaves the subjects it names writable.
    "no-fence-erase": (["-DRESTORE", "-DNO_FENCE_ERASE"], P1_TEXT),
    # The ledger itself restored with the rest: nothing remembers the shred.
    "ledger-loss": (["-DRESTORE", "-DLEDGER_LOSS"], P1_TEXT),
    # A write's compare-and-set that ignores the subject's key loses it to a re-key.
    "no-key-check": (["-DNO_KEY_CHECK"], P2_TEXT),
    # A re-key that names its old key to the ledger before committing the switch.
    "retire-before-commit": (["-DRETIRE_BEFORE_COMMIT"], P2_TEXT),
}


@pytest.mark.parametrize("variant", list(BROKEN))
def test_spin_finds_the_violation_in_each_broken_variant(tmp_path: Path, variant: str) -> None:
    defines, broken = BROKEN[variant]
    found = search(tmp_path, defines)
    assert found.errors >= 1, f"spin found no violation in {variant}:\n{found.report}"
    told = story(tmp_path, defines)
    assert "assertion violated" in told, told
    failed = next(line for line in told.splitlines() if "text of failed assertion" in line)
    assert broken in failed, told


def test_without_the_ledger_a_full_restore_resurrects(tmp_path: Path) -> None:
    """The no-ledger counterexample is the issue's first finding: a shred acknowledged,
    then the database and the KMS both restored from copies taken before it, and the
    server serves the subject again."""
    defines = ["-DRESTORE", "-DNO_LEDGER"]
    assert search(tmp_path, defines).errors >= 1
    told = story(tmp_path, defines)
    lines = told.splitlines()
    failed = next(i for i, line in enumerate(lines) if "assertion violated" in line)
    restores = [i for i, line in enumerate(lines[:failed]) if line.startswith("restore: ")]
    assert {lines[i] for i in restores} >= {"restore: database", "restore: KMS"}, told
    assert any("receipt written: acknowledged" in line for line in lines[: restores[-1]]), told
    assert lines[failed - 1] == "start: serving", told

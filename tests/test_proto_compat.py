"""`buf breaking` (run by scripts/test against the proto before its last change) catches
a change that would break a client built for oubli.v1, and passes an additive one."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUF = ROOT / ".tools" / "node_modules" / ".bin" / "buf"


def _breaking(changed: Path) -> subprocess.CompletedProcess[str]:
    assert BUF.exists(), "buf is missing: scripts/test installs it (npm, .tools/)"
    return subprocess.run(
        [str(BUF), "breaking", str(changed), "--against", str(ROOT / "proto")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    target = tmp_path / "proto"
    shutil.copytree(ROOT / "proto", target)
    return target


def _edit(proto_dir: Path, old: str, new: str) -> None:
    path = proto_dir / "oubli" / "v1" / "vault.proto"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_a_removed_field_is_a_breaking_change(copy: Path) -> None:
    _edit(copy, "  string origin = 4;\n}", "}")
    result = _breaking(copy)
    assert result.returncode != 0
    assert "CreateRecordRequest" in result.stdout + result.stderr


def test_a_renumbered_field_is_a_breaking_change(copy: Path) -> None:
    _edit(copy, "  string origin = 4;\n}", "  string origin = 5;\n}")
    assert _breaking(copy).returncode != 0


def test_an_added_field_is_not(copy: Path) -> None:
    _edit(copy, "  string origin = 4;\n}", "  string origin = 4;\n  string note = 5;\n}")
    result = _breaking(copy)
    assert result.returncode == 0, result.stdout + result.stderr

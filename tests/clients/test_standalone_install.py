"""What a calling service gets: in a fresh virtual environment with only
clients/python installed (the oubli-client distribution, as built from the repository
path, not editable), the README's example creates, stores, reads, exports and shreds
against a running server, and none of the server's code or dependencies is there."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.stack import TEST_TOKEN

ROOT = Path(__file__).resolve().parents[2]

CHECKS = textwrap.dedent(
    """
    import importlib, importlib.metadata as md, json, re, sys
    from pathlib import Path

    import oubli_client
    from oubli_client import NotFound, OubliClient

    for name in ("vault", "kms", "sqlalchemy", "hvac", "alembic", "clients"):
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        sys.exit(f"{name} is importable beside the client")
    needs = sorted(re.match(r"[\\w.-]+", r)[0] for r in md.requires("oubli-client"))
    assert needs == sorted(sys.argv[3].split(",")), needs
    assert (Path(oubli_client.__file__).parent / "py.typed").exists()
    assert (Path(oubli_client.__file__).parent / "v1" / "vault_pb2.pyi").exists()

    export = Path(sys.argv[4])
    document = json.loads(export.read_bytes())
    records = document["categories"]["contact"]["records"]
    assert records[0]["fields"] == {"email": "ada@example.org"}, records
    with OubliClient(sys.argv[1], token=sys.argv[2]) as client:
        subject_id = document["subject"]["subject_id"]
        try:
            client.get_record(subject_id, records[0]["record_id"], purpose="service")
        except NotFound as e:
            assert e.reason == "SUBJECT_SHREDDED", e.reason
        else:
            sys.exit("the README's example did not shred the subject")
    print("standalone client ok")
    """
)


def _readme_example() -> str:
    """The Python block of the README's "Call it from your service"."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Call it from your service", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the section shows one Python example"
    return str(blocks[0])


def _client_requirements() -> list[str]:
    text = (ROOT / "clients" / "python" / "pyproject.toml").read_text()
    block = text.split("dependencies = [", 1)[1].split("]", 1)[0]
    names = [re.match(r"[\w.-]+", line.split('"')[1]) for line in block.splitlines() if '"' in line]
    return [m[0] for m in names if m]


@pytest.mark.timeout(900)
def test_the_client_alone_does_the_whole_flow(server_target: str, tmp_path: Path) -> None:
    assert sorted(_client_requirements()) == sorted(
        ["grpcio", "protobuf", "googleapis-common-protos", "grpcio-status"]
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(ROOT / "clients" / "python")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    work = tmp_path / "service"
    work.mkdir()
    (work / "example.py").write_text(_readme_example())
    (work / "checks.py").write_text(CHECKS)
    # Run from the service's own directory, with nothing of the repository on the path.
    env = {
        "PATH": os.environ["PATH"],
        "OUBLI_TARGET": server_target,
        "OUBLI_TOKEN": TEST_TOKEN,
    }
    example = subprocess.run(
        [str(python), "example.py"], cwd=work, env=env, capture_output=True, text=True, timeout=120
    )
    assert example.returncode == 0, example.stderr
    exports = list(work.glob("*.json"))
    assert len(exports) == 1, "the example writes one export file"
    checks = subprocess.run(
        [
            str(python),
            "checks.py",
            server_target,
            TEST_TOKEN,
            ",".join(_client_requirements()),
            str(exports[0]),
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checks.returncode == 0, checks.stderr + checks.stdout
    assert checks.stdout.strip() == "standalone client ok"

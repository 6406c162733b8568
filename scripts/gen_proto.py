"""Generate the Python gRPC stubs in clients/python/oubli_client/v1/ from proto/.

Usage: python scripts/gen_proto.py [--check]

--check regenerates into a temporary directory and exits 1 if the committed stubs
differ (CI runs it so the stubs never drift from proto/). The versions of
grpcio-tools and mypy-protobuf are pinned in pyproject.toml so output is stable.
"""

from __future__ import annotations

import filecmp
import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT = ROOT / "clients" / "python" / "oubli_client" / "v1"
PROTOS = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))

HEADER = '"""Generated from proto/ by scripts/gen_proto.py. Do not edit."""\n'


def generate(dest: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        wkt = Path(protoc.__file__).parent / "_proto"
        # The mypy-protobuf plugins sit beside this interpreter, which need not be on PATH.
        bin_dir = Path(sys.executable).parent
        args = [
            "protoc",
            f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
            f"-I{PROTO_ROOT}",
            f"-I{wkt}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--mypy_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            *PROTOS,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        generated = Path(tmp) / "oubli" / "v1"
        dest.mkdir(parents=True, exist_ok=True)
        for path in sorted(generated.iterdir()):
            text = path.read_text()
            # protoc writes absolute imports ("from oubli.v1 import x_pb2"); the stubs
            # live inside the clients package, so make them relative.
            text = re.sub(r"^from oubli\.v1 import", "from . import", text, flags=re.M)
            text = re.sub(r"^import oubli\.v1\.(\w+)", r"from . import \1", text, flags=re.M)
            text = text.replace("oubli.v1.vault_pb2.", "vault_pb2.")
            (dest / path.name).write_text(text)
        (dest / "__init__.py").write_text(HEADER)


def main() -> int:
    if "--check" not in sys.argv[1:]:
        if OUT.exists():
            shutil.rmtree(OUT)
        generate(OUT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "v1"
        generate(fresh)
        cmp = filecmp.dircmp(fresh, OUT, ignore=["__pycache__"])
        drift = cmp.diff_files + cmp.left_only + cmp.right_only
        if drift:
            print(f"generated stubs drifted from proto/: {sorted(drift)}", file=sys.stderr)
            print("run: python scripts/gen_proto.py", file=sys.stderr)
            return 1
    print("generated stubs match proto/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

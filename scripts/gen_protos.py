"""Regenerate the committed gRPC code from anyanomaly/v1/*.proto.

Usage: python scripts/gen_protos.py [--out DIR]

Writes *_pb2.py, *_pb2_grpc.py and their .pyi type stubs next to each .proto (or under DIR,
which tests use to check that the committed code is current).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT  # the protos are anyanomaly/v1/*.proto, imported by that path


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / "anyanomaly" / "v1").glob("*.proto"))


def generate(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = str(resources.files("grpc_tools") / "_proto")
    bin_dir = Path(sys.executable).parent
    plugins = {name: shutil.which(name, path=str(bin_dir)) or shutil.which(name)
               for name in ("protoc-gen-mypy", "protoc-gen-mypy_grpc")}
    missing = [name for name, path in plugins.items() if path is None]
    if missing:
        raise SystemExit(f"{', '.join(missing)} not found: install the dev extra (mypy-protobuf)")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        *(f"--plugin={name}={path}" for name, path in plugins.items()),
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",  # typed stubs: *_pb2.pyi
        f"--mypy_grpc_out={out_dir}",  # and *_pb2_grpc.pyi
        *(str(p.relative_to(PROTO_ROOT)) for p in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=PROTO_ROOT, help="output root (default: the repository root)")
    args = parser.parse_args()
    generate(args.out)
    print(f"generated code for {len(proto_files())} proto files under {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""Generate the Python gRPC stubs for proto/ into visrec/platform/_pb (git-ignored).

Both services and the local tooling import them from the shared package: protoc's virtual-path
mapping (-Ivisrec/platform/_pb=proto) makes the generated modules import each other as
``visrec.platform._pb.visrec.v1...``, so no import rewriting is needed. Skips the work when the
stubs are newer than every .proto file.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_PKG = "visrec/platform/_pb"


def main() -> int:
    protos = sorted(PROTO_DIR.rglob("*.proto"))
    outputs = [
        ROOT / OUT_PKG / p.relative_to(PROTO_DIR).with_name(p.stem + suffix)
        for p in protos
        for suffix in ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")
    ]
    # This script's own changes (e.g. the import path) also make the stubs stale.
    newest_src = max(p.stat().st_mtime for p in [*protos, Path(__file__)])
    if all(o.exists() and o.stat().st_mtime >= newest_src for o in outputs):
        return 0

    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{OUT_PKG}={PROTO_DIR.relative_to(ROOT)}",
        f"-I{well_known}",
        "--python_out=.",
        "--pyi_out=.",
        "--grpc_python_out=.",
        *(f"{OUT_PKG}/{p.relative_to(PROTO_DIR)}" for p in protos),
    ]
    import os

    os.chdir(ROOT)
    if protoc.main(args) != 0:
        print("gen_protos: protoc failed", file=sys.stderr)
        return 1
    # Regular packages (not namespace packages) so setuptools and mypy find them.
    for d in {o.parent for o in outputs} | {ROOT / OUT_PKG}:
        cur = d
        while cur != ROOT / "visrec" / "platform":
            (cur / "__init__.py").touch()
            cur = cur.parent
    print(f"gen_protos: wrote stubs for {len(protos)} proto file(s) into {OUT_PKG}/",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

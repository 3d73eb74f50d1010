"""Point the overlays at released images: set the registry and tag of visrec-gateway,
visrec-triton and visrec-export in the kustomizations of k8s/overlays/gpu and cpu (what CD runs
before deploying). Each overlay keeps its repository names (cpu's visrec-triton is the
visrec-triton-cpu image).

    python scripts/bump_images.py --registry ghcr.io/OWNER --tag 1.2.3
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

OVERLAYS = Path(__file__).resolve().parent.parent / "k8s" / "overlays"
KUSTOMIZATIONS = (OVERLAYS / "gpu" / "kustomization.yaml", OVERLAYS / "cpu" / "kustomization.yaml")
IMAGES = ("visrec-gateway", "visrec-triton", "visrec-export")
TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def bump(text: str, registry: str, tag: str) -> str:
    """The kustomization with the images' name and tag replaced (comments kept)."""
    data = yaml.safe_load(text)
    names = {img["name"] for img in data.get("images", [])}
    missing = set(IMAGES) - names
    if missing:
        raise ValueError(f"kustomization has no image entry for {sorted(missing)}")
    out, current = [], None
    for line in text.splitlines(keepends=True):
        m = re.match(r"^(\s*)- name: (\S+)\s*$", line)
        if m:
            current = m.group(2) if m.group(2) in IMAGES else None
        elif current and re.match(r"^\s+newName:", line):
            repository = line.split("newName:", 1)[1].strip().rsplit("/", 1)[-1]
            line = re.sub(r"newName: .*", f"newName: {registry}/{repository}", line)
        elif current and re.match(r"^\s+newTag:", line):
            line = re.sub(r"newTag: .*", f"newTag: {tag}", line)
        out.append(line)
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bump_images", description=__doc__.split("\n\n")[0])
    p.add_argument("--registry", required=True, help="e.g. ghcr.io/my-org")
    p.add_argument("--tag", required=True, help="image tag, e.g. 1.2.3")
    p.add_argument("--file", type=Path, action="append", default=None,
                   help="kustomization to edit (repeatable; default: the gpu and cpu overlays)")
    args = p.parse_args(argv)
    if not TAG.match(args.tag):
        p.error(f"not a valid image tag: {args.tag!r}")
    for path in args.file or KUSTOMIZATIONS:
        path.write_text(bump(path.read_text(), args.registry.rstrip("/"), args.tag))
        print(f"{path}: images -> {args.registry}/visrec-*:{args.tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Wait until the model repository holds what Triton must load (stdlib only: runs in the Triton
images, e.g. as a Kubernetes init container): for each model the replica loads (ready.models:
image_embedding, and on a GPU the image_encoder it calls), a config.pbtxt and the folder of every
version it lists to serve. Exits 1 after
--timeout seconds, naming what is missing, so a first deployment waits for the export job
instead of starting Triton on an empty repository (which in explicit mode would serve nothing
until restarted)."""

import argparse
import sys
import time
from pathlib import Path

from ready import listed, models


def missing(repository: Path) -> list[str]:
    out = []
    for model in models(repository):
        folder = repository / model
        if not (folder / "config.pbtxt").is_file():
            out.append(f"{model}/config.pbtxt")
            continue
        versions = listed(repository, model)
        out += [f"{model}/{v}" for v in versions if not (folder / v).is_dir()]
        if not versions:
            out.append(f"{model}: no version listed")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("repository", type=Path, nargs="?", default=Path("/models"))
    p.add_argument("--timeout", type=float, default=3600, help="seconds")
    args = p.parse_args()
    deadline = time.monotonic() + args.timeout
    while todo := missing(args.repository):
        if time.monotonic() > deadline:
            print(f"{args.repository} still lacks {', '.join(todo)} after {args.timeout:.0f}s "
                  "(has the export job run?)", file=sys.stderr)
            return 1
        time.sleep(5)
    print(f"{args.repository} holds every model")
    return 0


if __name__ == "__main__":
    sys.exit(main())

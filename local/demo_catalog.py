"""visrec-catalog: build the demo catalog from the emoji-datasource npm packages.

`npm pack` fetches each vendor's tarball once into a cache outside git; the 64x64 PNGs and
emoji.json are extracted and written as a JSONL catalog (id, image, name, category, subcategory,
vendor, ...). The same emoji drawn by two vendors gives a labelled cross-vendor benchmark.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "data" / "catalog"
DEFAULT_CACHE = ROOT / "data" / "cache" / "npm"
DEFAULT_VENDORS = ("google", "twitter")
PACKAGE_VERSION = "16.0.0"
CATALOG_FILE = "emoji.jsonl"
# Release dates of Emoji versions (first of the month), so items carry a created_at for the
# recency policy. Versions below 1.0 are the emoji that entered Unicode 6 and 7.
EMOJI_RELEASES = {
    0.6: "2010-10-01", 0.7: "2014-06-01", 1.0: "2015-06-01", 2.0: "2015-11-01",
    3.0: "2016-06-01", 4.0: "2016-11-01", 5.0: "2017-06-01", 11.0: "2018-06-01",
    12.0: "2019-03-01", 12.1: "2019-10-01", 13.0: "2020-03-01", 13.1: "2020-09-01",
    14.0: "2021-09-01", 15.0: "2022-09-01", 15.1: "2023-09-01", 16.0: "2024-09-01",
}


class CatalogError(RuntimeError):
    pass


def fetch_tarball(vendor: str, version: str, cache: Path) -> Path:
    """The cached `npm pack` tarball of emoji-datasource-<vendor>@<version>."""
    name = f"emoji-datasource-{vendor}"
    tarball = cache / f"{name}-{version}.tgz"
    if tarball.exists():
        return tarball
    if shutil.which("npm") is None:
        raise CatalogError("npm is not installed (scripts/setup installs it)")
    cache.mkdir(parents=True, exist_ok=True)
    print(f"fetching {name}@{version} with npm pack ...", file=sys.stderr)
    proc = subprocess.run(
        ["npm", "pack", f"{name}@{version}", "--silent", "--pack-destination", str(cache)],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0 or not tarball.exists():
        raise CatalogError(f"npm pack {name}@{version} failed: {proc.stderr.strip()[-500:]}")
    return tarball


def _added_in(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def extract_vendor(tarball: Path, vendor: str, out: Path) -> list[dict[str, Any]]:
    """Extract vendor PNGs into out/images/<vendor>/ and return its catalog rows."""
    image_dir = out / "images" / vendor
    image_dir.mkdir(parents=True, exist_ok=True)
    prefix = f"package/img/{vendor}/64/"
    with tarfile.open(tarball) as tar:
        meta_member = tar.extractfile("package/emoji.json")
        if meta_member is None:
            raise CatalogError(f"{tarball} has no package/emoji.json")
        entries = json.load(meta_member)
        wanted = {prefix + e["image"]: e for e in entries if e.get(f"has_img_{vendor}")}
        for member in tar:
            if member.name in wanted and member.isfile():
                target = image_dir / Path(member.name).name
                if not target.exists() or target.stat().st_size != member.size:
                    src = tar.extractfile(member)
                    if src is not None:
                        target.write_bytes(src.read())
    rows = []
    for path, e in wanted.items():
        file = image_dir / Path(path).name
        if not file.exists():
            continue
        name = (e.get("name") or e.get("short_name") or e["unified"]).strip()
        row: dict[str, Any] = {
            "id": f"{vendor}:{e['unified'].lower()}",
            "image": str(file.relative_to(out)),
            "name": name.title() if name.isupper() else name,
            "category": e.get("category") or "",
            "subcategory": e.get("subcategory") or "",
            "vendor": vendor,
            "short_name": e.get("short_name") or "",
            "unified": e["unified"],
        }
        if (added := _added_in(e.get("added_in"))) is not None:
            row["added_in"] = added
            if added in EMOJI_RELEASES:
                released = dt.datetime.fromisoformat(EMOJI_RELEASES[added] + "T00:00:00+00:00")
                row["created_at"] = int(released.timestamp())
        rows.append(row)
    rows.sort(key=lambda r: r["id"])
    return rows


def build_catalog(out: Path = DEFAULT_OUT, vendors: tuple[str, ...] = DEFAULT_VENDORS,
                  version: str = PACKAGE_VERSION, cache: Path = DEFAULT_CACHE) -> Path:
    """Write out/emoji.jsonl (idempotent: an up-to-date catalog is kept as it is)."""
    catalog = out / CATALOG_FILE
    stamp = out / ".built-from"
    want = json.dumps({"vendors": list(vendors), "version": version, "format": 2})
    if catalog.exists() and stamp.exists() and stamp.read_text() == want:
        return catalog
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for vendor in vendors:
        rows += extract_vendor(fetch_tarball(vendor, version, cache), vendor, out)
    tmp = catalog.with_suffix(".tmp")
    with tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(catalog)
    stamp.write_text(want)
    return catalog


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="visrec-catalog",
        description="Build the demo catalog (JSONL + 64x64 PNGs) from the "
                    "emoji-datasource-<vendor> npm packages. Tarballs are cached; a second run "
                    "does nothing.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="catalog folder")
    p.add_argument("--vendor", action="append", dest="vendors",
                   help=f"emoji vendor (repeatable; default {' and '.join(DEFAULT_VENDORS)})")
    p.add_argument("--version", default=PACKAGE_VERSION, help="emoji-datasource package version")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="npm tarball cache")
    args = p.parse_args(argv)
    try:
        path = build_catalog(args.out, tuple(args.vendors or DEFAULT_VENDORS), args.version,
                             args.cache)
    except CatalogError as e:
        print(f"visrec-catalog: error: {e}", file=sys.stderr)
        return 1
    n = sum(1 for _ in path.open())
    print(f"{path} ({n} items)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

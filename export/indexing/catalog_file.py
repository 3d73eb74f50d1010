"""The catalog file: JSONL, one item per line (id, image path relative to the file, name,
category, subcategory; every other key a filterable attribute). Checked with the same rules as
the gateway's online catalog changes (``visrec.platform.catalog``)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visrec.platform.catalog import (
    MAX_ID_LENGTH,
    RESERVED,
    attribute_problem,
    coerce,
    infer_facets,
)
from visrec.platform.domain import FacetType, Item


class CatalogFormatError(ValueError):
    pass


@dataclass(frozen=True)
class CatalogRow:
    id: str
    image: Path
    image_uri: str
    name: str
    category: str
    subcategory: str
    attributes: dict[str, Any]
    line: str = ""

    def fingerprint(self) -> str:
        """Changes when the catalog line or the image file changes (re-embed then)."""
        try:
            st = self.image.stat()
            image = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            image = "missing"
        return hashlib.sha256(f"{self.line}\x1f{image}".encode()).hexdigest()[:16]

    def item(self) -> Item:
        return Item(self.id, self.name, self.category, self.subcategory, self.image_uri,
                    self.attributes)


def read_catalog(path: Path) -> tuple[list[CatalogRow], dict[str, FacetType], str]:
    """Rows, attribute facets and a digest of the catalog file. Images are resolved relative
    to the catalog file. Malformed lines fail with their line number."""
    raw = path.read_bytes()
    rows: list[CatalogRow] = []
    seen: set[str] = set()
    for lineno, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise CatalogFormatError(f"{path}:{lineno}: not JSON: {e}") from e
        if not isinstance(obj, dict):
            raise CatalogFormatError(f"{path}:{lineno}: expected a JSON object")
        item_id, image = obj.get("id"), obj.get("image")
        if not isinstance(item_id, str) or not item_id or len(item_id) > MAX_ID_LENGTH:
            raise CatalogFormatError(f"{path}:{lineno}: 'id' must be a string of "
                                     f"1-{MAX_ID_LENGTH} chars")
        if item_id in seen:
            raise CatalogFormatError(f"{path}:{lineno}: duplicate id {item_id!r}")
        if not isinstance(image, str) or not image:
            raise CatalogFormatError(f"{path}:{lineno}: 'image' must be a file path")
        seen.add(item_id)
        attrs = {k: v for k, v in obj.items() if k not in RESERVED}
        for key, value in attrs.items():
            problem = attribute_problem(key, value)
            if problem:
                raise CatalogFormatError(f"{path}:{lineno}: {problem}")
        rows.append(CatalogRow(
            id=item_id, image=(path.parent / image).resolve(), image_uri=image,
            name=str(obj.get("name", "")), category=str(obj.get("category", "")),
            subcategory=str(obj.get("subcategory", "")), attributes=attrs, line=line.strip(),
        ))
    facets = infer_facets(r.attributes for r in rows)
    for r in rows:  # one type per attribute: numbers of a mixed attribute become strings
        r.attributes.update(coerce(r.attributes, facets))
    return rows, facets, hashlib.sha256(raw).hexdigest()

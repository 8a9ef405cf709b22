"""The publish-time catalog: which paths serve which creator's content, under which terms.

Owns the catalog file (JSON, ``meterlog-catalog-v1``), its strict parser, and building one
from a directory. For each path the edge serves, the catalog names the ``content_id`` (the
SHA-256 of the bytes, fixed at publish time; optional, in which case the edge hashes what it
serves), the ``creator_id``, the ``manifest`` digest in force, the ``license`` URI (the
``Link: <...>; rel="license"`` header) and the ``scopes`` the license allows. Content whose
scopes are only ``training`` is a dataset: an ``inference`` or ``preview`` token cannot
fetch it. Imports tlog only (the file's canonical JSON and errors).

The catalog is a local file, or built from the log (:func:`catalog_from_log`): the log's
``creator`` and ``manifest`` entries say, for each content_id, which creator published which
versions under which license and scopes, and which were withdrawn; the edge hashes the files
it serves and catalogues each under the newest version in force. Fetching those entries and
authenticating them against a checkpoint is the caller's (cli/log_catalog.py: edge_signer
may not import the verifier).

>>> catalog = parse_catalog(b'''{"format": "meterlog-catalog-v1", "items": {"/a.txt": {
...   "creator_id": "acct:alice", "manifest": "sha256:''' + b"cd" * 32 + b'''",
...   "license": "https://market.example/l/1", "scopes": ["training"]}}}''')
>>> item = catalog.lookup("/a.txt")
>>> item.scopes, item.content_id is None, catalog.lookup("/b.txt") is None
(('training',), True, True)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tlog.entry import SCOPES, Creator, Manifest, canonical_json, verify_manifest
from tlog.errors import MalformedError, VerificationError

__all__ = [
    "FORMAT",
    "Catalog",
    "CatalogItem",
    "build_catalog",
    "catalog_from_log",
    "content_digest",
    "format_catalog",
    "load_catalog",
    "manifest_digest",
    "parse_catalog",
]

FORMAT = "meterlog-catalog-v1"
MAX_CATALOG_BYTES = 256 << 20
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_ID = re.compile(r"[\x21-\x2a\x2c-\x7e]{1,255}")  # an entry id: printable ASCII, no space or '+'
_LICENSE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[\x21\x23-\x3b\x3d\x3f-\x5b\x5d-\x7e]{1,2000}")
_PATH = re.compile(r"/[^\x00-\x1f\x7f]{0,1023}")
_ITEM_FIELDS = ("content_id", "creator_id", "manifest", "license", "scopes")
_CHUNK = 1 << 20


def _check(value: object, field: str, pattern: re.Pattern[str]) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise MalformedError(field, f"{value!r} does not match {pattern.pattern}")
    return value


@dataclass(frozen=True, slots=True)
class CatalogItem:
    """One path's content: who made it, the terms in force, and which scopes may fetch it."""

    path: str
    creator_id: str
    manifest: str
    license: str
    scopes: tuple[str, ...]
    content_id: str | None = None
    """Fixed at publish time; None: the edge identifies the content by hashing what it sends."""

    def __post_init__(self) -> None:
        where = f"catalog.items[{self.path!r}]"
        _check(self.path, "catalog.items", _PATH)
        _check(self.creator_id, f"{where}.creator_id", _ID)
        _check(self.manifest, f"{where}.manifest", _DIGEST)
        _check(self.license, f"{where}.license", _LICENSE)
        if self.content_id is not None:
            _check(self.content_id, f"{where}.content_id", _DIGEST)
        if not isinstance(self.scopes, tuple) or not self.scopes:
            raise MalformedError(f"{where}.scopes", "at least one scope is needed")
        for scope in self.scopes:
            if scope not in SCOPES:
                raise MalformedError(f"{where}.scopes", f"{scope!r} is not one of {SCOPES}")
        if len(set(self.scopes)) != len(self.scopes):
            raise MalformedError(f"{where}.scopes", "a scope is listed twice")

    def to_json(self) -> dict[str, object]:
        fields: dict[str, object] = {
            "creator_id": self.creator_id,
            "manifest": self.manifest,
            "license": self.license,
            "scopes": list(self.scopes),
        }
        if self.content_id is not None:
            fields["content_id"] = self.content_id
        return fields


@dataclass(frozen=True, slots=True)
class Catalog:
    """The items by path (the request path exactly, as the ASGI scope decodes it)."""

    items: Mapping[str, CatalogItem] = field(default_factory=dict)

    def lookup(self, path: str) -> CatalogItem | None:
        return self.items.get(path)

    def __len__(self) -> int:
        return len(self.items)


def format_catalog(catalog: Catalog) -> bytes:
    """The catalog file: JSON, one item per path, sorted, indented for people to read."""
    items = {path: catalog.items[path].to_json() for path in sorted(catalog.items)}
    return (json.dumps({"format": FORMAT, "items": items}, indent=2) + "\n").encode()


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj: dict[str, object] = {}
    for key, value in pairs:
        if key in obj:
            raise MalformedError(f"catalog: {key!r}", "duplicate key")
        obj[key] = value
    return obj


def parse_catalog(data: bytes) -> Catalog:
    """Parse a catalog file strictly: the format line, known fields, valid values."""
    if len(data) > MAX_CATALOG_BYTES:
        raise MalformedError("catalog", f"larger than {MAX_CATALOG_BYTES} bytes")
    try:
        value = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedError("catalog", f"not JSON: {exc}") from exc
    if not isinstance(value, dict) or set(value) != {"format", "items"}:
        raise MalformedError("catalog", 'not an object with exactly "format" and "items"')
    if value["format"] != FORMAT:
        raise MalformedError("catalog.format", f"{value['format']!r} is not {FORMAT!r}")
    raw_items = value["items"]
    if not isinstance(raw_items, dict):
        raise MalformedError("catalog.items", "not an object of path -> item")
    items: dict[str, CatalogItem] = {}
    for path, raw in raw_items.items():
        where = f"catalog.items[{path!r}]"
        if not isinstance(raw, dict):
            raise MalformedError(where, "not an object")
        unknown = sorted(set(raw) - set(_ITEM_FIELDS))
        if unknown:
            raise MalformedError(f"{where}.{unknown[0]}", "unknown field")
        for name in ("creator_id", "manifest", "license", "scopes"):
            if name not in raw:
                raise MalformedError(f"{where}.{name}", "missing")
        scopes = raw["scopes"]
        if not isinstance(scopes, list):
            raise MalformedError(f"{where}.scopes", "not a list")
        items[path] = CatalogItem(
            path=path,
            creator_id=raw["creator_id"],
            manifest=raw["manifest"],
            license=raw["license"],
            scopes=tuple(scopes),
            content_id=raw.get("content_id"),
        )
    return Catalog(items)


def load_catalog(path: Path) -> Catalog:
    """Read and parse a catalog file (OSError if it cannot be read)."""
    return parse_catalog(path.read_bytes())


def content_digest(path: Path) -> str:
    """``sha256:<hex>`` of a file's bytes: its content_id."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def manifest_digest(content_id: str, creator_id: str, license: str, scopes: tuple[str, ...]) -> str:
    """A stand-in manifest digest for content published without one: the SHA-256 of the
    canonical JSON of these terms. (Creator-signed manifest entries replace it later.)"""
    terms = {
        "content_id": content_id,
        "creator_id": creator_id,
        "license": license,
        "scopes": list(scopes),
    }
    return "sha256:" + hashlib.sha256(canonical_json(terms)).hexdigest()


def _files(root: Path) -> Iterator[Path]:
    """Regular files under ``root``, sorted, skipping hidden files and directories."""
    for directory, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            path = Path(directory) / name
            if not name.startswith(".") and path.is_file():
                yield path


def build_catalog(
    root: Path,
    *,
    creator_id: str,
    license: str,
    scopes: tuple[str, ...],
    prefix: str = "/",
) -> Catalog:
    """A catalog of every file under ``root`` served at ``prefix`` + its relative path, each
    with its content_id computed now and a :func:`manifest_digest` of the terms given."""
    if not prefix.startswith("/") or not prefix.endswith("/"):
        raise MalformedError("prefix", f"{prefix!r} must start and end with '/'")
    items: dict[str, CatalogItem] = {}
    for path in _files(root):
        url_path = prefix + path.relative_to(root).as_posix()
        content_id = content_digest(path)
        items[url_path] = CatalogItem(
            path=url_path,
            content_id=content_id,
            creator_id=creator_id,
            manifest=manifest_digest(content_id, creator_id, license, scopes),
            license=license,
            scopes=scopes,
        )
    return Catalog(items)


def catalog_from_log(
    root: Path, entries: Iterable[Creator | Manifest], *, prefix: str = "/"
) -> tuple[Catalog, list[str]]:
    """A catalog of the files under ``root`` (served at ``prefix``) from the log's
    ``creator`` and ``manifest`` entries (in index order): each file, by its content_id, under
    the newest published version that is not withdrawn, with that version's license and
    scopes. Returns the catalog and the paths of the files no live version covers (they are
    left out: the edge answers 404 for them).

    Each manifest must be signed by its creator's key as the latest ``creator`` entry before
    it registers it, as the log checked when it logged it; one that is not raises
    VerificationError (the entries did not come from an honest log).
    """
    if not prefix.startswith("/") or not prefix.endswith("/"):
        raise MalformedError("prefix", f"{prefix!r} must start and end with '/'")
    keys: dict[str, Creator] = {}
    versions: dict[str, dict[int, Manifest]] = {}
    withdrawn: set[str] = set()
    for entry in entries:
        if isinstance(entry, Creator):
            keys[entry.creator_id] = entry
            continue
        creator = keys.get(entry.creator_id)
        if creator is None:
            raise VerificationError(f"manifest {entry.manifest}: its creator is not registered")
        verify_manifest(entry, creator.verifier)
        if entry.action == "withdraw":
            withdrawn.add(entry.manifest)
        else:
            versions.setdefault(entry.content_id, {})[entry.version] = entry
    items: dict[str, CatalogItem] = {}
    uncovered: list[str] = []
    for path in _files(root):
        url_path = prefix + path.relative_to(root).as_posix()
        content_id = content_digest(path)
        live = [
            m
            for v, m in sorted(versions.get(content_id, {}).items())
            if m.manifest not in withdrawn
        ]
        if not live:
            uncovered.append(url_path)
            continue
        manifest = live[-1]
        items[url_path] = CatalogItem(
            path=url_path,
            creator_id=manifest.creator_id,
            manifest=manifest.manifest,
            license=manifest.license or "",
            scopes=manifest.scopes,
            content_id=content_id,
        )
    return Catalog(items), uncovered

"""The edge's catalog built from a log: fetch its creator and manifest entries, authenticated.

Owns :func:`fetch_catalog`, which ``meterlog edge catalog --from-log`` and ``meterlog edge
serve-demo --from-log`` use: the log's checkpoint is verified with its key, the log's indexes
(``GET /v1/creators``, ``GET /v1/catalog``) name the entries, and every entry is read from
entry bundles authenticated against that checkpoint (``verifier.client``); then
``edge_signer.catalog.catalog_from_log`` hashes the directory's files and catalogues each
under its newest version in force. Assembled here because edge_signer may not import the
verifier. Imports edge_signer, tlog and verifier.

The indexes only *find* entries. A log that left a withdrawal out of its index would keep a
withdrawn version in the edge's catalog; billing still pays nothing for it (billing reads
every entry, and the withdrawal is among them).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from edge_signer.catalog import Catalog, catalog_from_log
from tlog.entry import Creator, Manifest, decode_entry
from tlog.errors import VerificationError
from tlog.note import Verifier
from tlog.tiles import TILE_WIDTH
from verifier.client import LogClient, VerifiedTree
from verifier.client import LogUnavailableError as CatalogUnavailableError
from verifier.offline import TrustPolicy

__all__ = ["CatalogUnavailableError", "authenticated_entries", "fetch_catalog"]

_PAGE = 1000


def _indexes(client: LogClient) -> list[int]:
    """The entry indexes of every creator registration and manifest (and withdrawal)."""
    found: list[int] = []
    creators = client.get_json("v1/creators").get("creators")
    if not isinstance(creators, list):
        raise VerificationError("v1/creators: no creators list")
    try:
        found += [int(c["entry_index"]) for c in creators]
    except (KeyError, TypeError, ValueError) as exc:
        raise VerificationError(f"v1/creators: an entry without an index ({exc})") from exc
    params = {"limit": str(_PAGE)}
    while True:
        page = client.get_json("v1/catalog", params)
        manifests = page.get("manifests")
        if not isinstance(manifests, list):
            raise VerificationError("v1/catalog: no manifests list")
        try:
            for m in manifests:
                found.append(int(m["entry_index"]))
                if m.get("withdrawn_index") is not None:
                    found.append(int(m["withdrawn_index"]))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise VerificationError(f"v1/catalog: a manifest without an index ({exc})") from exc
        next_after = page.get("next_after")
        if not isinstance(next_after, int) or not manifests:
            return sorted(set(found))
        params["after"] = str(next_after)


def authenticated_entries(
    tree: VerifiedTree, indexes: Sequence[int]
) -> Iterator[tuple[int, bytes]]:
    """The entries at ``indexes`` (sorted), each read from its bundle and authenticated
    against the tree; one fetch per bundle."""
    wanted = [i for i in indexes if i < tree.tree_size]
    at = 0
    while at < len(wanted):
        bundle = wanted[at] // TILE_WIDTH
        last = at
        while last + 1 < len(wanted) and wanted[last + 1] // TILE_WIDTH == bundle:
            last += 1
        keep = set(wanted[at : last + 1])
        for index, data in tree.entries(wanted[at], wanted[last] + 1):
            if index in keep:
                yield index, data
        at = last + 1


def fetch_catalog(
    url: str,
    log_key: Verifier,
    directory: Path,
    *,
    prefix: str = "/",
    origin: str | None = None,
    timeout_s: float = 30.0,
) -> tuple[Catalog, list[str]]:
    """The catalog of ``directory`` from the log at ``url`` (see the module docstring), and
    the paths of files no live version covers. Raises VerificationError, or
    CatalogUnavailableError (the tile client's LogUnavailableError: the log did not answer)."""
    with LogClient(url, timeout_s=timeout_s) as client:
        signed = TrustPolicy((log_key,), origin=origin).open(client.fetch_checkpoint())
        tree = VerifiedTree(client, signed)
        entries: list[Creator | Manifest] = []
        for index, data in authenticated_entries(tree, _indexes(client)):
            entry = decode_entry(data)
            if not isinstance(entry, Creator | Manifest):
                raise VerificationError(f"entry {index} is a {entry.kind}, not a catalog entry")
            entries.append(entry)
    return catalog_from_log(directory, entries, prefix=prefix)

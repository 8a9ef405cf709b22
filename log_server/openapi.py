"""The OpenAPI 3.1 description of the log's routes, served at ``/openapi.json``.

Owns the documented contract of every route in ``log_server.app``; a test checks that the
paths and methods here are exactly the app's. Pure data: imports nothing.
"""

from __future__ import annotations

from typing import Any

__all__ = ["OPENAPI"]


def _int(name: str, description: str, *, required: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
    }


def _text(name: str, description: str, where: str = "query") -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "description": description,
        "schema": {"type": "string", "minLength": 1},
    }


_ERROR = {
    "description": "The request is wrong; the body names the field.",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["field", "reason"],
                        "properties": {"field": {"type": "string"}, "reason": {"type": "string"}},
                    }
                },
            }
        }
    },
}
_JSON = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
_BYTES = {"description": "OK", "content": {"application/octet-stream": {}}}
_TEXT = {"description": "OK", "content": {"text/plain": {}}}
_PAGES_BOTH_WAYS = [
    _int("after", "the last id already seen (oldest first)"),
    _int("before", "the last id already seen (order=desc)"),
    {
        "name": "order",
        "in": "query",
        "required": False,
        "description": "asc (default) or desc",
        "schema": {"type": "string", "enum": ["asc", "desc"]},
    },
    _int("limit", "page size"),
]
"""The paging of a history read oldest first (after) or newest first (order=desc, before)."""


def _get(summary: str, parameters: list[dict[str, Any]], ok: dict[str, Any]) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "parameters": parameters,
            "responses": {"200": ok, "400": _ERROR, "404": _ERROR, "503": _ERROR},
        }
    }


def _flag(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "string", "enum": ["0", "1"]},
    }


def _post(summary: str, *, operator: bool = False) -> dict[str, Any]:
    """A POST of one JSON object, answered with the entry's result and bundle: 200 logged or
    duplicate, 403 a signature the log cannot accept, 409 refused by its registries; 429 its
    signer over its budget (the routes without a token)."""
    operation: dict[str, Any] = {
        "summary": summary,
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
        "responses": {
            "200": _JSON, "400": _ERROR, "403": _ERROR, "409": _ERROR, "413": _ERROR,
            "503": _ERROR,
        },
    }  # fmt: skip
    if operator:
        operation["security"] = [{"operator": []}]
        operation["responses"]["401"] = _ERROR
    else:
        operation["responses"]["429"] = _ERROR
    return {"post": operation}


_RESULTS = {
    "description": "One result per receipt, in order (422: every receipt was rejected).",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["results"],
                "properties": {
                    "results": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["status"],
                            "properties": {
                                "status": {"enum": ["logged", "duplicate", "conflict", "rejected"]},
                                "index": {"type": "integer"},
                                "bundle": {"type": "string"},
                                "error": {"type": "object"},
                            },
                        },
                    }
                },
            }
        }
    },
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "meterlog",
        "version": "1",
        "description": "A transparency log of signed usage receipts. Tiles, checkpoints and "
        "bundles follow C2SP tlog-tiles, tlog-checkpoint and tlog-proof.",
    },
    "paths": {
        "/checkpoint": _get("The latest signed checkpoint (C2SP tlog-checkpoint)", [], _TEXT),
        "/tile/{path}": _get(
            "A C2SP tile or entry bundle: tile/<L>/<N>[.p/<W>] or tile/entries/<N>[.p/<W>]",
            [
                {
                    "name": "path",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                    "description": "the rest of the tile path",
                }
            ],
            _BYTES,
        ),
        "/v1/receipts": {
            "post": {
                "summary": "Submit signed receipts (JSON array, or JSON Lines); answered after "
                "they are logged",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"type": "array", "items": {}}},
                        "application/jsonl": {"schema": {"type": "string"}},
                    },
                },
                "responses": {
                    "200": _RESULTS,
                    "422": _RESULTS,
                    "400": _ERROR,
                    "413": _ERROR,
                    "429": _ERROR,
                    "503": _ERROR,
                },
            },
            **_get(
                "Receipts of one request id (any edge), consumer, job, creator or content, "
                "with bundles",
                [
                    _text("request", "request_id (from any edge)"),
                    _text("consumer", "consumer_id"),
                    _text("job", "job_id"),
                    _text("creator", "creator_id"),
                    _text("content", "content_id (sha256:<hex>)"),
                    _int("after", "the last index already seen"),
                    _int("limit", "page size"),
                ],
                _JSON,
            ),
        },
        "/v1/receipts/{edge}/{request_id}": _get(
            "One receipt by its idempotency key, with its bundle",
            [_text("edge", "edge id", "path"), _text("request_id", "request id", "path")],
            _JSON,
        ),
        "/v1/proofs/inclusion": _get(
            "Inclusion proof of an index, or of the entry with a leaf hash, at a tree size "
            "(default: the latest)",
            [
                _int("index", "leaf index (or give leaf_hash)"),
                _text("leaf_hash", "base64 leaf hash, SHA-256(0x00 || entry)"),
                _int("tree_size", "tree size"),
            ],
            _JSON,
        ),
        "/v1/proofs/consistency": _get(
            "Consistency proof between two tree sizes",
            [_int("old_size", "old tree size", required=True), _int("new_size", "new tree size")],
            _JSON,
        ),
        "/v1/entries": _get(
            "Entries [start, end), at most the page limit",
            [_int("start", "first index"), _int("end", "one past the last index")],
            _JSON,
        ),
        "/v1/log": _get(
            "The log's origin, verifier key and witnesses, as the log states them (pin the "
            "key to trust it)",
            [],
            _JSON,
        ),
        "/v1/growth": _get(
            "The tree size over time: about `points` checkpoints spread over the history",
            [_int("points", "how many samples, 2..1000 (default 100)")],
            _JSON,
        ),
        "/v1/checkpoints": _get(
            "Published checkpoints, oldest first (paged by after), or newest first with "
            "order=desc (paged by before)",
            [
                *_PAGES_BOTH_WAYS,
            ],
            _JSON,
        ),
        "/v1/checkpoints/{tree_size}": _get(
            "The latest signed checkpoint of exactly this tree size (text/plain; 404 if none)",
            [
                {
                    "name": "tree_size",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^(0|[1-9][0-9]*)$"},
                    "description": "a tree size the log published a checkpoint at",
                }
            ],
            _TEXT,
        ),
        "/v1/edge-keys": _get("The edge-key registry as the log stands", [], _JSON),
        "/v1/anchors": _get(
            "Anchors of checkpoints on an Ethereum chain, oldest first (or newest first with "
            "order=desc), and where the log anchors (anchoring is null when it does not)",
            [
                *_PAGES_BOTH_WAYS,
                {
                    "name": "status",
                    "in": "query",
                    "required": False,
                    "description": "only anchors in this state",
                    "schema": {
                        "type": "string",
                        "enum": ["pending", "mined", "final", "dropped", "failed"],
                    },
                },
            ],
            _JSON,
        ),
        "/v1/admin/edge-keys": {
            "post": {
                "summary": "Register, rotate or revoke an edge key (operator bearer token)",
                "security": [{"operator": []}],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "responses": {"200": _JSON, "400": _ERROR, "401": _ERROR, "503": _ERROR},
            }
        },
        "/v1/admin/creators": _post(
            "Register a creator's key and payout currency: a creator entry signed by the "
            "operator key (operator bearer token)",
            operator=True,
        ),
        "/v1/admin/disputes": _post(
            "Close an open dispute as resolved: a dispute entry signed by the operator key "
            "(operator bearer token)",
            operator=True,
        ),
        "/v1/admin/revenue": _post(
            "Declare a buyer's revenue for a period: a revenue entry signed by the operator "
            "key (operator bearer token)",
            operator=True,
        ),
        "/v1/manifests": _post(
            "Submit a manifest entry (publish or withdraw a content version) signed by the "
            "creator's registered key"
        ),
        "/v1/disputes": {
            **_post("Submit a dispute entry (open, or withdraw) signed by the creator's key"),
            **_get(
                "Disputes in log order",
                [
                    _text("creator", "creator_id"),
                    _text("statement", "statement digest"),
                    _flag("open", "1: open disputes only"),
                ],
                _JSON,
            ),
        },
        "/v1/statements": {
            "post": {
                "summary": "Submit a billing run's statement entries (JSON array, or JSON "
                "Lines), signed by a billing key the log is configured with",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"type": "array", "items": {}}},
                        "application/jsonl": {"schema": {"type": "string"}},
                    },
                },
                "responses": {
                    "200": _RESULTS,
                    "400": _ERROR,
                    "403": _RESULTS,
                    "409": _RESULTS,
                    "413": _ERROR,
                    "429": _ERROR,
                    "503": _ERROR,
                },
            },
            **_get(
                "Logged statements in log order (latest=1: newest first)",
                [
                    _text("currency", "ISO 4217 code"),
                    _text("creator", "creator_id"),
                    _int("after", "the last entry index already seen"),
                    _int("limit", "page size"),
                    _flag("latest", "1: newest first"),
                ],
                _JSON,
            ),
        },
        "/v1/statements/{digest}": _get(
            "One logged statement by its digest, with its entry index",
            [_text("digest", "sha256:<hex> of the statement", "path")],
            _JSON,
        ),
        "/v1/statements/{digest}/document": _get(
            "A logged statement's document (canonical JSON; its SHA-256 is the digest), "
            "from the billing runs' directory the log serves (--statements)",
            [_text("digest", "sha256:<hex> of the statement", "path")],
            _JSON,
        ),
        "/v1/statements/{digest}/lines/{line}/receipts": _get(
            "The receipts a statement line counts (its leaf indices), with proof bundles",
            [
                _text("digest", "sha256:<hex> of the statement", "path"),
                {**_int("line", "the line, from 1", required=True), "in": "path"},
                _int("after", "the last leaf index already seen"),
                _int("limit", "page size"),
            ],
            _JSON,
        ),
        "/v1/creators/{creator_id}/provisional": _get(
            "A creator's accrued-but-unbilled usage: receipts logged since its currency's "
            "last billing run ended (provisional)",
            [_text("creator_id", "creator id", "path")],
            _JSON,
        ),
        "/v1/receipts.zip": _get(
            "Every receipt of a job (or consumer, creator, content) as a zip of .tlog-proof "
            "bundles, all under the latest checkpoint",
            [
                _text("job", "job_id"),
                _text("consumer", "consumer_id"),
                _text("creator", "creator_id"),
                _text("content", "content_id"),
            ],
            {"description": "OK", "content": {"application/zip": {}}},
        ),
        "/v1/creators": _get("The creators as the log registers them", [], _JSON),
        "/v1/creators/{creator_id}": _get(
            "One creator", [_text("creator_id", "creator id", "path")], _JSON
        ),
        "/v1/catalog": _get(
            "Published manifest versions in log order, with their withdrawals",
            [
                _text("creator", "creator_id"),
                _text("content", "content_id (sha256:<hex>)"),
                _int("after", "the last entry index already seen"),
                _int("limit", "page size"),
            ],
            _JSON,
        ),
        "/v1/revenue": _get(
            "A consumer's revenue declarations",
            [{**_text("consumer", "consumer_id"), "required": True}],
            _JSON,
        ),
        "/v1/billing-keys": _get("The billing keys whose statements the log accepts", [], _JSON),
        "/healthz": _get("Liveness, tree size and checkpoint age", [], _JSON),
        "/metrics": _get("Prometheus metrics", [], _TEXT),
        "/openapi.json": _get("This document", [], _JSON),
    },
    "components": {"securitySchemes": {"operator": {"type": "http", "scheme": "bearer"}}},
}

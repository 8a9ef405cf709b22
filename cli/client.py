"""The command line's HTTP client for a running log: URLs, requests, and what failures mean.

Owns talking to a log over HTTP for the ``edge``, ``receipt`` and ``verify anchor`` commands
(httpx, sync): the ``--log`` URL, a POST and a GET helper, and the line between "the log
refused" (an answer, 4xx, exit 1) and "the log is unavailable" (no answer, a timeout, or 5xx:
:class:`LogUnavailableError`, exit 3). Imports httpx and verifier.cli (for UsageError).
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import httpx

from verifier.cli import UsageError

__all__ = ["LogUnavailableError", "answer_json", "error_text", "get", "log_url", "post"]

USER_AGENT = "meterlog-cli"


class LogUnavailableError(Exception):
    """The log did not answer, or answered 5xx: try again later (exit code 3)."""


def log_url(value: str, flag: str = "--log") -> str:
    """The log's base URL, ``http(s)://host[:port][/prefix]``, without a trailing slash."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"{flag} {value}: not an http:// or https:// URL")
    if parts.query or parts.fragment:
        raise UsageError(f"{flag} {value}: a log URL has no query or fragment")
    return value.rstrip("/")


def post(
    url: str,
    content: bytes,
    content_type: str,
    *,
    token: str | None = None,
    timeout_s: float = 30.0,
) -> httpx.Response:
    """POST ``content``; the response if the log answered below 500, else LogUnavailableError."""
    headers = {"Content-Type": content_type, "User-Agent": USER_AGENT}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        response = httpx.post(url, content=content, headers=headers, timeout=timeout_s)
    except httpx.TransportError as exc:
        raise LogUnavailableError(f"{url}: {type(exc).__name__}: {exc}") from exc
    if response.status_code >= 500:
        raise LogUnavailableError(f"{url}: HTTP {response.status_code}: {error_text(response)}")
    return response


def get(url: str, client: httpx.Client) -> httpx.Response:
    """GET with ``client``; the response if the log answered below 500, else
    LogUnavailableError."""
    try:
        response = client.get(url)
    except httpx.TransportError as exc:
        raise LogUnavailableError(f"{url}: {type(exc).__name__}: {exc}") from exc
    if response.status_code >= 500:
        raise LogUnavailableError(f"{url}: HTTP {response.status_code}: {error_text(response)}")
    return response


def answer_json(response: httpx.Response) -> dict[str, object]:
    """The response's JSON object; LogUnavailableError if the log sent something else."""
    try:
        value = json.loads(response.content)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LogUnavailableError(
            f"{response.url}: HTTP {response.status_code}, not JSON: {exc}"
        ) from exc
    if not isinstance(value, dict):
        raise LogUnavailableError(f"{response.url}: HTTP {response.status_code}, not an object")
    return value


def error_text(response: httpx.Response) -> str:
    """The log's ``{"error": {"field", "reason"}}`` as ``field: reason``, or the raw text."""
    try:
        value = json.loads(response.content)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text[:200]
    return describe_error(value.get("error") if isinstance(value, dict) else None)


def describe_error(error: object) -> str:
    """One ``{"field", "reason"}`` error object as ``field: reason``."""
    if isinstance(error, dict):
        return f"{error.get('field', '?')}: {error.get('reason', '?')}"
    return "no reason given"

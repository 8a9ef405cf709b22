"""The command line's HTTP client for a running log: URLs, requests, and what failures mean.

Owns talking to a log over HTTP for the ``edge``, ``receipt`` and ``verify anchor`` commands
(httpx, sync): the ``--log`` URL, a POST and a GET helper, a POST of a request that becomes
an entry (:func:`post_for_entry`), and the line between "the log refused" (an answer, 4xx,
exit 1) and "the log is unavailable" (no answer, a timeout, or 5xx: :class:`LogUnavailableError`,
exit 3). Imports httpx and verifier.cli (for UsageError).
"""

from __future__ import annotations

import json
import sys
from urllib.parse import urlsplit

import httpx

from verifier.cli import EXIT_FAILED, EXIT_UNAVAILABLE, UsageError

__all__ = [
    "LogUnavailableError",
    "answer_json",
    "error_text",
    "get",
    "log_url",
    "post",
    "post_for_entry",
]

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


def post_for_entry(
    url: str,
    body: bytes,
    what: str,
    *,
    token: str | None = None,
    timeout_s: float = 30.0,
    as_json: bool = False,
) -> dict[str, object] | int:
    """POST a request that the log turns into an entry (``what`` names it in messages): the
    log's answer (printed on stdout with ``as_json``), or, when the log refused it or could
    not be reached, the exit code, after saying why on stderr."""
    try:
        response = post(url, body, "application/json", token=token, timeout_s=timeout_s)
        if response.status_code != 200:
            print(
                f"meterlog: the log refused the {what} (HTTP {response.status_code}): "
                f"{error_text(response)}",
                file=sys.stderr,
            )
            return EXIT_FAILED
        answer = answer_json(response)
    except LogUnavailableError as exc:
        print(f"meterlog: the log is unavailable: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if as_json:
        print(json.dumps(answer, sort_keys=True))
    return answer

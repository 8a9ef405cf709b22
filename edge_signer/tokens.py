"""The edge's access check: who may fetch which content, from the marketplace's tokens.

Owns the decision the middleware makes before any content is served: the request must carry
``Authorization: Bearer <access token>`` (tlog.token's format), signed by a marketplace key
the edge trusts, valid now, with a scope the content's license allows, and (when the token
has an allow-list) naming the content. A refusal is an :class:`AccessDenied` with the HTTP
status and the RFC 6750 error code; nothing is served and no receipt is made. Imports tlog
only; must not import verifier, log_server, anchor, billing or cli.

Scopes: a token's scope must be one of the catalog item's ``scopes``. Content licensed for
``training`` only (a dataset) therefore needs a ``training`` token, and an ``inference``
token cannot ingest it.

Verified tokens are cached by their exact text (a consumer sends the same token with every
request), so the signature is checked once per token; the time window is checked on every
request.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from tlog.errors import MalformedError, UnknownKeyError, ValidityError, VerificationError
from tlog.note import Verifier
from tlog.token import AccessToken, parse_token, verify_token, verify_token_time

__all__ = ["AccessDenied", "AccessGate"]

DEFAULT_LEEWAY_MS = 30_000
"""Clock skew tolerated between the marketplace and the edge."""


class AccessDenied(Exception):  # noqa: N818 -- a refusal, not a malfunction
    """A request that may not be served: ``status`` 401 (no valid token) or 403 (a valid
    token that does not cover this content), the RFC 6750 ``error`` code, and why."""

    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(status, error, reason)
        self.status = status
        self.error = error
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.status} {self.error}: {self.reason}"

    def www_authenticate(self) -> str:
        """The ``WWW-Authenticate`` challenge (RFC 6750 section 3) for this refusal."""
        description = "".join(c if c.isprintable() and c not in '"\\' else "?" for c in self.reason)
        challenge = 'Bearer realm="meterlog"'
        if self.error:
            challenge += f', error="{self.error}", error_description="{description}"'
        return challenge


def _unauthorized(reason: str, error: str = "invalid_token") -> AccessDenied:
    return AccessDenied(401, error, reason)


class AccessGate:
    """Checks access tokens against the marketplace keys the edge trusts."""

    def __init__(
        self,
        marketplace_keys: Sequence[Verifier],
        *,
        leeway_ms: int = DEFAULT_LEEWAY_MS,
        cache_size: int = 10_000,
    ) -> None:
        if not marketplace_keys:
            raise ValueError("at least one marketplace key is needed")
        self.keys = tuple(marketplace_keys)
        self.leeway_ms = leeway_ms
        self.cache_size = cache_size
        self._verified: OrderedDict[str, AccessToken] = OrderedDict()

    def token(self, authorization: str | None, now_ms: int) -> AccessToken:
        """The valid token in an ``Authorization`` header value; AccessDenied (401) if there
        is none, it is malformed, its signature or key is not good, or it is not valid now."""
        if authorization is None:
            # RFC 6750 section 3.1: no error code when the request had no credentials.
            raise AccessDenied(401, "", "an access token is required (Authorization: Bearer)")
        scheme, _, text = authorization.partition(" ")
        text = text.strip()
        if scheme.lower() != "bearer" or not text:
            raise _unauthorized(
                "the Authorization header is not 'Bearer <token>'", "invalid_request"
            )
        token = self._verified.get(text)
        if token is None:
            token = self._verify(text, now_ms)
        else:
            self._verified.move_to_end(text)
        try:
            verify_token_time(token, now_ms=now_ms, leeway_ms=self.leeway_ms)
        except ValidityError as exc:
            self._verified.pop(text, None)
            raise _unauthorized(exc.reason) from exc
        return token

    def _verify(self, text: str, now_ms: int) -> AccessToken:
        try:
            token = parse_token(text)
            verify_token(token, self.keys, now_ms=now_ms, leeway_ms=self.leeway_ms)
        except MalformedError as exc:
            raise _unauthorized(f"malformed token: {exc}") from exc
        except ValidityError as exc:
            raise _unauthorized(exc.reason) from exc
        except UnknownKeyError as exc:
            raise _unauthorized(f"not issued by a trusted marketplace key: {exc}") from exc
        except VerificationError as exc:
            raise _unauthorized(f"the token's signature does not verify: {exc}") from exc
        self._verified[text] = token
        if len(self._verified) > self.cache_size:
            self._verified.popitem(last=False)
        return token

    @staticmethod
    def check_scope(token: AccessToken, scopes: Sequence[str]) -> None:
        """AccessDenied (403) unless the token's scope is one the content's license allows."""
        if token.scope not in scopes:
            raise AccessDenied(
                403,
                "insufficient_scope",
                f"a token of scope {token.scope} cannot fetch this content (licensed for "
                f"{', '.join(scopes)})",
            )

    @staticmethod
    def check_content(token: AccessToken, content_id: str) -> None:
        """AccessDenied (403) unless the token's allow-list (if any) names the content."""
        if not token.allows(content_id):
            raise AccessDenied(
                403, "insufficient_scope", f"the token does not allow content {content_id}"
            )

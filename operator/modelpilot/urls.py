"""Base URLs written by tenants (registry, Prometheus): parsed once, never used as string prefixes.

Why: a `?` or `#` in a base URL would let the spec choose the request path the operator sends
(`http://svc/internal/admin?x=` + `/api/2.0/...`), and userinfo would smuggle credentials. A base URL
is accepted only as scheme http/https, a host, an optional port and an optional path; every request
path is joined to the parsed parts, and errors name only the scheme, host and port.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass


class InvalidURL(ValueError):
    """The text is not an acceptable base URL; the message says why."""


@dataclass(frozen=True)
class BaseURL:
    scheme: str
    host: str
    port: int | None
    path: str  # no trailing slash; "" for the root

    @property
    def origin(self) -> str:
        """scheme://host[:port], the part that may appear in messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}" + (f":{self.port}" if self.port else "")

    @property
    def href(self) -> str:
        """The URL itself, its path quoted."""
        return self.origin + urllib.parse.quote(self.path, safe="/:@-._~!$&'()*+,;=")

    def join(self, path: str) -> str:
        """The URL of `path` (an absolute path the operator chose) below this base."""
        if not path.startswith("/"):
            raise ValueError("paths joined to a base URL are absolute")
        return self.origin + urllib.parse.quote(self.path + path, safe="/:@-._~!$&'()*+,;=")

    def __str__(self) -> str:
        return self.origin + self.path


def parse_base_url(text: object, field: str) -> BaseURL:
    """Parse `text` as an http(s) base URL; `field` names it in the error."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidURL(f"{field} must be an http(s) URL, got {text!r}")
    if text != text.strip() or any(c in text for c in "\r\n\t \\"):
        raise InvalidURL(f"{field} must not contain whitespace or backslashes")
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise InvalidURL(f"{field} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidURL(f"{field} must start with http:// or https://")
    if not parts.hostname:
        raise InvalidURL(f"{field} names no host")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InvalidURL(f"{field} must not carry credentials (user:password@); use a credentials Secret")
    if "?" in text or parts.query:
        raise InvalidURL(f"{field} must not have a query string ('?')")
    if "#" in text or parts.fragment:
        raise InvalidURL(f"{field} must not have a fragment ('#')")
    path = urllib.parse.unquote(parts.path).rstrip("/")
    if any(seg in (".", "..") for seg in path.split("/")):
        raise InvalidURL(f"{field} must not contain '.' or '..' path segments")
    return BaseURL(parts.scheme, parts.hostname, port, path)

"""URLs as they may be shown or stored: with their secrets masked."""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from typing import TypeVar

from tasks.errors import RecsError

MASK = "***"
T = TypeVar("T")


def masked_url(url: str) -> str:
    """``url`` with its secrets replaced by ``***``: the password of ``user:password@``, and for an
    http(s) or file URL every query-string value (signed URLs carry their tokens there). Anything
    that is not a URL comes back unchanged."""
    parts = urllib.parse.urlsplit(url)
    if not parts.scheme or not parts.netloc and not parts.query:
        return url
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username or ''}:{MASK}@{netloc.rpartition('@')[2]}"
    query = parts.query
    if query and parts.scheme in ("http", "https", "file"):
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        query = "&".join(f"{urllib.parse.quote(k, safe='')}={MASK}" for k, _ in pairs) if pairs else MASK
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def with_masked_source(source: str, call: Callable[[], T]) -> T:
    """``call()``, with ``source``'s secrets masked in the one-line ``RecsError`` it may raise
    (its messages name the source, and they end up in logs and flow-run states). The cause is
    kept, so the transient-error policy still sees what failed."""
    try:
        return call()
    except RecsError as exc:
        shown = masked_url(source)
        if shown == source or source not in str(exc):
            raise
        raise RecsError(str(exc).replace(source, shown)) from exc.__cause__

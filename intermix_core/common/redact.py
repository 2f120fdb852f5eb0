"""Credentials out of printed text: every URI the project prints goes through `redact_uris` first."""

from __future__ import annotations

import re

# scheme://USERINFO@ (USERINFO = user, user:password, or a token): the whole userinfo is replaced
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#@\s'\"<>]+)@")


def redact_uris(text: str) -> str:
    """`text` with the user and password of every `scheme://user:password@host` URI in it replaced by `***`."""
    return _USERINFO.sub(r"\g<scheme>***@", text)


def has_credentials(uri: str) -> bool:
    """True if `uri` (or any URI in it) carries a user name, password or token before its host."""
    return _USERINFO.search(uri) is not None

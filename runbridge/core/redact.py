"""The one redaction point: every text that enters runbridge from a platform is cleaned here.

A platform, or a proxy in front of it, may echo the request's ``Authorization`` header in an
error body or a response header (``x-request-id``), raw, base64-encoded, URL- or JSON-escaped.
Whatever runbridge makes from an answer (a log line, an event, an exception's message, body,
request id, a status's message and outputs) is made from the answer the client hands to the
flows, so the client cleans each answer *once, where it enters*: the body, the header values,
and the text of a transport failure. Nothing downstream redacts again, and nothing downstream
can leak what it never saw.

:class:`Redactor` knows every form of the secrets a client holds: the token, each header value
it produced (``Bearer t``, ``Basic base64(api:KEY)``) and their last word, and for each of
these its URL-quoted, JSON-escaped and base64 forms (standard and URL-safe alphabets, at each
of the three alignments inside a longer base64 text). A text whose escapes hide a form (JSON's
``\\u0072`` or ``\\/``, as PHP and .NET write them; URL-encoding with ``/`` left as is or in
lower-case hex) is looked at with the escapes of plain ASCII characters undone; where that
shows a form, the text is kept in that decoded spelling, masked. So whatever a JSON decoder or
a reader undoing percent-escapes would make of an answer holds no form either.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from urllib.parse import quote

__all__ = ["MASK", "Redactor"]

MASK = "***"
MIN_SECRET = 6
"""Shorter forms are not redacted (they would mask ordinary text); tokens are far longer."""


def _base64_forms(secret: bytes) -> set[bytes]:
    """Substrings that any base64 text containing ``secret`` at any offset must contain."""
    forms: set[bytes] = set()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        for offset in range(3):
            encoded = encode(b"\0" * offset + secret)
            # drop the characters that mix in the bytes before and after the secret
            start = (offset * 4 + 2) // 3
            end = (offset + len(secret)) * 4 // 3
            stable = encoded[start:end]
            if len(stable) >= MIN_SECRET:
                forms.add(stable)
            if offset == 0:
                forms.add(encoded)
                forms.add(encoded.rstrip(b"="))
    return forms


# escapes a reader undoes, read left to right (an escaped backslash stays one): JSON's \\/ and
# \\uXXXX, and URL-encoding's %XX
_ESCAPES = re.compile(r"\\\\|\\/|\\u([0-9a-fA-F]{4})|%([0-9a-fA-F]{2})")


def _unescape(match: re.Match[str]) -> str:
    """The character an escape stands for, where it is a plain one: printable ASCII other than
    the quote and the backslash (which would end or escape a JSON string)."""
    text = match.group(0)
    if text == "\\/":
        return "/"
    code = int(match.group(1) or match.group(2) or "0", 16)
    if 0x20 <= code < 0x7F and chr(code) not in '"\\':
        return chr(code)
    return text


class Redactor:
    """Replaces every known form of some secrets by ``***``, in text and in bytes."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        raw: set[str] = set()
        for secret in secrets:
            if not secret:
                continue
            raw.add(secret)
            raw.add(secret.rpartition(" ")[2])  # "Bearer t" -> "t"
        forms: set[bytes] = set()
        for secret in raw:
            data = secret.encode()
            forms.add(data)
            forms.add(quote(secret, safe="").encode())
            forms.add(json.dumps(secret)[1:-1].encode())
            forms |= _base64_forms(data)
        # longest first, so a form inside another is not half-replaced
        self._bytes = sorted((f for f in forms if len(f) >= MIN_SECRET), key=len, reverse=True)
        self._text = [f.decode("utf-8", "replace") for f in self._bytes]

    def __bool__(self) -> bool:
        return bool(self._bytes)

    def text(self, value: str) -> str:
        value = self._replace(value)
        if "\\" in value or "%" in value:
            plain = _ESCAPES.sub(_unescape, value)
            if plain != value:
                masked = self._replace(plain)
                if masked != plain:
                    return masked
        return value

    def _replace(self, value: str) -> str:
        for form in self._text:
            if form in value:
                value = value.replace(form, MASK)
        return value

    def bytes(self, value: bytes) -> bytes:
        if not self._bytes:
            return value
        # surrogateescape: bytes that are not UTF-8 come back as they were
        text = value.decode("utf-8", "surrogateescape")
        cleaned = self.text(text)
        return value if cleaned == text else cleaned.encode("utf-8", "surrogateescape")

    def __repr__(self) -> str:
        return f"<Redactor of {len(self._bytes)} forms>"

"""Webhook deliveries, read without I/O: check a delivery's signature and turn it into the
:class:`~runbridge.core.models.RunStatus` it reports.

Where a platform pushes run outcomes (Lume recommends webhooks over polling), a waiting client
can end its wait on a delivery instead of its next poll. Receiving the HTTP request is the
deployment's business (an Airflow API plugin, a Prefect webhook, a small web app); these pure
functions do the rest::

    status = parse_delivery(client.provider, raw_body, request_headers, secret=WEBHOOK_SECRET)
    if status.is_terminal: ...

A provider supports deliveries by defining ``parse_webhook(payload, headers) -> RunStatus`` and,
where the platform signs them, ``webhook_signature_header``. Signatures are HMAC-SHA256 over the
raw body with a shared secret, sent as ``sha256=<hex>`` or as the bare hex digest.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from .errors import ConfigError, NotSupported, ProtocolError, RunbridgeError
from .models import RunStatus
from .providers.base import Provider

__all__ = ["WebhookError", "parse_delivery", "sign", "signature_header", "verify_signature"]

_PREFIX = "sha256="


class WebhookError(RunbridgeError):
    """A delivery that must not be trusted: its signature is missing or does not match."""


def _key(secret: str | bytes) -> bytes:
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    if not isinstance(secret, (bytes, bytearray)) or not secret:
        raise ConfigError("the webhook secret must be a non-empty string or bytes")
    return bytes(secret)


def _bytes(body: bytes | bytearray | str) -> bytes:
    if isinstance(body, str):
        try:
            return body.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: no request body can hold them
            raise ConfigError("a webhook body given as str must be valid Unicode") from None
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    raise ConfigError(
        f"a webhook body must be bytes, str or the decoded JSON mapping, got {type(body).__name__}"
    )


def sign(body: bytes | bytearray | str, secret: str | bytes) -> str:
    """The signature header value for ``body``: ``sha256=`` and the HMAC-SHA256 hex digest."""
    return _PREFIX + hmac.new(_key(secret), _bytes(body), hashlib.sha256).hexdigest()


def verify_signature(
    body: bytes | bytearray | str, signature: str | None, secret: str | bytes
) -> bool:
    """Whether ``signature`` (``sha256=<hex>`` or ``<hex>``) signs the raw ``body``.

    Compares in constant time; a missing or malformed signature is simply not valid.
    """
    expected = hmac.new(_key(secret), _bytes(body), hashlib.sha256).hexdigest()
    if not isinstance(signature, str):
        return False
    given = signature.strip()
    if given[: len(_PREFIX)].lower() == _PREFIX:
        given = given[len(_PREFIX) :]
    return hmac.compare_digest(given.lower().encode("ascii", "replace"), expected.encode("ascii"))


def signature_header(provider: Provider) -> str | None:
    """The (lower-case) header that carries a platform's delivery signature, if it signs them."""
    header = getattr(provider, "webhook_signature_header", None)
    return header.lower() if isinstance(header, str) and header else None


def _provider(provider: Provider | str) -> Provider:
    if isinstance(provider, Provider):
        return provider
    if isinstance(provider, str):
        from .registry import create_provider

        return create_provider(provider)
    raise ConfigError(f"expected a Provider or a platform name, got {type(provider).__name__}")


def parse_delivery(
    provider: Provider | str,
    body: bytes | bytearray | str | Mapping[str, Any],
    headers: Mapping[str, str] | None = None,
    *,
    secret: str | bytes | None = None,
) -> RunStatus:
    """The RunStatus a webhook delivery reports.

    ``provider`` is the client's provider (``client.provider``, so its options, such as Lume's
    ``partial`` policy, apply) or a platform name. ``body`` is the request body as received;
    pass the raw bytes when a ``secret`` is given, since the signature covers them exactly.
    With ``secret``, a delivery whose signature is missing or wrong raises
    :class:`WebhookError`; without one nothing is verified, so treat the result as a hint and
    confirm it with ``client.get(status.ref)`` before acting on it.

    Raises :class:`ProtocolError` for a body that is not a delivery, and
    :class:`NotSupported` for a platform without webhook deliveries.
    """
    provider = _provider(provider)
    parse = getattr(provider, "parse_webhook", None)
    if not callable(parse):
        raise NotSupported(f"{provider.name} has no webhook deliveries runbridge can read")
    if headers is not None and not isinstance(headers, Mapping):
        raise ConfigError(f"webhook headers must be a mapping, got {type(headers).__name__}")
    lowered = {str(k).lower(): str(v) for k, v in (headers or {}).items()}
    if secret is not None:
        if isinstance(body, Mapping):
            raise ConfigError(
                "verifying a webhook signature needs the raw request body (bytes), "
                "not the decoded JSON"
            )
        header = signature_header(provider)
        if header is None:
            raise NotSupported(f"{provider.name} does not sign its webhook deliveries")
        if not verify_signature(body, lowered.get(header), secret):
            what = "missing" if header not in lowered else "does not match the body"
            raise WebhookError(f"{provider.name} webhook delivery rejected: {header} {what}")
    if isinstance(body, Mapping):
        payload: Any = body
    else:
        raw = _bytes(body)
        try:
            payload = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # (UnicodeDecodeError is a ValueError)
            excerpt = raw[:200].decode("utf-8", "replace")
            raise ProtocolError(
                f"{provider.name}: a webhook delivery is not valid JSON: {exc}; body starts "
                f"{excerpt!r}"
            ) from None
    status = parse(payload, lowered)
    if not isinstance(status, RunStatus):
        raise ProtocolError(f"{provider.name}: parse_webhook returned {type(status).__name__}")
    return status

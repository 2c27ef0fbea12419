"""Keep secrets out of logs, error messages and stored records.

Credentials only ever travel in request headers, but an upstream may echo them back in
an error body, a `Location` or a `Link`, so every excerpt and message built from upstream
data passes here. Text from an upstream also has its control characters escaped: an ESC,
VT, FF or NEL in a log line or a failure message can rewrite a terminal or split a line.
"""

from __future__ import annotations

import re
import threading
from urllib.parse import urlsplit, urlunsplit

_lock = threading.Lock()
_secrets: set[str] = set()
_longest = 0
MASK = "***"

# C0 (but tab), DEL and C1, plus the Unicode line and paragraph separators: what a
# terminal or a line-based log reader takes as a command or a line break.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def register_secret(value: str | None) -> None:
    """Remember a secret so that `redact` masks it wherever it appears."""
    global _longest
    if value and len(value) >= 4:
        with _lock:
            _secrets.add(value)
            _longest = max(_longest, len(value))


def redact(text: str) -> str:
    """Return `text` with every registered secret replaced by a mask."""
    for secret in tuple(_secrets):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


#: Celery's failover form: several broker URLs in one string (`amqp://h1;amqp://h2`).
FAILOVER_SEPARATOR = ";"


def masked_url(url: str, *, span: bool = False) -> str:
    """`url` fit to print, log or put on a span: its password masked (its user kept, as
    the CLI shows which user connects), a user with no password (a token in the user
    field) masked too, and every registered secret masked; in a failover list
    (`amqp://a;amqp://b`) every URL's. The one URL mask of the service.

    With `span`, any user information becomes `REDACTED:REDACTED`, as OpenTelemetry's
    semantic conventions ask of `url.full`."""
    if FAILOVER_SEPARATOR in url:
        return FAILOVER_SEPARATOR.join(
            masked_url(one, span=span) for one in url.split(FAILOVER_SEPARATOR)
        )
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
    except ValueError:  # not a URL (a bad port): only the registered secrets to mask
        return redact(url)
    if span and "@" in parts.netloc:
        url = urlunsplit(parts._replace(netloc=f"REDACTED:REDACTED@{host}"))
    elif parts.password is not None:
        url = urlunsplit(parts._replace(netloc=f"{parts.username or ''}:{MASK}@{host}"))
    elif "@" in parts.netloc:
        url = urlunsplit(parts._replace(netloc=f"{MASK}@{host}"))
    return redact(url)


def url_passwords(url: str) -> list[str]:
    """The password of every URL in `url` (a failover list included), to redact."""
    found = []
    for one in url.split(FAILOVER_SEPARATOR):
        try:
            password = urlsplit(one).password
        except ValueError:  # not a URL: nothing to find
            continue
        if password:
            found.append(password)
    return found


def escape_controls(text: str) -> str:
    """`text` with every control character written as an escape (`\\x1b`, `\\x85`)."""
    if not _CONTROL.search(text):
        return text
    return _CONTROL.sub(
        lambda match: (
            f"\\x{ord(match.group()):02x}"
            if ord(match.group()) < 0x100
            else f"\\u{ord(match.group()):04x}"
        ),
        text,
    )


def clean(text: str) -> str:
    """Upstream text made safe to show: secrets masked, then controls escaped.

    Masking runs on the text as it came, before escaping rewrites any of it. Applying
    `clean` twice changes nothing, which matters: exceptions are rebuilt from their
    cleaned arguments when they are unpickled.
    """
    return escape_controls(redact(text))


def excerpt(body: bytes | str, limit: int = 200) -> str:
    """A short, single-line, redacted excerpt of a body for error messages.

    Secrets are masked before anything is cut or squeezed: cutting first could leave a
    partial token at the edge, and squeezing padding whitespace would pull it into the
    excerpt. Only the head of the body is decoded (never a whole 300 KB body for a
    200-character excerpt); a token that might cross the end of that head is dropped
    with it.
    """
    window = limit * 4
    head = body[: window + 2 * _longest]
    text = head.decode("utf-8", "replace") if isinstance(head, bytes) else head
    text = redact(text)
    if len(head) < len(body) and _longest:
        # The head ends mid-body: its last characters may be the start of a secret,
        # which `redact` cannot recognise. Whole secrets before them are masked already.
        text = text[: len(text) - _longest]
    text = " ".join(text.split())
    return escape_controls(text)[:limit]

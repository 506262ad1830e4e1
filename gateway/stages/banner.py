"""The visible provenance banner of bridged mail (issue 11, item 4).

A header is not enough: most readers never see an `X-Msgw-Bridged` field. So what the bridge
rebuilds from legacy mail starts with two short lines, in French and English, at the top of
its first text part (text/plain or text/html, every alternative of it), saying that it came
from a legacy system and whether its sender was authenticated. It is added before signing,
so it is covered by the organisation's signature like the rest.

The text bytes that follow are kept as they are (an HPRIM result stays byte for byte after the
banner); the changed part is re-encoded base64. Pure code: bytes in, bytes out.
"""

from __future__ import annotations

import base64
import email
import email.message
import email.policy
import html
import os
import re
import unicodedata

from gateway.legacy.codec import display_name
from gateway.legacy.mimeutil import is_attachment, to_bytes


def banner_lines(codec: str, sender_authenticated: bool) -> tuple[str, str]:
    """(French, English) provenance sentences for a message bridged from `codec`."""
    system = display_name(codec)  # "Apicrypt", "OpenPGP": the codec says what people call it
    if sender_authenticated:
        return (f"Message reçu d'une messagerie chiffrée ancienne ({system}) et converti par la passerelle ; "
                f"l'expéditeur a été authentifié par sa signature {system}.",
                f"Received from a legacy encrypted mail system ({system}) and converted by the gateway; "
                f"the sender was authenticated by its {system} signature.")
    return (f"Message reçu d'une messagerie chiffrée ancienne ({system}) et converti par la passerelle ; "
            "l'expéditeur n'a pas été authentifié.",
            f"Received from a legacy encrypted mail system ({system}) and converted by the gateway; "
            "the sender was not authenticated.")


def add_banner(message: bytes, lines: tuple[str, ...]) -> bytes:
    """`message` with `lines` at the top of its first text part (all its alternatives), or in a
    new first text/plain part when it has none."""
    msg = email.message_from_bytes(message, policy=email.policy.compat32)
    targets = _first_text(msg)
    if targets:
        for part in targets:
            _prepend(part, lines)
    else:
        _new_first_part(msg, lines)
    return to_bytes(msg)


def _first_text(msg: email.message.Message) -> list[email.message.Message]:
    """The first displayed text leaf, with its sibling alternatives when it is in one."""

    def visit(part: email.message.Message) -> list[email.message.Message] | None:
        kind = part.get_content_type()
        if part.is_multipart():
            children = [p for p in part.get_payload() if isinstance(p, email.message.Message)]
            if kind == "multipart/alternative":
                texts = [p for p in children if p.get_content_type() in ("text/plain", "text/html")
                         and not is_attachment(p)]
                if texts:
                    return texts
            for child in children:
                found = visit(child)
                if found:
                    return found
            return None
        if kind in ("text/plain", "text/html") and not is_attachment(part):
            return [part]
        return None

    if msg.get_content_type() == "message/rfc822":
        return []
    return visit(msg) or []


def _ascii_compatible(charset: str) -> bool:
    """Does `charset` write ASCII as ASCII? A name Python does not know as a *text* encoding
    (unknown, or a bytes codec such as `base64`, `hex`, `zlib` that a hostile part may name) is
    treated as the ASCII superset nearly every mail charset is."""
    try:
        return "banner".encode(charset) == b"banner"
    except (LookupError, ValueError):  # str.encode refuses non-text codecs with LookupError
        return True


def _encoded(text: str, charset: str) -> bytes:
    """`text` in `charset`, or without its accents when the charset lacks them (never fails)."""
    try:
        return text.encode(charset)
    except (UnicodeEncodeError, LookupError):
        return unicodedata.normalize("NFKD", text).encode("ascii", "ignore")


def _insert(body: bytes, charset: str, banner: str, at: int) -> bytes:
    """`banner` inserted at byte offset `at` of `body`; a charset that is not an ASCII superset
    (UTF-16) is decoded and re-encoded with the banner in front."""
    if _ascii_compatible(charset):
        return body[:at] + _encoded(banner, charset) + body[at:]
    try:
        return (banner + body.decode(charset)).encode(charset)
    except (UnicodeError, LookupError):
        return _encoded(banner, "ascii") + body


def _prepend(part: email.message.Message, lines: tuple[str, ...]) -> None:
    data = part.get_payload(decode=True)
    body = data if isinstance(data, bytes) else b""
    charset = part.get_content_charset() or "us-ascii"
    if part.get_content_type() == "text/html":
        block = ('<div style="border:1px solid #a60;padding:4px 8px;margin:0 0 8px 0">'
                 + "<br>".join(html.escape(line) for line in lines) + "</div>\r\n")
        banner = block.encode("ascii", "xmlcharrefreplace").decode("ascii")  # any charset reads it
        tag = re.search(rb"<body[^>]*>", body, re.IGNORECASE) if _ascii_compatible(charset) else None
        new = _insert(body, charset, banner, tag.end() if tag else 0)
    else:
        text = "\r\n".join(lines) + "\r\n" + "-" * 20 + "\r\n\r\n"
        if charset.lower() in ("us-ascii", "ascii") and body.isascii():
            charset = "utf-8"  # an ASCII body reads the same as UTF-8: the accents can stay
            part.set_param("charset", charset)
        new = _insert(body, charset, text, 0)
    del part["Content-Transfer-Encoding"]
    part["Content-Transfer-Encoding"] = "base64"
    part.set_payload(base64.encodebytes(new).decode("ascii").replace("\n", "\r\n"))


def _new_first_part(msg: email.message.Message, lines: tuple[str, ...]) -> None:
    """Move the content into a multipart/mixed whose first part is the banner."""
    content = email.message.Message()
    for name, value in msg.raw_items():
        if name.lower().startswith("content-"):
            content[name] = value
    if content.get("Content-Type") is None:
        content["Content-Type"] = "text/plain; charset=us-ascii"
    content.set_payload(msg.get_payload())
    for name in {n.lower() for n in msg.keys() if n.lower().startswith("content-")}:
        del msg[name]
    banner = email.message.Message()
    banner["Content-Type"] = 'text/plain; charset="utf-8"'
    banner["Content-Transfer-Encoding"] = "base64"
    banner.set_payload(base64.encodebytes(("\r\n".join(lines) + "\r\n").encode()).decode("ascii"))
    if msg.get("MIME-Version") is None:
        msg["MIME-Version"] = "1.0"
    msg["Content-Type"] = "multipart/mixed"
    msg.set_boundary("=_msgw_banner_" + os.urandom(12).hex())
    msg.set_payload([banner, content])

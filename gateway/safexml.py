"""Untrusted XML, read one way everywhere (CDA documents, the ANS liste blanche): no entity
expansion, no DTD loading, no network, no huge trees, and a document that declares a DOCTYPE
or entities refused before parsing (the only defence that needs no trust in the parser).

Why a module: the payload readers and the trust-space list each had their own copy of these
settings; one place keeps them from drifting apart."""

from __future__ import annotations

from lxml import etree


def declares_dtd(data: bytes) -> bool:
    """True when the document declares a DOCTYPE or entities: refused, never parsed."""
    return b"<!DOCTYPE" in data or b"<!ENTITY" in data


def parser(*, strip_comments: bool = True) -> etree.XMLParser:
    """The hardened lxml parser (a new one per call: lxml parsers are not thread-safe)."""
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                           huge_tree=False, remove_comments=strip_comments, remove_pis=strip_comments)


__all__ = ["declares_dtd", "parser"]

"""Coverage-guided fuzzing with atheris (libFuzzer) of the readers that take outside input.

Run by ``test_atheris.py`` as a subprocess, one target per process (libFuzzer owns the process
and exits when done)::

    MSGW_ATHERIS_TARGET=hprim python -m tests.resilience.atheris_targets -runs=3000 CORPUS_DIR

A reader may return or raise one of our typed errors (``GatewayError``); anything else is a crash:
libFuzzer prints the traceback, writes the input as ``crash-*`` in the working directory and
exits non-zero. Why beside hypothesis: hypothesis mutates our seeds blindly, atheris follows the
branches the code takes (the gateway package is instrumented), so it reaches deeper states of
the HPRIM/HL7/CMS parsers from the same seeds.
"""

from __future__ import annotations

import os
import sys

import atheris

with atheris.instrument_imports(include=["gateway"]):
    from gateway.errors import GatewayError
    from gateway.intake.wrap import notice_message, payload_message
    from gateway.legacy.apicrypt1_format import dearmor
    from gateway.routing.cda import read_cda
    from gateway.routing.hl7 import read_hl7
    from gateway.routing.hprim import read_hprim
    from gateway.routing.sidecar import read_sidecar
    from gateway.routing.xdm import read_xdm
    from gateway.smime import mime
    from gateway.smime.cms_verify import check_signed_data


_PDF = b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"


def _sidecar(data: bytes) -> None:
    """What the reader accepts must also build the outgoing message and the sender's notice."""
    import datetime as dt

    info = read_sidecar(data)
    now = dt.datetime(2026, 11, 25, tzinfo=dt.UTC)
    payload_message(_PDF, info, sender="lis@labo.test", recipients=("dr@cabinet.test",), filename="x.pdf", now=now,
                    xdm=True)
    notice_message(["x"], info, sender="postmaster@labo.test", to="lis@labo.test", now=now)


def _mime(data: bytes) -> None:
    try:
        mime.classify(data)
    finally:
        mime.content_entity(data)


TARGETS = {
    "hprim": read_hprim,
    "hl7": read_hl7,
    "cda": read_cda,
    "xdm": read_xdm,
    "sidecar": _sidecar,
    "armor": dearmor,
    "mime": _mime,
    "cms-signed": lambda data: check_signed_data(data, None),
}


def main() -> None:
    target = TARGETS[os.environ["MSGW_ATHERIS_TARGET"]]

    def one_input(data: bytes) -> None:
        try:
            target(data)
        except GatewayError:
            pass

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

"""A directory capability is parsed once (`Capability.parse`), with a typed error on garbage:
no stage slices `legacy:<codec>` strings any more."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest

from gateway.directory.capability import Capability, InvalidCapability
from gateway.errors import GatewayError
from gateway.stages.context import RecipientView, capability_of


@pytest.mark.parametrize(("text", "kind", "codec"), [
    ("smime", "smime", None), ("local", "local", None), ("trusted-domain", "trusted-domain", None),
    ("legacy:apicrypt1", "legacy", "apicrypt1"), (" legacy:openpgp ", "legacy", "openpgp"),
])
def test_parse_gives_kind_and_codec(text: str, kind: str, codec: str | None) -> None:
    cap = Capability.parse(text)
    assert (cap.kind, cap.codec) == (kind, codec)
    assert cap.is_legacy is (kind == "legacy")
    assert str(cap) == text.strip()


@pytest.mark.parametrize("text", ["", "legacy:", "legacy:APICRYPT", "legacy:a b", "smime2", "Legacy:apicrypt1",
                                  "legacy:" + "x" * 40])
def test_garbage_is_a_typed_permanent_error_that_says_what_was_expected(text: str) -> None:
    with pytest.raises(InvalidCapability) as raised:
        Capability.parse(text)
    assert isinstance(raised.value, GatewayError) and not raised.value.temporary
    assert "legacy:<codec>" in str(raised.value) and len(str(raised.value)) < 200


def test_read_is_none_for_an_address_without_capability() -> None:
    assert Capability.read(None) is None and Capability.read("  ") is None
    assert Capability.read("legacy:apicrypt1") == Capability.legacy("apicrypt1") == Capability("legacy", "apicrypt1")


class _Directory:
    """A context that answers one directory row (what `capability_of` asks of a ProtectionContext)."""

    def __init__(self, capability: str | None) -> None:
        self.capability = capability

    def recipient(self, address: str) -> RecipientView:
        return RecipientView(address, self.capability)


def test_an_unreadable_stored_capability_is_no_capability_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.policy")
    assert capability_of(_Directory("legacy:apicrypt1"), "dr@x.test") == Capability("legacy", "apicrypt1")  # type: ignore[arg-type]
    assert capability_of(_Directory("legacy:BAD CODEC"), "dr@x.test") is None  # type: ignore[arg-type]
    assert [r.getMessage() for r in caplog.records] == ["directory-capability-invalid"]
    assert "dr@x.test" not in caplog.text


def test_no_stage_slices_capability_strings() -> None:
    stages = Path(__file__).resolve().parents[2] / "gateway" / "stages"
    found = subprocess.run(["grep", "-rnE", r"capability\[|startswith\(\"legacy:\"\)|== f\"legacy:", str(stages)],
                           capture_output=True, text=True)
    assert found.stdout == ""

"""One base for the intake doors (`gateway.intake.door.IntakeDoor`): the MLLP listener, the drop
folders and the mailed-payload route are subclasses, and a new door is one small subclass that
gets the shared steps: resolve, wrap, queue under its listener name with the configured identity,
record duplicates only once the spool has the copies."""

from __future__ import annotations

import pytest

from gateway.errors import SpoolError, is_temporary
from gateway.intake.door import IntakeDoor
from gateway.intake.dropfolder import DropFolderWatcher
from gateway.intake.mllp import MllpListener
from gateway.intake.smtp_payload import SmtpPayloadDoor
from tests.intake import samples as s


class ApiDoor(IntakeDoor):
    """What a next door (a DPI pushing results over an API) would be: a name and how it receives."""

    listener = "api"

    def receive(self, frame: bytes) -> list[str]:
        return self.submit(frame, "result.hl7", client="api:dpi-1")[1]


def test_the_doors_share_one_base() -> None:
    assert all(issubclass(door, IntakeDoor) for door in (MllpListener, DropFolderWatcher, SmtpPayloadDoor))


def test_a_new_door_is_one_subclass(spool, directory, dedup, routing) -> None:
    woken: list[str] = []
    door = ApiDoor(spool, directory, dedup, woken.append, 3600.0, routing=routing, sender=s.LIS,
                   auth_user="network:dpi")
    ids = door.receive(s.oru(control="CTRLAPI1"))
    door.wake(ids)
    (queued,) = spool.list()
    assert ids == woken == [queued.id]
    assert (queued.listener, queued.client, queued.auth_user, queued.sender) == ("api", "api:dpi-1#0",
                                                                                 "network:dpi", s.LIS)
    assert [r.address for r in queued.recipients] == [s.ADDR_LOCAL]
    assert door.receive(s.oru(control="CTRLAPI1")) == []  # the same result again: a duplicate, not re-sent


def test_duplicates_are_recorded_only_once_queued(spool, directory, dedup, routing) -> None:
    door = ApiDoor(spool, directory, dedup, None, 3600.0, routing=routing, sender=s.LIS, auth_user=s.LIS)
    spool.close()
    with pytest.raises(SpoolError) as info:
        door.receive(s.oru(control="CTRLAPI2"))
    assert is_temporary(info.value)
    spool.open()
    assert len(door.receive(s.oru(control="CTRLAPI2"))) == 1  # the resend is queued, not suppressed

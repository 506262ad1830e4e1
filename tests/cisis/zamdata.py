"""Shared values for the ZAM tests: the ANS example's ORU header (SIL-Y/labo → PFI-X/Organisation-X)."""

from __future__ import annotations

import datetime as dt

from gateway.cisis.model import MessageHeader

ORIGINAL = MessageHeader(sending_application="SIL-Y", sending_facility="labo", receiving_application="PFI-X",
                         receiving_facility="Organisation-X", control_id="015", message_type="ORU", trigger="R01",
                         version="2.5", processing_id="P", charset="UNICODE UTF-8", profile_version="2.0")
NOW = dt.datetime(2021, 10, 5, 15, 29, 8, tzinfo=dt.UTC)

"""Intake of structured payloads from systems (issue 6): MLLP, drop folders, shared processing.

``settings.parse_intake`` reads ``[intake]``; ``service.IntakeService`` runs the MLLP listener and
the drop-folder watchers; ``process.intake_bytes`` is the one path every door uses
(read → resolve → duplicate check → wrap). Imports stay lazy here so that ``gateway.config``
can import the settings parser without pulling asyncio servers in.
"""

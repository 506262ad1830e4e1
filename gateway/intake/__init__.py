"""Intake of structured payloads from systems (issue 6): MLLP, drop folders, shared processing.

``[intake]`` is read by ``gateway.config.intake`` (re-exported by ``settings``);
``service.IntakeService`` builds and runs the doors (``door.IntakeDoor``: MLLP, drop folders, the
payload address); ``process.intake_bytes`` is the one path every door uses
(read → resolve → duplicate check → wrap).
"""

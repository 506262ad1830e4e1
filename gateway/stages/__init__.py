"""Pipeline stages that combine the packages: the protection decision (`decide`: one pure table;
`route`: the facts it needs and the plan it puts on the work item), its executors (`outbound`,
one per form; `inbound` for local mailboxes; `bridge` for legacy formats), and the wiring
(`build`).

`routing`, `smime` and `legacy` never import each other (DESIGN.md); the stages here are
where their results meet, through a small `ProtectionContext` so each stage is testable
with real keys and no server.
"""

"""Pipeline stages that combine the packages: outbound protection, inbound unwrapping.

`routing`, `smime` and `legacy` never import each other (DESIGN.md); the stages here are
where their results meet, through a small `ProtectionContext` so each stage is testable
with real keys and no server.
"""

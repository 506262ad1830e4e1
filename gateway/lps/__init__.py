"""CI-SIS volet "Transmission au LPS de documents CDA provenant d'un courriel MSSanté" (pure part).

msgw is the GESTIONNAIRE: it reads the MSSanté mail that reached an application mailbox
(`incoming`), checks the IHE_XDM archive before any consumer sees it (`checks`), builds one HL7 v2.6
MDM per CDA (`mdm`) and the integration MDN / error notice back to the sender (`mdn`). No I/O here:
the transport, the store of delivered documents and the wiring live elsewhere.
"""

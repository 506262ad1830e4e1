"""Who a correspondent is and how to reach them safely: the correspondent directory and its
Annuaire Santé import, the certificate sources and their discovery, and the list of domains
authorised in the MSSanté trust space. `gateway.routing` decides what a document is and who
receives it; it asks this package who they are."""

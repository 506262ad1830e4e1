"""CI-SIS "Transmission de document(s) CDA en HL7v2": msgw as the GESTIONNAIRE (intermediation
platform) of Ségur-referenced lab and hospital software. See `gateway.cisis.model`."""

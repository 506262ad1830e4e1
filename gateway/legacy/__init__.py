"""Legacy encrypted-mail formats (Apicrypt v1, OpenPGP) behind one `LegacyCodec` interface.

Knows nothing about SMTP, routing or S/MIME: the pipeline picks a codec from the registry
(`detect_codec`, `get`) and passes it the key object it needs.
"""

from gateway.legacy.codec import (
    CodecOption,
    DecodedAttachment,
    DecodedMessage,
    EncodedFile,
    LegacyCodec,
    SignatureStatus,
    detect_codec,
    display_name,
    get,
    names,
    register,
    unregister,
)

__all__ = ["CodecOption", "DecodedAttachment", "DecodedMessage", "EncodedFile", "LegacyCodec", "SignatureStatus",
           "detect_codec", "display_name", "get", "names", "register", "unregister"]

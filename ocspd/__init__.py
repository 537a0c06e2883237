"""ocspd: a production OCSP responder daemon for private and enterprise PKI."""

__version__ = "0.1.0"

"""Secure health messaging gateway: a durable SMTP relay that protects health mail end to end."""

__version__ = "0.1.0"

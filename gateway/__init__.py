"""B2B channel gateway: every channel in, one interaction record out."""

__version__ = "0.1.0"

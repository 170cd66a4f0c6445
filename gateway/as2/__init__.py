"""AS2 (RFC 4130): S/MIME, MDNs, partner profiles, the receiving logic and the message ledger.

The HTTP endpoint lives in :mod:`adapters.as2`; everything here is independent of HTTP.
"""

"""A reference call-handling system (CHS) client for the gsem hub.

What a partner's ticketing tool needs to take part in the exchange: build transactions
(:mod:`gsem.chs.builder`), send them over mutual TLS (:mod:`gsem.chs.client`), keep its
own view of its incidents (:mod:`gsem.chs.state`) and receive what the hub delivers,
pushed or pulled (:mod:`gsem.chs.receiver`).  ``gsem chs`` is its command line.
"""

__all__ = ["builder", "client", "receiver", "state"]

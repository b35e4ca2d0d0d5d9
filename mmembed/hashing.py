"""Seeded, process-independent numbers: every "random" pick that must be reproducible uses these.

Python's ``hash`` changes between processes and ``random.Random`` per item is slow; a keyed BLAKE2b
of the parts gives the same 64-bit number in every process, run and machine.
"""

from __future__ import annotations

import hashlib


def stable_hash(*parts: object, sep: str = "\x1f") -> int:
    """A 64-bit integer that depends only on ``parts`` (as text, joined by ``sep``)."""
    text = sep.join(str(p) for p in parts)
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")

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


class HashStream:
    """A stream of 64-bit numbers that depends only on a key: eight per hash, more on demand.

    Much cheaper than seeding a :class:`random.Random` per row, which matters when the sampler
    resolves every row of a million-query epoch.
    """

    def __init__(self, key: str):
        self._key = key.encode("utf-8")
        self._block = 0
        self._pool: list[int] = []

    def below(self, n: int) -> int:
        """A number in ``[0, n)`` (modulo bias below 2**-40 for any realistic ``n``)."""
        if not self._pool:
            digest = hashlib.blake2b(self._key + self._block.to_bytes(4, "big"), digest_size=64).digest()
            self._pool = [int.from_bytes(digest[i:i + 8], "big") for i in range(56, -1, -8)]
            self._block += 1
        return self._pool.pop() % n

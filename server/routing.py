"""Where one request goes: sticky arm assignment for A/B splits and the shadow sample.

Pure functions of the routing key, so that a member sees one arm for the whole experiment
(as long as the weights stay) on every replica, with no shared state: the key is hashed with
the experiment's name (``salt``) to a point in [0, 1), and the arms own consecutive intervals
in the order written, each as wide as its share of the weights.
"""

from __future__ import annotations

import hashlib
import secrets


def unit_hash(key: str, salt: str) -> float:
    """A uniform point in [0, 1) for ``key`` (sha256: stable across processes and versions)."""
    digest = hashlib.sha256(f"{salt}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def choose_arm(arms: dict[str, float], key: str | None, salt: str) -> str:
    """The arm ``key`` falls in; a request without a key gets a random arm (not sticky)."""
    if len(arms) == 1:
        return next(iter(arms))
    total = sum(arms.values())
    point = (unit_hash(key, salt) if key is not None else secrets.randbelow(2**53) / 2**53) * total
    upto = 0.0
    last = None
    for version, weight in arms.items():
        if weight <= 0:
            continue
        upto += weight
        last = version
        if point < upto:
            return version
    return last  # float rounding at the top end


def shadow_sampled(percent: float, key: str | None, salt: str) -> bool:
    """Whether this request's copy goes to the shadow (sticky on the key, like the arms)."""
    if percent >= 100:
        return True
    if percent <= 0:
        return False
    point = (
        unit_hash(key, "shadow:" + salt) if key is not None else secrets.randbelow(10**6) / 10**6
    )
    return point * 100 < percent

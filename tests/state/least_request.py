"""Call acquire_least_request the way the policy does, from names and weights."""

from __future__ import annotations

import random
from collections.abc import Sequence

from llmlbd.state.leases import Leases, Reservation
from llmlbd.state.ordered_index import Membership

_rng = random.Random()


def acquire_least(
    leases: Leases,
    request_id: str,
    names: Sequence[str],
    weights: Sequence[float],
    model: str = "",
    cap: int = 0,
    exclude: Sequence[str] = (),
    seed: int | None = None,
) -> Reservation:
    members = Membership.of(names, weights)
    return leases.acquire_least_request(
        request_id,
        members,
        seed=_rng.getrandbits(31) if seed is None else seed,
        model=model,
        cap=cap,
        exclude=exclude,
    )

"""Fault injection, for testing how a load balancer copes with a bad backend.

A fault spec is a ``;``-separated list of directives, given per request in
the ``x-sim-fault`` header or for every inference request with ``--fault``
(a header directive overrides the flag's)::

    status=503              answer with this status and vLLM's error body
    refuse                  read the request, then reset the connection, no answer
    close-mid-stream[=N]    stream N tokens (default: half the answer), then drop
                            the connection without the final chunk or [DONE]
    stall-first-byte=S      wait S seconds before anything is sent
    slow-tokens=S           send at most one token every S seconds

Durations are wall-clock seconds: ``--time-scale`` does not touch them,
because they exist to trip a client's timeouts.

``/health`` has its own switches: ``--health-flap S`` alternates healthy and
503 every S seconds, and ``POST /debug/faults`` changes the server-wide spec
or the health mode at run time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

__all__ = ["Fault", "parse_fault", "HealthSwitch", "FAULT_HEADER"]

FAULT_HEADER = "HTTP_X_SIM_FAULT"  # the WSGI environ key of the x-sim-fault header


@dataclass(frozen=True)
class Fault:
    status: int | None = None
    refuse: bool = False
    close_mid_stream: int | None = None  # tokens before the drop; 0 = half the answer
    stall_first_byte_s: float = 0.0
    slow_tokens_s: float = 0.0


def parse_fault(spec: str, base: Fault | None = None) -> Fault:
    """Parse a fault spec on top of ``base``; raises ValueError naming the bad directive."""
    fault = base or Fault()
    for directive in spec.replace(",", ";").split(";"):
        directive = directive.strip()
        if not directive:
            continue
        key, _, value = directive.partition("=")
        key = key.strip().lower()
        value = value.strip()
        try:
            if key == "status":
                status = int(value)
                if not 400 <= status <= 599:
                    raise ValueError
                fault = replace(fault, status=status)
            elif key == "refuse":
                fault = replace(fault, refuse=True)
            elif key == "close-mid-stream":
                fault = replace(fault, close_mid_stream=int(value) if value else 0)
            elif key == "stall-first-byte":
                fault = replace(fault, stall_first_byte_s=_seconds(value))
            elif key == "slow-tokens":
                fault = replace(fault, slow_tokens_s=_seconds(value))
            else:
                raise KeyError(key)
        except KeyError:
            raise ValueError(
                f"unknown fault directive {directive!r}; known: status=CODE, refuse, "
                f"close-mid-stream[=N], stall-first-byte=S, slow-tokens=S"
            ) from None
        except ValueError:
            raise ValueError(f"bad value in fault directive {directive!r}") from None
    return fault


def _seconds(value: str) -> float:
    seconds = float(value)
    if seconds < 0:
        raise ValueError
    return seconds


class HealthSwitch:
    """Whether /health says 200: always, never, or flapping with a period."""

    def __init__(self, flap_s: float = 0.0) -> None:
        self.set("flap" if flap_s > 0 else "up", flap_s)

    def set(self, mode: str, flap_s: float = 0.0) -> None:
        if mode not in ("up", "down", "flap"):
            raise ValueError(f"health mode must be up, down or flap, got {mode!r}")
        if mode == "flap" and flap_s <= 0:
            raise ValueError("a flapping /health needs a positive period")
        self.mode = mode
        self.flap_s = flap_s
        self._since = time.monotonic()

    def healthy(self) -> bool:
        if self.mode == "flap":
            return int((time.monotonic() - self._since) / self.flap_s) % 2 == 0
        return self.mode == "up"

    def describe(self) -> dict:
        return {"mode": self.mode, "flap_s": self.flap_s, "healthy": self.healthy()}

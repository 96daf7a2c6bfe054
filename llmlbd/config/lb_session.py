"""lb_config keys read by the session_affinity policy (listed in settings.SETTINGS)."""

from __future__ import annotations

from typing import Any

from llmlbd.config import validators as v
from llmlbd.config.setting import Setting

SESSION = "session_affinity"


def _load_factor(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1:
        raise ValueError(
            f"expected a number >= 1 (1.25 lets a backend take 25% over the mean), got {value!r}"
        )
    return float(value)


SETTINGS: list[Setting] = [
    Setting(
        "lb_config.sessionHeader",
        "x-session-id",
        v.string,
        "Request header that names the session; its requests stay on one backend.",
        policies=(SESSION,),
    ),
    Setting(
        "lb_config.sessionFromUser",
        True,
        v.boolean,
        "Without the header, use the OpenAI `user` field of the body as the session.",
        policies=(SESSION,),
    ),
    Setting(
        "lb_config.sessionTTL",
        1800,
        v.positive_int,
        "Forget a session's backend after this long without a request.",
        "s",
        policies=(SESSION,),
    ),
    Setting(
        "lb_config.loadFactor",
        1.25,
        _load_factor,
        "Bounded loads: a backend takes a session's request while its in-flight count stays "
        "within this multiple of the fleet's mean (per unit of weight); else the session moves "
        "to the next of the first 16 backends on its ring, past them to the least loaded.",
        policies=(SESSION,),
    ),
    Setting(
        "lb_config.loadSlack",
        2,
        v.non_negative_int,
        "Requests a backend may always take above the proportional bound, so that a lightly "
        "loaded fleet keeps sessions where they are (the bound alone is 1 at 1 request in flight).",
        "requests",
        policies=(SESSION,),
    ),
    Setting(
        "lb_config.virtualNodes",
        100,
        v.positive_int,
        "Points per backend (times its weight) on the hash ring.",
        policies=(SESSION,),
    ),
]

"""lb_config keys read by the prefix_cache policy (declared here, listed in settings.SETTINGS)."""

from __future__ import annotations

from llmlbd.config import validators as v  # noqa: F401 - used by the declarations
from llmlbd.config.setting import PREFIX, Setting  # noqa: F401

SETTINGS: list[Setting] = [
]

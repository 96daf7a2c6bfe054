"""Pool membership as llmlbctl words it.

The `members` HASH itself (read, discovery, atomic changes) is state/'s:
llmlbd.state.members. Semantics (documented in docs/operations.md): the
config file's `backends` list is only the seed; once the hash exists it is
the truth for every worker and replica. The last member cannot be removed.
"""

from __future__ import annotations

__all__ = ["SOURCES"]

# Where effective_backends found the list, in words.
SOURCES = {
    "redis": "the Redis members hash",
    "config": "the config file (the members hash does not exist yet)",
    "discovered": "the backends seen in Redis (the config lists none and the members hash "
    "does not exist)",
}

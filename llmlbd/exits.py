"""Exit codes of `llmlbd` and `llmlbctl`, one table (documented in docs/cli.md)."""

from __future__ import annotations

import click

OK = 0
FAILURE = 1  # a runtime problem: Redis unreachable, a child that will not start
BAD_CONFIG = 2  # the config or the command line is wrong (click's usage errors are 2 too)
NOT_FOUND = 3  # llmlbctl: the named backend does not exist
UNHEALTHY = 4  # llmlbctl status: the pool has no healthy backend


class ConfigProblem(click.ClickException):
    exit_code = BAD_CONFIG

    def __init__(self, message: str) -> None:
        super().__init__(message)


class RuntimeProblem(click.ClickException):
    exit_code = FAILURE

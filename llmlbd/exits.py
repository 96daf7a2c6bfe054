"""Exit codes of `llmlbd` and `llmlbctl`, one table (documented in docs/cli.md)."""

from __future__ import annotations

import click

OK = 0
FAILURE = 1  # a runtime problem: Redis unreachable, a child that will not start
BAD_CONFIG = 2  # the config or the command line is wrong (click's usage errors are 2 too)
NOT_FOUND = 3  # llmlbctl: the named backend does not exist
UNHEALTHY = 4  # llmlbctl status: the pool has no healthy backend
ADDRESS_IN_USE = 5  # llmlbd start / collector: the address to listen on is taken


class ConfigProblem(click.ClickException):
    exit_code = BAD_CONFIG

    def __init__(self, message: str) -> None:
        super().__init__(message)


class RuntimeProblem(click.ClickException):
    exit_code = FAILURE


class AddressInUse(click.ClickException):
    """A listening address is taken (often: another llmlbd on this host).

    One line and ADDRESS_IN_USE, never a traceback: a supervisor restarting the
    process cannot fix it, and `llmlbd start` backs off a child that exits so.
    """

    exit_code = ADDRESS_IN_USE

    def __init__(self, what: str, address: str, remedy: str) -> None:
        super().__init__(f"{what} cannot listen on {address}: address already in use; {remedy}")

"""``python -m collector --config FILE``: the collector as its own process.

`llmlbd start` runs this as a supervised child on a single VM. With
``--concurrency gevent`` the process is patched here, first, before anything
imports the modules gevent replaces.
"""

import sys


def _wants_gevent(argv: list[str]) -> bool:
    for i, arg in enumerate(argv):
        if arg == "--concurrency=gevent" or (
            arg == "--concurrency" and argv[i + 1 : i + 2] == ["gevent"]
        ):
            return True
    return False


def _main() -> None:
    if _wants_gevent(sys.argv[1:]):
        from collector.cli import patch_for_gevent

        patch_for_gevent()
    from collector.cli import collector_command

    collector_command(prog_name="python -m collector")


if __name__ == "__main__":
    _main()

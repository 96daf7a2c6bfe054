"""``python -m collector --config FILE``: the collector as its own process.

`llmlbd start` runs this as a supervised child on a single VM. gevent
patches the process first (before anything imports socket or threading's
users), unless ``--concurrency threads`` is given.
"""

import sys


def _main() -> None:
    if "--once" not in sys.argv and "threads" not in sys.argv:
        from collector.cli import patch_for_gevent
        patch_for_gevent()
    from collector.cli import collector_command
    collector_command(prog_name="python -m collector")


if __name__ == "__main__":
    _main()

"""``python -m llmlbd.sim``: the same command as ``llmlbd sim``."""

from llmlbd.sim.cli import sim_command

if __name__ == "__main__":
    sim_command(prog_name="python -m llmlbd.sim")

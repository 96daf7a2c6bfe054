"""`python -m llmlbd.ctl` is `llmlbctl`."""

from llmlbd.ctl import main

main(prog_name="llmlbctl")

from llmlbd.cli import main

main()

from mres.cli import main

main()

from settlement.simulated.cli import main

main()

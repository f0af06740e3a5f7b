from evalchemy.cli.app import main

main()

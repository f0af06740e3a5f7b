from evalchemy.cli import main

main()

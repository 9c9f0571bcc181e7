from lazygen.cli import main

main()

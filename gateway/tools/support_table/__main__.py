"""`python -m gateway.tools.support_table run | render | check`."""

from gateway.tools.support_table.cli import main

main()

"""`python -m gateway.tools.tiny_models [--out DIR] [names...]`: build tiny models ahead of use."""

from gateway.tools.tiny_models.build import main

main()

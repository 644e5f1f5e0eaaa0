"""`python -m cli`: the `faramir` command."""

from cli.app import main

main()

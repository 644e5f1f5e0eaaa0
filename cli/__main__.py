"""`python -m faramir.cli`: the `faramir` command."""

from faramir.cli.app import main

main()

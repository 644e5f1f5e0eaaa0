"""The `faramir` command: thin typer wrappers over `faramir` and `store` library functions."""

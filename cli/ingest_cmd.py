"""Commands of this group register themselves on `cli.app.app` when imported."""

from __future__ import annotations

from cli.app import app  # noqa: F401

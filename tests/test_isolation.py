"""The test suite never reads or writes the real home: no cache, digest file or weights of a user."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from faramir.download import default_weights_dir
from faramir.store.cache import default_db

REAL_HOME = Path(pwd.getpwuid(os.getuid()).pw_dir)
DIGESTS = REAL_HOME / ".cache" / "faramir" / "file-digests.json"


def _state(path: Path):
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_size, st.st_mtime_ns


def test_home_and_every_default_location_are_temporary():
    home = Path(os.environ["HOME"])
    assert home != REAL_HOME and REAL_HOME not in home.parents
    for location in (default_db(), default_weights_dir(), os.environ["XDG_CACHE_HOME"],
                     os.environ["XDG_DATA_HOME"], Path("~").expanduser()):
        assert Path(location).is_relative_to(home), location
    for name in ("FARAMIR_DB", "FARAMIR_WEIGHTS", "FARAMIR_WEIGHTS_MIRROR"):
        assert name not in os.environ, f"{name} from the environment would reach a user's files"


def test_loading_weights_remembers_digests_in_the_temporary_home_only(tiny_weights):
    from faramir.weights import load_model

    before = _state(DIGESTS)
    load_model(tiny_weights)
    assert _state(DIGESTS) == before, f"{DIGESTS} was written by a test"
    assert (Path(os.environ["XDG_CACHE_HOME"]) / "faramir" / "file-digests.json").is_file()

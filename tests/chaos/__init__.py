"""The fault harness: kills, races, a hostile collection and storage faults against the cache,
each followed by a check of its invariants (`run` drives them; `python -m tests.chaos --help`)."""

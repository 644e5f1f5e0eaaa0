"""`python -m tests.chaos`: the fault harness's full run (see `tests.chaos.run`)."""

from tests.chaos.run import main

main()

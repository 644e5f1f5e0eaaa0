"""The bounds of the numbers the commands and the gallery take, named once: each face declares them
as its options' and parameters' ranges (so a number out of range is a one-line refusal there), and
the library checks them again for any other caller. Nothing here imports more than the standard
library, so a face pays nothing to read them."""

MAX_NEIGHBOURS = 10_000  # k of `similar` and `search`
MAX_NPROBES = 10_000  # IVF partitions a vector search may probe
MAX_REFINE_FACTOR = 1_000  # a vector search re-ranks k × this
MAX_BATCH = 4_096  # images per batch of the experts
MAX_HEAD_BATCH = 1 << 20  # rows per batch of a head (rescore)
MAX_WORKERS = 256  # decode worker processes
MAX_THREADS = 1_024  # torch threads
MAX_EPOCHS = 10_000  # finetune epochs
MAX_LEARNING_RATE = 10.0  # finetune learning rate (upstream's is 4e-4)
MAX_SEED = 2**32 - 1  # seeds NumPy's generator takes
MAX_BINS = 200  # histogram bins of `stats`
MAX_MAP_SAMPLE = 500_000  # rows the map's UMAP is fitted on (50,000 take minutes; more, far longer)
MAX_QUEUE = 1_000  # images one `queue` asks labels for (its diverse selection grows with the square)
MAX_SHARD_IMAGES = 10_000_000  # images per shard of a training set (export --shard-size N)
MIN_SHARD_BYTES = 1_000  # bytes per shard of a training set (export --shard-size 500MB)
MAX_SHARD_BYTES = 1 << 40
MIN_SETTLE = 0.05  # seconds a watched file must stay unchanged before it is read (ingest --watch --settle)
MAX_SETTLE = 86_400.0


def check(name: str, value, low, high, error: type[Exception]) -> None:
    """Raise `error` saying `name` must lie in [low, high] unless it does (NaN never does)."""
    if not low <= value <= high:
        raise error(f"{name} {value}: must be between {low:g} and {high:g}")

"""Near-duplicates: groups of cached images whose embeddings are at least as similar as a cosine
threshold, and exact copies (`groups`); the candidate search that finds them (`close_pairs`)."""

DEFAULT_SIMILARITY = 0.95  # cosine at or above which two images are near-duplicates

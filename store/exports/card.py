"""The dataset card of a Hugging Face export: ``README.md`` with the YAML header `datasets` reads
(features, the one ``train`` split and its size, where the data files are) and, for a reader, what
the set holds (counts per decision, reason and curator label), how it was chosen (head,
threshold, filters), by which weights and faramir version, and how to make it again. The licence
is left for the user to state: faramir cannot know the images'."""

from __future__ import annotations

import collections
import json
import shlex
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.parquet as pq

from faramir.files import atomic_path

FIELDS = {  # column → what it holds, for the card's table
    "image": "the original image file's bytes (datasets' Image feature)",
    "id": "content id: sha256 of the image bytes (hex)",
    "path": "the path the bytes were read from", "paths": "every path the image was seen at",
    "head": "the head whose scores these are", "threshold": "accepted iff confidence > threshold",
    "decision": "accept or reject at the threshold", "accepted": "the decision as a bool",
    "confidence": "sigmoid of the decision logit", "reason": "the label at the threshold (one of 30)",
    "aesthetic_score": "aesthetic predictor v2.5, about 1-10",
    "curator_label": "a curator's label (accept, reject or one of the 30), or null",
    "width": "pixels", "height": "pixels", "format": "Pillow's format name", "size": "bytes",
    "ingested_at": "when faramir first cached the image",
    "experts_fingerprint": "the expert weights and preprocessing that made the vectors",
    "head_fingerprint": "the head's weights", "weights_generated": "true: GENERATED weights, scores mean nothing",
    "logits": "the head's 31 outputs: 30 class logits, then the decision logit",
    "faramir_embedding": "FARAMIR pooled embedding", "siglip_embedding": "stock SigLIP pooled embedding",
    "aesthetic_features": "aesthetic v2.5 features", "quality_features": "ARNIQA features",
}


def write_card(dest: Path, shards: list[Path], features: dict[str, dict], data_files: str, records, cache,
               where: str, options: dict) -> None:
    """Write (or replace) DEST/README.md for the Parquet `shards` there (`data_files`: their glob,
    relative to DEST; `features`: column → its `datasets` feature), exported from the cache at
    `where`."""
    from faramir import __version__

    counts = _counts(shards)
    rows, size = counts.pop("rows"), sum(p.stat().st_size for p in shards)
    lines = ["---", "# license: (fill in: the licence of these images is yours to state)",
             f"pretty_name: faramir export ({options['head']}, threshold {options['threshold']:g})",
             "tags:", "- faramir", "- image-curation", "dataset_info:", "  features:"]
    for name, spec in features.items():
        lines += _yaml_feature(name, spec)
    lines += ["  splits:", "  - name: train", f"    num_bytes: {counts.pop('bytes')}", f"    num_examples: {rows}",
              f"  download_size: {size}", "configs:", "- config_name: default", "  data_files:",
              "  - split: train", f"    path: {data_files}", "---", ""]
    lines += _body(dest, rows, counts, records, cache, where, options, __version__)
    with atomic_path(dest / "README.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf8")


def _yaml_feature(name: str, spec: dict) -> list[str]:
    if spec["_type"] == "Image":
        return [f"  - name: {name}", "    dtype: image"]
    if spec["_type"] == "Sequence":
        length = [f"    length: {spec['length']}"] if "length" in spec else []
        return [f"  - name: {name}", f"    sequence: {spec['feature']['dtype']}", *length]
    return [f"  - name: {name}", f"    dtype: '{spec['dtype']}'" if "[" in spec["dtype"] else f"    dtype: {spec['dtype']}"]


def _counts(shards: list[Path]) -> dict:
    """rows, their Arrow bytes, and counts per decision, reason and curator label, read back from
    the shards (so a resumed export's card counts every shard)."""
    decision, reason, curated = collections.Counter(), collections.Counter(), collections.Counter()
    rows = nbytes = 0
    for path in shards:
        shard = pq.ParquetFile(path)
        meta = shard.metadata
        nbytes += sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        for batch in shard.iter_batches(columns=["decision", "reason", "curator_label"]):
            rows += batch.num_rows
            decision.update(batch.column("decision").to_pylist())
            reason.update(batch.column("reason").to_pylist())
            curated.update(x for x in batch.column("curator_label").to_pylist() if x is not None)
    return {"rows": rows, "bytes": nbytes, "decision": decision, "reason": reason, "curated": curated}


def _body(dest: Path, rows: int, counts: dict, records, cache, where: str, options: dict,
          version: str) -> list[str]:
    generated = cache.get_meta("weights_generated") or ""
    out = [f"# faramir export: {rows:,} images", ""]
    if generated:
        out += [f"**WARNING: the cache was built from GENERATED weights ({generated}). Every score, "
                f"decision and reason here means nothing.**", ""]
    out += [f"Images chosen by [faramir](https://github.com/redhottensors/FARAMIR) from the cache "
            f"`{where}`, judged by the head `{options['head']}` at threshold {options['threshold']:g} "
            f"(accepted iff confidence > threshold), with the original bytes of each image (each checked "
            f"against its content id as it was written).", "", "## Contents", "",
            "| decision | images |", "| --- | --- |"]
    out += [f"| {k} | {v:,} |" for k, v in sorted(counts["decision"].items())]
    out += ["", "| reason | images |", "| --- | --- |"]
    out += [f"| {k} | {v:,} |" for k, v in sorted(counts["reason"].items(), key=lambda kv: (-kv[1], kv[0]))]
    if counts["curated"]:
        out += ["", "| curator label | images |", "| --- | --- |"]
        out += [f"| {k} | {v:,} |" for k, v in sorted(counts["curated"].items())]
    out += ["", "## How it was made", "",
            f"- head: `{options['head']}` (weights fingerprint `{records.head_fingerprint}`)",
            f"- threshold: {options['threshold']:g}",
            f"- filters: {_filters(options) or 'none'}",
            f"- expert weights and preprocessing: fingerprint `{cache.get_meta('experts_fingerprint') or ''}`",
            f"- weights generated: {'yes: ' + generated if generated else 'no'}",
            f"- faramir {version}, written {datetime.now(timezone.utc).isoformat(timespec='seconds')}",
            "", "## Reproduce", "", "With the same cache (the same weights, the same images):", "", "```sh",
            command(dest.resolve(), where, options), "```", "", "Load it:", "", "```python",
            "from datasets import load_dataset", "", f"train = load_dataset({json.dumps(str(dest.resolve()))}, split=\"train\")",
            "```", "", "## Fields", "", "| column | holds |", "| --- | --- |"]
    out += [f"| `{f.name}` | {FIELDS.get(f.name, '')} |" for f in records.schema if f.name in FIELDS]
    out += ["", "## Licence", "", "Not stated: the images are yours or their owners'; state their licence "
            "in this card's `license` field before you share it. faramir is MPL-2.0; the expert weights "
            "carry their own licences (faramir's docs/weights.md)."]
    return out


def _filters(options: dict) -> str:
    return " ".join(shlex.quote(part) for part in _filter_flags(options))


def _filter_flags(options: dict) -> list[str]:
    flags = []
    if options.get("accepted") is not None:
        flags.append("--accepted" if options["accepted"] else "--rejected")
    for label in options.get("labels") or ():
        flags += ["--label", label]
    for name in ("min_confidence", "max_confidence", "min_aesthetic", "max_aesthetic"):
        if options.get(name) is not None:
            flags += ["--" + name.replace("_", "-"), f"{options[name]:g}"]
    if options.get("sort") is not None:
        flags += ["--sort", options["sort"]]
    if options.get("limit") is not None:
        flags += ["--limit", str(options["limit"])]
    if options.get("dedupe"):
        flags += ["--dedupe", "--keep", options["keep"]]
        if options.get("dedupe_threshold") is not None:
            flags += ["--dedupe-threshold", f"{options['dedupe_threshold']:g}"]
    return flags


def command(dest: Path, db: str, options: dict) -> str:
    """The `faramir export` command line that makes this export."""
    parts = ["faramir", "export", str(dest), "--format", "hf", "--db", db, "--head", options["head"],
             "--threshold", f"{options['threshold']:g}", *_filter_flags(options),
             *(["--with-logits"] if options.get("with_logits") else []),
             *(["--with-embeddings"] if options.get("with_embeddings") else []),
             "--shard-size", options["shard_size"]]
    return " ".join(shlex.quote(p) for p in parts)


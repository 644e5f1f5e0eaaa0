"""Options shared by several commands, declared once (typer `Annotated` aliases), their choices
as enums, and `filter_options`: the nine filter options of every query, turned into one
`faramir.store.filters.Filter`."""

from __future__ import annotations

import functools
import inspect
from enum import Enum
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from faramir.config import DEFAULT_THRESHOLD
from faramir.store import limits


def _choices(name: str, *values: str) -> type[Enum]:
    """A str enum whose members are `values`: typer shows them as the choices and checks them."""
    return Enum(name, [(value, value) for value in values], type=str)


AssessFormat = _choices("AssessFormat", "tsv", "jsonl", "csv")
RowFormat = _choices("RowFormat", "table", "jsonl", "csv", "tsv")
ListFormat = _choices("ListFormat", "table", "jsonl", "csv")
ReportFormat = _choices("ReportFormat", "table", "json")
ExportFormat = _choices("ExportFormat", "csv", "jsonl", "parquet", "files", "webdataset", "hf")
Link = _choices("Link", "copy", "hardlink", "symlink")
Precision = _choices("Precision", "fp32", "bf16")
Decode = _choices("Decode", "faithful", "fast")
Sort = _choices("Sort", "confidence", "aesthetic", "newest")  # newest: by ingest time
Embedding = _choices("Embedding", "faramir", "siglip")
Keep = _choices("Keep", "confidence", "aesthetic", "largest")  # the keeper of a group of near-duplicates
Variant = _choices("Variant", "tiny", "full")  # of generated weights


Db = Annotated[Optional[str], typer.Option(
    "--db", envvar="FARAMIR_DB", show_envvar=True, show_default=False,
    help="The cache: a folder or an object-store URI (default: ~/.local/share/faramir/cache.lancedb).",
)]
WeightsDir = Annotated[Optional[Path], typer.Option(
    "--weights-dir", envvar="FARAMIR_WEIGHTS",
    help="Directory with the four weight files (default: download into ~/.cache/faramir/weights).",
)]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda (or cuda:N) or mps.")]
PrecisionOpt = Annotated[Precision, typer.Option(
    "--precision", help="fp32 (the reference) or bf16 (faster only with AMX or a bf16 GPU; logits ~1e-2 off).")]
DecodeOpt = Annotated[Decode, typer.Option(
    "--decode", help="faithful (upstream's preprocessing, bit for bit) or fast (large images decoded smaller: "
                     "less CPU, scores slightly off; a cache holds the vectors of one).")]
Compile = Annotated[bool, typer.Option(
    "--compile", help="Compile the experts with torch.compile first (a minute or two, once): faster long "
                      "runs where it pays, e.g. bf16 on AMX CPUs; needs a C++ compiler on CPUs.")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, max=limits.MAX_BATCH, help="Images per model batch.")]
Workers = Annotated[Optional[int], typer.Option("--workers", min=0, max=limits.MAX_WORKERS,
                                                help="Decode worker processes (default: spare cores).")]
Neighbours = Annotated[int, typer.Option("--k", "-k", min=1, max=limits.MAX_NEIGHBOURS, help="How many images.")]
Nprobes = Annotated[Optional[int], typer.Option("--nprobes", min=1, max=limits.MAX_NPROBES,
                                                help="IVF partitions to search.")]
RefineFactor = Annotated[Optional[int], typer.Option("--refine-factor", min=1, max=limits.MAX_REFINE_FACTOR,
                                                     help="Re-rank k × this exactly.")]
Seed = Annotated[int, typer.Option("--seed", min=0, max=limits.MAX_SEED, help="Random seed.")]
Recursive = Annotated[bool, typer.Option("-r", "--recursive", help="Descend into sub-folders.")]
FileList = Annotated[Optional[str], typer.Option("--file-list", help="Text file of image paths, relative to the one PATH.")]
Paths = Annotated[List[str], typer.Argument(help="Image files and/or folders.")]
Threshold = Annotated[float, typer.Option("--threshold", "-t", min=0.0, max=1.0, help="Accept iff confidence > T.")]
Head = Annotated[str, typer.Option("--head", help="Whose scores to read: a head name (see 'faramir heads list').")]
RowFormatOpt = Annotated[RowFormat, typer.Option("--format", "-f", help="table, jsonl, csv or tsv (upstream's assess line).")]
ListFormatOpt = Annotated[ListFormat, typer.Option("--format", "-f", help="table, jsonl or csv.")]
ReportFormatOpt = Annotated[ReportFormat, typer.Option("--format", "-f", help="table or json.")]

# The filter of every query (top, stats, similar, export), in the order --help shows them.
_FILTER_PARAMS = [
    inspect.Parameter("head", inspect.Parameter.KEYWORD_ONLY, default="faramir-v1", annotation=Head),
    inspect.Parameter("threshold", inspect.Parameter.KEYWORD_ONLY, default=DEFAULT_THRESHOLD, annotation=Threshold),
    inspect.Parameter("accepted", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
        bool, typer.Option("--accepted", help="Only images accepted at the threshold.")]),
    inspect.Parameter("rejected", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
        bool, typer.Option("--rejected", help="Only images rejected at the threshold.")]),
    inspect.Parameter("labels", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Optional[List[str]], typer.Option("--label", "-l", help="Only these labels (repeat, or comma-separate).")]),
    inspect.Parameter("min_confidence", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Optional[float], typer.Option("--min-confidence", min=0.0, max=1.0, help="Confidence at least this.")]),
    inspect.Parameter("max_confidence", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Optional[float], typer.Option("--max-confidence", min=0.0, max=1.0, help="Confidence at most this.")]),
    inspect.Parameter("min_aesthetic", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Optional[float], typer.Option("--min-aesthetic", help="Aesthetic score (about 1-10) at least this.")]),
    inspect.Parameter("max_aesthetic", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Optional[float], typer.Option("--max-aesthetic", help="Aesthetic score at most this.")]),
]


ConfidenceThreshold = Annotated[float, typer.Option(
    "--confidence-threshold", min=0.0, max=1.0, help="Accept iff confidence > T (for --accepted, --rejected, --label).")]


def filter_options(command, *, confidence_threshold: bool = False):
    """Give a command the nine filter options in place of its `filter` parameter, which then
    receives them as one `faramir.store.filters.Filter` (built, and so checked, before the command runs).
    `confidence_threshold`: the accept threshold is --confidence-threshold, for a command whose
    own --threshold is another (a similarity)."""
    signature = inspect.signature(command, eval_str=True)
    filter_params = [p.replace(name="confidence_threshold", annotation=ConfidenceThreshold)
                     if confidence_threshold and p.name == "threshold" else p for p in _FILTER_PARAMS]
    params = []
    for param in signature.parameters.values():
        if param.name == "filter":
            params.extend(filter_params)
        else:
            params.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY))
    names = {p.name: q.name for p, q in zip(filter_params, _FILTER_PARAMS)}  # option → Filter field

    @functools.wraps(command)
    def with_filter(**kwargs):
        kwargs["filter"] = make_filter(**{field: kwargs.pop(name) for name, field in names.items()})
        return command(**kwargs)

    with_filter.__signature__ = signature.replace(parameters=params)
    with_filter.__annotations__ = {p.name: p.annotation for p in params}
    return with_filter


def make_filter(*, head, threshold, accepted, rejected, labels, min_confidence, max_confidence,
                min_aesthetic, max_aesthetic):
    """The `faramir.store.filters.Filter` of the nine filter options."""
    from faramir.store.filters import Filter

    if accepted and rejected:
        raise typer.BadParameter("give --accepted or --rejected, not both")
    return Filter.from_options(head=head, threshold=threshold,
                               show="accepted" if accepted else "rejected" if rejected else "all",
                               labels=labels or (), min_confidence=min_confidence, max_confidence=max_confidence,
                               min_aesthetic=min_aesthetic, max_aesthetic=max_aesthetic)


def load_model(weights_dir: Optional[Path], device: str, precision: str, compile_batch: Optional[int] = None):
    """Resolve weights (downloading into the default cache if needed) and load the model (compiled
    for batches of `compile_batch` if given), saying on stderr what a user should know: a
    precision that is slow here, generated weights, the time compiling takes."""
    from faramir.cli.common import download_progress, note, warn, warn_generated
    from faramir.devices import precision_advice, resolve_device
    from faramir.download import resolve_weights_dir
    from faramir.weights import load_model as load

    dev = resolve_device(device)
    if (advice := precision_advice(dev, precision)) is not None:
        (warn if precision == "bf16" else note)(advice)  # against the choice made, or a hint
    with download_progress() as progress:
        root = resolve_weights_dir(weights_dir, download=True, progress=progress)
    model = load(root, dev, precision)
    warn_generated(model.info)
    if compile_batch is not None:
        from faramir.compiled import compile_experts

        note(f"compiling the experts for batches of {compile_batch} (once, a minute or two)...")
        note(f"compiled in {compile_experts(model, compile_batch):.0f} s")
    return model

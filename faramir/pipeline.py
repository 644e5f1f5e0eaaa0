"""Upstream's `inference.py`, faster: files → decoded batches → experts → head → one result each."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from faramir.config import DEFAULT_THRESHOLD, OUTPUT_NAMES
from faramir.decision import tsv_line
from faramir.decoding import iter_batches
from faramir.head import assess_outputs
from faramir.sources import Source


@dataclass
class Assessment:
    """One image's result, upstream's fields first."""

    path: str
    accepted: bool
    label: str
    confidence: float  # sigmoid of the decision logit
    logits: list[float]  # the 31 outputs, upstream order (faramir.config.OUTPUT_NAMES)
    aesthetic_score: float
    warnings: list[str] = field(default_factory=list)  # e.g. an ICC profile that was not applied

    def tsv(self) -> str:
        """Upstream inference.py's output line."""
        return tsv_line(self.path, self.accepted, self.label, self.confidence)


@dataclass
class Failure:
    path: str
    reason: str


def assess(
    model,
    sources: Sequence[Source],
    threshold: float = DEFAULT_THRESHOLD,
    batch_size: int = 8,
    workers: int | None = None,
    precision: str | None = None,
    decode: str = "faithful",
) -> Iterator[Assessment | Failure]:
    """Upstream's `inference.py` over `sources`: one Assessment or Failure per source, in order,
    computed in the precision `model` was loaded for (`precision`, if given, must be that one),
    from inputs decoded by `decode` ("faithful", upstream's, or "fast": `faramir.fast_decode`)."""
    pin = model.device.type == "cuda"
    cfg = model.info.config
    for batch in iter_batches(sources, batch_size, workers, pin_memory=pin, res=(cfg.backbone_res, cfg.quality_res),
                              decode_mode=decode):
        results: dict[int, Assessment | Failure] = {
            it.index: Failure(it.source.display, it.error or "not decoded") for it in batch.others
        }
        if batch.items:
            feats = model.features(batch.xb, batch.xq, precision)
            outputs = model.score(feats).cpu()
            accepted, label, conf = assess_outputs(outputs, threshold)
            scores = feats.aesthetic_score.float().cpu()
            for row, it in enumerate(batch.items):
                results[it.index] = Assessment(
                    path=it.source.display,
                    accepted=bool(accepted[row]),
                    label=OUTPUT_NAMES[int(label[row])],
                    confidence=float(conf[row]),
                    logits=outputs[row].tolist(),
                    aesthetic_score=float(scores[row]),
                    warnings=it.warnings,
                )
        for index in sorted(results):
            yield results[index]

"""The gallery's JSON API. Like `cli/`, this is a face: every endpoint parses its parameters, calls
one library function in `store` and shapes the answer. The browser names images by content id
only; the only files the server opens are the paths the cache recorded for an id (thumbnails).
The middleware in `faramir.gallery.app` has checked token and origin before any write gets here.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import FileResponse, Response
from starlette.background import BackgroundTask

from faramir.config import ACCEPT_LABELS, DEFAULT_THRESHOLD, LABELS
from faramir.errors import FaramirError
from faramir.gallery import thumbnails
from faramir.gallery.jobs import Jobs, NameTaken
from faramir.gallery.text import TextSearch
from faramir.store import limits, schema
from faramir.store.cache import Cache
from faramir.store.errors import ReadOnlyCache
from faramir.store.filters import Filter
from faramir.store.heads import registry
from faramir.store.heads.compare import disagreements
from faramir.store.labels.table import label_counts, labels_of, set_labels, unset_labels
from faramir.store.queries import counting, images, ranking
from faramir.store.vectors import nearest

PAGE_LIMIT = 200  # most rows one grid page may ask for
MAX_IDS = 10_000  # most ids one label write may name
MAX_QUERY = 300  # most characters of a text search (the text tower reads 64 tokens)
Sort = Literal["confidence", "aesthetic", "newest"]  # newest: by ingest time
Order = Literal["desc", "asc"]

router = APIRouter(prefix="/api")


@dataclass
class Gallery:
    """What the endpoints of one app share: the open cache, the work folder, the finetune jobs."""

    cache: Cache
    root: Path  # thumbnails/ and heads/ go here
    jobs: Jobs
    read_only: bool
    text: TextSearch


class Refused(Exception):
    """A request refused with a status and a one-line reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


# -- parameters -------------------------------------------------------------------------------------


def gallery(request: Request) -> Gallery:
    return request.app.state.gallery


def view(
    head: str = Query(schema.DEFAULT_HEAD, min_length=1, max_length=64),
    threshold: float = Query(DEFAULT_THRESHOLD, ge=0.0, le=1.0, allow_inf_nan=False),
    show: Literal["all", "accepted", "rejected"] = "all",
    label: list[str] = Query([]),
    min_aesthetic: float | None = Query(None, allow_inf_nan=False),
    max_aesthetic: float | None = Query(None, allow_inf_nan=False),
) -> Filter:
    """The filter of the current view (checked as every query checks it: a bad one is a 400)."""
    return Filter.from_options(head=head, threshold=threshold, show=show, labels=label,
                               min_aesthetic=min_aesthetic, max_aesthetic=max_aesthetic)


def content_id(image_id: str) -> str:
    try:
        return images.check_id(image_id)
    except FaramirError as ex:
        raise Refused(400, str(ex)) from None


def tiles(rows: list[dict], cache: Cache) -> list[dict]:
    """Result rows for the page, with the file name and the curator's label where there is one."""
    curated = labels_of([r["id"] for r in rows], cache)
    out = []
    for r in rows:
        paths = r.get("paths") or []
        out.append({k: v for k, v in r.items() if k != "paths"} |
                   {"name": os.path.basename(paths[0]) if paths else "", "curated": curated.get(r["id"])})
    return out


def _cannot_write(cache: Cache) -> str:
    """Why this cache cannot be written (labels, finetunes), in one line; "" when it can."""
    try:
        cache.check_writable()
    except ReadOnlyCache as ex:
        return str(ex)
    return ""


# -- reads ------------------------------------------------------------------------------------------


@router.get("/info")
def info(g: Gallery = Depends(gallery)):
    return {
        "db": g.cache.uri,
        "rows": images.row_count(g.cache),
        "heads": [h["name"] for h in registry.heads(g.cache)],
        "default_head": schema.DEFAULT_HEAD,
        "labels": list(LABELS),
        "accept_labels": [x for x in LABELS if x in ACCEPT_LABELS],
        "read_only": g.read_only,
        "generated": g.cache.get_meta("weights_generated") or "",
        "cannot_write": _cannot_write(g.cache),
        "label_counts": label_counts(g.cache).to_dict(),
        "search_unavailable": g.text.unavailable(),
    }


@router.get("/grid")
def grid(
    f: Filter = Depends(view),
    sort: Sort = "confidence",
    order: Order = "desc",
    after: str | None = Query(None, max_length=200),
    limit: int = Query(60, ge=1, le=PAGE_LIMIT),
    g: Gallery = Depends(gallery),
):
    page = ranking.page(g.cache, sort=sort, descending=order == "desc", after=after, limit=limit, filter=f)
    return {"rows": tiles(page.rows.to_pylist(), g.cache), "next": page.next}


@router.get("/counts")
def counts(f: Filter = Depends(view), g: Gallery = Depends(gallery)):
    return counting.counts(g.cache, filter=f).to_dict()


@router.get("/image/{image_id}")
def detail(image_id: str = Depends(content_id), g: Gallery = Depends(gallery),
           threshold: float = Query(DEFAULT_THRESHOLD, ge=0.0, le=1.0, allow_inf_nan=False)):
    return images.detail(image_id, g.cache, threshold=threshold).to_dict() | \
        {"curated": labels_of([image_id], g.cache).get(image_id)}


@router.get("/similar/{image_id}")
def similar(
    image_id: str = Depends(content_id),
    f: Filter = Depends(view),
    k: int = Query(24, ge=1, le=PAGE_LIMIT),
    embedding: Literal["faramir", "siglip"] = "faramir",
    g: Gallery = Depends(gallery),
):
    rows = nearest.similar_to(image_id, g.cache, k=k, embedding=embedding, filter=f)
    return {"rows": tiles(rows.to_pylist(), g.cache)}


@router.get("/search")
def text_search(
    q: str = Query(..., max_length=MAX_QUERY),
    f: Filter = Depends(view),
    k: int = Query(48, ge=1, le=PAGE_LIMIT),
    g: Gallery = Depends(gallery),
):
    from faramir.store.vectors.text import search as run

    if not q.strip():
        raise Refused(400, "q: the search text is empty; give a few words, e.g. 'a dragon over water'")
    if (why := g.text.unavailable()) is not None:
        raise Refused(503, why)
    try:
        encoder = g.text.encoder()
    except FaramirError as ex:
        raise Refused(503, f"search by text is unavailable: {ex}") from None
    rows = run(q, g.cache, k=k, encoder=encoder, filter=f)
    return {"rows": tiles(rows.to_pylist(), g.cache)}


@router.get("/compare")
def compare(
    a: str = Query(..., min_length=1, max_length=64),
    b: str = Query(..., min_length=1, max_length=64),
    threshold: float = Query(DEFAULT_THRESHOLD, ge=0.0, le=1.0, allow_inf_nan=False),
    offset: int = Query(0, ge=0),
    limit: int = Query(60, ge=1, le=PAGE_LIMIT),
    g: Gallery = Depends(gallery),
):
    result = disagreements(a, b, g.cache, threshold=threshold, offset=offset, limit=limit).to_dict()
    return result | {"rows": tiles(result["rows"], g.cache)}


@router.get("/thumb/{image_id}")
def thumb(image_id: str = Depends(content_id), size: Literal["thumb", "preview"] = "thumb",
          g: Gallery = Depends(gallery)):
    made = thumbnails.thumbnail(image_id, *images.sources(image_id, g.cache), g.root / "thumbnails", size)
    if made is None:
        return Response(thumbnails.placeholder("original missing"), media_type="image/svg+xml",
                        headers={"Cache-Control": "no-store", "X-Faramir-Missing": "1"})
    return FileResponse(made, media_type="image/webp", headers={"Cache-Control": "private, max-age=604800, immutable"})


@router.get("/export")
def export(
    f: Filter = Depends(view),
    format: Literal["csv", "jsonl"] = "csv",
    sort: Sort = "confidence",
    order: Order = "desc",
    g: Gallery = Depends(gallery),
):
    from faramir.store.exports import export as run

    folder = tempfile.mkdtemp(prefix="faramir-export-")
    name = f"faramir-{f.head}-t{f.threshold:g}.{format}"
    dest = Path(folder) / name
    try:
        run(dest, g.cache, format=format, sort=sort, descending=order == "desc", filter=f)
    except BaseException:
        _remove(folder)
        raise
    media = "text/csv" if format == "csv" else "application/x-ndjson"
    return FileResponse(dest, media_type=media, filename=name, background=BackgroundTask(_remove, folder))


def _remove(folder: str) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


@router.get("/labels")
def labels(g: Gallery = Depends(gallery)):
    return label_counts(g.cache).to_dict()


@router.get("/finetune")
def finetune_jobs(g: Gallery = Depends(gallery)):
    return {"jobs": [j.public() for j in g.jobs.jobs.values()]}


@router.get("/finetune/{job_id}")
def finetune_job(job_id: int, g: Gallery = Depends(gallery)):
    return g.jobs.get(job_id).public()


# -- writes -----------------------------------------------------------------------------------------


@router.post("/labels")
def write_labels(
    ids: list[str] = Body(..., embed=True, max_length=MAX_IDS),
    label: str | None = Body(..., embed=True, max_length=32),
    g: Gallery = Depends(gallery),
):
    written = unset_labels(ids, g.cache) if label is None else set_labels(ids, label, g.cache)
    g.jobs.warm()  # a curator labelling will finetune: torch is imported meanwhile, not then
    return {"written": written, "label": label, "counts": label_counts(g.cache).to_dict()}


@router.post("/finetune/warm")
def warm_finetune(g: Gallery = Depends(gallery)):
    """The finetune dialog opened: import what a finetune needs in the background, meanwhile."""
    g.jobs.warm()
    return {"warming": True}


@router.post("/finetune")
def start_finetune(
    base: str = Body(schema.DEFAULT_HEAD, embed=True, min_length=1, max_length=64),
    name: str | None = Body(None, embed=True, max_length=64),
    epochs: int = Body(20, embed=True, ge=1, le=limits.MAX_EPOCHS),
    threshold: float = Body(DEFAULT_THRESHOLD, embed=True, allow_inf_nan=False),
    replace: bool = Body(False, embed=True),
    g: Gallery = Depends(gallery),
):
    registry.head(g.cache, base)  # refuses an unknown base with the list of heads
    g.cache.check_writable()  # before the training, not after it
    try:
        job = g.jobs.start(base, name or None, epochs, threshold, {h["name"] for h in registry.heads(g.cache)},
                           replace=replace)
    except NameTaken as ex:
        raise Refused(409, str(ex)) from None
    return job.public()

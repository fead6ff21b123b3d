"""``/v1/documents``: add, list and delete the documents answers are drawn from.

``POST`` takes ``{"name": ..., "text": ...}`` (stored as ``<store>/documents/<name>``; the name's suffix picks the
reader, e.g. ``.md`` or ``.py``) or ``{"paths": [...]}`` of files and folders on the server, accepted only inside the folders the operator
named with ``--ingest-root`` (403 otherwise). Ingestion is incremental, as ``chunkcache ingest`` is; the chunks
an update makes obsolete are dropped from the engine's matcher too. ``DELETE /v1/documents/{ref}`` takes an
uploaded document's name or any indexed path (URL-encoded) and removes the document, its vectors, its chunk
records and the matcher's knowledge of them, so a removed chunk is never reused again.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

from fastapi import APIRouter, Depends

from chunkcache.rag.readers import SUPPORTED_SUFFIXES
from chunkcache.serve.errors import APIError
from chunkcache.serve.schemas import DocumentPaths, DocumentText
from chunkcache.serve.state import ServerState, state

router = APIRouter()

DOCUMENTS_DIR = "documents"


def documents_dir(st: ServerState) -> Path:
    """Where uploaded documents are kept: ``<store>/documents``."""
    return (st.engine.root / DOCUMENTS_DIR).resolve()


def _store_text(folder: Path, name: str, text: str) -> Path:
    suffix = Path(name).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise APIError(400, f"name: {name!r} needs a supported suffix such as .md, .txt or .py "
                            f"(one of {', '.join(sorted(SUPPORTED_SUFFIXES))})", "name", "invalid_value")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    tmp = folder / f".{name}.{os.getpid()}.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _ingest(st: ServerState, paths: list[Path]) -> dict:
    """Ingest ``paths`` and update the serving engine's matcher: new chunks are matched in plain prompts from
    now on, chunks no document uses any more are not (called under the engine lock)."""
    before = st.engine.index.chunk_hashes_in_use()
    report = st.engine.ingest(paths, progress=False)
    gone = before - st.engine.index.chunk_hashes_in_use()
    if gone:
        st.serving.forget(sorted(gone))
    st.serving.refresh_index()
    return asdict(report)


@router.post("/v1/documents")
async def add_documents(body: DocumentText | DocumentPaths, st: ServerState = Depends(state)) -> dict:
    """Ingest an uploaded text or server-side paths; returns the ingest report."""
    if isinstance(body, DocumentText):
        paths = [_store_text(documents_dir(st), body.name, body.text)]
    else:
        paths = [Path(p).expanduser() for p in body.paths]
        _check_roots(st, paths)
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise APIError(400, f"paths: no such file or folder on the server: {', '.join(missing)}", "paths",
                           "not_found")
    try:
        report = await st.engine_call(_ingest, st, paths)
    except (ValueError, PermissionError, FileNotFoundError) as e:
        raise APIError(400, str(e), None, "ingest_failed") from None
    return {"object": "ingest.report", "documents": [str(p.resolve()) for p in paths], **report}


def _check_roots(st: ServerState, paths: list[Path]) -> None:
    """403 unless every path lies inside a folder the operator opened with ``--ingest-root``: a client must
    not make the server read whatever files it can."""
    if not st.ingest_roots:
        raise APIError(403, "paths: ingesting server-side paths is off; upload text as {name, text}, or start the "
                            "server with --ingest-root DIR", "paths", "paths_disabled")
    outside = [str(p) for p in paths if not any(p.resolve().is_relative_to(r) for r in st.ingest_roots)]
    if outside:
        raise APIError(403, f"paths: outside the server's ingest roots: {', '.join(outside)}", "paths",
                       "path_not_allowed")


def _listing(st: ServerState) -> list[dict]:
    folder, index, kv = documents_dir(st), st.engine.index, st.engine.kv
    out = []
    for path in index.documents():
        hashes = index.document_chunk_hashes(path)
        name = Path(path).name if Path(path).parent == folder else None
        out.append({"id": path, "object": "document", "name": name, "chunks": len(hashes),
                    "cached": sum(1 for h in hashes if h in kv)})
    return out


@router.get("/v1/documents")
async def list_documents(st: ServerState = Depends(state)) -> dict:
    """Every indexed document with its chunk count and how many chunks have records."""
    return {"object": "list", "data": await st.engine_call(_listing, st)}


def _remove(st: ServerState, ref: str) -> dict:
    folder = documents_dir(st)
    candidates = [folder / ref] if "/" not in ref and "\\" not in ref else []
    candidates.append(Path(ref))
    for cand in candidates:
        try:
            path = str(cand.expanduser().resolve())
        except (OSError, ValueError, RuntimeError):  # not a possible path (a NUL byte; ~user of no known user,
            continue  # for which expanduser raises RuntimeError): not a document either
        if st.engine.index.document_sha(path) is not None:
            break
    else:
        raise APIError(404, f"no document {ref!r}: GET /v1/documents lists them", "ref", "document_not_found")
    try:
        removed = st.engine.remove_document(path)
    except KeyError:  # removed by a concurrent request since the lookup above
        raise APIError(404, f"no document {ref!r}", "ref", "document_not_found") from None
    st.serving.forget(removed)
    if Path(path).parent == folder:
        Path(path).unlink(missing_ok=True)
    return {"id": path, "object": "document", "deleted": True, "chunks_removed": len(removed)}


@router.delete("/v1/documents/{ref:path}")
async def delete_document(ref: str, st: ServerState = Depends(state)) -> dict:
    """Remove a document (an uploaded name or an indexed path), its vectors, records and matcher entries."""
    return await st.engine_call(_remove, st, ref)

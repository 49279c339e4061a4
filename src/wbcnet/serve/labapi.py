"""The routes that teach the server a lab: upload its pictures, have cells suggested, label them,
adapt a model on them, and list the models and the jobs.

    GET  /v1/models                          the server's model, wbcnet's other own (the zoo), the adapted ones
    POST /v1/labs/{lab}/uploads              pictures (single cells or whole fields) into the lab
    POST /v1/labs/{lab}/suggest?n=24         a job: choose the cells worth labelling (lab.suggest)
    GET  /v1/labs, /v1/labs/{lab}            the labs; one lab's pictures, suggested cells and labels
    GET  /v1/labs/{lab}/cells/{id}/picture   a suggested cell's picture
    PUT  /v1/labs/{lab}/labels/{id}          label one cell ({"label": "Neutrophil"}, "skip" or null)
    GET  /v1/labs/{lab}/labels(.csv)         the labels; the lab's sheet as lab.suggest writes it
    POST /v1/adapt                           a job: a new model from a lab's labels (adapt.adapt_lab)
                                             (teaching the finder a lab's fields: finderapi.py)
    GET  /v1/jobs, /v1/jobs/{id}             state, progress, message, error

Handlers read and write the data folder in a thread (asyncio.to_thread), and the long work runs on
the job thread (jobs.py); the event loop only waits.
"""
from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, File, Query, UploadFile
from fastapi.responses import FileResponse, Response

from .datadir import SKIP, Cell, LabStore, NotFound, Refused, check_id, make_data_folder
from .jobs import Job, Jobs
from .registry import ModelRecord, Models, now, without_paths
from .schemas import (AdaptRequest, JobAnswer, JobList, LabAnswer, LabCell, LabelBody, LabelList, LabList, ModelList,
                      UploadAnswer, errors)
from .uploads import save_uploads


def job_answer(jobs: Jobs, job: Job) -> dict:
    return {**asdict(job), "ahead": jobs.ahead(job.id) if job.state == "queued" else 0}


def cell_answer(lab: str, cell: Cell) -> dict:
    r = cell.row

    def number(text: str, kind):
        try:
            return kind(text)
        except ValueError:
            return None

    return {"id": cell.id, "picture": f"/v1/labs/{lab}/cells/{cell.id}/picture", "label": r.label,
            "predicted": r.predicted, "confidence": number(r.confidence, float), "reason": r.reason,
            "rank": number(r.rank, int), "round": r.round}


def lab_router(data: Path, labs: LabStore, models: Models, jobs: Jobs, check_count) -> APIRouter:
    router = APIRouter()
    tmp_root = data / "tmp"  # uploads land here first: the same disk as the lab, so moving one is a rename
    shutil.rmtree(tmp_root, ignore_errors=True)  # what a stopped server left there

    @router.get("/v1/models", summary="The models this server answers with", response_model=ModelList)
    async def list_models():
        """The server's own model (`default`), then wbcnet's other own models this install has (`zoo`:
        `fast`, `accurate`, each with its input size and its card's speed and in-lab figures), then the
        adapted ones: `?model=NAME` on /v1/classify, /v1/count, /v1/explain and /v1/model chooses one,
        and /v1/adapt's `parent` starts from one."""
        return {"models": [asdict(r) for r in await asyncio.to_thread(models.records)]}

    @router.get("/v1/jobs", summary="Recent jobs, newest first", response_model=JobList)
    async def list_jobs():
        return {"jobs": [job_answer(jobs, j) for j in reversed(jobs.all())]}

    @router.get("/v1/jobs/{job_id}", summary="A job's state and progress", response_model=JobAnswer,
                responses=errors(404))
    async def get_job(job_id: str):
        job = jobs.get(check_id(job_id, "job"))
        if job is None:
            raise NotFound(f"no job {job_id!r} on this server")
        return job_answer(jobs, job)

    @router.get("/v1/labs", summary="The labs in the data folder", response_model=LabList)
    async def list_labs():
        def work():
            return [{"lab": lab, "uploads": len(labs.uploads(lab)), "cells": len(labs.sheet(lab)),
                     "labelled": sum(n for c, n in labs.counts(lab).items() if c != SKIP)} for lab in labs.labs()]

        return {"labs": await asyncio.to_thread(work)}

    @router.get("/v1/labs/{lab}", summary="A lab: its pictures, suggested cells and labels", response_model=LabAnswer,
                responses=errors(404))
    async def get_lab(lab: str):
        def work():
            labs.existing(lab)
            counts = labs.counts(lab)
            return {"lab": lab, "classes": labs.classes, "uploads": len(labs.uploads(lab)),
                    "new_uploads": len(labs.new_uploads(lab)), "counts": counts,
                    "labelled": sum(n for c, n in counts.items() if c != SKIP),
                    "cells": [cell_answer(lab, c) for c in labs.cells(lab)]}

        return await asyncio.to_thread(work)

    @router.post("/v1/labs/{lab}/uploads", summary="Add pictures of a lab: single cells or whole fields",
                 response_model=UploadAnswer, responses=errors(413))
    async def upload(lab: str, files: list[UploadFile] = File(..., description="one or more pictures")):
        """Kept in the server's data folder under names of its own; a file that is not a picture is
        listed in `refused`. Suggest cells from them with POST /v1/labs/{lab}/suggest."""
        check_id(lab, "lab")
        check_count(files)

        def work():
            make_data_folder(data)  # the first thing stored: the data folder is made now, not at start
            with tempfile.TemporaryDirectory(dir=tmp_root) as tmp:
                saved = save_uploads(files, Path(tmp))
                kept, refused = labs.add_uploads(lab, [(u.name, u.path) for u in saved])
            return {"lab": lab, "saved": [asdict(u) for u in kept],
                    "refused": [{"name": n, "error": e} for n, e in refused],
                    "uploads": len(labs.uploads(lab)), "new": len(labs.new_uploads(lab))}

        return await asyncio.to_thread(work)

    @router.post("/v1/labs/{lab}/suggest", status_code=202, response_model=JobAnswer, responses=errors(404, 409, 503),
                 summary="Start a job that chooses the cells worth labelling")
    async def suggest_cells(lab: str, n: int = Query(24, ge=1, le=200, description="how many cells"),
                            model: str | None = Query(None, description="the model that chooses (default: the "
                                                      "server's own)"),
                            kind: Literal["auto", "cells", "fields"] = Query(
                                "auto", description="what the pictures are: single cells, whole fields, or auto")):
        """Looks at the lab's pictures that no earlier round looked at; when the job is done, the
        cells are in GET /v1/labs/{lab} with their pictures, predicted class and why they were chosen."""
        labs.existing(lab)
        parent = models.checkpoint(model)  # 404 for an unknown model, before a job exists
        taken = await asyncio.to_thread(labs.reserve, lab)
        ids = [u.id for u in taken]

        def work(job: Job, on_progress) -> str:
            from ..lab.suggest import suggest

            try:
                k, folder = labs.new_round(lab)
                pictures = [str(labs.upload_path(lab, u)) for u in taken]
                sheet = suggest(parent, pictures, n, folder, kind=kind, seed=k, on_progress=on_progress,
                                progress=False)
                on_progress(1.0, "adding the cells to the label sheet")
                added = labs.add_round(lab, k, Path(sheet), ids)
            finally:
                labs.release(lab, ids)
            return f"{added} cell{'s' * (added != 1)} suggested from {len(taken)} picture{'s' * (len(taken) != 1)}"

        try:
            job = jobs.submit("suggest", lab, work, model=model or models.default.name)
        except Exception:
            labs.release(lab, ids)
            raise
        return job_answer(jobs, job)

    @router.get("/v1/labs/{lab}/cells/{cell_id}/picture", summary="A suggested cell's picture",
                response_class=FileResponse, responses=errors(404))
    async def cell_picture(lab: str, cell_id: str):
        path = await asyncio.to_thread(labs.picture, lab, cell_id)
        return FileResponse(path, headers={"Cache-Control": "no-cache"})

    @router.get("/v1/labs/{lab}/labels", summary="The labelled cells of a lab", response_model=LabelList,
                responses=errors(404))
    async def get_labels(lab: str):
        def work():
            labs.existing(lab)
            return {"lab": lab, "counts": labs.counts(lab),
                    "labels": [{"id": c.id, "label": c.row.label} for c in labs.cells(lab) if c.row.label]}

        return await asyncio.to_thread(work)

    @router.get("/v1/labs/{lab}/labels.csv", summary="The lab's label sheet (path,label,rank,predicted,"
                "confidence,reason), as lab.suggest writes it", responses=errors(404))
    async def get_sheet(lab: str):
        def work():
            path = labs.existing(lab) / "labels.csv"
            return path.read_bytes() if path.exists() else b"path,label,rank,predicted,confidence,reason\n"

        return Response(await asyncio.to_thread(work), media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{lab}-labels.csv"'})

    @router.put("/v1/labs/{lab}/labels/{cell_id}", summary="Label one cell", response_model=LabCell,
                responses=errors(404, 413))
    async def put_label(lab: str, cell_id: str, body: LabelBody):
        """A class, 'skip' (not a white cell, or can't tell: never used to adapt), or null to take the
        label away. Written to the lab's sheet at once."""
        cell = await asyncio.to_thread(labs.set_label, lab, cell_id, body.label)
        return cell_answer(lab, cell)

    @router.post("/v1/adapt", status_code=202, response_model=JobAnswer, responses=errors(404, 409, 413, 503),
                 summary="Start a job that adapts a model to a lab's labelled cells")
    async def adapt(req: AdaptRequest):
        """The labels as they are now go to the job; when it is done, `model` is the new model's name,
        listed by GET /v1/models and usable as ?model= everywhere."""
        lab = check_id(req.lab, "lab")
        labs.existing(lab)
        parent = req.parent or models.default.name
        start = models.checkpoint(parent)
        finder = models.finder(parent)  # a lab model's finder goes with its classifier into the new model

        def taken() -> set[str]:
            return {j.model for kind in ("adapt", "finder") for j in jobs.pending(kind)}

        models.check_new_name(req.name, taken())
        pictures = [str(labs.upload_path(lab, u)) for u in await asyncio.to_thread(labs.uploads, lab)]
        job_id = jobs.new_id()
        manifest = data / "jobs" / job_id / "labels.csv"  # the labels as they are now: what the job learns
        labelled = await asyncio.to_thread(labs.write_manifest, lab, manifest)
        if not (labelled or pictures):
            raise Refused(f"lab {lab!r} has no labelled cells and no pictures; upload and label some first")
        models.check_new_name(req.name, taken())  # again, with no await before submit: two requests can't both pass

        def work(job: Job, on_progress) -> str:
            from ..lab.adapt import adapt_lab

            out = models.partial(job.id)
            try:
                # Labels alone or labels and pictures; pictures alone, or too few cells, adapt_lab refuses in one line.
                adapt_lab(start, out, labelled=manifest if labelled else None, unlabelled=pictures or None,
                          budget=req.budget, seed=req.seed, threads=jobs.threads, on_progress=on_progress,
                          progress=False)
                on_progress(1.0, "saving the model")  # the last point at which a stopping server ends it
                info = json.loads((out / "best.json").read_text(encoding="utf-8"))
                kept = None
                if finder is not None:
                    for suffix in (".safetensors", ".json"):
                        shutil.copyfile(finder.with_suffix(suffix), out / f"finder{suffix}")
                    was = models.record(parent)
                    kept = {**((was.finder or {}) if was else {}), "kept_from": parent}
                models.publish(out, ModelRecord(
                    req.name, list(info["classes"]), created=now(), parent=parent, lab=lab, labelled=labelled,
                    unlabelled=len(pictures), budget=req.budget, job=job.id, img_size=info.get("img_size"),
                    adapted_from=without_paths(info.get("adapted_from") or {}), finder=kept))
            except BaseException:
                shutil.rmtree(out, ignore_errors=True)
                raise
            return f"model {req.name} is ready: {labelled} labelled cells, {len(pictures)} pictures"

        job = jobs.submit("adapt", lab, work, job_id=job_id, model=req.name, parent=parent)
        return job_answer(jobs, job)

    return router

"""The routes that teach the cell finder a lab: its whole fields with the finder's finds, the points a
person puts on them, and a job that fine-tunes the finder on the corrected fields.

    GET  /v1/labs/{lab}/fields                   the lab's fields, which are corrected, and how many
    GET  /v1/labs/{lab}/fields/{id}?model=NAME   one field: the cells the model's finder found, the saved points
    GET  /v1/labs/{lab}/fields/{id}/picture      the field as the finder sees it (a JPEG, EXIF-turned)
    PUT  /v1/labs/{lab}/fields/{id}/points       save a field as corrected: all its points (wbc and not)
    GET  /v1/labs/{lab}/points.csv               the corrected fields' points, as `wbcnet finder adapt` reads them
    POST /v1/adapt-finder                        a job: a lab model, the parent's classifier and the lab's finder
                                                 (finder.adapt.adapt_finder), published like /v1/adapt's models

A field is one of the lab's uploads (POST /v1/labs/{lab}/uploads) that is a whole field by
lab.suggest's rule. A corrected field is fully labelled: its `wbc` points are all its white cells
(the finds a person kept and the ones they added), everything else in it is not a white cell, and
a `not` point says so of a find explicitly. Points are in the field's own pixels, as load_rgb reads
it; the picture route serves exactly that frame, so a page can draw and click in it.
"""
from __future__ import annotations

import asyncio
import io
import json
import math
import re
import shutil
from pathlib import Path

from fastapi import APIRouter, Query
from fastapi.responses import Response
from PIL import Image

from ..core.imageio import ImageReadError, load_rgb
from .datadir import POINT_KINDS, LabStore, Refused, field_size, is_field
from .jobs import Job, Jobs
from .labapi import job_answer
from .registry import ModelRecord, Models, now, without_paths
from .schemas import FieldAnswer, FieldList, FieldPoints, FinderRequest, JobAnswer, LabField, errors

PICTURE_MAX_SIDE = 2048   # the picture a page draws on; the points stay in the field's own pixels
MIN_FIELDS = 1            # corrected fields (with a point) a finder job needs; a handful teach it better
STEP = re.compile(r"step (\d+)/(\d+)")


def field_answer(lab: str, up, width: int, height: int, entry: dict | None) -> dict:
    points = entry["points"] if entry else []
    return {"id": up.id, "name": up.name, "width": width, "height": height,
            "picture": f"/v1/labs/{lab}/fields/{up.id}/picture", "corrected": entry is not None,
            "saved": entry.get("saved") if entry else None,
            "white_cells": sum(p["kind"] == "wbc" for p in points),
            "not_cells": sum(p["kind"] == "not" for p in points)}


def checked_points(points, width: int, height: int) -> list[tuple[float, float, str]]:
    """The points of a field, each inside it and of a known kind, or a one-line 422."""
    out = []
    for i, p in enumerate(points, start=1):
        if p.kind not in POINT_KINDS:
            raise Refused(f"point {i}: kind {p.kind!r} is not one of {', '.join(POINT_KINDS)}")
        if not (math.isfinite(p.x) and math.isfinite(p.y) and 0 <= p.x <= width and 0 <= p.y <= height):
            raise Refused(f"point {i} ({p.x:g}, {p.y:g}) is outside the field, which is {width} x {height} pixels")
        out.append((round(float(p.x), 1), round(float(p.y), 1), p.kind))
    return out


def finder_router(data: Path, labs: LabStore, models: Models, jobs: Jobs) -> APIRouter:
    router = APIRouter()

    def model_name(name: str | None) -> str:
        return models.default.name if name is None else name

    def field_of(lab: str, field_id: str):
        """(upload, its file, width, height) of one of the lab's pictures; 404 if there is none."""
        up = labs.upload(lab, field_id)
        path = labs.upload_path(lab, up)
        try:
            width, height = field_size(path)
        except OSError:
            raise Refused(f"lab {lab!r}: picture {field_id!r} can no longer be read") from None
        return up, path, width, height

    @router.get("/v1/labs/{lab}/fields", summary="A lab's whole fields, and which are corrected",
                response_model=FieldList, responses=errors(404))
    async def list_fields(lab: str):
        """The lab's uploads that are whole fields, each with whether a person saved it as corrected;
        `corrected` of them teach the finder (POST /v1/adapt-finder)."""
        def work():
            labs.existing(lab)
            saved = labs.corrections(lab)
            out = []
            for up in labs.uploads(lab):
                try:
                    width, height = field_size(labs.upload_path(lab, up))
                except OSError:
                    continue
                if is_field(width, height):
                    out.append(field_answer(lab, up, width, height, saved.get(up.id)))
            taught = [f for f in out if f["corrected"] and (f["white_cells"] or f["not_cells"])]
            return {"lab": lab, "fields": out, "corrected": len(taught),
                    "white_cells": sum(f["white_cells"] for f in taught)}

        return await asyncio.to_thread(work)

    @router.get("/v1/labs/{lab}/fields/{field_id}", summary="A field, the cells the finder found in it, and its "
                "saved points", response_model=FieldAnswer, responses=errors(404))
    async def get_field(lab: str, field_id: str,
                        model: str | None = Query(None, description="whose finder finds the cells: a name from GET "
                                                  "/v1/models (default: the server's own model)")):
        """`found`: the finder's white cells (centre and radius in the field's pixels); `points`:
        what a person saved for it. Finding takes a second or so on a CPU."""
        name = model_name(model)
        weights = models.finder(name)  # 404 for an unknown model

        def work():
            from ..cells import locate

            up, path, _, _ = field_of(lab, field_id)
            try:
                rgb = load_rgb(path)
            except ImageReadError as e:
                raise Refused(f"lab {lab!r}: picture {field_id!r} can't be read ({e.reason})") from None
            search = locate.search_field(rgb, "learned", str(weights) if weights else None)
            height, width = rgb.shape[:2]
            red = float(search.red_cell_px)
            entry = labs.corrections(lab).get(up.id)
            return {**field_answer(lab, up, width, height, entry), "model": name,
                    "finder": "lab" if weights else "shipped",
                    "found": [{"x": round(float(b.cx), 1), "y": round(float(b.cy), 1),
                               "radius": round(float(b.radius), 1), "score": round(float(b.score), 4)}
                              for b in search.cells],
                    "red_cell_px": round(red, 1) if math.isfinite(red) else None,
                    "points": entry["points"] if entry else []}

        return await asyncio.to_thread(work)

    @router.get("/v1/labs/{lab}/fields/{field_id}/picture", summary="A field as the finder sees it (JPEG)",
                response_class=Response, responses={200: {"content": {"image/jpeg": {}}}, **errors(404)})
    async def field_picture(lab: str, field_id: str):
        """Decoded and EXIF-turned as the finder reads it, so its pixels are the frame of the points
        (shrunk to at most 2048 px a side: draw it at the field's width and height)."""
        def work() -> bytes:
            _, path, _, _ = field_of(lab, field_id)
            try:
                img = Image.fromarray(load_rgb(path))
            except ImageReadError as e:
                raise Refused(f"lab {lab!r}: picture {field_id!r} can't be read ({e.reason})") from None
            if max(img.size) > PICTURE_MAX_SIDE:
                img.thumbnail((PICTURE_MAX_SIDE, PICTURE_MAX_SIDE), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=90)
            return buf.getvalue()

        return Response(await asyncio.to_thread(work), media_type="image/jpeg", headers={"Cache-Control": "no-cache"})

    @router.put("/v1/labs/{lab}/fields/{field_id}/points", summary="Save a field as corrected, with all its points",
                response_model=LabField, responses=errors(404, 413))
    async def put_points(lab: str, field_id: str, body: FieldPoints):
        """Every white cell of the field as a `wbc` point (the finds that are right and those it
        missed), and `not` points on finds that are no white cell. Replaces what was saved; the
        field then counts as corrected."""
        def work():
            up, _, width, height = field_of(lab, field_id)
            entry = labs.set_points(lab, up.id, checked_points(body.points, width, height), now())
            return field_answer(lab, up, width, height, entry)

        return await asyncio.to_thread(work)

    @router.get("/v1/labs/{lab}/points.csv", summary="The corrected fields' points (file,x,y,kind), as `wbcnet "
                "finder adapt` reads them", responses=errors(404))
    async def get_points(lab: str):
        """`file` is the server's name for the picture (GET /v1/labs/{lab}/fields maps ids to the names they
        were sent with: the id is the file's stem)."""
        def work():
            labs.existing(lab)
            return labs.points_csv(lab)[0].encode()

        return Response(await asyncio.to_thread(work), media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{lab}-points.csv"'})

    @router.post("/v1/adapt-finder", status_code=202, response_model=JobAnswer, responses=errors(404, 409, 413, 503),
                 summary="Start a job that teaches the finder a lab's corrected fields")
    async def adapt_finder_job(req: FinderRequest):
        """The points as they are now go to the job. The new model is the parent's classifier with the
        lab's finder beside it (started from the parent's finder, if a lab taught it one); when the
        job is done it is listed by GET /v1/models, and ?model=NAME counts with its finder."""
        from .datadir import check_id

        lab = check_id(req.lab, "lab")
        labs.existing(lab)
        parent = req.parent or models.default.name
        start = models.checkpoint(parent)  # 404 for an unknown model
        base = models.finder(parent)

        def taken() -> set[str]:
            return {j.model for kind in ("adapt", "finder") for j in jobs.pending(kind)}

        models.check_new_name(req.name, taken())
        job_id = jobs.new_id()
        points = data / "jobs" / job_id / "points.csv"  # the corrections as they are now: what the job learns
        text, n_fields, n_wbc, n_not = await asyncio.to_thread(labs.points_csv, lab)
        if n_fields < MIN_FIELDS:
            raise Refused(f"lab {lab!r} has no corrected fields; correct the finder on a few of its fields and save "
                          f"them first")
        if not n_wbc:
            raise Refused(f"lab {lab!r}: its corrected fields have no white cell marked; mark the white cells first")
        fields_dir = labs.existing(lab) / "uploads"
        points.parent.mkdir(parents=True, exist_ok=True)
        points.write_text(text, encoding="utf-8")
        models.check_new_name(req.name, taken())  # again, with no await before submit: two requests can't both pass

        def work(job: Job, on_progress) -> str:
            from ..lab.finder import adapt_finder

            holder = models.partial(job.id)  # removed at the next start if the server stops meanwhile
            out = holder / "model"  # adapt_finder's own partial folder lies beside it, inside the holder

            def log(line: str) -> None:
                m = STEP.search(str(line))
                if m:
                    done, total = int(m.group(1)), int(m.group(2))
                    on_progress(0.05 + 0.9 * done / max(1, total), f"teaching the finder: step {done} of {total}")
                else:
                    on_progress(0.02, str(line))

            try:
                holder.mkdir(parents=True)
                on_progress(0.01, f"reading {n_fields} corrected field{'s' * (n_fields != 1)}")
                adapt_finder(fields_dir, points, out, checkpoint=start, base=base, steps=req.steps, seed=req.seed,
                             progress=False, log=log)
                on_progress(1.0, "saving the model")  # the last point at which a stopping server ends it
                info = json.loads((out / "best.json").read_text(encoding="utf-8"))
                models.publish(out, ModelRecord(
                    req.name, list(info["classes"]), created=now(), parent=parent, lab=lab, job=job.id,
                    img_size=info.get("img_size"),
                    adapted_from=without_paths(info.get("adapted_from") or {}),
                    finder={"fields": n_fields, "white_cells": n_wbc, "not_cells": n_not, "steps": req.steps,
                            "started_from": "lab" if base else "shipped"}))
            finally:
                shutil.rmtree(holder, ignore_errors=True)
            return (f"model {req.name} is ready: its finder learnt {n_fields} field{'s' * (n_fields != 1)}, "
                    f"{n_wbc} white cell{'s' * (n_wbc != 1)}")

        job = jobs.submit("finder", lab, work, job_id=job_id, model=req.name, parent=parent)
        return job_answer(jobs, job)

    return router

// The wbcnet page: send cell or field images to this server's API and show the answers.
// Plain DOM code, no framework and no build step. Every text that came from a file or the
// server is set with textContent, never as markup.
"use strict";

const state = { card: null, cells: [], fields: null };
const $ = (id) => document.getElementById(id);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") node.className = v;
    else if (k === "style") node.style.cssText = v;
    else node[k] = v;
  }
  for (const c of children) node.append(c);
  return node;
}

function colour(cls) {
  const k = state.card ? state.card.classes.indexOf(cls) : -1;
  return k >= 0 ? state.card.colours[k] : "#888";
}

function pct(p) { return (100 * p).toFixed(1) + "%"; }

function setStatus(text, error = false) {
  const s = $("status");
  s.textContent = text;
  s.className = error ? "error" : "";
}

// FastAPI answers {"detail": "..."} for our errors and {"detail": [{msg, loc}, ...]} for bad requests.
async function errorText(response) {
  try {
    const body = await response.json();
    if (typeof body.detail === "string") return body.detail;
    if (Array.isArray(body.detail)) return body.detail.map((d) => d.msg).join("; ");
  } catch (e) { /* not JSON: fall through */ }
  return `${response.status} ${response.statusText}`;
}

async function post(path, files, field = "files") {
  const form = new FormData();
  for (const f of files) form.append(field, f, f.name);
  const response = await fetch(path, { method: "POST", body: form });
  if (!response.ok) throw new Error(await errorText(response));
  return response.json();
}

// --- the model card ---------------------------------------------------------------------------

async function loadCard() {
  const response = await fetch("/v1/model");
  if (!response.ok) { setStatus("Could not read the model card: " + await errorText(response), true); return; }
  const c = state.card = await response.json();
  const labs = c.sources.map((s) => s.name).join(", ") || "unrecorded data";
  $("model").textContent = `Model ${c.checkpoint || c.model} (${c.model}, ${c.img_size} px, trained on ${labs}); ` +
    `classes ${c.classes.join(", ")}. wbcnet ${c.version}.`;
  $("limits").textContent = `JPEG, PNG, TIFF, BMP; up to ${c.limits.max_files} files and ` +
    `${c.limits.max_upload_mb} MB per request`;
}

// --- single cells -----------------------------------------------------------------------------

// Requests within the server's limits: at most max_files files and about max_upload_mb each.
function chunks(files) {
  const maxFiles = state.card ? state.card.limits.max_files : 16;
  const maxBytes = state.card ? state.card.limits.max_upload_mb * 1e6 * 0.95 : 4e6;
  const out = [];
  let cur = [], bytes = 0;
  for (const f of files) {
    if (cur.length && (cur.length >= maxFiles || bytes + f.size > maxBytes)) { out.push(cur); cur = []; bytes = 0; }
    cur.push(f);
    bytes += f.size;
  }
  if (cur.length) out.push(cur);
  return out;
}

async function classifyAll(files) {
  $("cells").hidden = false;
  let done = 0;
  for (const chunk of chunks(files)) {
    setStatus(`Classifying ${done + 1}-${done + chunk.length} of ${files.length}\u2026`);
    try {
      const answer = await post("/v1/classify?thumbnails=true", chunk);
      answer.results.forEach((r, i) => addCell(chunk[i], r));
      const warn = $("cells-warning");
      if (answer.warning) { warn.textContent = answer.warning; warn.hidden = false; }
    } catch (e) {
      chunk.forEach((f) => addCell(f, { name: f.name, error: e.message }));
    }
    done += chunk.length;
  }
  const failed = state.cells.filter((c) => c.result.error).length;
  setStatus(`${state.cells.length} cell image${state.cells.length === 1 ? "" : "s"} shown` +
            (failed ? `, ${failed} could not be read` : "") + ".");
}

function confidenceBar(cls, p) {
  return el("span", {}, el("span", { class: "bar" }, el("span", { style: `width:${pct(p)};background:${colour(cls)}` })),
            pct(p));
}

function addCell(file, r) {
  const row = el("tr", { class: "cell" });
  const cell = { file, result: r, row, detail: null };
  state.cells.push(cell);
  const thumb = r.input ? el("img", { class: "thumb", src: r.input, alt: r.name }) : "";
  const name = el("td", { class: "t name", title: r.name }, r.name);
  if (r.error) {
    row.append(el("td", {}, thumb), name, el("td", { class: "t error", colSpan: 3 }, "unreadable: " + r.error));
    row.classList.remove("cell");
  } else {
    const why = r.unfamiliar ? "unfamiliar" : "low confidence";
    row.append(el("td", {}, thumb), name,
      el("td", { class: "t" }, el("span", { class: "swatch", style: `background:${colour(r.class)}` }), r.class,
         r.cell_found ? "" : el("span", { class: "muted", title: "no cell found: the whole picture was classified" },
                                " (whole picture)")),
      el("td", { class: "t" }, confidenceBar(r.class, r.confidence)),
      el("td", { class: "t" }, r.refer ? el("span", { class: "refer", title: why }, "refer (" + why + ")") : ""));
    row.addEventListener("click", () => toggleDetail(cell));
  }
  $("cell-table").tBodies[0].append(row);
}

async function toggleDetail(cell) {
  if (cell.detail) { cell.detail.remove(); cell.detail = null; return; }
  const box = el("td", { colSpan: 5 }, el("span", { class: "muted" }, "Computing Grad-CAM\u2026"));
  cell.detail = el("tr", { class: "detail" }, box);
  cell.row.after(cell.detail);
  try {
    const x = await post("/v1/explain", [cell.file], "file");
    const figure = (src, caption) => el("figure", {}, el("img", { src, alt: caption }), el("figcaption", {}, caption));
    const probs = el("table", { class: "probs" });
    for (const [cls, p] of Object.entries(x.probabilities)) {
      probs.append(el("tr", {}, el("td", { class: "t" }, cls), el("td", { class: "t" }, confidenceBar(cls, p))));
    }
    box.replaceChildren(figure(x.input, "the model's input (cell crop)"),
                        figure(x.gradcam, `Grad-CAM for ${x.class}`),
                        ...(x.attention ? [figure(x.attention, "attention pooling")] : []), probs);
  } catch (e) {
    box.replaceChildren(el("span", { class: "error" }, "Grad-CAM failed: " + e.message));
  }
}

function clearCells() {
  state.cells = [];
  $("cell-table").tBodies[0].replaceChildren();
  $("cells-warning").hidden = true;
  $("cells").hidden = true;
  setStatus("");
}

// --- whole fields -----------------------------------------------------------------------------

async function countAll(files) {
  const max = state.card ? state.card.limits.max_files : 16;
  if (files.length > max) {
    setStatus(`${files.length} fields: this server counts at most ${max} at a time; send fewer.`, true);
    return;
  }
  setStatus(`Counting the white cells of ${files.length} field${files.length === 1 ? "" : "s"}\u2026`);
  try {
    state.fields = await post("/v1/count?drawn=true", files);
  } catch (e) {
    setStatus("Count failed: " + e.message, true);
    return;
  }
  showFields(state.fields);
  setStatus("");
}

function showFields(answer) {
  const d = answer.differential;
  $("fields").hidden = false;
  const unreadable = answer.fields.filter((f) => f.error);
  $("fields-summary").textContent = `${answer.fields.length - unreadable.length} of ${answer.fields.length} fields ` +
    `read, ${answer.cells_found} white cell${answer.cells_found === 1 ? "" : "s"} found: ${d.counted} counted, ` +
    `${d.referred} referred, ` +
    `${d.edge_skipped} cut by the edge (not counted).` +
    unreadable.map((f) => ` Unreadable: ${f.name} (${f.error}).`).join("") +
    (answer.warnings || []).map((w) => ` Warning: ${w}.`).join("");
  const body = $("diff-table").tBodies[0];
  body.replaceChildren();
  for (const [cls, r] of Object.entries(d.classes)) {
    body.append(el("tr", {},
      el("td", { class: "t" }, el("span", { class: "swatch", style: `background:${colour(cls)}` }), cls),
      el("td", {}, String(r.count)), el("td", {}, r.percent.toFixed(1) + "%"),
      el("td", {}, `${r.ci_low.toFixed(1)}\u2013${r.ci_high.toFixed(1)}%`), el("td", {}, String(r.referred))));
  }
  const pictures = $("field-pictures");
  pictures.replaceChildren();
  for (const f of answer.fields) {
    if (!f.picture) continue;
    const counted = f.cells.filter((c) => c.counted).length;
    pictures.append(el("figure", {}, el("img", { src: f.picture, alt: f.name }),
      el("figcaption", { class: "muted" }, `${f.name}: ${f.cells.length} white cell` +
         `${f.cells.length === 1 ? "" : "s"} found, ${counted} counted`)));
  }
}

function clearFields() {
  state.fields = null;
  $("fields").hidden = true;
  setStatus("");
}

// --- CSV --------------------------------------------------------------------------------------

// Quoted where needed; a leading =, +, - or @ is escaped so a spreadsheet shows a file name as text.
function csvCell(v) {
  let s = v === null || v === undefined ? "" : String(v);
  if (/^[=+\-@]/.test(s)) s = "'" + s;
  return /[",\n\r]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
}

function download(name, rows) {
  const text = rows.map((r) => r.map(csvCell).join(",")).join("\r\n") + "\r\n";
  const url = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
  const a = el("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

function cellsCsv() {
  const classes = state.card.classes;
  const rows = [["file", "class", "confidence", ...classes.map((c) => "p_" + c), "refer", "unfamiliar",
                 "cell_found", "error"]];
  for (const { result: r } of state.cells) {
    rows.push(r.error ? [r.name, "", "", ...classes.map(() => ""), "", "", "", r.error]
      : [r.name, r.class, r.confidence.toFixed(4), ...classes.map((c) => r.probabilities[c].toFixed(4)),
         r.refer ? "yes" : "no", r.unfamiliar === null ? "" : r.unfamiliar ? "yes" : "no",
         r.cell_found ? "yes" : "no", ""]);
  }
  download("wbcnet-cells.csv", rows);
}

function fieldsCsv() {
  const classes = state.card.classes;
  const rows = [["file", "x0", "y0", "x1", "y1", "class", "confidence", ...classes.map((c) => "p_" + c), "flag"]];
  for (const f of state.fields.fields) {
    if (f.error) rows.push([f.name, "", "", "", "", "", "", ...classes.map(() => ""), "unreadable: " + f.error]);
    for (const c of f.cells) {
      rows.push([f.name, ...c.box, c.class, c.confidence.toFixed(4), ...classes.map((k) => c.probabilities[k].toFixed(4)),
                 c.flag]);  // the server's flag: edge, refer or empty
    }
  }
  download("wbcnet-cells-in-fields.csv", rows);
}

// --- wiring -----------------------------------------------------------------------------------

function mode() { return document.querySelector("input[name=mode]:checked").value; }

async function handle(fileList) {
  const files = Array.from(fileList);
  if (!files.length) return;
  if (mode() === "fields") await countAll(files); else await classifyAll(files);
}

const drop = $("drop");
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, () => drop.classList.remove("over")));
drop.addEventListener("drop", (e) => { e.preventDefault(); handle(e.dataTransfer.files); });
$("files").addEventListener("change", (e) => { handle(e.target.files).finally(() => { e.target.value = ""; }); });
$("cells-csv").addEventListener("click", cellsCsv);
$("cells-clear").addEventListener("click", clearCells);
$("fields-csv").addEventListener("click", fieldsCsv);
$("fields-clear").addEventListener("click", clearFields);
loadCard();

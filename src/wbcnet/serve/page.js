// The wbcnet page: send cell or field images to this server's API and show the answers.
// Plain DOM code, no framework and no build step. Every text that came from a file or the
// server is set with textContent, never as markup.
"use strict";

const state = { card: null, cells: [], fields: null, models: [], lab: null, keys: {},
                finder: { lab: null, fields: [], at: -1, field: null, marks: [], undo: [], dirty: false, token: 0 } };
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

// --- signing in -------------------------------------------------------------------------------

// A server that other machines can reach asks for its token or a user's password (401, and its
// WWW-Authenticate says which). The page asks once, keeps the answer for this tab (sessionStorage)
// and sends it with every request.
const SIGNED = "wbcnet-authorization";
let authorization = sessionStorage.getItem(SIGNED);
let signingIn = null;  // the one dialog every request refused meanwhile waits for

function signIn(challenge, why) {
  if (signingIn) return signingIn;
  signingIn = new Promise((resolve) => {
    const dialog = $("sign-in"), form = $("sign-in-form"), error = $("sign-in-error");
    const token = /bearer/i.test(challenge), password = /basic/i.test(challenge) || !token;
    $("sign-in-token").hidden = !token;
    $("sign-in-user").hidden = !password;
    $("sign-in-or").hidden = !(token && password);
    const say = (text) => { error.textContent = text; error.hidden = !text; };
    say(why);
    const submit = (e) => {
      e.preventDefault();
      const given = $("sign-in-token-value").value.trim();
      const user = $("sign-in-name").value.trim(), pass = $("sign-in-password").value;
      let value = null;
      if (token && given) value = "Bearer " + given;
      else if (password && user && pass) {
        // HTTP Basic as browsers and the server read it: printable ASCII only.
        if (!/^[\x20-\x7e]*$/.test(user + pass)) { say("Use printable ASCII characters only."); return; }
        value = "Basic " + btoa(user + ":" + pass);
      }
      if (!value) {
        say(token && password ? "Give the token, or a user name and password." :
            token ? "Give the token." : "Give your user name and password.");
        return;
      }
      form.removeEventListener("submit", submit);
      $("sign-in-token-value").value = $("sign-in-password").value = "";
      dialog.close();
      authorization = value;
      sessionStorage.setItem(SIGNED, value);
      signingIn = null;
      resolve();
    };
    form.addEventListener("submit", submit);
    dialog.showModal();
    (token ? $("sign-in-token-value") : $("sign-in-name")).focus();
  });
  return signingIn;
}

$("sign-in").addEventListener("cancel", (e) => e.preventDefault());  // Escape: nothing works without signing in

// The fetch API with this tab's credential. A 401 asks for it (again, saying why, when one was
// sent) and sends the request again. credentials "omit": the browser never answers a Basic
// challenge with a login box of its own, and sends no credential but the header set here.
async function api(path, init = {}) {
  for (;;) {
    const sent = authorization;
    const headers = new Headers(init.headers || {});
    if (sent) headers.set("Authorization", sent);
    const response = await fetch(path, { ...init, headers, credentials: "omit" });
    if (response.status !== 401) return response;
    if (authorization !== sent) continue;  // signed in meanwhile: sent again with that
    const why = sent ? await errorText(response) : "";
    authorization = null;
    sessionStorage.removeItem(SIGNED);
    await signIn(response.headers.get("WWW-Authenticate") || "", why);
  }
}

// Show a picture of the API in an <img> (or an SVG <image>): its URL on an open server; else, as an
// <img> can't send a credential, the picture fetched with it, as a blob: URL.
function showPicture(node, path, attribute = "src") {
  if (!authorization) { node.setAttribute(attribute, path); return; }
  api(path).then(async (response) => {
    if (!response.ok) throw new Error(await errorText(response));
    const url = URL.createObjectURL(await response.blob());
    node.addEventListener("load", () => URL.revokeObjectURL(url), { once: true });
    node.setAttribute(attribute, url);
  }).catch(() => node.dispatchEvent(new Event("error")));
}

// --- requests ---------------------------------------------------------------------------------

async function post(path, files, field = "files") {
  const form = new FormData();
  for (const f of files) form.append(field, f, f.name);
  const response = await api(path, { method: "POST", body: form });
  if (!response.ok) throw new Error(await errorText(response));
  return response.json();
}

// The chosen model (the model chooser) goes with every classify, count and explain request.
function chosenModel() { return $("model-choice").value; }

function withModel(path) {
  const name = chosenModel();
  const model = state.models.find((m) => m.name === name);
  if (!name || (model && model.default)) return path;
  return path + (path.includes("?") ? "&" : "?") + "model=" + encodeURIComponent(name);
}

// --- the model card ---------------------------------------------------------------------------

async function loadCard() {
  const response = await api(withModel("/v1/model"));
  if (!response.ok) { setStatus("Could not read the model card: " + await errorText(response), true); return; }
  const c = state.card = await response.json();
  const labs = c.sources.map((s) => s.name).join(", ") || "unrecorded data";
  const name = chosenModel();
  const adapted = state.models.find((m) => m.name === name && !m.default && !m.zoo);
  $("model").textContent = `Model ${adapted ? adapted.name + ", adapted to lab " + adapted.lab :
    c.zoo || c.checkpoint || c.model} ` +
    `(${c.model}, ${c.img_size} px, trained on ${labs}); ` +
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
      const answer = await post(withModel("/v1/classify?thumbnails=true"), chunk);
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
    const x = await post(withModel("/v1/explain"), [cell.file], "file");
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
    state.fields = await post(withModel("/v1/count?drawn=true"), files);
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
  // Which model counted: the answer says (its `model`), the models list gives its input size.
  const counted = state.models.find((m) => m.name === answer.model);
  const px = counted && counted.img_size ? counted.img_size :
    state.card && state.card.name === answer.model ? state.card.img_size : null;
  $("fields-model").textContent = answer.model ? `Counted with ${answer.model}${px ? ` (${px} px)` : ""}` : "";
  const unreadable = answer.fields.filter((f) => f.error);
  $("fields-summary").textContent = `${answer.fields.length - unreadable.length} of ${answer.fields.length} fields ` +
    `read, ${answer.cells_found} white cell${answer.cells_found === 1 ? "" : "s"} found: ${d.counted} counted, ` +
    `${d.referred} referred, ` +
    `${d.edge_skipped} cut by the edge (not counted); ${answer.rejected || 0} other object` +
    `${answer.rejected === 1 ? "" : "s"} judged not white cells (thin white circles, not counted).` +
    unreadable.map((f) => ` Unreadable: ${f.name} (${f.error}).`).join("");
  // Warnings first and apart: implausibly many cells, an unsure scale, greyscale fields.
  $("fields-warnings").replaceChildren(...(answer.warnings || []).map((w) => el("p", { class: "warn" }, `Warning: ${w}.`)));
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
    const rejected = (f.rejected || []).length;
    pictures.append(el("figure", {}, el("img", { src: f.picture, alt: f.name }),
      el("figcaption", { class: "muted" }, `${f.name}: ${f.cells.length} white cell` +
         `${f.cells.length === 1 ? "" : "s"} found, ${counted} counted` +
         (rejected ? `, ${rejected} judged not white cells` : "") +
         (f.implausible ? " — implausibly many" : "") + (f.scale_unsure ? " — scale unsure" : ""))));
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
$("model-choice").addEventListener("change", () => { clearCells(); clearFields(); modelNote(); loadCard(); });

// --- tabs -------------------------------------------------------------------------------------

function showTab(tab) {
  for (const t of document.querySelectorAll("[role=tab]")) {
    const on = t === tab;
    t.setAttribute("aria-selected", String(on));
    t.tabIndex = on ? 0 : -1;
    $(t.getAttribute("aria-controls")).hidden = !on;
  }
}

for (const tab of document.querySelectorAll("[role=tab]")) {
  tab.addEventListener("click", () => showTab(tab));
  tab.addEventListener("keydown", (e) => {  // the ARIA tabs pattern: arrows move between the tabs
    if (e.key !== "ArrowLeft" && e.key !== "ArrowRight") return;
    const tabs = Array.from(document.querySelectorAll("[role=tab]"));
    const next = tabs[(tabs.indexOf(tab) + (e.key === "ArrowRight" ? 1 : tabs.length - 1)) % tabs.length];
    next.focus();
    showTab(next);
  });
}

// --- the models -------------------------------------------------------------------------------

async function getJson(path) {
  const response = await api(path);
  if (!response.ok) throw new Error(await errorText(response));
  return response.json();
}

async function sendJson(method, path, body) {
  const response = await api(path, { method, headers: { "Content-Type": "application/json" },
                                     body: JSON.stringify(body) });
  if (!response.ok) throw new Error(await errorText(response));
  return response.json();
}

// A speed, roughly: ~300, ~45.
function roughly(n) { return "~" + (n >= 100 ? Math.round(n / 10) * 10 : Math.round(n)); }

// A zoo model's speed in cells/s: the estimate for this server, else the card's own machine's.
function speedText(m) {
  if (m.speed_here) return `${roughly(m.speed_here)} cells/s here`;
  if (m.speed && m.speed.img_per_s) return `${roughly(m.speed.img_per_s)} cells/s on its shipping machine`;
  return "";
}

// "raabin test split" -> "Raabin": the lab a figure was measured in, for the option's short line.
function shortSet(set) {
  const word = String(set || "").split(/\s+/)[0];
  return word ? word[0].toUpperCase() + word.slice(1) : "";
}

// One option of a model list: a zoo model with its input size, speed and first in-lab figure
// ("fast — 112 px, ~300 cells/s here, Raabin acc 0.969"); an adapted one with its lab.
function modelText(m) {
  if (m.zoo) {
    const fig = (m.figures || []).find((f) => typeof f.accuracy === "number");
    const parts = [m.img_size ? `${m.img_size} px` : "", speedText(m),
                   fig ? `${shortSet(fig.set)} acc ${fig.accuracy.toFixed(3)}`.trim() : ""].filter(Boolean);
    return `${m.name} \u2014 ${parts.join(", ")}${m.default ? " (the server's own)" : ""}`;
  }
  if (m.default) return `${m.name} (the server's own${m.img_size ? `, ${m.img_size} px` : ""})`;
  return `${m.name} (adapted to ${m.lab}${m.finder ? ", with its finder" : ""}, ${(m.created || "").slice(0, 10)})`;
}

// The line under the chooser: what the chosen model is for, its in-lab figures and its speed.
function modelNote() {
  const m = state.models.find((x) => x.name === chosenModel());
  let text = "wbcnet's own models, or one adapted to your lab";
  if (m && m.zoo) {
    const figures = (m.figures || []).map((f) => {
      const acc = typeof f.accuracy === "number" ? `accuracy ${f.accuracy.toFixed(3)}` +
        (f.accuracy_ci ? ` (${f.accuracy_ci})` : "") : "";
      const f1 = typeof f.macro_f1 === "number" ? `macro-F1 ${f.macro_f1.toFixed(3)}` +
        (f.macro_f1_ci ? ` (${f.macro_f1_ci})` : "") : "";
      return `${f.set || "?"}${f.n ? ` (${f.n} cells)` : ""}: ${[acc, f1].filter(Boolean).join(", ")}`;
    });
    const speed = m.speed_here && m.speed ? `${roughly(m.speed_here)} cells/s here (estimated from ` +
      `${Math.round(m.speed.img_per_s)}/s on ${m.speed.cpu || "the machine that shipped it"})` : speedText(m);
    text = `wbcnet's ${m.name} model, ${m.img_size} px: for ${m.purpose || "classifying cells"}. ` +
      (figures.length ? `In the lab: ${figures.join("; ")}.` : "No in-lab figures in its card yet.") +
      (speed ? ` Speed: ${speed}.` : "");
  } else if (m && m.default) {
    text = "the model this server was started with";
  } else if (m) {
    text = `adapted from ${m.parent || "?"} to lab ${m.lab || "?"}` +
      (m.labelled ? ` on ${m.labelled} labelled cells` : "") + (m.finder ? ", with its lab's finder" : "");
  }
  $("model-choice-note").textContent = text;
}

// Fill the model lists (the chooser, adapt's "start from" and the finder's), keeping what was chosen.
async function loadModels(select = null) {
  state.models = (await getJson("/v1/models")).models;
  for (const id of ["model-choice", "adapt-parent", "finder-parent"]) {
    const list = $(id);
    const keep = select && id === "model-choice" ? select : list.value;
    list.replaceChildren(...state.models.map((m) => el("option", { value: m.name }, modelText(m))));
    if (state.models.some((m) => m.name === keep)) list.value = keep;
  }
  modelNote();
  suggestName();
}

// --- teach it your lab ------------------------------------------------------------------------

function labName() { return $("lab-name").value.trim(); }

function labStatus(text, error = false) {
  const s = $("lab-status");
  s.textContent = text;
  s.className = error ? "error" : "";
}

// One key per class, its first letter where they differ (B E L M N); X or 0 skips a cell.
function assignKeys(classes) {
  const firsts = classes.map((c) => c[0].toUpperCase());
  const unique = new Set(firsts).size === firsts.length;
  state.keys = {};
  classes.forEach((c, i) => { state.keys[unique ? firsts[i] : String(i + 1)] = c; });
  state.keys.X = "skip";
  const list = Object.entries(state.keys).map(([k, c]) => `${k} ${c === "skip" ? "not a white cell (skip; also 0)" : c}`);
  $("lab-key-list").textContent = list.join(", ") + "; Backspace clears";
}

function keyOf(label) { return Object.keys(state.keys).find((k) => state.keys[k] === label); }

async function loadLab() {
  const lab = labName();
  state.lab = null;
  $("lab-cells").replaceChildren();
  suggestName();
  try {
    // A lab that does not exist yet is no error: it is made by its first upload (asked through the
    // list, so the browser's console shows no failed request).
    const { labs } = await getJson("/v1/labs");
    if (labs.some((l) => l.lab === lab)) state.lab = await getJson(`/v1/labs/${encodeURIComponent(lab)}`);
  } catch (e) {
    labStatus("Could not read the lab: " + e.message, true);
  }
  if (state.lab) { showLab(); await loadFields(); return; }
  $("lab-uploads").textContent = "No pictures in this lab yet.";
  $("lab-counts").textContent = "";
  $("lab-suggest").disabled = true;
  await loadFields();
}

function showLab() {
  const L = state.lab;
  $("lab-uploads").textContent = `${L.uploads} picture${L.uploads === 1 ? "" : "s"} in lab ${L.lab}` +
    (L.new_uploads ? `, ${L.new_uploads} not looked at yet.` : ".");
  $("lab-suggest").disabled = !L.new_uploads;
  const grid = $("lab-cells");
  grid.replaceChildren(...L.cells.map(cellCard));
  showCounts();
}

function showCounts() {
  const L = state.lab;
  const counts = {};
  for (const c of [...L.classes, "skip"]) counts[c] = 0;
  for (const c of L.cells) if (c.label) counts[c.label] += 1;
  const labelled = L.classes.reduce((n, c) => n + counts[c], 0);
  const open = L.cells.filter((c) => !c.label).length;
  $("lab-counts").textContent = L.cells.length ? `${labelled} labelled (` +
    L.classes.map((c) => `${c} ${counts[c]}`).join(", ") + `), ${counts.skip} skipped, ${open} to go.` :
    "No suggested cells yet.";
}

function cellCard(cell) {
  const card = el("div", { class: "lab-cell", tabIndex: 0, role: "group" });
  card.dataset.id = cell.id;
  card.setAttribute("aria-label", `cell ${cell.id}: the model says ${cell.predicted}` +
                    (cell.confidence === null ? "" : ` (${pct(cell.confidence)})`));
  const choices = el("div", { class: "choices" });
  for (const label of [...state.lab.classes, "skip"]) {
    const key = keyOf(label) || "";
    const b = el("button", { type: "button", class: "choice", title: `${label === "skip" ? "not a white cell, or can't " +
                 "tell (skip)" : label} (key ${key})` }, key);
    b.dataset.label = label;
    b.setAttribute("aria-label", label === "skip" ? "skip: not a white cell" : label);
    if (label !== "skip") b.style.borderBottomColor = colour(label);
    b.addEventListener("click", () => setLabel(card, cell, cell.label === label ? "" : label));
    choices.append(b);
  }
  const picture = el("img", { alt: `cell ${cell.id}` });
  showPicture(picture, cell.picture);
  card.append(picture,
    el("div", { class: "said" }, el("span", { class: "swatch", style: `background:${colour(cell.predicted)}` }),
       cell.predicted + (cell.confidence === null ? "" : " " + pct(cell.confidence))),
    el("div", { class: "reason muted", title: cell.reason }, cell.reason), choices);
  card.addEventListener("keydown", (e) => cellKey(e, card, cell));
  markCard(card, cell);
  return card;
}

function markCard(card, cell) {
  card.classList.toggle("labelled", !!cell.label);
  card.classList.toggle("skipped", cell.label === "skip");
  for (const b of card.querySelectorAll("button.choice")) b.setAttribute("aria-pressed", String(b.dataset.label === cell.label));
}

function moveFocus(card, step) {
  const cards = Array.from(document.querySelectorAll("#lab-cells .lab-cell"));
  const next = cards[cards.indexOf(card) + step];
  if (next) next.focus();
}

function cellKey(e, card, cell) {
  if (e.altKey || e.ctrlKey || e.metaKey) return;
  const k = e.key.length === 1 ? e.key.toUpperCase() : e.key;
  let label = null;
  if (state.keys[k]) label = state.keys[k];
  else if (k === "0") label = "skip";
  else if (k === "Backspace" || k === "Delete") label = "";
  else if (k === "ArrowRight" || k === "ArrowDown") { moveFocus(card, 1); e.preventDefault(); return; }
  else if (k === "ArrowLeft" || k === "ArrowUp") { moveFocus(card, -1); e.preventDefault(); return; }
  else return;
  e.preventDefault();
  setLabel(card, cell, label).then((ok) => { if (ok && label) moveFocus(card, 1); });
}

// Every label is stored by the server at once: a closed page or a restarted server loses none.
async function setLabel(card, cell, label) {
  try {
    const saved = await sendJson("PUT", `/v1/labs/${encodeURIComponent(state.lab.lab)}/labels/${cell.id}`,
                                 { label: label || null });
    cell.label = saved.label;
    markCard(card, cell);
    showCounts();
    labStatus("");
    return true;
  } catch (e) {
    labStatus("Could not save the label: " + e.message, true);
    return false;
  }
}

async function labUpload(fileList) {
  const files = Array.from(fileList);
  const lab = labName();
  if (!files.length) return;
  let kept = 0;
  const refused = [];
  for (const chunk of chunks(files)) {
    labStatus(`Uploading ${kept + refused.length + 1}-${kept + refused.length + chunk.length} of ${files.length}\u2026`);
    try {
      const answer = await post(`/v1/labs/${encodeURIComponent(lab)}/uploads`, chunk);
      kept += answer.saved.length;
      refused.push(...answer.refused.map((r) => `${r.name} (${r.error})`));
    } catch (e) {
      labStatus("Upload failed: " + e.message, true);
      return;
    }
  }
  labStatus(`${kept} picture${kept === 1 ? "" : "s"} added` + (refused.length ? `; not pictures: ${refused.join(", ")}` : "") + ".",
            refused.length > 0);
  await loadLab();
  if (kept) await suggest();
}

// Poll a job until it ends, showing its progress; the job runs on the server either way.
async function follow(job, which) {
  const box = $(`${which}-job`), bar = $(`${which}-progress`), msg = $(`${which}-message`);
  box.hidden = false;
  box.classList.remove("failed");
  for (;;) {
    bar.value = job.progress;
    msg.textContent = job.state === "queued" ? `Waiting for ${job.ahead} job${job.ahead === 1 ? "" : "s"} before it\u2026`
      : job.state === "failed" ? "Failed: " + job.error : job.message;
    if (job.state === "done" || job.state === "failed") break;
    await new Promise((r) => setTimeout(r, 400));
    try {
      job = await getJson(`/v1/jobs/${job.id}`);
    } catch (e) {
      msg.textContent = "Lost track of the job: " + e.message;
      return job;
    }
  }
  box.classList.toggle("failed", job.state === "failed");
  box.dataset.state = job.state;
  return job;
}

async function suggest() {
  const lab = labName();
  const n = Math.max(1, Math.min(200, parseInt($("lab-n").value, 10) || 24));
  $("lab-suggest").disabled = true;
  let job;
  try {
    job = await sendJson("POST", `/v1/labs/${encodeURIComponent(lab)}/suggest?n=${n}`, {});
  } catch (e) {
    labStatus("Could not suggest cells: " + e.message, true);
    await loadLab();
    return;
  }
  await follow(job, "suggest");
  await loadLab();
}

// A free name for each new model: LAB-1, LAB-2... for adapting, LAB-finder-1... for the finder.
function suggestName() {
  for (const [id, stem] of [["adapt-name", ""], ["finder-name", "-finder"]]) {
    const input = $(id);
    if (input.dataset.edited === "yes") continue;
    const lab = (labName() || "lab").slice(0, 30);
    let k = 1;
    while (state.models.some((m) => m.name === `${lab}${stem}-${k}`)) k += 1;
    input.value = `${lab}${stem}-${k}`;
  }
}

async function adapt() {
  const body = { lab: labName(), name: $("adapt-name").value.trim(), parent: $("adapt-parent").value || null,
                 budget: $("adapt-budget").value };
  $("adapt-go").disabled = true;
  try {
    const job = await sendJson("POST", "/v1/adapt", body);
    labStatus("");
    await finishAdapt(await follow(job, "adapt"));
  } catch (e) {
    labStatus("Could not start adapting: " + e.message, true);
  } finally {
    $("adapt-go").disabled = false;
  }
}

async function finishAdapt(job) {
  if (job.state !== "done") return;
  $(job.kind === "finder" ? "finder-name" : "adapt-name").dataset.edited = "";
  await loadModels();
  $("finder-parent").value = job.model;  // the lab's newest model: teaching the finder keeps its classifier
  if (!state.finder.dirty) showField();  // found by the new model's finder
  $("lab-ready").textContent = `Model ${job.model} is ready.`;
  $("lab-ready").className = "";
  const use = $("use-adapted");
  use.hidden = false;
  use.textContent = `Classify and count with ${job.model}`;
  use.dataset.model = job.model;
}

async function useAdapted() {
  $("model-choice").value = $("use-adapted").dataset.model;
  $("model-choice").dispatchEvent(new Event("change"));
  showTab($("tab-use"));
  $("model-choice").focus();
}

// A job that was running when the page was (re)opened: show it until it ends.
async function resumeJobs() {
  const { jobs } = await getJson("/v1/jobs");
  for (const job of jobs.filter((j) => j.lab === labName() && (j.state === "queued" || j.state === "running"))) {
    if (job.kind === "adapt" || job.kind === "finder") follow(job, job.kind).then(finishAdapt);
    else follow(job, "suggest").then(loadLab);
  }
}

async function startLab() {
  try {
    const { labs } = await getJson("/v1/labs");
    if (labs.length && !labs.some((l) => l.lab === labName())) $("lab-name").value = labs[0].lab;
  } catch (e) { /* the lab name stays as it is */ }
  await loadLab();
  await resumeJobs();
}

// --- teach the finder: a lab's fields ----------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";

function svgEl(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

// The models' ?model= for a field's finds: the chosen "Find with" model, left out for the server's own.
function finderModel(path) {
  const name = $("finder-parent").value;
  const model = state.models.find((m) => m.name === name);
  return !name || (model && model.default) ? path : `${path}?model=${encodeURIComponent(name)}`;
}

function fieldsUrl(tail = "") { return `/v1/labs/${encodeURIComponent(labName())}/fields${tail}`; }

// The lab's fields and how many are corrected; the field shown stays, else the first one not corrected.
async function loadFields() {
  const F = state.finder;
  let list = { fields: [], corrected: 0, white_cells: 0 };
  if (state.lab) {
    try {
      list = await getJson(fieldsUrl());
    } catch (e) {
      labStatus("Could not list the fields: " + e.message, true);
    }
  }
  const shown = F.field && F.lab === labName() ? F.field.id : null;
  F.fields = list.fields;
  F.corrected = list.corrected;
  F.whiteCells = list.white_cells;
  showFieldCounts();
  const keep = F.fields.findIndex((f) => f.id === shown);
  if (keep >= 0) { F.at = keep; showFieldName(); return; }
  const open = F.fields.findIndex((f) => !f.corrected);
  F.at = F.fields.length ? (open >= 0 ? open : 0) : -1;
  await showField();
}

function showFieldCounts() {
  const F = state.finder;
  const n = F.fields.length, w = F.whiteCells;
  $("field-counts").textContent = n ? `${F.corrected} of ${n} field${n === 1 ? "" : "s"} corrected ` +
    `(${w} white cell${w === 1 ? "" : "s"} marked)` +
    (F.corrected && F.corrected < 5 ? "; five or more teach the finder best." : ".") : "";
  $("finder-go").disabled = F.corrected < 1;
  for (const id of ["field-prev", "field-next"]) $(id).disabled = F.fields.length < 2;
}

function showFieldName() {
  const F = state.finder;
  const f = F.fields[F.at];
  $("field-name").textContent = f ? `Field ${F.at + 1} of ${F.fields.length}: ${f.name}` +
    (f.corrected ? " (saved)" : "") : "No fields in this lab yet: upload whole smear fields in step 1.";
  $("field-save").disabled = $("field-undo").disabled = !F.field;
  if (F.field) $("field-undo").disabled = !F.undo.length;
}

// One field with the finder's finds (or, once saved, the points saved for it), drawn over its picture.
async function showField() {
  const F = state.finder;
  const token = ++F.token;
  const f = F.fields[F.at];
  F.field = null;
  F.marks = [];
  F.undo = [];
  F.dirty = false;
  showFieldName();
  if (!f) { $("field-figure").hidden = $("field-legend").hidden = true; return; }
  $("field-caption").textContent = "Finding the white cells…";
  let field;
  try {
    field = await getJson(finderModel(fieldsUrl(`/${f.id}`)));
  } catch (e) {
    if (token === F.token) labStatus("Could not show the field: " + e.message, true);
    return;
  }
  if (token !== F.token) return;  // another field was asked for meanwhile
  F.field = field;
  F.lab = labName();
  const near = (x, y) => field.found.find((c) => Math.hypot(c.x - x, c.y - y) <= c.radius);
  if (field.corrected) {
    F.marks = field.points.map((p) => {
      const c = near(p.x, p.y);
      return { x: p.x, y: p.y, r: c ? c.radius : defaultRadius(), kind: p.kind, from: c ? "found" : "added" };
    });
  } else {
    F.marks = field.found.map((c) => ({ x: c.x, y: c.y, r: c.radius, kind: "wbc", from: "found" }));
  }
  showFieldName();
  drawField();
}

// An added cell's size: the finder's finds in this field, else 0.8 red-cell diameters (as the finder's training).
function defaultRadius() {
  const field = state.finder.field;
  const radii = field.found.map((c) => c.radius).sort((a, b) => a - b);
  if (radii.length) return radii[Math.floor(radii.length / 2)];
  if (field.red_cell_px) return 0.8 * field.red_cell_px;
  return Math.min(field.width, field.height) / 20;
}

function drawField() {
  const F = state.finder, field = F.field;
  const svg = $("field-svg");
  svg.setAttribute("viewBox", `0 0 ${field.width} ${field.height}`);
  const picture = svgEl("image", { x: 0, y: 0, width: field.width, height: field.height,
                                   preserveAspectRatio: "none" });
  picture.addEventListener("load", () => { svg.dataset.shown = field.id; });
  picture.addEventListener("error", () => labStatus(`Could not show the picture of ${field.name}.`, true));
  showPicture(picture, field.picture, "href");
  const marks = [];
  for (const m of F.marks) {
    const cls = m.kind === "not" ? "not" : m.from;
    const circle = svgEl("circle", { cx: m.x, cy: m.y, r: m.r, class: `mark ${cls}` });
    circle.dataset.kind = m.kind;
    marks.push(circle);
    if (m.kind === "not") {
      const d = m.r * 0.7;
      marks.push(svgEl("line", { x1: m.x - d, y1: m.y - d, x2: m.x + d, y2: m.y + d, class: "not" }),
                 svgEl("line", { x1: m.x - d, y1: m.y + d, x2: m.x + d, y2: m.y - d, class: "not" }));
    }
  }
  svg.replaceChildren(picture, ...marks);
  const wbc = F.marks.filter((m) => m.kind === "wbc").length, not = F.marks.length - wbc;
  const finder = field.finder === "lab" ? `${field.model}'s lab finder` : "the shipped finder";
  $("field-caption").textContent = `${field.found.length} found by ${finder}; now ${wbc} white cell` +
    `${wbc === 1 ? "" : "s"}` + (not ? `, ${not} struck out` : "") +
    (F.dirty ? " (not saved yet)" : field.corrected ? " (saved)" : "") + ".";
  $("field-figure").classList.toggle("corrected", field.corrected && !F.dirty);
  $("field-figure").hidden = $("field-legend").hidden = false;
  showFieldName();
}

// A click on a circle strikes it out (or takes back a cell you added, or undoes a strike); elsewhere it adds a cell.
function fieldClick(e) {
  const F = state.finder, svg = $("field-svg");
  if (!F.field) return;
  const at = new DOMPoint(e.clientX, e.clientY).matrixTransform(svg.getScreenCTM().inverse());
  const x = Math.min(F.field.width, Math.max(0, at.x)), y = Math.min(F.field.height, Math.max(0, at.y));
  F.undo.push(F.marks.map((m) => ({ ...m })));
  let hit = null, best = Infinity;
  for (const m of F.marks) {
    const d = Math.hypot(m.x - x, m.y - y);
    if (d <= Math.max(m.r, 6) && d < best) { hit = m; best = d; }
  }
  if (!hit) F.marks.push({ x, y, r: defaultRadius(), kind: "wbc", from: "added" });
  else if (hit.kind === "not") hit.kind = "wbc";
  else if (hit.from === "added") F.marks.splice(F.marks.indexOf(hit), 1);
  else hit.kind = "not";
  F.dirty = true;
  drawField();
}

function fieldUndo() {
  const F = state.finder;
  if (!F.undo.length) return;
  F.marks = F.undo.pop();
  F.dirty = true;
  drawField();
}

// Every white cell circled now is a `wbc` point; struck-out finds are `not` points. Stored at once.
async function saveField() {
  const F = state.finder, field = F.field;
  if (!field) return;
  const points = F.marks.map((m) => ({ x: Math.round(m.x * 10) / 10, y: Math.round(m.y * 10) / 10, kind: m.kind }));
  $("field-save").disabled = true;
  try {
    const saved = await sendJson("PUT", fieldsUrl(`/${field.id}/points`), { points });
    Object.assign(F.fields[F.at], saved);
    field.corrected = true;
    field.points = points;
    F.dirty = false;
    labStatus("");
    drawField();
    await loadFields();
  } catch (e) {
    labStatus("Could not save the field: " + e.message, true);
  } finally {
    $("field-save").disabled = false;
  }
}

function stepField(step) {
  const F = state.finder;
  if (F.fields.length < 2) return;
  if (F.dirty) labStatus(`The changes to ${F.fields[F.at].name} were not saved.`);
  F.at = (F.at + step + F.fields.length) % F.fields.length;
  showField();
}

async function teachFinder() {
  const steps = Math.max(1, Math.min(3000, parseInt($("finder-steps").value, 10) || 300));
  const body = { lab: labName(), name: $("finder-name").value.trim(), parent: $("finder-parent").value || null, steps };
  $("finder-go").disabled = true;
  try {
    const job = await sendJson("POST", "/v1/adapt-finder", body);
    labStatus("");
    await finishAdapt(await follow(job, "finder"));
  } catch (e) {
    labStatus("Could not start teaching the finder: " + e.message, true);
  } finally {
    showFieldCounts();
  }
}

const labDrop = $("lab-drop");
["dragenter", "dragover"].forEach((t) => labDrop.addEventListener(t, (e) => { e.preventDefault(); labDrop.classList.add("over"); }));
["dragleave", "drop"].forEach((t) => labDrop.addEventListener(t, () => labDrop.classList.remove("over")));
labDrop.addEventListener("drop", (e) => { e.preventDefault(); labUpload(e.dataTransfer.files); });
$("lab-files").addEventListener("change", (e) => { labUpload(e.target.files).finally(() => { e.target.value = ""; }); });
$("lab-name").addEventListener("change", () => { if (/^[a-z0-9][a-z0-9-]{0,39}$/.test(labName())) loadLab();
                                                 else labStatus("A lab name is 1-40 lowercase letters, digits and -.", true); });
$("lab-suggest").addEventListener("click", suggest);
$("adapt-name").addEventListener("input", () => { $("adapt-name").dataset.edited = "yes"; });
$("adapt-go").addEventListener("click", adapt);
$("use-adapted").addEventListener("click", useAdapted);
$("field-svg").addEventListener("click", fieldClick);
$("field-undo").addEventListener("click", fieldUndo);
$("field-save").addEventListener("click", saveField);
$("field-prev").addEventListener("click", () => stepField(-1));
$("field-next").addEventListener("click", () => stepField(1));
$("finder-parent").addEventListener("change", showField);
$("finder-name").addEventListener("input", () => { $("finder-name").dataset.edited = "yes"; });
$("finder-go").addEventListener("click", teachFinder);

async function start() {
  try {
    await loadModels();
  } catch (e) {
    setStatus("Could not list the models: " + e.message, true);
  }
  await loadCard();
  assignKeys(state.card ? state.card.classes : []);
  await startLab();
}

start();

// SuperLink web page: pick or upload an image, draw regions, send an instruction and watch the answer stream in
// (POST /v1/tasks with "stream": true; server-sent events generating* -> text -> part (one per decoder) -> response).
// Plain JavaScript, no build step, no third-party code.
"use strict";

const $ = (id) => document.getElementById(id);
const PALETTE = ["#ff6b35", "#2ec4b6", "#e71d36", "#7b2ff7", "#ffb400", "#3a86ff", "#06d6a0", "#ff4d9d", "#8ac926", "#f15bb5"];

const state = {
  image: null,        // {img, w, h, b64}
  regions: [],        // {kind: "box"|"point"|"scribble", box|point|points}
  tool: "none",
  drawing: null,      // region being drawn
  items: emptyItems(),
  colors: new Map(),  // phrase -> colour
  maskCache: new WeakMap(),
  pendingOrder: [],   // link-event indices, in the order their "(…)" chips appear in the text
  controller: null,
};

function emptyItems() {
  return { detections: [], polygons: [], points: [], keypoints: [] };
}

function colorFor(phrase) {
  const key = phrase || "-";
  if (!state.colors.has(key)) state.colors.set(key, PALETTE[state.colors.size % PALETTE.length]);
  return state.colors.get(key);
}

// ---- COCO compressed RLE (column-major), as pycocotools writes and reads it --------------------------------
function rleDecode(rle) {
  const [h, w] = rle.size;
  const s = rle.counts;
  const counts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0, k = 0, more = true;
    while (more) {
      const c = s.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = (c & 0x20) !== 0;
      p++; k++;
      if (!more && (c & 0x10) && 5 * k < 32) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  const mask = new Uint8Array(h * w);  // column-major: index = col * h + row
  let pos = 0, val = 0;
  for (const n of counts) {
    if (val) mask.fill(1, pos, Math.min(pos + n, mask.length));
    pos += n; val ^= 1;
  }
  return { mask, h, w };
}

// ---- canvas ------------------------------------------------------------------------------------------------
const canvas = $("canvas");
const ctx = canvas.getContext("2d");

function layout() {
  const rect = canvas.getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  const side = Math.max(1, Math.round(rect.width * dpr));
  if (canvas.width !== side) { canvas.width = side; canvas.height = side; }
  if (!state.image) return { s: 1, ox: 0, oy: 0 };
  const s = Math.min(canvas.width / state.image.w, canvas.height / state.image.h);
  return { s, ox: (canvas.width - state.image.w * s) / 2, oy: (canvas.height - state.image.h * s) / 2 };
}

function toImage(ev) {
  const rect = canvas.getBoundingClientRect();
  const dpr = canvas.width / rect.width;
  const { s, ox, oy } = layout();
  const x = ((ev.clientX - rect.left) * dpr - ox) / s;
  const y = ((ev.clientY - rect.top) * dpr - oy) / s;
  return [Math.min(Math.max(x, 0), state.image.w), Math.min(Math.max(y, 0), state.image.h)];
}

function maskCanvas(det, color) {
  let off = state.maskCache.get(det);
  if (off) return off;
  const { mask, h, w } = rleDecode(det.mask);
  off = document.createElement("canvas");
  off.width = w; off.height = h;
  const octx = off.getContext("2d");
  const img = octx.createImageData(w, h);
  const [r, g, b] = [1, 3, 5].map((i) => parseInt(color.slice(i, i + 2), 16));
  for (let col = 0; col < w; col++) {
    for (let row = 0; row < h; row++) {
      if (!mask[col * h + row]) continue;
      const o = (row * w + col) * 4;
      img.data[o] = r; img.data[o + 1] = g; img.data[o + 2] = b; img.data[o + 3] = 120;
    }
  }
  octx.putImageData(img, 0, 0);
  state.maskCache.set(det, off);
  return off;
}

let placedLabels = [];  // label rectangles drawn this frame, so that labels do not cover each other

function label(text, x, y, color, scale) {
  const size = Math.max(11, Math.round(12 * scale));
  ctx.font = `600 ${size}px Inter, system-ui, sans-serif`;
  const pad = 4 * scale;
  const width = ctx.measureText(text).width + 2 * pad;
  const height = size + 2 * pad;
  let top = Math.max(0, y - height);
  const left = Math.min(Math.max(0, x), canvas.width - width);
  const hits = (t) => placedLabels.some((r) => left < r.x + r.w && r.x < left + width && t < r.y + r.h && r.y < t + height);
  for (let tries = 0; hits(top) && tries < 12; tries++) top += height + 1;
  placedLabels.push({ x: left, y: top, w: width, h: height });
  ctx.fillStyle = color;
  ctx.fillRect(left, top, width, height);
  ctx.fillStyle = "#fff";
  ctx.fillText(text, left + pad, top + size + pad / 2);
}

function redraw() {
  const { s, ox, oy } = layout();
  const dpr = window.devicePixelRatio || 1;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  placedLabels = [];
  $("drop-hint").hidden = !!state.image;
  if (!state.image) return;
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(state.image.img, ox, oy, state.image.w * s, state.image.h * s);
  const X = (x) => ox + x * s, Y = (y) => oy + y * s;
  const line = 2 * dpr;

  for (const d of state.items.detections) {
    const color = colorFor(d.phrase);
    if (d.mask) ctx.drawImage(maskCanvas(d, color), ox, oy, state.image.w * s, state.image.h * s);
  }
  for (const d of state.items.detections) {
    const color = colorFor(d.phrase);
    const [x1, y1, x2, y2] = d.box;
    ctx.strokeStyle = color; ctx.lineWidth = line;
    ctx.strokeRect(X(x1), Y(y1), (x2 - x1) * s, (y2 - y1) * s);
    const score = d.route ? ` ${Math.round(d.score * 100)}%` : "";
    label(`${d.label}${score}`, X(x1), Y(y1), color, dpr);
  }
  for (const p of state.items.polygons) {
    const color = colorFor(p.phrase);
    ctx.beginPath();
    p.points.forEach(([x, y], i) => (i ? ctx.lineTo(X(x), Y(y)) : ctx.moveTo(X(x), Y(y))));
    ctx.closePath();
    ctx.fillStyle = color + "55"; ctx.fill();
    ctx.strokeStyle = color; ctx.lineWidth = line; ctx.stroke();
    if (p.points.length) label(p.label, X(p.points[0][0]), Y(p.points[0][1]), color, dpr);
  }
  for (const k of state.items.keypoints) {
    const color = colorFor(k.phrase);
    const visible = k.keypoints.filter((kp) => kp[2] > 0.05);
    ctx.strokeStyle = color; ctx.lineWidth = 1.5 * dpr; ctx.setLineDash([4 * dpr, 3 * dpr]);
    ctx.beginPath();
    visible.forEach(([x, y], i) => (i ? ctx.lineTo(X(x), Y(y)) : ctx.moveTo(X(x), Y(y))));
    if (visible.length > 2) ctx.closePath();
    ctx.stroke(); ctx.setLineDash([]);
    for (const [x, y, v] of visible) {
      ctx.beginPath(); ctx.arc(X(x), Y(y), 4 * dpr, 0, 2 * Math.PI);
      ctx.fillStyle = color; ctx.globalAlpha = 0.35 + 0.65 * Math.min(1, v); ctx.fill();
      ctx.globalAlpha = 1; ctx.strokeStyle = "#fff"; ctx.lineWidth = 1.2 * dpr; ctx.stroke();
    }
  }
  for (const p of state.items.points) {
    const color = colorFor(p.phrase);
    const [x, y] = p.point;
    ctx.strokeStyle = color; ctx.lineWidth = line;
    ctx.beginPath(); ctx.arc(X(x), Y(y), 7 * dpr, 0, 2 * Math.PI); ctx.stroke();
    ctx.beginPath(); ctx.moveTo(X(x) - 11 * dpr, Y(y)); ctx.lineTo(X(x) + 11 * dpr, Y(y));
    ctx.moveTo(X(x), Y(y) - 11 * dpr); ctx.lineTo(X(x), Y(y) + 11 * dpr); ctx.stroke();
    label(p.label, X(x) + 8 * dpr, Y(y) - 8 * dpr, color, dpr);
  }
  const regions = state.drawing ? [...state.regions, state.drawing] : state.regions;
  regions.forEach((r, i) => drawRegion(r, i, X, Y, s, dpr));
  canvas.dataset.overlayItems = String(
    state.items.detections.length + state.items.polygons.length + state.items.points.length + state.items.keypoints.length,
  );
}

function drawRegion(r, i, X, Y, s, dpr) {
  ctx.save();
  ctx.lineWidth = 2.5 * dpr; ctx.strokeStyle = "#ffffff"; ctx.shadowColor = "rgba(0,0,0,.6)"; ctx.shadowBlur = 4 * dpr;
  ctx.setLineDash([6 * dpr, 4 * dpr]);
  if (r.kind === "box") {
    const [x1, y1, x2, y2] = r.box;
    ctx.strokeRect(X(Math.min(x1, x2)), Y(Math.min(y1, y2)), Math.abs(x2 - x1) * s, Math.abs(y2 - y1) * s);
  } else if (r.kind === "point") {
    ctx.setLineDash([]);
    ctx.beginPath(); ctx.arc(X(r.point[0]), Y(r.point[1]), 6 * dpr, 0, 2 * Math.PI);
    ctx.fillStyle = "#4f5bd5"; ctx.fill(); ctx.stroke();
  } else {
    ctx.setLineDash([]); ctx.lineCap = "round"; ctx.lineJoin = "round";
    ctx.strokeStyle = "rgba(255,255,255,.85)"; ctx.lineWidth = scribbleWidth() * s;
    ctx.beginPath();
    r.points.forEach(([x, y], k) => (k ? ctx.lineTo(X(x), Y(y)) : ctx.moveTo(X(x), Y(y))));
    ctx.stroke();
  }
  ctx.restore();
  const [lx, ly] = r.kind === "box" ? [r.box[0], r.box[1]] : r.kind === "point" ? r.point : r.points[0];
  label(`region ${i + 1}`, X(lx), Y(ly) - 2 * dpr, "#4f5bd5", dpr);
}

function scribbleWidth() {
  return Math.max(2, 0.05 * Math.max(state.image.w, state.image.h));  // image pixels
}

// ---- regions -----------------------------------------------------------------------------------------------
for (const btn of document.querySelectorAll(".tool")) {
  btn.addEventListener("click", () => {
    state.tool = btn.dataset.tool;
    document.querySelectorAll(".tool").forEach((b) => b.classList.toggle("active", b === btn));
  });
}
$("clear-regions").addEventListener("click", () => { state.regions = []; updateRegionHint(); redraw(); });
$("insert-region").addEventListener("click", () => {
  const ta = $("instruction");
  ta.value = ta.value.trim() ? `${ta.value.trim()} <region>` : "What colour is the object in <region>?";
  ta.focus();
});

canvas.addEventListener("pointerdown", (ev) => {
  if (!state.image || state.tool === "none") return;
  const p = toImage(ev);
  canvas.setPointerCapture(ev.pointerId);
  if (state.tool === "point") { state.regions.push({ kind: "point", point: p }); updateRegionHint(); redraw(); return; }
  state.drawing = state.tool === "box" ? { kind: "box", box: [...p, ...p] } : { kind: "scribble", points: [p] };
});
canvas.addEventListener("pointermove", (ev) => {
  if (!state.drawing) return;
  const p = toImage(ev);
  if (state.drawing.kind === "box") state.drawing.box = [state.drawing.box[0], state.drawing.box[1], ...p];
  else state.drawing.points.push(p);
  redraw();
});
canvas.addEventListener("pointerup", () => {
  const r = state.drawing;
  state.drawing = null;
  if (!r) return;
  if (r.kind === "box") {
    const [x1, y1, x2, y2] = r.box;
    r.box = [Math.min(x1, x2), Math.min(y1, y2), Math.max(x1, x2), Math.max(y1, y2)];
    if (r.box[2] - r.box[0] >= 1 && r.box[3] - r.box[1] >= 1) state.regions.push(r);
  } else {
    state.regions.push(r);
  }
  updateRegionHint();
  redraw();
});

function updateRegionHint() {
  $("region-hint").hidden = state.regions.length === 0;
  $("region-count").textContent = `${state.regions.length} region${state.regions.length === 1 ? "" : "s"}`;
}

const MAX_SCRIBBLE_POINTS = 1024, MAX_SCRIBBLE_WIDTH = 256;  // the API's limits (mllm/scribble.py)

function scribbleLine(points) {
  // The pointer trail, thinned: points at least one image pixel apart, at most the API's 1024.
  const kept = [points[0]];
  for (const p of points.slice(1)) {
    const q = kept[kept.length - 1];
    if (Math.hypot(p[0] - q[0], p[1] - q[1]) >= 1) kept.push(p);
  }
  const n = kept.length, m = Math.min(n, MAX_SCRIBBLE_POINTS);
  const line = m < n ? Array.from({ length: m }, (_, k) => kept[Math.round((k * (n - 1)) / (m - 1))]) : kept;
  return line.map(([x, y]) => [Math.round(x * 10) / 10, Math.round(y * 10) / 10]);
}

function regionPayload(r) {
  if (r.kind === "box") return { image: 0, box: r.box.map((v) => Math.round(v * 10) / 10) };
  if (r.kind === "point") return { image: 0, point: r.point.map((v) => Math.round(v * 10) / 10) };
  // A scribble is the API's own region kind (polylines + pen width); the server rasterises it.
  const width = Math.round(Math.min(scribbleWidth(), MAX_SCRIBBLE_WIDTH) * 10) / 10;
  return { image: 0, scribble: { lines: [scribbleLine(r.points)], width } };
}

// ---- images ------------------------------------------------------------------------------------------------
function loadImage(dataUrl) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => {
      state.image = { img, w: img.naturalWidth, h: img.naturalHeight, b64: dataUrl.split(",", 2)[1] };
      state.regions = []; state.items = emptyItems(); state.colors.clear();
      updateRegionHint(); redraw(); resolve();
    };
    img.onerror = () => reject(new Error("the browser could not read this file as an image"));
    img.src = dataUrl;
  });
}

function readAsDataUrl(blob) {
  return new Promise((resolve, reject) => {
    const fr = new FileReader();
    fr.onload = () => resolve(fr.result);
    fr.onerror = () => reject(fr.error);
    fr.readAsDataURL(blob);
  });
}

async function useFile(file) {
  try { await loadImage(await readAsDataUrl(file)); clearAnswer(); } catch (err) { showError(err.message); }
  document.querySelectorAll(".examples button").forEach((b) => b.classList.remove("active"));
}

$("file").addEventListener("change", (ev) => { if (ev.target.files[0]) useFile(ev.target.files[0]); });
const stage = $("stage");
stage.addEventListener("dragover", (ev) => { ev.preventDefault(); stage.classList.add("dragging"); });
stage.addEventListener("dragleave", () => stage.classList.remove("dragging"));
stage.addEventListener("drop", (ev) => {
  ev.preventDefault(); stage.classList.remove("dragging");
  if (ev.dataTransfer.files[0]) useFile(ev.dataTransfer.files[0]);
});

async function loadExamples() {
  const resp = await fetch("/web/examples/examples.json");
  const { examples } = await resp.json();
  const box = $("examples");
  examples.forEach((ex, i) => {
    const btn = document.createElement("button");
    btn.type = "button"; btn.title = ex.title; btn.dataset.example = String(i);
    btn.innerHTML = `<img src="/web/examples/${ex.file}" alt="${ex.title}">`;
    btn.addEventListener("click", () => pickExample(ex, btn));
    box.appendChild(btn);
  });
  if (examples.length) await pickExample(examples[0], box.firstChild, true);
}

async function pickExample(ex, btn, first = false) {
  const blob = await (await fetch(`/web/examples/${ex.file}`)).blob();
  await loadImage(await readAsDataUrl(blob));
  document.querySelectorAll(".examples button").forEach((b) => b.classList.toggle("active", b === btn));
  const chips = $("suggestions");
  chips.innerHTML = "";
  for (const text of ex.instructions) {
    const c = document.createElement("button");
    c.type = "button"; c.textContent = text;
    c.addEventListener("click", () => { $("instruction").value = text; $("instruction").focus(); });
    chips.appendChild(c);
  }
  if (first || !$("instruction").value.trim()) $("instruction").value = ex.instructions[0];
  clearAnswer();
  document.body.dataset.ready = "1";
}

// ---- the request and its stream ----------------------------------------------------------------------------
function headers() {
  const h = { "Content-Type": "application/json", Accept: "text/event-stream" };
  const token = $("opt-token").value.trim();
  if (token) h.Authorization = `Bearer ${token}`;
  return h;
}

function options() {
  const o = {};
  const num = (id) => ($(id).value === "" ? null : Number($(id).value));
  if (num("opt-threshold") !== null) o.score_threshold = num("opt-threshold");
  if (num("opt-steps") !== null) o.steps = num("opt-steps");
  if (num("opt-tokens") !== null) o.max_new_tokens = num("opt-tokens");
  if (num("opt-seed") !== null) o.seed = num("opt-seed");
  return o;
}

function clearAnswer() {
  state.items = emptyItems(); state.pendingOrder = [];
  $("answer").className = "answer muted";
  $("answer").textContent = "The answer streams in here: the text first, then each decoder's part as it finishes.";
  $("timeline").innerHTML = ""; $("generated").innerHTML = ""; $("total").textContent = "";
  $("error").hidden = true; $("legend").innerHTML = "";
  document.body.dataset.state = "idle";
  redraw();
}

function showError(message, status, requestId) {
  setBusy(false);
  const box = $("error");
  box.hidden = false;
  box.textContent = (status ? `Error ${status}: ${message}` : message) + (requestId ? ` (request id ${requestId})` : "");
  document.body.dataset.state = "error";
}

function setBusy(busy, text = "working…") {
  $("send").disabled = busy; $("busy").hidden = !busy; $("busy-text").textContent = text;
}

let t0 = 0;
function addTimeline(event, text, failed = false) {
  const li = document.createElement("li");
  li.innerHTML = `<span class="t">${Math.round(performance.now() - t0)} ms</span><span class="ev"></span><span class="what"></span>`;
  li.querySelector(".ev").textContent = event;
  li.querySelector(".what").textContent = text;
  if (failed) li.querySelector(".what").classList.add("err");
  $("timeline").appendChild(li);
}

function renderText(text, pendingMarker) {
  // Parenthesised part summaries ("(3 detections)") become chips; "(…)" marks a part still running.
  const p = $("answer");
  p.className = "answer"; p.innerHTML = "";
  let k = 0;
  for (const piece of text.split(/(\([^()]*\))/)) {
    if (/^\([^()]*\)$/.test(piece)) {
      const chip = document.createElement("span");
      const inner = piece.slice(1, -1);
      chip.className = "chip" + (piece === pendingMarker ? " pending" : "");
      if (piece === pendingMarker) { chip.dataset.event = String(state.pendingOrder[k] ?? ""); k++; }
      chip.textContent = inner;
      p.appendChild(chip);
    } else {
      p.appendChild(document.createTextNode(piece));
    }
  }
}

function addItems(data) {
  for (const key of Object.keys(state.items)) if (Array.isArray(data[key])) state.items[key].push(...data[key]);
  for (const img of data.images || []) addGenerated(img);
  renderLegend();
  redraw();
}

function addGenerated(img) {
  const fig = document.createElement("figure");
  const el = document.createElement("img");
  el.src = `data:image/png;base64,${img.png_base64}`;
  el.alt = img.phrase || img.route;
  if (img.width < 96) el.classList.add("small");
  fig.appendChild(el);
  const cap = document.createElement("figcaption");
  cap.innerHTML = `<span></span><span class="badge">${img.route}</span>`;
  cap.firstChild.textContent = `${img.phrase || "image"} · ${img.width}×${img.height}`;
  fig.appendChild(cap);
  $("generated").appendChild(fig);
}

// Parts of kinds a route module declares (no list of their own in the response): one timeline line each.
const BUILTIN_KINDS = new Set(["detection", "polygon", "point", "keypoints", "image"]);

function describePart(it) {
  const skip = new Set(["kind", "route", "phrase", "image"]);
  const fields = Object.entries(it).filter(([k]) => !skip.has(k)).map(([k, v]) => `${k} ${JSON.stringify(v)}`);
  return `[${it.route}] ${it.phrase || it.kind}: ${fields.join(", ")}`;
}

function renderLegend() {
  const counts = new Map();
  const all = [...state.items.detections, ...state.items.polygons, ...state.items.points, ...state.items.keypoints];
  for (const it of all) {
    const kind = it.keypoints ? "pose" : it.points ? "polygon" : it.point ? "point" : it.mask ? "mask" : "box";
    const key = `${it.phrase || it.label}|${kind}`;
    counts.set(key, (counts.get(key) || 0) + 1);
  }
  const legend = $("legend");
  legend.innerHTML = "";
  for (const [key, n] of counts) {
    const [phrase, kind] = key.split("|");
    const tag = document.createElement("span");
    tag.className = "tag";
    tag.innerHTML = `<span class="swatch" style="background:${colorFor(phrase)}"></span><span></span>`;
    tag.lastChild.textContent = `${phrase} · ${n} ${kind}${n === 1 ? "" : kind.endsWith("s") ? "es" : "s"}`;
    legend.appendChild(tag);
  }
}

function onEvent(event, data) {
  if (event === "generating") {
    // The answer token by token (in-process server): raw, with routing markers, until the text event.
    const p = $("answer");
    if (!p.classList.contains("live")) addTimeline("generating", "first token");
    p.className = "answer live";
    p.textContent = data.text;
    setBusy(true, "generating…");
  } else if (event === "text") {
    state.pendingOrder = data.pending.map((p) => p.event);
    renderText(data.text, "(…)");
    addItems(data);
    const parts = data.pending.map((p) => `[${p.route}] ${p.phrase} → ${p.decoder}`).join(", ");
    addTimeline("text", parts ? `routes ${parts}` : "text answer");
    for (const e of data.errors || []) addTimeline("error", `${e.kind}: ${e.message}`, true);
    setBusy(true, data.pending.length ? "decoders running…" : "finishing…");
  } else if (event === "part") {
    for (const part of data.parts) {
      const chip = $("answer").querySelector(`.chip.pending[data-event="${part.event}"]`);
      if (chip) {
        chip.classList.remove("pending");
        const err = (data.errors || []).find((e) => e.phrase === part.phrase && e.route === part.route);
        chip.textContent = part.summary || (err ? err.kind.replaceAll("_", " ") : "failed");
        if (!part.summary) chip.classList.add("failed");
      }
    }
    addItems(data);
    const nouns = { detections: "detection", polygons: "polygon", points: "point", keypoints: "pose", images: "image" };
    const n = Object.keys(nouns).map((k) => [k, (data[k] || []).length]).filter(([, v]) => v);
    const said = n.map(([k, v]) => `${v} ${nouns[k]}${v === 1 ? "" : "s"}`).join(", ");
    const other = (data.items || []).filter((it) => !BUILTIN_KINDS.has(it.kind));
    addTimeline(data.decoder, `${said || (other.length ? `${other.length} ${other[0].kind} parts` : "no items")} · ran ${Math.round(data.elapsed_ms)} ms`);
    for (const it of other) addTimeline(it.kind, describePart(it));
    for (const e of data.errors || []) addTimeline("error", `[${e.route}] ${e.phrase}: ${e.kind}: ${e.message}`, true);
  } else if (event === "response") {
    renderText(data.text, null);
    $("total").textContent = `${Math.round(data.timings_ms.total || 0)} ms on the server`;
    addTimeline("done", `${data.routes.length} route${data.routes.length === 1 ? "" : "s"}: ${data.routes.map((r) => `[${r}]`).join(" ") || "none"}`);
    setBusy(false);
    document.body.dataset.state = "done";
  } else if (event === "error") {
    showError(data.detail, data.status, data.request_id);
  }
}

async function send(ev) {
  ev.preventDefault();
  if (state.controller) state.controller.abort();
  const instruction = $("instruction").value.trim();
  clearAnswer();
  if (!instruction) { showError("Type an instruction first."); return; }
  const body = {
    images: state.image ? [state.image.b64] : [],
    instruction,
    regions: state.image ? state.regions.map(regionPayload) : [],
    options: options(),
    stream: true,
  };
  state.controller = new AbortController();
  t0 = performance.now();
  setBusy(true, "the model is reading…");
  document.body.dataset.state = "streaming";
  try {
    const resp = await fetch("/v1/tasks", { method: "POST", headers: headers(), body: JSON.stringify(body), signal: state.controller.signal });
    if (!resp.ok) {
      let detail = resp.statusText, requestId = resp.headers.get("x-request-id");
      try {
        const j = await resp.json();
        detail = typeof j.detail === "string" ? j.detail : JSON.stringify(j.detail);
        requestId = j.request_id || requestId;
      } catch (_) { /* keep statusText */ }
      showError(detail, resp.status, requestId);
      return;
    }
    await readStream(resp.body);
    if (document.body.dataset.state === "streaming") showError("the stream ended before the whole response arrived");
  } catch (err) {
    if (err.name !== "AbortError") showError(`request failed: ${err.message}`);
  } finally {
    setBusy(false);
    state.controller = null;
  }
}

async function readStream(body) {
  // Server-sent events over fetch (EventSource cannot POST): blocks separated by a blank line.
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(event, JSON.parse(data.join("\n")));
    }
  }
}

$("ask").addEventListener("submit", send);
$("instruction").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && (ev.metaKey || ev.ctrlKey)) $("ask").requestSubmit();
});
window.addEventListener("resize", redraw);

async function checkServer() {
  const pill = $("server-status");
  try {
    const resp = await fetch("/v1/routes", { headers: headers() });
    if (resp.status === 401) { pill.textContent = "token needed (Options)"; pill.className = "pill bad"; return; }
    const info = await resp.json();
    pill.textContent = `${info.backend} · ${Object.keys(info.routes).map((r) => `[${r}]`).join(" ")}`;
    pill.className = "pill ok";
  } catch (err) {
    pill.textContent = "server unreachable"; pill.className = "pill bad";
  }
}
$("opt-token").addEventListener("change", checkServer);

redraw();
checkServer();
loadExamples().catch((err) => showError(`could not load the examples: ${err.message}`));

// attnhash search page: pick or drop a query image, see the nearest items by Hamming distance.
// Plain browser JavaScript (fetch, FormData, DOM); no build step, no network access beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { file: null, byId: null, bits: 64, modelLoaded: false };

function setStatus(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

async function apiJson(response) {
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  if (!response.ok) {
    const detail = body && body.detail;
    const msg = typeof detail === "string" ? detail : JSON.stringify(detail || response.statusText);
    throw new Error(`${response.status}: ${msg}`);
  }
  return body;
}

async function loadStats() {
  try {
    const s = await apiJson(await fetch("/api/stats"));
    state.bits = s.bits;
    state.modelLoaded = s.model.loaded;
    $("radius").max = s.bits;
    const fp = s.fingerprint ? ` · model ${s.fingerprint.slice(0, 10)}…` : "";
    $("stats").textContent = `${s.count.toLocaleString()} items · ${s.bits}-bit codes · ${s.backend}${fp}`;
    if (!s.model.loaded) {
      setStatus(`Search by image is unavailable (${s.model.error}). Click a result to search by item.`, true);
    }
  } catch (err) {
    $("stats").textContent = "index unavailable";
    setStatus(String(err.message || err), true);
  }
}

function queryParams() {
  if ($("mode").value === "radius") return { radius: String($("radius").value || 0) };
  return { k: $("k").value };
}

function showPreview(src) {
  const img = $("query-preview");
  img.src = src;
  img.hidden = false;
  $("drop-hint").hidden = true;
}

async function searchFile(file) {
  state.file = file;
  state.byId = null;
  showPreview(URL.createObjectURL(file));
  const form = new FormData();
  form.append("image", file, file.name || "query");
  for (const [key, value] of Object.entries(queryParams())) form.append(key, value);
  await runSearch(() => fetch("/api/search", { method: "POST", body: form }), file.name || "query image");
}

async function searchById(id) {
  state.byId = id;
  state.file = null;
  showPreview(`/api/items/${id}/image?size=320`);
  const params = new URLSearchParams(queryParams());
  await runSearch(() => fetch(`/api/search/by-id/${id}?${params}`), `item #${id}`);
}

async function runSearch(request, what) {
  setStatus(`Searching with ${what}…`);
  $("results").setAttribute("aria-busy", "true");
  try {
    const body = await apiJson(await request());
    render(body.results, body.query);
    const n = body.results.length;
    const shown = body.truncated ? `the first ${n} of ${body.total} results` : `${n} result${n === 1 ? "" : "s"}`;
    setStatus(`${shown} for ${what} in ${body.took_ms} ms`);
  } catch (err) {
    render([], null);
    setStatus(String(err.message || err), true);
  } finally {
    $("results").removeAttribute("aria-busy");
  }
}

function render(results, query) {
  const grid = $("results");
  grid.replaceChildren();
  const title = $("results-title");
  title.hidden = !query;
  if (query) {
    title.textContent = query.radius !== null && query.radius !== undefined
      ? `Items within Hamming distance ${query.radius}` : `Nearest ${query.k} items`;
  }
  for (const hit of results) {
    const card = document.createElement("figure");
    card.className = "result";
    card.dataset.id = hit.id;
    card.dataset.distance = hit.distance;
    card.tabIndex = 0;
    card.title = `${hit.path || ""}\nclick to search with this item`;
    const img = document.createElement("img");
    img.src = hit.thumbnail;
    img.alt = `item ${hit.id}`;
    img.loading = "lazy";
    const cap = document.createElement("figcaption");
    const dist = document.createElement("span");
    dist.className = "distance";
    dist.textContent = `d = ${hit.distance}`;
    const labels = document.createElement("span");
    labels.className = "labels";
    labels.textContent = hit.label_names.length ? hit.label_names.join(", ") : "—";
    const id = document.createElement("span");
    id.className = "item-id";
    id.textContent = `#${hit.id}`;
    cap.append(dist, labels, id);
    card.append(img, cap);
    card.addEventListener("click", () => searchById(hit.id));
    card.addEventListener("keydown", (e) => { if (e.key === "Enter") searchById(hit.id); });
    grid.append(card);
  }
}

function rerun() {
  if (state.file) searchFile(state.file);
  else if (state.byId !== null) searchById(state.byId);
}

function setup() {
  const zone = $("drop-zone");
  const input = $("file-input");
  input.addEventListener("change", () => { if (input.files.length) searchFile(input.files[0]); });
  for (const ev of ["dragenter", "dragover"]) {
    zone.addEventListener(ev, (e) => { e.preventDefault(); zone.classList.add("dragging"); });
  }
  for (const ev of ["dragleave", "drop"]) {
    zone.addEventListener(ev, (e) => { e.preventDefault(); zone.classList.remove("dragging"); });
  }
  zone.addEventListener("drop", (e) => {
    const file = e.dataTransfer && e.dataTransfer.files[0];
    if (file) searchFile(file);
  });
  zone.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") input.click(); });
  $("mode").addEventListener("change", () => {
    const radius = $("mode").value === "radius";
    $("k-label").hidden = radius;
    $("radius-label").hidden = !radius;
    rerun();
  });
  $("k").addEventListener("change", rerun);
  $("radius").addEventListener("change", rerun);
  loadStats();
}

document.addEventListener("DOMContentLoaded", setup);

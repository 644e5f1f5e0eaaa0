// faramir gallery: the page. Plain JavaScript, no build step. Every number on it comes from the
// JSON API (gallery/app.py); images are named by content id only.
"use strict";

const TOKEN = document.querySelector('meta[name="faramir-token"]').content;
const READ_ONLY = document.querySelector('meta[name="faramir-read-only"]').content === "1";
const PAGE = 60;
const $ = (id) => document.getElementById(id);

const DEFAULTS = { head: "", t: "0.5", show: "all", label: [], amin: "", amax: "", sort: "confidence",
                   order: "desc", view: "grid", ref: "", acc: "", b: "", q: "", open: "", vs: "", poly: "", key: "",
                   by: "decision" };
const LEAVE = { ref: "", acc: "", b: "", poly: "", key: "" };  // what a view of its own leaves behind
let info = null;         // /api/info
let state = { ...DEFAULTS };
let gen = 0;             // bumped on every reload: answers for an older view are dropped
let next = null;         // keyset cursor (grid) or offset (compare) of the next page; null: no more
let loading = false;
let rows = [];           // rows shown, in order
let focusIndex = -1;
let anchorIndex = -1;    // start of a shift-selection
const selected = new Set();
let detailId = "";

// -- state <-> URL ------------------------------------------------------------------------------

function readUrl() {
  const q = new URLSearchParams(location.search);
  const s = { ...DEFAULTS, label: [] };
  for (const key of Object.keys(DEFAULTS)) {
    if (key === "label") s.label = q.getAll("label").flatMap((x) => x.split(",")).filter(Boolean);
    else if (q.has(key)) s[key] = q.get(key);
  }
  if (!s.head && info) s.head = info.heads.includes(info.default_head) ? info.default_head : info.heads[0];
  return s;
}

function urlOf(s) {
  const q = new URLSearchParams();
  for (const [key, value] of Object.entries(s)) {
    if (key === "label") value.forEach((x) => q.append("label", x));
    else if (value !== "" && value !== DEFAULTS[key]) q.set(key, value);
  }
  const text = q.toString();
  return location.pathname + (text ? "?" + text : "");
}

function commit(changes, { push = true, reload = true } = {}) {
  state = { ...state, ...changes };
  if (state.view !== "search") state.q = "";
  const url = urlOf(state);
  if (url !== location.pathname + location.search) history[push ? "pushState" : "replaceState"](null, "", url);
  syncControls();
  if (reload) load();
}

window.addEventListener("popstate", () => {
  const before = state;
  state = readUrl();
  syncControls();
  const { open: _a, ...b1 } = before;
  const { open: _b, ...b2 } = state;
  if (JSON.stringify(b1) !== JSON.stringify(b2)) load();
  else syncDetail();
});

// -- the API ------------------------------------------------------------------------------------

function filterParams(s = state, extra = {}) {
  const q = new URLSearchParams({ head: s.head, threshold: s.t, show: s.show });
  s.label.forEach((x) => q.append("label", x));
  if (s.amin !== "") q.set("min_aesthetic", s.amin);
  if (s.amax !== "") q.set("max_aesthetic", s.amax);
  for (const [k, v] of Object.entries(extra)) if (v !== null && v !== undefined && v !== "") q.set(k, v);
  return q;
}

async function api(path, params, options = {}) {
  const url = params ? `${path}?${params}` : path;
  const response = await fetch(url, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const err = new Error((body && body.error) || `${response.status} ${response.statusText}`);
    err.status = response.status;
    throw err;
  }
  return body;
}

async function post(path, payload) {
  if (READ_ONLY) throw new Error("this gallery is read-only (started with --read-only)");
  if (info && info.cannot_write) throw new Error(info.cannot_write);
  return api(path, null, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-Faramir-Token": TOKEN },
    body: JSON.stringify(payload),
  });
}

let toastTimer = 0;
function toast(message, error = false) {
  const el = $("toast");
  el.textContent = message;
  el.className = "toast show" + (error ? " error" : "");
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.className = "toast"; }, error ? 5000 : 1800);
}

// -- controls -----------------------------------------------------------------------------------

function fmt(x, digits = 3) { return x === null || x === undefined ? "–" : Number(x).toFixed(digits); }
function num(n) { return Number(n).toLocaleString("en-US"); }

function buildControls() {
  $("db").textContent = info.db + " · " + num(info.rows) + " images";
  $("db").title = info.db;
  if (info.generated) {
    $("generated").hidden = false;
    $("generated").textContent = "Scores in this cache come from generated weights, not FARAMIR's: " + info.generated;
  }
  $("ro-badge").hidden = !READ_ONLY;
  $("cannot-write").hidden = !info.cannot_write;
  $("cannot-write").textContent = info.cannot_write ? "Labels and finetunes are off: " + info.cannot_write : "";
  for (const sel of [$("head"), $("ft-base")]) {
    sel.replaceChildren(...info.heads.map((h) => new Option(h, h)));
  }
  $("compare").replaceChildren(new Option("—", ""), ...info.heads.map((h) => new Option(h, h)));
  $("vs").replaceChildren(new Option("no second head", ""), ...info.heads.map((h) => new Option(h, h)));
  const menu = $("labels-menu");
  const accept = new Set(info.accept_labels);
  const group = (title, cls, names) => {
    const h = document.createElement("h4");
    h.className = cls;
    h.textContent = title;
    menu.append(h);
    for (const name of names) {
      const label = document.createElement("label");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.value = name;
      box.addEventListener("change", () => {
        const chosen = [...menu.querySelectorAll("input:checked")].map((x) => x.value);
        commit({ label: chosen, view: state.view === "search" ? "search" : "grid" });
      });
      label.append(box, name);
      menu.append(label);
    }
  };
  menu.replaceChildren();
  group("accept side", "acc", info.labels.filter((x) => accept.has(x)));
  group("reject side", "rej", info.labels.filter((x) => !accept.has(x)));
  const clear = document.createElement("button");
  clear.className = "ghost clear";
  clear.textContent = "clear";
  clear.addEventListener("click", () => commit({ label: [] }));
  menu.append(clear);
  for (const el of document.querySelectorAll(".write, #finetune-btn")) el.hidden = READ_ONLY || !!info.cannot_write;
  setLabelCounts(info.label_counts);
  const why = info.search_unavailable;
  $("q").disabled = Boolean(why);
  $("search-box").classList.toggle("off", Boolean(why));
  $("search-box").title = why ? `${why}` : "Search by text: the images whose SigLIP embedding best matches the words, within the current filters (Enter)";
}

function syncControls() {
  $("head").value = state.head;
  $("threshold").value = state.t;
  $("threshold-value").textContent = Number(state.t).toFixed(2);
  for (const b of $("show").querySelectorAll("button")) b.setAttribute("aria-checked", String(b.dataset.show === state.show));
  for (const box of $("labels-menu").querySelectorAll("input")) box.checked = state.label.includes(box.value);
  $("labels-summary").textContent = state.label.length ? state.label.join(", ") : "any";
  $("amin").value = state.amin;
  $("amax").value = state.amax;
  $("sort").value = `${state.sort}:${state.order}`;
  $("compare").value = state.view === "compare" ? state.b : "";
  $("q").value = state.q;
  for (const format of ["csv", "jsonl"]) {
    $(`export-${format}`).href = "/api/export?" + filterParams(state, { format, sort: state.sort, order: state.order });
  }
  const banner = $("banner");
  banner.hidden = state.view === "grid" || state.view === "map";
  $("vs-box").hidden = $("queue-refresh").hidden = state.view !== "queue";
  $("vs").value = state.vs;
  $("map-by").value = state.by;
  $("diff-panel").hidden = state.view !== "diff";
  $("map").hidden = state.view !== "map";
  $("main").hidden = state.view === "map";
  $("queue-btn").setAttribute("aria-pressed", String(state.view === "queue"));
  $("map-btn").setAttribute("aria-pressed", String(state.view === "map"));
}

function setLabelCounts(c) {
  $("label-total").textContent = num(c.total);
  $("label-total").dataset.n = c.total;
  $("label-accept").textContent = num(c.accept);
  $("label-accept").title = `${c.accept} labelled accept`;
  $("label-reject").textContent = num(c.reject);
  $("label-reject").title = `${c.reject} labelled reject`;
}

function wireControls() {
  $("head").addEventListener("change", (e) => commit({ head: e.target.value }));
  let slideTimer = 0;
  $("threshold").addEventListener("input", (e) => {
    $("threshold-value").textContent = Number(e.target.value).toFixed(2);
    clearTimeout(slideTimer);
    slideTimer = setTimeout(() => commit({ t: e.target.value }, { push: false }), 60);
  });
  $("threshold").addEventListener("change", (e) => {
    clearTimeout(slideTimer);
    const url = urlOf({ ...state, t: e.target.value });
    if (state.t === e.target.value) history.pushState(null, "", url);
    else commit({ t: e.target.value });
  });
  for (const b of $("show").querySelectorAll("button")) {
    b.addEventListener("click", () => commit({ show: b.dataset.show, view: state.view === "compare" ? "grid" : state.view }));
  }
  for (const id of ["amin", "amax"]) {
    $(id).addEventListener("change", (e) => {
      const v = e.target.value.trim();
      commit({ [id]: v === "" || isNaN(Number(v)) ? "" : String(Number(v)) });
    });
  }
  $("sort").addEventListener("change", (e) => {
    const [sort, order] = e.target.value.split(":");
    commit({ sort, order, view: state.view === "similar" ? "grid" : state.view });
  });
  $("compare").addEventListener("change", (e) => {
    const b = e.target.value;
    if (!b) return commit({ view: "grid", b: "" });
    if (b === state.head) { toast("pick a head other than the current one", true); syncControls(); return; }
    commit({ view: "compare", b, ref: "", acc: "" });
  });
  $("back-btn").addEventListener("click", () => commit({ view: state.poly && state.view !== "map" ? "map" : "grid", ...LEAVE }));
  $("queue-btn").addEventListener("click", () => commit({ view: "queue", ...LEAVE }));
  $("map-btn").addEventListener("click", () => commit({ view: "map", ...LEAVE }));
  $("vs").addEventListener("change", (e) => commit({ vs: e.target.value }));
  $("queue-refresh").addEventListener("click", () => load());
  $("map-by").addEventListener("change", (e) => commit({ by: e.target.value }));
  $("diff-use").addEventListener("click", () => useHead(state.b));
  $("diff-discard").addEventListener("click", () => discardHead(state.b));
  $("q").addEventListener("keydown", (e) => {
    if (e.key === "Escape") { e.target.blur(); return; }
    if (e.key !== "Enter") return;
    e.preventDefault();
    const q = e.target.value.trim();
    if (q) commit({ view: "search", q, ref: "", acc: "", b: "" });
    else if (state.view === "search") commit({ view: "grid" });
  });
  $("detail-close").addEventListener("click", () => closeDetail());
  $("similar-btn").addEventListener("click", () => openSimilar(detailId, false));
  $("similar-accepted").addEventListener("click", () => openSimilar(detailId, true));
  $("label-a").addEventListener("click", () => labelIds([detailId], "accept"));
  $("label-r").addEventListener("click", () => labelIds([detailId], "reject"));
  $("label-u").addEventListener("click", () => labelIds([detailId], null));
  $("finetune-btn").addEventListener("click", openFinetune);
  $("ft-close").addEventListener("click", () => { $("finetune-dialog").hidden = true; });
  $("ft-start").addEventListener("click", () => startFinetune(false));
  $("ft-replace").addEventListener("click", () => startFinetune(true));
  $("ft-name").addEventListener("input", () => { $("ft-taken").hidden = true; });
  $("help-btn").addEventListener("click", () => { $("help").hidden = false; });
  $("help-close").addEventListener("click", () => { $("help").hidden = true; });
  document.addEventListener("click", (e) => {
    const dd = $("labels-dd");
    if (dd.open && !dd.contains(e.target)) dd.open = false;
  });
  new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting)) more();
  }, { root: $("main"), rootMargin: "900px" }).observe($("sentinel"));
}

// -- loading the grid -----------------------------------------------------------------------------

async function load() {
  const mine = ++gen;
  rows = [];
  next = null;
  loading = true;
  selected.clear();
  $("grid").replaceChildren();
  $("status").textContent = "loading…";
  $("main").scrollTop = 0;
  if (state.view === "map") return loadMap(mine);
  try {
    const counts = api("/api/counts", filterParams());
    let first;
    if (state.view === "queue") {
      first = api("/api/queue", filterParams(state, { vs: state.vs, limit: 48, key: state.key, poly: state.poly }));
    } else if (state.view === "lasso") {
      first = api("/api/map/selection", filterParams(state, { key: state.key, poly: state.poly, offset: 0, limit: PAGE }));
    } else if (state.view === "diff") {
      first = api("/api/compare", new URLSearchParams({ a: state.head, b: state.b, threshold: state.t, offset: 0, limit: PAGE }));
      showDiff(mine);
    } else if (state.view === "similar") {
      const ref = state.ref;
      first = api(`/api/similar/${ref}`, filterParams({ ...state, show: state.acc ? "accepted" : "all" }, { k: 48 }));
    } else if (state.view === "search") {
      first = api("/api/search", filterParams(state, { q: state.q, k: 48 }));
    } else if (state.view === "compare") {
      first = api("/api/compare", new URLSearchParams({ a: state.head, b: state.b, threshold: state.t, offset: 0, limit: PAGE }));
    } else {
      first = api("/api/grid", filterParams(state, { sort: state.sort, order: state.order, limit: PAGE }));
    }
    const [c, page] = await Promise.all([counts, first]);
    if (mine !== gen) return;
    showCounts(c);
    if (state.view === "queue") {
      const among = page.selection !== null ? ` among the ${num(page.selection)} in the lasso` : "";
      $("banner-text").textContent = `Label next: the ${page.rows.length} unlabelled images${among} whose labels teach ${state.head} most ` +
        `(close to ${Number(state.t).toFixed(2)}${state.vs ? `, disputed by ${state.vs}` : ""}, or torn between two reasons), spread over the collection. a / r label them.`;
      next = null;
    } else if (state.view === "lasso") {
      $("banner-text").textContent = `${num(page.count)} of the ${num(page.covered)} images in the lasso pass the filters, highest confidence first`;
      next = page.next;
    } else if (state.view === "diff") {
      $("banner-text").textContent = `What ${state.b} changes before it goes live: the ${num(page.total)} images it decides otherwise than ${state.head} at ${Number(state.t).toFixed(2)}, largest change first`;
      next = page.rows.length === PAGE && page.total > PAGE ? PAGE : null;
    } else if (state.view === "compare") {
      $("banner-text").textContent = `${num(page.total)} images on which ${page.head_a} and ${page.head_b} disagree at ${Number(state.t).toFixed(2)}, largest confidence gap first`;
      next = page.rows.length === PAGE && page.total > PAGE ? PAGE : null;
    } else if (state.view === "similar") {
      const name = page.rows.length && page.rows[0].id === state.ref ? page.rows[0].name : state.ref.slice(0, 12);
      $("banner-text").textContent = `Nearest ${page.rows.length} to ${name}` + (state.acc ? `, accepted at ${Number(state.t).toFixed(2)} only` : "") + " (cosine distance of the FARAMIR embedding)";
      next = null;
    } else if (state.view === "search") {
      $("banner-text").textContent = `Best ${page.rows.length} matches for “${state.q}” among the images passing the filters (cosine similarity of SigLIP's text and image embeddings)`;
      next = null;
    } else {
      next = page.next;
    }
    append(page.rows);
    focusIndex = rows.length ? 0 : -1;
    anchorIndex = focusIndex;
    paintFocus(false);
  } catch (err) {
    if (mine === gen) { toast(err.message, true); $("status").textContent = err.message; }
  } finally {
    if (mine === gen) { loading = false; status(); }
  }
  syncDetail();
}

async function more() {
  if (loading || next === null) return;
  const mine = gen;
  loading = true;
  $("status").textContent = "loading…";
  try {
    let page;
    if (state.view === "compare" || state.view === "diff") {
      page = await api("/api/compare", new URLSearchParams({ a: state.head, b: state.b, threshold: state.t, offset: next, limit: PAGE }));
      if (mine !== gen) return;
      next = page.rows.length === PAGE && next + PAGE < page.total ? next + PAGE : null;
    } else if (state.view === "lasso") {
      page = await api("/api/map/selection", filterParams(state, { key: state.key, poly: state.poly, offset: next, limit: PAGE }));
      if (mine !== gen) return;
      next = page.next;
    } else {
      page = await api("/api/grid", filterParams(state, { sort: state.sort, order: state.order, limit: PAGE, after: next }));
      if (mine !== gen) return;
      next = page.next;
    }
    append(page.rows);
  } catch (err) {
    if (mine === gen) toast(err.message, true);
  } finally {
    if (mine === gen) { loading = false; status(); }
  }
}

function status() {
  $("status").textContent = rows.length === 0 ? "No images pass these filters." :
    next === null ? `${num(rows.length)} images · end` : "";
  if (next !== null) requestAnimationFrame(() => {
    const s = $("sentinel").getBoundingClientRect();
    if (s.top < $("main").getBoundingClientRect().bottom + 900) more();
  });
}

function showCounts(c) {
  $("count-accepted").textContent = num(c.accepted);
  $("count-accepted").dataset.n = c.accepted;
  $("count-rejected").textContent = num(c.rejected);
  $("count-rejected").dataset.n = c.rejected;
  $("meter-acc").style.width = c.total ? `${(100 * c.accepted) / c.total}%` : "0";
}

// -- tiles ----------------------------------------------------------------------------------------

function curatedSide(label) {
  if (!label) return "";
  return label === "accept" || info.accept_labels.includes(label) ? "acc" : "rej";
}

function tile(row, index) {
  const el = document.createElement("div");
  const compare = state.view === "compare" || state.view === "diff";
  const accepted = compare ? row.accepted_a : row.accepted;
  el.className = "tile " + (accepted ? "acc" : "rej");
  el.dataset.id = row.id;
  el.dataset.index = index;
  el.dataset.accepted = String(accepted);
  el.tabIndex = -1;
  el.setAttribute("role", "button");
  el.title = `${row.name}\n${row.id}`;
  const frame = document.createElement("div");
  frame.className = "frame";
  const img = document.createElement("img");
  img.loading = "lazy";
  img.decoding = "async";
  img.alt = row.name;
  img.src = `/api/thumb/${row.id}`;
  frame.append(img);
  const mark = document.createElement("span");
  mark.className = "mark";
  mark.textContent = accepted ? "✓" : "✗";
  mark.title = accepted ? "accepted at this threshold" : "rejected at this threshold";
  const badge = document.createElement("span");
  badge.className = "curated";
  const bar = document.createElement("div");
  bar.className = "bar";
  const fill = document.createElement("span");
  fill.style.width = `${100 * (compare ? row.confidence_a : row.confidence)}%`;
  bar.append(fill);
  const meta = document.createElement("div");
  meta.className = "meta";
  const conf = document.createElement("span");
  conf.className = "conf";
  conf.textContent = fmt(compare ? row.confidence_a : row.confidence);
  const label = document.createElement("span");
  label.className = "label";
  label.textContent = compare ? row.label_a : row.label;
  const extra = document.createElement("span");
  extra.className = "extra";
  if (row.similarity !== undefined) { extra.textContent = `sim ${fmt(row.similarity, 3)}`; extra.title = "cosine similarity to the text"; }
  else if (row.distance !== undefined) { extra.textContent = `d ${fmt(row.distance, 3)}`; extra.title = "cosine distance"; }
  else if (compare) { extra.textContent = `Δ ${fmt(row.gap, 2)}`; extra.title = "confidence gap"; }
  else if (row.priority !== undefined) {
    extra.textContent = `? ${fmt(row.priority, 2)}`;
    extra.title = `what a label teaches: closeness to the threshold ${fmt(row.uncertainty, 2)}, ` +
      `disagreement ${fmt(row.disagreement, 2)}, an ambiguous reason ${fmt(row.ambiguity, 2)}`;
  }
  else if (state.sort === "aesthetic") { extra.textContent = `★ ${fmt(row.aesthetic_score, 2)}`; extra.title = "aesthetic score"; }
  meta.append(conf, label, extra);
  el.append(frame, mark, badge, bar, meta);
  if (compare) {
    const c = document.createElement("div");
    c.className = "compare";
    const side = (ok) => (ok ? "acc" : "rej");
    c.innerHTML = "";
    const a = document.createElement("span");
    a.className = side(row.accepted_a);
    a.textContent = `A ${fmt(row.confidence_a, 2)}`;
    const b = document.createElement("span");
    b.className = side(row.accepted_b);
    b.textContent = `B ${fmt(row.confidence_b, 2)} ${row.label_b}`;
    c.append(a, b);
    el.append(c);
  }
  setBadge(el, row.curated);
  el.addEventListener("click", (e) => onTileClick(e, Number(el.dataset.index)));
  return el;
}

function setBadge(el, label) {
  const badge = el.querySelector(".curated");
  badge.hidden = !label;
  badge.className = "curated " + curatedSide(label);
  badge.textContent = !label ? "" : label === "accept" ? "A" : label === "reject" ? "R" : label;
  badge.title = label ? `labelled ${label}` : "";
  el.dataset.curated = label || "";
}

function append(newRows) {
  const start = rows.length;
  rows.push(...newRows);
  const frag = document.createDocumentFragment();
  newRows.forEach((row, i) => frag.append(tile(row, start + i)));
  $("grid").append(frag);
}

function tiles() { return $("grid").children; }

function paintFocus(scroll = true) {
  for (const el of tiles()) {
    const i = Number(el.dataset.index);
    el.classList.toggle("focus", i === focusIndex);
    el.classList.toggle("selected", selected.has(el.dataset.id));
    el.classList.toggle("open", el.dataset.id === detailId);
    el.tabIndex = i === focusIndex ? 0 : -1;
  }
  const el = tiles()[focusIndex];
  if (el && scroll) {
    el.focus({ preventScroll: true });
    el.scrollIntoView({ block: "nearest" });
  }
}

function columns() {
  const all = tiles();
  if (all.length < 2) return 1;
  const top = all[0].offsetTop;
  let n = 0;
  while (n < all.length && all[n].offsetTop === top) n++;
  return Math.max(1, n);
}

function selectRange(a, b) {
  selected.clear();
  const [lo, hi] = a < b ? [a, b] : [b, a];
  for (let i = lo; i <= hi; i++) selected.add(rows[i].id);
}

function onTileClick(e, index) {
  if (e.shiftKey && anchorIndex >= 0) {
    selectRange(anchorIndex, index);
    focusIndex = index;
    paintFocus();
    return;
  }
  selected.clear();
  focusIndex = anchorIndex = index;
  paintFocus();
  openDetail(rows[index].id);
}

// -- keyboard -------------------------------------------------------------------------------------

document.addEventListener("keydown", (e) => {
  const tag = (e.target.tagName || "").toLowerCase();
  if (["input", "select", "textarea"].includes(tag) && e.target.type !== "range") return;
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (!$("finetune-dialog").hidden || !$("help").hidden) {
    if (e.key === "Escape") { $("finetune-dialog").hidden = true; $("help").hidden = true; }
    return;
  }
  if (e.key === "n" && tag !== "input") { e.preventDefault(); return commit({ view: "queue", ...LEAVE }); }
  if (e.key === "m" && tag !== "input") { e.preventDefault(); return commit({ view: "map", ...LEAVE }); }
  if (state.view === "map" && mapView) {
    if (e.key === "l") mapView.setLasso(!mapView.lassoMode);
    else if (e.key === "Escape") { mapView.clear(); mapView.setLasso(false); }
    else if ((e.key === "a" || e.key === "r") && mapView.poly) mapView.label(e.key === "a" ? "accept" : "reject");
    else if (e.key === "[" || e.key === "]") {
      const t = Math.min(1, Math.max(0, Number(state.t) + (e.key === "]" ? 0.01 : -0.01)));
      commit({ t: t.toFixed(2) }, { push: false });
    } else if (e.key === "?") $("help").hidden = false;
    return;
  }
  const moves = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -columns(), ArrowDown: columns() };
  if (e.key in moves) {
    if (tag === "input") return;  // the slider keeps its arrows
    e.preventDefault();
    if (!rows.length) return;
    const to = Math.min(rows.length - 1, Math.max(0, (focusIndex < 0 ? 0 : focusIndex) + moves[e.key]));
    if (e.shiftKey) {
      if (anchorIndex < 0) anchorIndex = focusIndex;
      selectRange(anchorIndex, to);
    } else {
      selected.clear();
      anchorIndex = to;
    }
    focusIndex = to;
    paintFocus();
    if (!$("detail").hidden && !e.shiftKey) openDetail(rows[focusIndex].id, false);
    if (focusIndex >= rows.length - columns() * 2) more();
    return;
  }
  const key = e.key;
  if (key === "Enter" && focusIndex >= 0) { e.preventDefault(); openDetail(rows[focusIndex].id); }
  else if (key === "Escape") {
    if (!$("detail").hidden) closeDetail();
    else if (selected.size) { selected.clear(); paintFocus(false); }
    else if (state.view !== "grid") commit({ view: state.poly && state.view !== "map" ? "map" : "grid", ...LEAVE });
  } else if ((key === "a" || key === "r" || key === "u") && focusIndex >= 0) {
    e.preventDefault();
    const ids = selected.size ? [...selected] : [rows[focusIndex].id];
    labelIds(ids, key === "a" ? "accept" : key === "r" ? "reject" : null, !selected.size);
  } else if ((key === "s" || key === "S") && focusIndex >= 0) {
    openSimilar(rows[focusIndex].id, e.shiftKey);
  } else if (key === "[" || key === "]") {
    const t = Math.min(1, Math.max(0, Number(state.t) + (key === "]" ? 0.01 : -0.01)));
    commit({ t: t.toFixed(2) }, { push: false });
  } else if (key === "?") {
    $("help").hidden = false;
  } else if (key === "/" && !$("q").disabled) {
    e.preventDefault();
    $("q").focus();
  }
});

// -- labels ---------------------------------------------------------------------------------------

async function labelIds(ids, label, advance = false) {
  ids = ids.filter(Boolean);
  if (!ids.length) return;
  try {
    const result = await post("/api/labels", { ids, label });
    setLabelCounts(result.counts);
    for (const el of tiles()) if (ids.includes(el.dataset.id)) setBadge(el, label);
    for (const row of rows) if (ids.includes(row.id)) row.curated = label;
    if (ids.includes(detailId)) openDetail(detailId, false, false);  // its "curator label" line
    const what = label === null ? "removed the label of" : `labelled ${label}:`;
    toast(`${what} ${ids.length} image${ids.length > 1 ? "s" : ""}`);
    if (advance && focusIndex < rows.length - 1 && ids[0] === rows[focusIndex].id) {
      focusIndex += 1;
      anchorIndex = focusIndex;
      paintFocus();
      if (!$("detail").hidden) openDetail(rows[focusIndex].id, false);
    }
  } catch (err) {
    toast(err.message, true);
  }
}

// -- detail ---------------------------------------------------------------------------------------

function syncDetail() {
  if (state.open && state.open !== detailId) openDetail(state.open, false, false);
  else if (!state.open && detailId) closeDetail(false);
}

async function openDetail(id, push = true, record = true) {
  detailId = id;
  document.body.classList.add("with-detail");
  $("detail").hidden = false;
  paintFocus(false);
  if (record) commit({ open: id }, { push, reload: false });
  $("detail-img").src = `/api/thumb/${id}?size=preview`;
  try {
    const d = await api(`/api/image/${id}`, new URLSearchParams({ threshold: state.t }));
    if (detailId !== id) return;
    renderDetail(d);
  } catch (err) {
    toast(err.message, true);
  }
}

function closeDetail(record = true) {
  detailId = "";
  $("detail").hidden = true;
  document.body.classList.remove("with-detail");
  paintFocus(false);
  if (record) commit({ open: "" }, { reload: false });
}

function renderDetail(d) {
  const current = d.scores.find((s) => s.head === state.head) || d.scores[0];
  $("detail-title").textContent = d.paths.length ? d.paths[0].split("/").pop() : d.id;
  $("detail-title").title = d.id;
  const facts = $("facts");
  facts.replaceChildren();
  const fact = (name, value, cls = "") => {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = value;
    if (cls) dd.className = cls;
    facts.append(dt, dd);
  };
  if (current) {
    fact("decision", `${current.accepted ? "accept" : "reject"} at ${Number(d.threshold).toFixed(2)}`, current.accepted ? "acc" : "rej");
    fact("confidence", `${fmt(current.confidence, 4)}  (logit ${fmt(current.logits[30], 3)})`);
    fact("label", current.label);
  }
  fact("aesthetic score", fmt(d.aesthetic_score, 2));
  fact("curator label", d.curated || "none");
  fact("file", `${d.width}×${d.height} ${d.format} ${d.mode} · ${num(d.size)} bytes`);
  fact("content id", d.id);

  const table = $("heads-table");
  table.replaceChildren();
  const head = table.insertRow();
  for (const h of ["head", "confidence", "decision", "label"]) {
    const th = document.createElement("th");
    th.textContent = h;
    head.append(th);
  }
  for (const s of d.scores) {
    const tr = table.insertRow();
    tr.className = s.head === state.head ? "current" : "";
    const cells = [s.head, fmt(s.confidence, 4), s.accepted ? "accept" : "reject", s.label];
    cells.forEach((text, i) => {
      const td = tr.insertCell();
      td.textContent = text;
      if (i === 1) td.className = "num";
      if (i === 2) td.className = s.accepted ? "acc" : "rej";
    });
  }

  const box = $("logits");
  box.replaceChildren();
  $("logits-head").textContent = current ? `(${current.head})` : "";
  if (current) {
    const values = current.logits;
    // The class logits and the decision logit live on different scales: one scale each.
    const classScale = Math.max(1e-6, ...values.slice(0, 30).map((v) => Math.abs(v)));
    const decisionScale = Math.max(1e-6, Math.abs(values[30]));
    const acceptSide = values.slice(0, d.accept_side);
    const rejectSide = values.slice(d.accept_side, 30);
    const bestAccept = acceptSide.indexOf(Math.max(...acceptSide));
    const bestReject = d.accept_side + rejectSide.indexOf(Math.max(...rejectSide));
    const group = (text, cls) => {
      const g = document.createElement("div");
      g.className = `group ${cls}`;
      g.textContent = text;
      box.append(g);
    };
    values.forEach((v, i) => {
      if (i === 0) group("accept side", "acc");
      if (i === d.accept_side) group("reject side", "rej");
      if (i === 30) group("decision", "dec");
      const cls = i < d.accept_side ? "acc" : i < 30 ? "rej" : "dec";
      const row = document.createElement("div");
      const best = (i === bestAccept && current.accepted) || (i === bestReject && !current.accepted);
      row.className = `logit-row ${cls}` + (best ? " best" : "");
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = d.logit_names[i];
      const track = document.createElement("span");
      track.className = "track";
      const fill = document.createElement("span");
      fill.className = "fill";
      const w = (50 * Math.abs(v)) / (i < 30 ? classScale : decisionScale);
      fill.style.left = v >= 0 ? "50%" : `${50 - w}%`;
      fill.style.width = `${w}%`;
      track.append(fill);
      const val = document.createElement("span");
      val.className = "val";
      val.textContent = fmt(v, 2);
      row.append(name, track, val);
      box.append(row);
    });
  }
  const paths = $("paths");
  paths.replaceChildren(...d.paths.map((p) => {
    const li = document.createElement("li");
    li.textContent = p;
    return li;
  }));
}

function openSimilar(id, acceptedOnly) {
  if (!id) return;
  commit({ view: "similar", ref: id, acc: acceptedOnly ? "1" : "", b: "" });
}

// -- finetune ---------------------------------------------------------------------------------------

let pollTimer = 0;

function openFinetune() {
  $("ft-base").value = state.head;
  $("finetune-dialog").hidden = false;
  post("/api/finetune/warm", {}).catch(() => {});  // the server imports torch while the options are chosen
}

async function startFinetune(replace = false) {
  const payload = {
    base: $("ft-base").value,
    name: $("ft-name").value.trim() || null,
    epochs: Number($("ft-epochs").value) || 20,
    threshold: Number(state.t),
    replace: replace === true,
  };
  returnView = state.view;
  $("ft-taken").hidden = true;
  try {
    const job = await post("/api/finetune", payload);
    $("ft-start").disabled = true;
    $("ft-eval").hidden = true;
    $("ft-progress").hidden = false;
    showJob(job);
    pollJob(job.id);
  } catch (err) {
    if (err.status === 409) {  // the name is a head's: another name, or replace it on purpose
      $("ft-taken-text").textContent = err.message;
      $("ft-replace").textContent = `Replace ${payload.name}`;
      $("ft-taken").hidden = false;
      $("ft-name").focus();
      return;
    }
    toast(err.message, true);
  }
}

function pollJob(id) {
  clearTimeout(pollTimer);
  pollTimer = setTimeout(async () => {
    try {
      const job = await api(`/api/finetune/${id}`);
      showJob(job);
      if (job.state === "done") return finished(job);
      if (job.state === "failed") { $("ft-start").disabled = false; return toast(job.error, true); }
      pollJob(id);
    } catch (err) {
      toast(err.message, true);
    }
  }, 400);
}

function showJob(job) {
  let done = 0;
  let text = "";
  if (job.state === "training") {
    done = job.epoch / (job.epochs + 1);
    text = `training ${job.name}: epoch ${job.epoch}/${job.epochs}` +
      (job.val_mcc !== null ? ` · validation MCC ${fmt(job.val_mcc)} (best ${fmt(job.best_val_mcc)}, base ${fmt(job.base_val_mcc)})` : "");
  } else if (job.state === "scoring") {
    done = 0.9 + (job.rows ? (0.08 * job.scored) / job.rows : 0);
    text = `scoring the cache with ${job.name}: ${num(job.scored)} / ${num(job.rows)} images`;
  } else if (job.state === "evaluating") {
    done = 0.98;
    text = "evaluating against the labels…";
  } else if (job.state === "done") {
    done = 1;
    text = `done: head ${job.name} registered (best epoch MCC ${fmt(job.best_val_mcc)} on held-out labels)`;
  } else {
    text = `failed: ${job.error}`;
  }
  $("ft-bar").style.width = `${Math.round(100 * done)}%`;
  $("ft-state").textContent = text;
}

function metricTile(name, value, cls = "") {  // a figure over its name (the evaluation, the diff step)
  const m = document.createElement("div");
  m.className = `metric ${cls}`.trim();
  const b = document.createElement("b");
  b.textContent = value;
  const span = document.createElement("span");
  span.textContent = name;
  m.append(b, span);
  return m;
}

async function finished(job) {
  $("ft-start").disabled = false;
  const e = job.evaluation;
  const box = $("ft-eval");
  box.replaceChildren(metricTile("MCC", fmt(e.mcc)), metricTile("precision", fmt(e.precision)),
    metricTile("recall", fmt(e.recall)), metricTile("best threshold", Number(e.best.threshold).toFixed(2)));
  const note = document.createElement("div");
  note.className = "note";
  note.textContent = `On all ${e.n} labelled images at threshold ${Number(job.threshold).toFixed(2)}; MCC ${fmt(e.best.mcc)} at the MCC-best threshold. `;
  const use = document.createElement("button");
  use.textContent = `Use threshold ${Number(e.best.threshold).toFixed(2)}`;
  use.addEventListener("click", () => { commit({ t: String(e.best.threshold) }); $("finetune-dialog").hidden = true; });
  note.append(use);
  box.append(note);
  box.hidden = false;
  info = await api("/api/info");
  buildControls();
  $("ft-name").value = "";
  $("finetune-dialog").hidden = true;
  commit({ view: "diff", ...LEAVE, head: job.base, b: job.name });  // the new head is not live until "use this head"
}

// -- the diff step: what a new head changes, then use it or discard it --------------------------------

let returnView = "grid";  // where "use this head" goes back to (the queue refreshes under the new head)

async function showDiff(mine) {
  const box = $("diff-summary"), table = $("diff-reasons");
  try {
    const d = await api("/api/diff", new URLSearchParams({ a: state.head, b: state.b, threshold: state.t }));
    if (mine !== gen) return;
    box.replaceChildren(
      metricTile("accept → reject", num(d.accept_to_reject), "rej"),
      metricTile("reject → accept", num(d.reject_to_accept), "acc"),
      metricTile(`labels right: ${d.head_a}`, d.labelled ? `${num(d.right_a)} / ${num(d.labelled)}` : "–"),
      metricTile(`labels right: ${d.head_b}`, d.labelled ? `${num(d.right_b)} / ${num(d.labelled)}` : "–"));
    box.dataset.a2r = d.accept_to_reject;
    box.dataset.r2a = d.reject_to_accept;
    box.title = d.labelled ? `${d.fixed} flips fix a decision the labels say was wrong; ${d.broken} break a right one` : "no curator labels on these images";
    table.replaceChildren();
    const head = table.insertRow();
    for (const h of ["flip", "reason (new head)", "images"]) { const th = document.createElement("th"); th.textContent = h; head.append(th); }
    for (const e of d.by_reason.slice(0, 8)) {
      const tr = table.insertRow();
      tr.insertCell().textContent = e.flip === "accept_to_reject" ? "accept → reject" : "reject → accept";
      tr.insertCell().textContent = e.reason;
      const n = tr.insertCell();
      n.textContent = num(e.count);
      n.className = "num";
    }
    $("diff-use").textContent = `Use ${d.head_b}`;
    $("diff-discard").textContent = `Discard ${d.head_b}`;
  } catch (err) {
    toast(err.message, true);
  }
}

function useHead(name) {
  commit({ head: name, view: returnView === "queue" ? "queue" : "grid", ...LEAVE });
  toast(`switched to head ${name}`);
}

async function discardHead(name) {
  try {
    await post("/api/heads/discard", { name });
    info = await api("/api/info");
    buildControls();
    commit({ view: returnView === "queue" ? "queue" : "grid", ...LEAVE });
    toast(`discarded head ${name} and its scores`);
  } catch (err) {
    toast(err.message, true);
  }
}

// -- the map ----------------------------------------------------------------------------------------

let mapView = null;

async function loadMap(mine) {
  $("status").textContent = "";
  api("/api/counts", filterParams()).then((c) => { if (mine === gen) showCounts(c); }).catch(() => {});
  try {
    if (!mapView) {
      mapView = new window.FaramirMap({
        api, post, toast, state: () => state, labels: () => info.labels,
        openDetail: (id) => openDetail(id),
        openSelection: (poly) => commit({ view: "lasso", poly, key: String(mapView.info.key) }),
        queueSelection: (poly) => commit({ view: "queue", poly, key: String(mapView.info.key) }),
        labelled: (counts) => setLabelCounts(counts),
      });
    }
    if (!mapView.info) await mapView.load();
    window.faramirMapView = mapView;  // for tests and benchmarks: the points and their places on the canvas
    if (mine !== gen) return;
    const m = mapView.info;
    $("map-status").textContent = !m.count ? m.missing : `${num(m.count)} images by their ${m.embedding} embedding` +
      (m.unplaced ? ` · ${num(m.unplaced)} not placed yet (faramir map places them)` : "");
    if (m.count) await mapView.show();
  } catch (err) {
    if (mine === gen) { toast(err.message, true); $("map-status").textContent = err.message; }
    if (err.status === 409 && mapView) mapView.info = null;  // the layout changed: reload it next time
  } finally {
    if (mine === gen) loading = false;
  }
}

// -- start ------------------------------------------------------------------------------------------

(async function start() {
  try {
    info = await api("/api/info");
  } catch (err) {
    $("status").textContent = err.message;
    return;
  }
  buildControls();
  wireControls();
  state = readUrl();
  history.replaceState(null, "", urlOf(state));
  syncControls();
  load();
})();

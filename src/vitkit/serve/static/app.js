// vitkit attention explorer: plain JavaScript, no libraries, nothing fetched from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { card: null, file: null, result: null, patch: null };

// A perceptually ordered colour map (viridis, 9 stops) for the attention overlays.
const VIRIDIS = [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
                 [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]];
function colour(t) {
  const x = Math.min(Math.max(t, 0), 1) * (VIRIDIS.length - 1);
  const i = Math.min(Math.floor(x), VIRIDIS.length - 2), f = x - i;
  return VIRIDIS[i].map((c, k) => Math.round(c + f * (VIRIDIS[i + 1][k] - c)));
}

function showError(message) {
  const el = $("error");
  el.textContent = message;
  el.hidden = !message;
}

async function loadCard() {
  const res = await fetch("/api/model");
  state.card = await res.json();
  const c = state.card;
  const rows = [
    ["checkpoint", c.checkpoint], ["input", `${c.image_size[0]}×${c.image_size[1]}, ${c.channels} channel(s)`],
    ["patch size", `${c.patch_size} (grid ${c.grid[0]}×${c.grid[1]})`], ["width / depth / heads / MLP", `${c.width} / ${c.depth} / ${c.heads} / ${c.mlp_dim}`],
    ["position embedding", c.posemb], ["pooling", c.pool + (c.class_token ? " (class token)" : " (no class token)")],
    ["stem", c.stem], ["parameters", c.params.toLocaleString()], ["GFLOPs per image", c.gflops.toFixed(3)],
    ["classes", c.classes.join(", ")], ["trained on", c.dataset || "unknown"],
    ["recorded accuracy", c.accuracy == null ? "not recorded" : (100 * c.accuracy).toFixed(2) + " %"],
  ];
  $("card").innerHTML = "";
  for (const [k, v] of rows) {
    const tr = document.createElement("tr");
    tr.innerHTML = "<td></td><td></td>";
    tr.children[0].textContent = k;
    tr.children[1].textContent = v;
    $("card").appendChild(tr);
  }
  $("clear-patch").textContent = c.pool === "cls" && c.class_token ? "back to the class token" : "back to the mean over patches";
  const layer = $("layer"), head = $("head");
  for (let l = 0; l < c.depth; l++) layer.add(new Option(`${l + 1}`, l));
  head.add(new Option("mean of heads", "mean"));
  for (let h = 0; h < c.heads; h++) head.add(new Option(`${h + 1}`, h));
}

async function send(file, patch) {
  showError("");
  $("busy").hidden = false;
  try {
    const params = new URLSearchParams();
    if (patch != null) params.set("patch", patch);
    if ($("mode").value === "sinks") params.set("sinks", "1");  // norms cost two more passes: only when shown
    const url = "/api/predict" + (params.toString() ? `?${params}` : "");
    const res = await fetch(url, { method: "POST", body: file, headers: { "Content-Type": "application/octet-stream" } });
    let body;
    try { body = await res.json(); } catch (e) { body = { error: `the server answered ${res.status}` }; }
    if (!res.ok || body.error) { showError(body.error || `the server answered ${res.status}`); return; }
    state.file = file;
    state.result = body;
    state.patch = body.patch == null ? null : body.patch;
    showTop(body.top);
    $("result").hidden = false;
    draw();
  } catch (e) {
    showError("could not reach the vitkit server: " + e.message);
  } finally {
    $("busy").hidden = true;
  }
}

function showTop(top) {
  const ol = $("top");
  ol.innerHTML = "";
  for (const t of top) {
    const li = document.createElement("li");
    li.innerHTML = '<div class="row"><span class="label"></span><span class="prob"></span></div><div class="bar"><span></span></div>';
    li.querySelector(".label").textContent = t.label;
    li.querySelector(".prob").textContent = (100 * t.prob).toFixed(1) + " %";
    li.querySelector(".bar span").style.width = (100 * t.prob).toFixed(1) + "%";
    ol.appendChild(li);
  }
}

// The map to overlay: a gh x gw array of numbers, with a caption saying what it is.
function currentMap() {
  const r = state.result, mode = $("mode").value, head = $("head").value, layer = +$("layer").value;
  const pick = (maps) => {
    const perHead = maps[layer];
    if (head !== "mean") return perHead[+head];
    return perHead[0].map((row, i) => row.map((_, j) => perHead.reduce((s, h) => s + h[i][j], 0) / perHead.length));
  };
  const who = head === "mean" ? "mean of heads" : `head ${+head + 1}`;
  if (state.patch != null && r.patch_maps) {
    const [gh, gw] = r.grid;
    return [pick(r.patch_maps), `layer ${layer + 1}, ${who}: where patch (${Math.floor(state.patch / gw) + 1}, ${state.patch % gw + 1}) looks`];
  }
  if (mode === "rollout") return [r.rollout, "attention rollout through all layers (Abnar & Zuidema), as in the paper's Fig. 6"];
  if (mode === "sinks" && r.sinks) {
    const s = r.sinks, n = s.sinks[layer].length, taken = s.absorbed[layer];
    const share = taken == null ? "" : `, taking ${(100 * taken).toFixed(0)} % of the next block's attention`;
    const here = n ? `${n} sink(s) over ${s.ratio}× the median${share}` : "no sinks in this layer";
    const logNorms = s.norms[layer].map((row) => row.map((v) => Math.log(Math.max(v, 1e-6))));
    return [logNorms, `layer ${layer + 1}: token norm ÷ median patch norm (log colour); ${here}. Whole image: ${s.verdict}`];
  }
  const q = r.query === "cls" ? "class token" : "mean over patches";
  return [pick(r.maps), `layer ${layer + 1}, ${who}: attention of the ${q}`];
}

function draw() {
  const r = state.result, canvas = $("canvas"), ctx = canvas.getContext("2d");
  const img = r.image, channels = img.length, h = img[0].length, w = img[0][0].length;
  const scale = Math.max(1, Math.floor(336 / Math.max(h, w)));
  canvas.width = w * scale; canvas.height = h * scale;
  const [map, caption] = currentMap();
  $("caption").textContent = caption;
  $("clear-patch").hidden = state.patch == null;
  const [gh, gw] = r.grid;
  let lo = Infinity, hi = -Infinity;
  for (const row of map) for (const v of row) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  const span = hi - lo || 1, alpha = +$("alpha").value;
  const ph = h / gh, pw = w / gw;
  const data = ctx.createImageData(w, h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const g = channels === 1 ? [img[0][y][x], img[0][y][x], img[0][y][x]] : [img[0][y][x], img[1][y][x], img[2][y][x]];
      const gy = Math.min(gh - 1, Math.floor(y / ph)), gx = Math.min(gw - 1, Math.floor(x / pw));
      const c = colour((map[gy][gx] - lo) / span);
      const o = 4 * (y * w + x);
      for (let k = 0; k < 3; k++) data.data[o + k] = Math.round((1 - alpha) * g[k] + alpha * c[k]);
      data.data[o + 3] = 255;
    }
  }
  const off = document.createElement("canvas");
  off.width = w; off.height = h;
  off.getContext("2d").putImageData(data, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(off, 0, 0, w * scale, h * scale);
  if ($("mode").value === "sinks" && r.sinks && state.patch == null) {  // outline this layer's sinks
    ctx.strokeStyle = "#ff3b30"; ctx.lineWidth = 2;
    for (const n of r.sinks.sinks[+$("layer").value]) {
      const py = Math.floor(n / gw), px = n % gw;
      ctx.strokeRect(px * pw * scale + 1, py * ph * scale + 1, pw * scale - 2, ph * scale - 2);
    }
  }
  if (state.patch != null) {
    ctx.strokeStyle = "#ff3b30"; ctx.lineWidth = 2;
    const py = Math.floor(state.patch / gw), px = state.patch % gw;
    ctx.strokeRect(px * pw * scale + 1, py * ph * scale + 1, pw * scale - 2, ph * scale - 2);
  }
}

function onCanvasClick(ev) {
  if (!state.result) return;
  const canvas = $("canvas"), rect = canvas.getBoundingClientRect();
  const [gh, gw] = state.result.grid;
  const gx = Math.min(gw - 1, Math.floor((ev.clientX - rect.left) / rect.width * gw));
  const gy = Math.min(gh - 1, Math.floor((ev.clientY - rect.top) / rect.height * gh));
  if ($("mode").value !== "layer") $("mode").value = "layer";
  send(state.file, gy * gw + gx);
}

function takeFile(file) {
  if (!file) return;
  state.patch = null;
  send(file, null);
}

function setTab(name) {
  for (const b of document.querySelectorAll(".tab")) b.classList.toggle("active", b.dataset.tab === name);
  $("panel-image").hidden = name !== "image";
  $("panel-model").hidden = name !== "model";
  if (name === "model") {
    const t = Date.now();  // the distance figure grows with every image seen
    for (const f of ["posemb", "distance", "filters"]) $("fig-" + f).src = `/api/figure/${f}?t=${t}`;
  }
}

window.addEventListener("DOMContentLoaded", () => {
  loadCard().catch((e) => showError("could not load the model card: " + e.message));
  $("file").addEventListener("change", (e) => takeFile(e.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); takeFile(e.dataTransfer.files[0]); });
  window.addEventListener("paste", (e) => {
    const item = [...(e.clipboardData || {}).items || []].find((i) => i.kind === "file");
    if (item) takeFile(item.getAsFile());
  });
  $("canvas").addEventListener("click", onCanvasClick);
  for (const id of ["layer", "head", "alpha"]) $(id).addEventListener("input", () => state.result && draw());
  for (const id of ["layer", "head"]) $(id).addEventListener("change", () => state.result && draw());
  $("mode").addEventListener("change", () => {  // "change": a select fires it however it is set
    if (!state.result) return;
    if ($("mode").value === "sinks" && !state.result.sinks) send(state.file, state.patch);  // fetch the norms once
    else draw();
  });
  $("clear-patch").addEventListener("click", () => { state.patch = null; draw(); });
  for (const b of document.querySelectorAll(".tab")) b.addEventListener("click", () => setTab(b.dataset.tab));
});

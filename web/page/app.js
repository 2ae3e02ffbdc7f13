// gnld's page for technicians: one card per camera, fed by server-sent
// events from /api/events ("state" once, then "camera" updates).
"use strict";

const cards = new Map(); // camera name -> card
let historySeconds = 600;
let skew = 0; // gnld's clock minus this browser's, in seconds
const now = () => Date.now() / 1000 + skew;

const $ = (root, sel) => root.querySelector(sel);

function card(name) {
  let c = cards.get(name);
  if (c) return c;
  const el = document.getElementById("camera").content.firstElementChild.cloneNode(true);
  el.dataset.camera = name;
  $(el, ".name").textContent = name;
  $(el, ".opacity input").addEventListener("input", (e) => { $(el, ".heat").style.opacity = e.target.value / 100; });
  document.getElementById("cameras").append(el);
  c = { el, name, history: new Map(), frameSeq: 0, loading: false, wanted: 0, threshold: 0 };
  cards.set(name, c);
  return c;
}

// loadFrame shows kept frame seq: the frame and its heatmap, both for the
// same seq, one load at a time; a newer seq asked for meanwhile follows.
function loadFrame(c, seq) {
  c.wanted = seq;
  if (c.loading || seq === c.frameSeq) return;
  c.loading = true;
  const base = `api/cameras/${encodeURIComponent(c.name)}`;
  const load = (src, cls) => new Promise((ok, fail) => {
    const img = new Image();
    img.className = cls;
    img.alt = $(c.el, "." + cls).alt;
    img.onload = () => ok(img);
    img.onerror = fail;
    img.src = src;
  });
  Promise.all([load(`${base}/frame.jpg?seq=${seq}`, "frame"), load(`${base}/heatmap.png?seq=${seq}`, "heat")])
    .then(([frame, heat]) => {
      heat.style.opacity = $(c.el, ".opacity input").value / 100;
      $(c.el, ".frame").replaceWith(frame);
      $(c.el, ".heat").replaceWith(heat);
      const wait = $(c.el, ".wait");
      if (wait) wait.remove();
      c.frameSeq = seq;
      c.el.dataset.frameSeq = seq;
    })
    .catch(() => {})
    .finally(() => {
      c.loading = false;
      if (c.wanted !== seq) loadFrame(c, c.wanted);
    });
}

function fmt(x) { return Number.isFinite(x) ? x.toFixed(3) : "–"; }

function update(s) {
  const c = card(s.name);
  skew = s.now - Date.now() / 1000;
  c.threshold = s.threshold;
  for (const row of s.history || []) c.history.set(row[0], row);
  const oldest = now() - historySeconds;
  for (const t of c.history.keys()) if (t < oldest) c.history.delete(t);

  const v = $(c.el, ".verdict");
  v.textContent = s.verdict || "no frame yet";
  v.className = "verdict " + (s.verdict || "");
  if (s.seq > 0) {
    $(c.el, ".score").textContent = fmt(s.score);
    $(c.el, ".threshold").textContent = fmt(s.threshold);
    $(c.el, ".seq").textContent = s.seq;
    c.time = Date.parse(s.time) / 1000;
  }
  $(c.el, ".n-normal").textContent = s.normal;
  $(c.el, ".n-anomalous").textContent = s.anomalous;
  if (s.model) {
    const product = s.product ? `product ${s.product} · ` : "";
    $(c.el, ".cam-model").textContent = `${product}model ${s.model.name} ${s.model.version}`;
  }

  const d = $(c.el, ".drift"), hint = $(c.el, ".hint");
  if (!s.drift) {
    d.textContent = "drift: off";
    d.className = "drift off";
    d.title = "the model bundle has no drift.json, or GNLD_DRIFT_EVERY=0";
    hint.textContent = "";
  } else {
    const z = s.drift.score.toFixed(1);
    d.textContent = s.drift.reason ? "drift: measuring" : `drift: ${s.drift.state} (${z})`;
    d.className = "drift " + (s.drift.reason ? "off" : s.drift.state);
    d.title = s.drift.reason || `worst: ${s.drift.feature} at ${z} training spreads; warning at ${s.drift.threshold}`;
    hint.textContent = s.drift.state === "warning" ? `Drift in ${s.drift.feature}: ${s.drift.hint}` : "";
  }
  if (s.frame_seq > 0) loadFrame(c, s.frame_seq);
  plot(c);
}

// plot draws the per-second maximum score over the history window, the
// threshold (dashed) and anomalous seconds (red).
function plot(c) {
  const cv = $(c.el, ".plot");
  const w = cv.clientWidth || 400, h = cv.height;
  if (cv.width !== w) cv.width = w;
  const g = cv.getContext("2d");
  g.clearRect(0, 0, w, h);
  const t0 = now() - historySeconds;
  const rows = [...c.history.values()].sort((a, b) => a[0] - b[0]);
  const top = Math.max(2 * c.threshold, ...rows.map((r) => r[1]), 1e-6) * 1.05;
  const left = 34, bottom = h - 16;
  const x = (t) => left + ((t - t0) / historySeconds) * (w - left - 4);
  const y = (v) => bottom - (v / top) * (bottom - 4);
  g.font = "10px system-ui, sans-serif";
  g.fillStyle = "#666";
  g.strokeStyle = "#ddd";
  g.textBaseline = "middle";
  for (const v of [0, top / 2, top]) {
    g.beginPath(); g.moveTo(left, y(v)); g.lineTo(w, y(v)); g.stroke();
    g.fillText(v.toFixed(2), 2, Math.min(Math.max(y(v), 6), bottom));
  }
  g.textBaseline = "alphabetic";
  g.fillText(`-${Math.round(historySeconds / 60)} min`, left, h - 3);
  g.fillText("now", w - 24, h - 3);
  g.strokeStyle = "#c62828";
  g.setLineDash([5, 4]);
  g.beginPath(); g.moveTo(left, y(c.threshold)); g.lineTo(w, y(c.threshold)); g.stroke();
  g.setLineDash([]);
  g.strokeStyle = "#1565c0";
  g.beginPath();
  let prev = null;
  for (const r of rows) {
    if (prev !== null && r[0] - prev > 2) g.moveTo(x(r[0]), y(r[1])); // a gap: no line across
    else g.lineTo(x(r[0]), y(r[1]));
    prev = r[0];
  }
  g.stroke();
  g.fillStyle = "#c62828";
  for (const r of rows) if (r[3] > 0) g.fillRect(x(r[0]) - 1.5, y(r[1]) - 1.5, 3, 3);
}

function ages() {
  for (const c of cards.values()) {
    if (!c.time) continue;
    const s = Math.max(0, now() - c.time);
    $(c.el, ".age").textContent = s < 2 ? "(live)" : `(${s.toFixed(0)} s ago)`;
    plot(c);
  }
}

function connect() {
  const link = document.getElementById("link");
  const es = new EventSource("api/events");
  es.addEventListener("state", (e) => {
    const st = JSON.parse(e.data);
    historySeconds = st.history_seconds;
    document.getElementById("model").textContent = `model ${st.model.name} ${st.model.version}`;
    document.getElementById("where").textContent = `site ${st.site} · device ${st.device}`;
    for (const c of st.cameras) update(c);
    link.textContent = "live";
    link.className = "link up";
  });
  es.addEventListener("camera", (e) => update(JSON.parse(e.data)));
  es.onerror = () => {
    link.textContent = "reconnecting…";
    link.className = "link down";
  };
}

connect();
setInterval(ages, 1000);

// gnld's review page: the evidence kept on the device (GNLD_EVIDENCE_DIR),
// newest first, filtered; a detail view per record; marks (false alarm,
// defect confirmed) and teaching for operators. Every change is a POST
// with the session's CSRF token (X-CSRF-Token); a 401 sends the browser
// to the login page.
"use strict";

const $ = (root, sel) => root.querySelector(sel);
let me = { user: "", role: "viewer", csrf: "" };
let shown = null; // the record in the detail view

async function api(path, opt = {}) {
  const headers = { Accept: "application/json", ...(opt.headers || {}) };
  if (opt.method && opt.method !== "GET") headers["X-CSRF-Token"] = me.csrf;
  const r = await fetch(path, { ...opt, headers, credentials: "same-origin" });
  if (r.status === 401) {
    location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
    throw new Error("login needed");
  }
  const body = r.headers.get("Content-Type")?.includes("json") ? await r.json() : { error: await r.text() };
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

const local = (t) => new Date(t).toLocaleString();
const markText = (m) => m ? `${m.kind === "false_alarm" ? "false alarm" : "defect confirmed"} (${m.by}, ${local(m.at)})` : "";
const canAct = () => me.role === "operator" || me.role === "admin";

async function whoami() {
  try {
    me = await api("/api/whoami");
    $(document, "#who").textContent = `${me.user} (${me.role})`;
    const out = $(document, "#logout");
    out.hidden = false;
    out.elements.csrf.value = me.csrf;
  } catch (e) {
    // No accounts (GNLD_HTTP_USERS empty): the gallery is read-only.
    if (e.message !== "login needed") me = { user: "", role: "viewer", csrf: "" };
  }
}

async function load() {
  const f = new FormData($(document, "#filters"));
  const q = new URLSearchParams();
  for (const [k, v] of f) {
    if (!v) continue;
    q.set(k, (k === "from" || k === "to") ? new Date(v).toISOString() : v);
  }
  q.set("limit", "200");
  const list = await api("/api/evidence?" + q);
  const gallery = $(document, "#gallery");
  gallery.replaceChildren();
  $(document, "#count").textContent = `${list.records.length} shown`;
  const cams = $(document, "#filters select[name=camera]");
  for (const c of list.cameras || []) {
    if (![...cams.options].some((o) => o.value === c)) cams.append(new Option(c, c));
  }
  for (const rec of list.records) {
    const el = $(document, "#thumb").content.firstElementChild.cloneNode(true);
    el.dataset.id = rec.id;
    el.classList.toggle("anomalous", rec.anomalous);
    $(el, ".frame").src = `/api/evidence/${rec.id}/frame.jpg`;
    $(el, ".heat").src = `/api/evidence/${rec.id}/heatmap.png`;
    $(el, ".score").textContent = rec.score.toFixed(2);
    $(el, ".cam").textContent = rec.camera;
    $(el, ".time").textContent = local(rec.time);
    $(el, ".mark").textContent = rec.mark ? (rec.mark.kind === "false_alarm" ? "false alarm" : "defect") : "";
    el.addEventListener("click", (e) => { e.preventDefault(); open(rec.id); });
    gallery.append(el);
  }
}

async function open(id) {
  shown = await api(`/api/evidence/${id}`);
  const d = $(document, "#detail");
  const r = shown.record;
  $(d, ".cam").textContent = r.camera;
  $(d, ".time").textContent = local(r.time);
  $(d, ".verdict").textContent = r.anomalous ? "anomalous" : "normal";
  $(d, ".verdict").className = "verdict " + (r.anomalous ? "anomalous" : "normal");
  $(d, ".mark").textContent = r.mark ? (r.mark.kind === "false_alarm" ? "false alarm" : "defect") : "";
  $(d, ".frame").src = `/api/evidence/${id}/frame.jpg`;
  $(d, ".heat").src = `/api/evidence/${id}/heatmap.png`;
  $(d, ".score").textContent = r.score.toFixed(3);
  $(d, ".threshold").textContent = r.threshold.toFixed(3);
  $(d, ".model").textContent = r.model + (r.product ? ` (product ${r.product})` : "");
  $(d, ".drift").textContent = r.drift || "off";
  $(d, ".part").textContent = r.part_id || "–";
  $(d, ".seq").textContent = r.seq;
  $(d, ".marked").textContent = markText(r.mark) || "not yet";
  for (const b of d.querySelectorAll(".actions button")) b.hidden = !canAct() || !shown.can_mark;
  $(d, ".teach").hidden = !canAct() || !shown.can_teach;
  $(d, ".teach").disabled = !(r.mark && r.mark.kind === "false_alarm");
  $(d, ".undo").hidden = !canAct() || !shown.can_teach || !shown.taught;
  $(d, ".result").textContent = "";
  if (!d.open) d.showModal();
}

async function act(kind) {
  const d = $(document, "#detail");
  const out = $(d, ".result");
  const id = shown.record.id;
  try {
    if (kind === "teach") {
      out.textContent = "teaching… (a few seconds)";
      const t = await api(`/api/evidence/${id}/teach`, { method: "POST" });
      const f = t.frames[0];
      const msg = `taught: model ${t.from} → ${t.version}; this frame now scores ${f.score_after.toFixed(3)} ` +
        `(was ${f.score_before.toFixed(3)}, threshold ${f.threshold.toFixed(3)}): ` +
        (f.normal ? "normal" : "still anomalous: the student sees it, retrain with gnl fit");
      out.dataset.scoreAfter = f.score_after;
      await open(id); // shows undo; empties the result line
      out.textContent = msg;
      return;
    }
    if (kind === "undo") {
      const u = await api(`/api/cameras/${shown.record.camera}/teach/undo`, { method: "POST" });
      out.textContent = `undone: the camera serves ${u.serving}`;
      return;
    }
    await api(`/api/evidence/${id}/mark`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ kind }),
    });
    const msg = `marked ${kind === "false_alarm" ? "false alarm" : "defect confirmed"}`;
    await open(id);
    $(d, ".result").textContent = msg;
    load();
  } catch (e) {
    out.textContent = "refused: " + e.message;
  }
}

$(document, "#filters").addEventListener("submit", (e) => { e.preventDefault(); load(); });
$(document, "#detail .opacity input").addEventListener("input", (e) => {
  $(document, "#detail .heat").style.opacity = e.target.value / 100;
});
for (const b of document.querySelectorAll("#detail .actions button")) {
  b.addEventListener("click", () => act(b.dataset.kind || (b.classList.contains("teach") ? "teach" : "undo")));
}
whoami().then(load);

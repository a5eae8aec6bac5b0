// The store, newest first: the form's filters go into the URL, so a filtered view can be shared.
"use strict";
nav("/history");
const form = document.getElementById("filters");

function query(extra = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of new FormData(form)) {
    if (!v) continue;
    q.set(k, (k === "since" || k === "until") ? String(new Date(v).getTime() / 1000) : v);
  }
  for (const [k, v] of Object.entries(extra)) if (v !== null && v !== undefined) q.set(k, v);
  return q;
}

function fromUrl() {
  const q = new URLSearchParams(location.search);
  for (const [k, v] of q) {
    const f = form.elements[k];
    if (!f) continue;
    if (f.type === "checkbox") f.checked = v === "1";
    else if (f.type === "datetime-local") {
      const d = new Date(Number(v) * 1000);
      f.value = new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 19);
    } else f.value = v;
  }
}

async function load(before = null) {
  const q = query({before});
  document.getElementById("csv").href = "/api/results.csv?" + query();
  const err = document.getElementById("error");
  err.textContent = "";
  let page;
  try { page = await api("/api/results?" + q); } catch (e) { err.textContent = e.message; return; }
  const body = document.querySelector("#results tbody");
  if (!before) body.replaceChildren();
  for (const r of page.results) {
    const e = r.explanation || {};
    const tr = el("tr", {class: "row", "data-seq": r.seq},
      el("td", {text: r.seq}), el("td", {text: when(r.ts && r.ts.received)}), el("td", {text: r.camera}),
      el("td", {}, el("a", {href: frameLink(r.camera, r.frame_id, r.seq), text: r.frame_id ?? "–"})),
      el("td", {}, badge(r.status === "verdict" ? r.verdict : r.status)), el("td", {text: fmt(r.score)}),
      el("td", {text: r.defect_type ?? ""}), el("td", {text: r.cell ?? ""}),
      el("td", {}, e.text ? explanationNode(e) : el("span", {class: "dim", text: r.error || ""})));
    tr.onclick = ev => { if (ev.target.tagName !== "A") location.href = frameLink(r.camera, r.frame_id, r.seq); };
    body.append(tr);
  }
  const older = document.getElementById("older");
  older.hidden = page.next_before === null;
  older.onclick = ev => { ev.preventDefault(); load(page.next_before); };
}

form.onsubmit = ev => {
  ev.preventDefault();
  history.replaceState(null, "", "?" + query());
  load();
};

api("/api/cameras").then(c => {
  const sel = form.elements.camera;
  for (const name of c.cameras) sel.append(el("option", {value: name, text: name}));
}).catch(() => {}).finally(() => { fromUrl(); load(); });

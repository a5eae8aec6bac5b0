// The live line: one card per camera, updated from /api/stream (server-sent events, at most 4 per second).
"use strict";
nav("/");
window.__seen = {};  // frame_id -> when this page first showed it (ms since the epoch); read by the tests
let thresholds = {};
const cards = {};

api("/api/bundle").then(b => { thresholds = b.manifest.thresholds || {}; }).catch(() => {});

function card(name) {
  if (cards[name]) return cards[name];
  document.getElementById("empty")?.remove();
  const c = {
    root: el("section", {class: "card", id: "cam-" + name}),
    latest: el("canvas"), defect: el("canvas"),
    latestInfo: el("div"), defectInfo: el("div"), counters: el("div", {class: "counters"}),
    strip: el("div", {class: "strip"}), title: el("span", {class: "dim"}),
    shown: {latest: null, defect: null},
  };
  c.root.append(el("h2", {}, el("span", {text: name}), c.title),
    el("div", {class: "views"},
      el("div", {class: "view"}, el("div", {class: "dim", text: "latest"}), c.latest, c.latestInfo),
      el("div", {class: "view"}, el("div", {class: "dim", text: "last defect"}), c.defect, c.defectInfo)),
    c.counters, c.strip);
  document.getElementById("cards").append(c.root);
  cards[name] = c;
  return c;
}

function scoreBar(rec) {
  const norm = rec.score_norm ?? null;
  const bar = el("div", {class: "bar"});
  if (norm !== null) {
    const i = el("i", {class: norm >= 0.5 ? "over" : ""});
    i.style.width = Math.min(100, Math.max(0, norm * 100)) + "%";
    const s = el("s"); s.style.left = "50%";
    bar.append(i, s);
  }
  return bar;
}

function verdictLine(rec) {
  const t = thresholds.image;
  return el("div", {class: "verdict"}, badge(rec.verdict), " ",
    el("span", {class: "frame-id", text: rec.frame_id}), " ",
    el("span", {class: "dim", text: `score ${fmt(rec.score)}` + (t !== undefined ? ` / threshold ${fmt(t)}` : "")}));
}

function draw(c, cam, which, rec) {
  // redraw only when what the view shows changed: another frame, its mask arrived, its explanation
  const key = rec ? [rec.seq, rec.has_mask, !!rec.explanation, rec.has_image].join("/") : null;
  if (!rec || c.shown[which] === key) return;
  c.shown[which] = key;
  const base = `/api/cameras/${encodeURIComponent(cam)}/${which}`;
  const info = which === "latest" ? c.latestInfo : c.defectInfo;
  info.replaceChildren(verdictLine(rec), scoreBar(rec));
  if (which === "defect") {
    const d = mainDefect(rec);
    info.append(el("div", {class: "finding"},
      d ? `${d.class || "type unknown"} at ${d.cell}, ${fmt(100 * d.area_frac, 1)}% of the image`
        : el("span", {class: "dim", text: "masks pending"})));
    info.append(explanationNode(rec.explanation));
    info.append(el("a", {href: frameLink(cam, rec.frame_id, rec.seq), text: "frame page"}));
  }
  if (rec.has_image) {
    drawFrame(which === "latest" ? c.latest : c.defect, `${base}/frame.jpg?seq=${rec.seq}`,
              rec.has_mask ? `${base}/mask.png?seq=${rec.seq}` : null, rec).catch(() => {});
  }
}

function counters(c, n, w) {
  const cell = (label, v, cls = "") => el("div", {}, el("b", {class: cls, text: String(v ?? 0)}),
                                            el("span", {class: "dim", text: label}));
  c.counters.replaceChildren(
    cell("frames", n.frames), cell("defects", n.defects, "ng"), cell("dropped", n.dropped, n.dropped ? "warn" : ""),
    cell("errors", n.errors, n.errors ? "warn" : ""));
  c.counters.querySelectorAll("b").forEach((b, i) => b.dataset.counter = ["frames", "defects", "dropped", "errors"][i]);
  c.title.textContent = `${fmt(w.fps, 1)} frames/s · verdict p50 ${fmt(w.p50_ms, 0)} ms, p99 ${fmt(w.p99_ms, 0)} ms (last minute)`;
}

function render(s) {
  const now = Date.now();
  const st = s.station || {};
  for (const [name, cam] of Object.entries(s.cameras)) {
    const c = card(name);
    for (const it of cam.strip) if (it.frame_id && !(it.frame_id in window.__seen)) window.__seen[it.frame_id] = now;
    draw(c, name, "latest", cam.latest);
    draw(c, name, "defect", cam.defect);
    counters(c, (st.cameras || {})[name] || {}, cam.window);
    c.strip.replaceChildren(...cam.strip.map(it => el("a", {
      class: it.verdict, href: frameLink(name, it.frame_id, it.seq),
      title: `${it.frame_id}: ${it.verdict}${it.score !== undefined && it.score !== null ? " " + fmt(it.score) : ""}`})));
  }
  const h = document.getElementById("health");
  h.replaceChildren(el("span", {text: `station ${st.status || "?"}`, class: st.status === "ok" ? "ok" : "warn"}),
    ...Object.entries(st.stages || {}).map(([k, v]) =>
      el("span", {class: v.startsWith("ok") ? "ok" : v === "off" || v === "absent" ? "dim" : "warn", text: `${k}: ${v}`})),
    ...Object.entries(st.queues || {}).map(([k, v]) => el("span", {class: "dim", text: `${k} queue ${v}`})),
    ...Object.entries(st.sinks || {}).map(([k, v]) => el("span", {
      class: v.connected === false ? "warn" : (v.dropped || v.failed) ? "warn" : "ok",
      text: `${k}: ${v.connected === false ? "disconnected, " : ""}sent ${v.sent || 0}` +
            (v.dropped ? `, dropped ${v.dropped}` : "") + (v.failed ? `, failed ${v.failed}` : "")})));
}

function connect() {
  const status = document.getElementById("status");
  const es = new EventSource("/api/stream");
  es.onopen = () => { status.textContent = "live"; status.className = "ok"; };
  es.onmessage = ev => { render(JSON.parse(ev.data)); };
  es.onerror = () => { status.textContent = "reconnecting …"; status.className = "warn"; };
}
connect();

// What the station runs, read from the bundle's manifest (read-only).
"use strict";
nav("/bundle");

function kv(obj) {
  if (obj === null || obj === undefined) return el("p", {class: "dim", text: "none"});
  if (typeof obj !== "object") return document.createTextNode(String(obj));
  const t = el("table");
  for (const [k, v] of Object.entries(obj)) {
    t.append(el("tr", {}, el("th", {text: k}),
      el("td", {}, typeof v === "object" && v !== null ? el("pre", {text: JSON.stringify(v, null, 1)}) : String(v))));
  }
  return t;
}

function parity(variant) {
  const p = variant.parity || {};
  const keys = ["passed", "image_auroc", "drop_points", "pearson", "score_pearson", "map_pearson", "mask_iou",
                "identical_sequences", "teacher_forced_agreement", "speedup"];
  const shown = keys.filter(k => k in p).map(k => `${k} ${typeof p[k] === "number" ? fmt(p[k], 4) : p[k]}`);
  return shown.join(", ") || (Object.keys(p).length ? JSON.stringify(p).slice(0, 160) : "–");
}

api("/api/bundle").then(b => {
  const m = b.manifest;
  document.getElementById("title").textContent =
    `${m.product || "bundle"} · ${b.root} · lineguard ${m.lineguard_version || "?"} · created ${m.created || "?"}`;
  const body = document.querySelector("#stages tbody");
  for (const [name, st] of Object.entries(m.stages || {})) {
    const variants = st.variants || {};
    const rej = st.rejected || {};
    body.append(el("tr", {}, el("td", {text: name}), el("td", {text: st.kind || ""}),
      el("td", {text: b.health[name] || b.health[name === "llm" ? "llm" : name] || "–"}),
      el("td", {text: Object.keys(variants).join(", ") + (Object.keys(rej).length ? ` (rejected: ${Object.keys(rej).join(", ")})` : "")}),
      el("td", {}, ...Object.entries(variants).map(([k, v]) => el("div", {text: `${k}: ${parity(v)}`})),
        ...Object.entries(rej).map(([k, v]) => el("div", {class: "warn", text: `${k} rejected: ${v.reason || ""}`})))));
  }
  document.getElementById("thresholds").append(kv({...m.thresholds, normalization: m.normalization,
                                                    calibration: m.calibration}));
  document.getElementById("classes").append(kv(m.classes ? {names: m.classes.names, k: m.classes.k,
    loo_accuracy: m.classes.loo_accuracy, fitted_on: m.classes.fit && m.classes.fit.dataset} : null));
  document.getElementById("serving").append(kv(b.serving));
  document.getElementById("provenance").append(kv(m.provenance));
}).catch(e => { document.getElementById("error").textContent = e.message; });

// One frame from the store: its image with the mask and boxes, findings, explanation and stage timings.
"use strict";
nav("");
const fid = decodeURIComponent(location.pathname.replace(/^\/frames\//, ""));
const seq = new URLSearchParams(location.search).get("seq");

async function show() {
  let r;
  try {
    r = await api(`/api/frames/${encodeURIComponent(fid)}` + (seq ? `?seq=${seq}` : ""));
  } catch (e) { document.getElementById("error").textContent = e.message; return; }
  document.getElementById("frame").hidden = false;
  document.title = `lineguard · ${r.frame_id}`;
  document.getElementById("title").textContent = `${r.frame_id} · ${r.camera} · seq ${r.seq}`;
  const v = document.getElementById("verdict");
  v.replaceChildren(badge(r.status === "verdict" ? r.verdict : r.status), " ",
    el("span", {text: `score ${fmt(r.score)} (normalised ${fmt(r.score_norm)}) · ${when(r.ts && r.ts.received)}`}));
  if (r.error) v.append(el("p", {class: "warn", text: `${r.error_code}: ${r.error}`}));
  if (r.deadline_missed) v.append(el("p", {class: "warn", text: r.failsafe
    ? `no verdict within the deadline: the gate got the fail-safe "${r.failsafe}"; the verdict above came later`
    : "the verdict came after the deadline"}));
  if (r.repeat) v.append(el("p", {class: "warn", text: "this camera sent this frame id before (stored as its own row)"}));
  document.getElementById("explanation").replaceChildren(
    r.explanation ? explanationNode(r.explanation) : el("p", {class: "dim", text: "none"}));
  const defects = (r.findings && r.findings.defects) || [];
  document.querySelector("#findings tbody").replaceChildren(...defects.map((d, i) => el("tr", {},
    el("td", {text: i + 1}), el("td", {text: d.class || ""}), el("td", {text: d.cell}),
    el("td", {text: fmt(100 * d.area_frac, 2) + " %"}), el("td", {text: d.box.join(", ")}),
    el("td", {text: fmt(d.peak)}), el("td", {text: d.mask_source || ""}))));
  const ts = r.ts || {};
  document.querySelector("#timing tbody").replaceChildren(...Object.entries(ts)
    .filter(([, t]) => typeof t === "number").sort((a, b) => a[1] - b[1])
    .map(([k, t]) => el("tr", {}, el("td", {text: k}),
      el("td", {text: ts.received ? fmt(1000 * (t - ts.received), 1) : "–"}))));
  if (r.same_id && r.same_id.length) {
    const o = document.getElementById("others");
    o.append("Other rows with this frame id: ");
    for (const s of r.same_id) o.append(el("a", {href: frameLink(r.camera, r.frame_id, s), text: `seq ${s}`}), " ");
  }
  const img = r.images || {};
  const canvas = document.getElementById("image");
  const draw = () => {
    const heat = document.getElementById("heat").checked && img.overlay;
    drawFrame(canvas, heat ? img.overlay : img.frame, heat ? null : img.mask, {defects})
      .catch(e => { document.getElementById("error").textContent = e.message; });
  };
  if (img.frame) { draw(); document.getElementById("heat").onchange = draw; }
  else { canvas.hidden = true; document.getElementById("noimage").hidden = false; }
}
show();

// Shared by the station's pages: fetching the API, formatting, and drawing a frame's overlay
// (mask outline, defect boxes, the 3x3 grid with the main finding's cell) on a canvas.
"use strict";
const CELLS = ["top-left", "top-center", "top-right", "middle-left", "center", "middle-right",
               "bottom-left", "bottom-center", "bottom-right"];

async function api(path) {
  const r = await fetch(path, {credentials: "same-origin"});
  const body = await r.json().catch(() => ({error: r.statusText}));
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function fmt(x, digits = 3) { return x === null || x === undefined ? "–" : Number(x).toFixed(digits); }
function when(t) { return t ? new Date(t * 1000).toLocaleString() : "–"; }
function badge(v) { return el("span", {class: "badge " + (v || "error"), text: v || "error"}); }
function mainDefect(rec) { return (rec && rec.defects && rec.defects.length) ? rec.defects[0] : null; }

function loadImage(url) {
  return new Promise((ok, fail) => {
    const img = new Image();
    img.onload = () => ok(img);
    img.onerror = () => fail(new Error("image " + url));
    img.src = url;
  });
}

// The mask: tinted inside, an opaque outline where a mask pixel touches a non-mask pixel.
function drawMask(ctx, mask, w, h) {
  const off = document.createElement("canvas");
  off.width = w; off.height = h;
  const o = off.getContext("2d");
  o.drawImage(mask, 0, 0, w, h);
  const src = o.getImageData(0, 0, w, h).data;
  const out = o.createImageData(w, h);
  const on = (x, y) => x >= 0 && y >= 0 && x < w && y < h && src[(y * w + x) * 4] > 127;
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
    if (!on(x, y)) continue;
    const i = (y * w + x) * 4, edge = !(on(x - 1, y) && on(x + 1, y) && on(x, y - 1) && on(x, y + 1));
    out.data[i] = 255; out.data[i + 1] = edge ? 40 : 60; out.data[i + 2] = edge ? 40 : 60;
    out.data[i + 3] = edge ? 255 : 70;
  }
  o.putImageData(out, 0, 0);
  ctx.drawImage(off, 0, 0);
}

// Draw a frame with what was found on it; rec: a verdict record (defects, hottest) in frame pixels.
async function drawFrame(canvas, imageUrl, maskUrl, rec) {
  const img = await loadImage(imageUrl);
  const w = img.naturalWidth, h = img.naturalHeight;
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0);
  if (maskUrl) {
    try { drawMask(ctx, await loadImage(maskUrl), w, h); } catch (e) { /* a mask that is gone: the frame alone */ }
  }
  const main = mainDefect(rec);
  const lw = Math.max(1, Math.round(Math.max(w, h) / 256));
  ctx.lineWidth = lw;
  ctx.strokeStyle = "rgba(255,255,255,0.25)";
  for (let k = 1; k < 3; k++) {
    ctx.beginPath(); ctx.moveTo(k * w / 3, 0); ctx.lineTo(k * w / 3, h); ctx.stroke();
    ctx.beginPath(); ctx.moveTo(0, k * h / 3); ctx.lineTo(w, k * h / 3); ctx.stroke();
  }
  if (main && CELLS.includes(main.cell)) {
    const i = CELLS.indexOf(main.cell);
    ctx.strokeStyle = "rgba(240,162,2,0.9)";
    ctx.lineWidth = 2 * lw;
    ctx.strokeRect((i % 3) * w / 3, Math.floor(i / 3) * h / 3, w / 3, h / 3);
  }
  ctx.lineWidth = 2 * lw;
  ctx.font = `${Math.max(11, Math.round(h / 22))}px system-ui`;
  for (const d of (rec && rec.defects) || []) {
    const [x0, y0, x1, y1] = d.box;
    ctx.strokeStyle = "#4ea1ff";
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    if (d.class) {
      ctx.fillStyle = "#4ea1ff";
      ctx.fillText(d.class, x0 + 2, Math.max(12, y0 - 3));
    }
  }
}

function explanationNode(e) {
  const p = el("p", {class: "explanation"});
  if (!e) { p.append(el("span", {class: "dim", text: "explanation pending"})); return p; }
  p.append(e.text || "");
  if (e.source === "rules") p.append(" ", el("span", {class: "tag", text: "[rule-written: the model's text owed something]"}));
  if (e.consistent === false) p.append(" ", el("span", {class: "tag", text: "[not grounded]"}));
  return p;
}

function frameLink(camera, fid, seq) {
  return "/frames/" + encodeURIComponent(fid || "") + (seq ? "?seq=" + seq : "");
}

function nav(here) {
  const h = el("header", {}, el("b", {text: "lineguard"}));
  for (const [href, name] of [["/", "live line"], ["/history", "history"], ["/bundle", "bundle"]]) {
    h.append(el("a", {href, class: href === here ? "here" : "", text: name}));
  }
  h.append(el("span", {id: "station", class: "dim"}));
  document.body.prepend(h);
}

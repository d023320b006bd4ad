// frametok view: draws each stream's latest frame (JPEG preview) with its detections, its state, and
// small live charts. Data comes from /events (Server-Sent Events, one snapshot per changed stream).
"use strict";

const PALETTE = ["#ff3b30", "#34c759", "#0a84ff", "#ffcc00", "#ff2d95", "#5ac8fa", "#ff9500", "#af52de",
                 "#00c7be", "#a2845e"];
const HISTORY = 120; // points per chart
const streams = new Map();
window.frametokDrawn = {};
window.frametokView = { connected: false, events: 0, drawn: {}, viewerLatencyMs: {} };

function colorFor(det) {
  const key = det.track_id !== undefined && det.track_id >= 0 ? det.track_id : det.class_id;
  return PALETTE[((key % PALETTE.length) + PALETTE.length) % PALETTE.length];
}

function fmt(value, unit, digits = 1) {
  if (value === undefined || value === null || Number.isNaN(value)) return "–";
  if (unit === "ms" && Math.abs(value) >= 1000) return (value / 1000).toFixed(1) + " s";
  const abs = Math.abs(value);
  if (abs >= 1e6) return (value / 1e6).toFixed(digits) + " M" + unit;
  if (abs >= 1e3) return (value / 1e3).toFixed(digits) + " k" + unit;
  return value.toFixed(digits) + " " + unit;
}

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function makeStream(id) {
  const root = el("div", "stream");
  root.dataset.stream = id;
  const title = el("div", "title");
  const name = el("span", "name", id);
  const info = el("span", "info", "");
  const state = el("span", "state waiting", "waiting");
  title.append(name, info, state);
  const canvas = el("canvas", "frame");
  canvas.width = 384; canvas.height = 288;
  const charts = el("div", "charts");
  const chartDefs = {
    fps: { label: "fps", series: [["fps", "#34c759"]], unit: "" },
    latency: { label: "latency pipe|here", series: [["latency_ms", "#ffcc00"], ["viewer_latency_ms", "#ff9500"]], unit: "ms" },
    tokens: { label: "tok/s sent|full", series: [["tokens_sent_per_s", "#0a84ff"], ["tokens_full_per_s", "#5e5e66"]],
              unit: "" },
    bytes: { label: "patch B/s sent|full",
             series: [["patch_bytes_sent_per_s", "#af52de"], ["patch_bytes_full_per_s", "#5e5e66"]], unit: "B" },
  };
  const chartCanvases = {};
  for (const [key, def] of Object.entries(chartDefs)) {
    const c = el("canvas");
    c.width = 200; c.height = 70;
    c.dataset.chart = key;
    chartCanvases[key] = c;
    charts.append(c);
  }
  const numbers = el("div", "numbers", "");
  root.append(title, canvas, charts, numbers);
  document.getElementById("streams").append(root);
  const s = { id, root, info, state, canvas, charts: chartCanvases, chartDefs, numbers, history: [],
              lastFrame: null, drawing: false, pending: null };
  streams.set(id, s);
  return s;
}

function drawChart(canvas, def, history) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  let max = 0;
  for (const point of history) for (const [key] of def.series) max = Math.max(max, point[key] || 0);
  max = max > 0 ? max * 1.15 : 1;
  def.series.forEach(([key, color]) => {
    ctx.strokeStyle = color; ctx.lineWidth = 1.5; ctx.beginPath();
    let started = false;
    history.forEach((point, i) => {
      const v = point[key];
      if (v === undefined || v === null) return;
      const x = (i / (Math.max(history.length, 30) - 1)) * w;
      const y = h - 14 - (v / max) * (h - 18);
      if (started) ctx.lineTo(x, y); else { ctx.moveTo(x, y); started = true; }
    });
    ctx.stroke();
  });
  const last = history.length ? history[history.length - 1] : {};
  ctx.fillStyle = "#cfd3d8"; ctx.font = "10px system-ui, sans-serif";
  const now = def.series.map(([key]) => fmt(last[key], def.unit, 0)).join(" | ");
  ctx.fillText(def.label + ": " + now, 3, h - 3);
}

// (1.3) a detection's mask: its mh x mw cells over the box (bit-packed, most significant bit first, base64),
// filled translucent in the box's colour; returns the cells drawn
function drawMask(ctx, det, color, sx, sy) {
  const mask = det.mask;
  if (!mask || !mask.bits_b64) return 0;
  const [mh, mw] = mask.hw;
  const bytes = atob(mask.bits_b64);
  const [x1, y1, x2, y2] = det.xyxy;
  const cw = (x2 - x1) / mw, ch = (y2 - y1) / mh;
  let cells = 0;
  ctx.save();
  ctx.globalAlpha = 0.4;
  ctx.fillStyle = color;
  for (let r = 0; r < mh; r++) {
    for (let c = 0; c < mw; c++) {
      if ((bytes.charCodeAt(r * (mw / 8) + (c >> 3)) >> (7 - (c & 7))) & 1) {
        const x = (x1 + c * cw) * sx, y = (y1 + r * ch) * sy;
        ctx.fillRect(x, y, (x1 + (c + 1) * cw) * sx - x, (y1 + (r + 1) * ch) * sy - y);
        cells++;
      }
    }
  }
  ctx.restore();
  return cells;
}

function drawFrame(s, snap, image) {
  const frame = snap.frame;
  const [sw, sh] = frame.size_wh;
  const canvas = s.canvas;
  const cw = image ? image.naturalWidth : Math.min(384, sw);
  const ch = image ? image.naturalHeight : Math.round(cw * sh / sw);
  if (canvas.width !== cw || canvas.height !== ch) { canvas.width = cw; canvas.height = ch; }
  const ctx = canvas.getContext("2d");
  if (image) ctx.drawImage(image, 0, 0, cw, ch);
  else { ctx.fillStyle = "#303236"; ctx.fillRect(0, 0, cw, ch); }
  const sx = cw / sw, sy = ch / sh;
  const dets = frame.detections || [];
  const colors = [];
  const maskCells = dets.map((det) => drawMask(ctx, det, colorFor(det), sx, sy));
  ctx.lineWidth = 3;
  ctx.font = "bold 11px system-ui, sans-serif";
  ctx.textBaseline = "top";
  for (const det of dets) {
    const color = colorFor(det);
    colors.push(color);
    const [x1, y1, x2, y2] = det.xyxy;
    ctx.strokeStyle = color;
    ctx.strokeRect(x1 * sx, y1 * sy, (x2 - x1) * sx, (y2 - y1) * sy);
    const label = det.class + (det.track_id !== undefined && det.track_id >= 0 ? " #" + det.track_id : "") +
      " " + det.score.toFixed(2);
    const tw = ctx.measureText(label).width + 4;
    const ty = Math.max(0, y1 * sy - 14);
    ctx.fillStyle = color; ctx.fillRect(x1 * sx - 1.5, ty, tw, 14);
    ctx.fillStyle = "#000"; ctx.fillText(label, x1 * sx + 1, ty + 1);
  }
  const now = Date.now();
  window.frametokDrawn[s.id] = {
    frame: frame.frame, seq: frame.seq, size_wh: frame.size_wh, detections: dets, colors, mask_cells: maskCells,
    preview: Boolean(image), canvas_wh: [cw, ch], t_capture_ms: frame.t_capture_ms,
    t_publish_ms: frame.t_publish_ms, drawn_at_ms: now,
  };
  const view = window.frametokView;
  view.drawn[s.id] = (view.drawn[s.id] || 0) + 1;
  (view.viewerLatencyMs[s.id] = view.viewerLatencyMs[s.id] || []).push(now - frame.t_publish_ms);
  if (view.viewerLatencyMs[s.id].length > 1000) view.viewerLatencyMs[s.id].shift();
  document.getElementById("drawn").textContent = JSON.stringify(window.frametokDrawn);
}

// newest frame wins: while an image decodes, only the latest snapshot waits
function showFrame(s, snap) {
  if (s.drawing) { s.pending = snap; return; }
  s.drawing = true;
  const done = () => {
    s.drawing = false;
    if (s.pending) { const next = s.pending; s.pending = null; showFrame(s, next); }
  };
  if (!snap.frame.preview_jpeg) { drawFrame(s, snap, null); done(); return; }
  const image = new Image();
  image.onload = () => { drawFrame(s, snap, image); done(); };
  image.onerror = () => { drawFrame(s, snap, null); done(); };
  image.src = "data:image/jpeg;base64," + snap.frame.preview_jpeg;
}

function update(snap) {
  const s = streams.get(snap.stream) || makeStream(snap.stream);
  s.state.textContent = snap.state + (snap.detail ? ": " + snap.detail : "");
  s.state.className = "state " + snap.state;
  const st = snap.stats || {};
  const frame = snap.frame;
  s.info.textContent = frame ? `#${frame.frame} ${frame.size_wh[0]}x${frame.size_wh[1]} ${snap.policy}` : snap.policy;
  if (frame && (!s.lastFrame || s.lastFrame.seq !== frame.seq || s.lastFrame.frame !== frame.frame)) {
    s.lastFrame = frame;
    s.history.push(st);
    if (s.history.length > HISTORY) s.history.shift();
    showFrame(s, snap);
  }
  for (const [key, def] of Object.entries(s.chartDefs)) drawChart(s.charts[key], def, s.history);
  const saved = st.patch_bytes_saved !== undefined ? (100 * st.patch_bytes_saved).toFixed(1) + "%" : "–";
  const tokSaved = st.tokens_saved !== undefined ? (100 * st.tokens_saved).toFixed(1) + "%" : "–";
  s.numbers.textContent =
    `frames ${st.frames || 0}` + (st.gaps ? ` (lost ${st.gaps})` : "") +
    ` · ${fmt(st.fps, "fps")} · latency ${fmt(st.latency_ms, "ms", 0)}` +
    ` · ${fmt(st.tokens_sent_per_s, "tok/s")} · ${fmt(st.bytes_sent_per_s, "B/s")}` +
    (st.preview_bytes_per_s ? ` (+ preview ${fmt(st.preview_bytes_per_s, "B/s")})` : "") +
    ` · compression saves ${saved} of patch bytes, ${tokSaved} of tokens`;
}

function connect() {
  const source = new EventSource("events");
  const conn = document.getElementById("conn");
  source.addEventListener("hello", (ev) => {
    const hello = JSON.parse(ev.data);
    window.frametokView.connected = true;
    document.getElementById("endpoint").textContent = hello.endpoint;
    conn.textContent = "live";
  });
  source.addEventListener("stream", (ev) => {
    window.frametokView.events += 1;
    update(JSON.parse(ev.data));
  });
  source.onerror = () => {
    window.frametokView.connected = false;
    conn.textContent = "reconnecting…";
  };
}

connect();

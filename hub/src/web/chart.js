// A small canvas chart: a time axis, a value axis with its unit, line series and a min/max band.
// Written for this page (live values that scroll, downsampled history); nothing else is needed.

import { clock, num } from "./i18n.js";

const PAD = { left: 56, right: 12, top: 10, bottom: 24 };

function css(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

/** Round steps (1, 2, 5 × 10ⁿ) giving about `count` ticks over [lo, hi]. */
function ticks(lo, hi, count) {
  const raw = (hi - lo) / Math.max(1, count);
  const power = 10 ** Math.floor(Math.log10(raw || 1));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw) ?? raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(v);
  return out;
}

const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400]
  .map((s) => s * 1000);

/**
 * Draws series and an optional band on `canvas` over [from, to] (ms). Each series is
 * `{ points: [[t, v], …], color, width }`; the band is `[[t, min, max], …]`.
 * Returns the number of points drawn.
 */
export function draw(canvas, { from, to, series = [], band = [], unit = "", bandColor }) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (width === 0 || height === 0) return 0;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);

  let lo = Infinity;
  let hi = -Infinity;
  for (const s of series) for (const [t, v] of s.points) if (t >= from && t <= to) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  for (const [t, min, max] of band) if (t >= from && t <= to) { lo = Math.min(lo, min); hi = Math.max(hi, max); }
  if (!Number.isFinite(lo)) { lo = 0; hi = 1; }
  if (hi - lo < 1e-9) { const pad = Math.abs(hi) * 0.05 || 1; lo -= pad; hi += pad; }
  const margin = (hi - lo) * 0.08;
  lo -= margin;
  hi += margin;

  const plotW = width - PAD.left - PAD.right;
  const plotH = height - PAD.top - PAD.bottom;
  const x = (t) => PAD.left + ((t - from) / (to - from)) * plotW;
  const y = (v) => PAD.top + (1 - (v - lo) / (hi - lo)) * plotH;

  // Grid and axes.
  g.font = `12px ${css("--font") || "sans-serif"}`;
  g.fillStyle = css("--muted");
  g.strokeStyle = css("--grid");
  g.lineWidth = 1;
  g.textAlign = "right";
  g.textBaseline = "middle";
  for (const v of ticks(lo, hi, Math.max(2, Math.floor(plotH / 40)))) {
    const yy = Math.round(y(v)) + 0.5;
    g.beginPath(); g.moveTo(PAD.left, yy); g.lineTo(width - PAD.right, yy); g.stroke();
    g.fillText(num(v), PAD.left - 6, yy);
  }
  if (unit) {
    g.textAlign = "left";
    g.textBaseline = "top";
    g.fillText(unit, 4, 0);
  }
  const span = to - from;
  const timeStep = TIME_STEPS.find((s) => span / s <= Math.max(2, plotW / 90)) ?? 86400000;
  const offset = new Date().getTimezoneOffset() * 60000;
  g.textAlign = "center";
  g.textBaseline = "top";
  for (let t = Math.ceil((from - offset) / timeStep) * timeStep + offset; t <= to; t += timeStep) {
    const xx = Math.round(x(t)) + 0.5;
    g.beginPath(); g.moveTo(xx, PAD.top); g.lineTo(xx, PAD.top + plotH); g.stroke();
    g.fillText(clock(t, timeStep < 60000), xx, PAD.top + plotH + 6);
  }

  g.save();
  g.beginPath();
  g.rect(PAD.left, PAD.top, plotW, plotH);
  g.clip();
  let drawn = 0;
  if (band.length > 0) {
    g.fillStyle = bandColor ?? css("--band");
    g.beginPath();
    band.forEach(([t, , max], i) => (i ? g.lineTo(x(t), y(max)) : g.moveTo(x(t), y(max))));
    for (let i = band.length - 1; i >= 0; i--) g.lineTo(x(band[i][0]), y(band[i][1]));
    g.closePath();
    g.fill();
    drawn += band.length;
  }
  for (const s of series) {
    g.strokeStyle = s.color ?? css("--accent");
    g.lineWidth = s.width ?? 2;
    g.lineJoin = "round";
    g.beginPath();
    s.points.forEach(([t, v], i) => (i ? g.lineTo(x(t), y(v)) : g.moveTo(x(t), y(v))));
    g.stroke();
    drawn += s.points.length;
  }
  g.restore();
  canvas.dataset.points = String(drawn);
  return drawn;
}

/** A chart that keeps the last `windowMs` of values and scrolls with the clock. */
export class LiveChart {
  constructor(canvas, { unit = "", windowMs = 120_000 } = {}) {
    this.canvas = canvas;
    this.unit = unit;
    this.windowMs = windowMs;
    this.points = [];
    this.running = true;
    this.lastDraw = 0;
    const frame = (now) => {
      if (!this.running) return;
      // Ten redraws a second scroll smoothly enough and leave the main thread to the stream.
      if (now - this.lastDraw >= 100 && this.canvas.isConnected) {
        this.lastDraw = now;
        this.render();
      }
      requestAnimationFrame(frame);
    };
    requestAnimationFrame(frame);
  }

  push(t, v) {
    this.points.push([t, v]);
    const horizon = Date.now() - this.windowMs - 5000;
    while (this.points.length > 2 && this.points[0][0] < horizon) this.points.shift();
  }

  render() {
    const to = Date.now();
    draw(this.canvas, { from: to - this.windowMs, to, unit: this.unit, series: [{ points: this.points }] });
  }

  stop() {
    this.running = false;
  }
}

/** Draws history buckets: min/max band and the mean line. */
export function drawHistory(canvas, { from, to, buckets, unit }) {
  return draw(canvas, {
    from,
    to,
    unit,
    band: buckets.map((b) => [b.start_ms, b.min, b.max]),
    series: [{ points: buckets.map((b) => [b.start_ms, b.mean]) }],
  });
}

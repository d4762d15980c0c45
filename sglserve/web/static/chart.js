"use strict";
// A small line chart on a canvas: a few series over a time window ending now (no library).

class LineChart {
  // series: [{label, color}]; windowS: seconds shown on the x axis
  constructor(canvas, series, windowS) {
    this.canvas = canvas;
    this.series = series;
    this.windowS = windowS;
  }

  // times: unix seconds; values[i]: the points of series i (same length as times)
  draw(times, values, now) {
    const c = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth || c.width;
    const h = c.clientHeight || c.height;
    if (c.width !== Math.round(w * dpr)) { c.width = Math.round(w * dpr); c.height = Math.round(h * dpr); }
    const g = c.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const left = 48, right = 8, top = 22, bottom = 18;
    const pw = w - left - right, ph = h - top - bottom;
    let max = 0;
    for (const vs of values) for (const v of vs) if (v > max) max = v;
    max = niceCeil(max);
    const x = (t) => left + pw * (1 - (now - t) / this.windowS);
    const y = (v) => top + ph * (1 - v / max);

    g.font = "11px system-ui, sans-serif";
    g.strokeStyle = "#d6dae0";
    g.fillStyle = "#6b7280";
    g.lineWidth = 1;
    g.textAlign = "right";
    for (let i = 0; i <= 4; i++) {
      const v = max * i / 4;
      g.beginPath(); g.moveTo(left, y(v) + 0.5); g.lineTo(left + pw, y(v) + 0.5); g.stroke();
      g.fillText(fmt(v, v < 10 ? 2 : 1), left - 4, y(v) + 4);
    }
    g.textAlign = "left";
    g.fillText("-" + Math.round(this.windowS / 60) + " min", left, h - 4);
    g.textAlign = "right";
    g.fillText("now", left + pw, h - 4);

    let lx = left;
    this.series.forEach((s, i) => {
      g.strokeStyle = s.color;
      g.lineWidth = 1.5;
      g.beginPath();
      let started = false;
      times.forEach((t, j) => {
        if (now - t > this.windowS) return;
        if (started) g.lineTo(x(t), y(values[i][j])); else g.moveTo(x(t), y(values[i][j]));
        started = true;
      });
      g.stroke();
      g.fillStyle = s.color;
      g.fillRect(lx, 6, 10, 10);
      g.fillStyle = "#374151";
      g.textAlign = "left";
      g.fillText(s.label, lx + 14, 15);
      lx += 24 + g.measureText(s.label).width;
    });
  }
}

// 1, 2, 5 times a power of ten, at least the data's maximum (and at least 1).
function niceCeil(v) {
  if (!(v > 1)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

"use strict";
// The dashboard: polls GET /web/stats once a second while it is shown (docs/web_ui.md) and
// draws the load, the KV pool, the radix cache, throughput over the last minutes and the flags.

const dashboard = {
  rows: [],        // history rows: [time, running, queued, token_usage, prefill_tps, decode_tps]
  windowS: 300,
  timer: null,
  busy: false,     // a poll in flight: the next tick skips
  flagsShown: false,
  charts: null,

  init() {
    this.charts = {
      throughput: new LineChart(document.getElementById("chart-throughput"),
        [{label: "prefill", color: "#2563eb"}, {label: "decode", color: "#16a34a"}], this.windowS),
      requests: new LineChart(document.getElementById("chart-requests"),
        [{label: "running", color: "#9333ea"}, {label: "queued", color: "#ea580c"}], this.windowS),
    };
  },

  start() {
    if (this.timer === null) { this.timer = setInterval(() => this.poll(), 1000); this.poll(); }
  },

  stop() {
    if (this.timer !== null) { clearInterval(this.timer); this.timer = null; }
  },

  async poll() {
    if (this.busy || api.needsKey()) return;
    this.busy = true;
    try {
      const last = this.rows.length ? this.rows[this.rows.length - 1][0] : null;
      const stats = await api.json("/web/stats" + (last === null ? "" : "?since=" + last));
      setText("stats-error", "");
      this.show(stats);
    } catch (e) {
      setText("stats-error", "Stats unavailable: " + e.message);
    } finally {
      this.busy = false;
    }
  },

  show(stats) {
    this.windowS = stats.history.window_s;
    const load = stats.load;
    if (load) {
      setText("running", fmt(load.num_running_reqs));
      setText("queued", fmt(load.num_waiting_reqs));
      setText("inflight", fmt(load.num_inflight_reqs));
      setText("hit-rate", fmt(100 * load.cache_hit_rate, 1) + " %");
      setText("cache-size", fmt(load.cache_tokens));
      const total = Math.max(load.max_total_num_tokens, 1);
      setText("kv-use", fmt(100 * load.token_usage, 2) + " % (" + fmt(load.used_tokens) + " / "
        + fmt(load.max_total_num_tokens) + " tokens)");
      document.getElementById("kv-bar-used").style.width = (100 * load.used_tokens / total) + "%";
      document.getElementById("kv-bar-cache").style.width = (100 * load.evictable_tokens / total) + "%";
    }
    setText("prefill-tps", fmt(stats.throughput.prefill, 1));
    setText("decode-tps", fmt(stats.throughput.decode, 1));
    if (stats.model) setText("model", stats.model);
    if (!this.flagsShown) this.showFlags(stats.flags);

    this.rows = this.rows.concat(stats.history.rows).filter((r) => stats.time - r[0] <= this.windowS);
    const times = this.rows.map((r) => r[0]);
    const col = (i) => this.rows.map((r) => r[i]);
    this.charts.throughput.windowS = this.charts.requests.windowS = this.windowS;
    this.charts.throughput.draw(times, [col(4), col(5)], stats.time);
    this.charts.requests.draw(times, [col(1), col(2)], stats.time);
  },

  showFlags(flags) {
    const tbody = document.querySelector("#flags tbody");
    tbody.replaceChildren();
    for (const name of Object.keys(flags).sort()) {
      const tr = document.createElement("tr");
      const k = document.createElement("th");
      const v = document.createElement("td");
      k.textContent = "--" + name.replace(/_/g, "-");
      const value = flags[name];
      v.textContent = value === null ? "—" : typeof value === "string" ? value : JSON.stringify(value);
      tr.append(k, v);
      tbody.append(tr);
    }
    this.flagsShown = true;
  },
};

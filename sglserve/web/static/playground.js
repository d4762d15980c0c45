"use strict";
// The playground: a streaming chat over /v1/chat/completions with its sampling settings, a JSON
// schema mode, a stop button (the abort closes the connection; the server aborts the request)
// and a readout of TTFT, tokens/s and usage. Model output is only ever set as textContent.

const playground = {
  model: null,     // the served model's name (from /v1/models)
  history: [],     // [{role, content}] of finished turns
  controller: null,

  init() {
    const $ = (id) => document.getElementById(id);
    $("composer").addEventListener("submit", (e) => { e.preventDefault(); this.send(); });
    $("prompt").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); this.send(); }
    });
    $("abort").addEventListener("click", () => this.abort());
    $("clear").addEventListener("click", () => this.clear());
    $("json-mode").addEventListener("change", (e) => { $("json-schema").hidden = !e.target.checked; });
  },

  async loadModel() {
    const models = await api.json("/v1/models");
    this.model = models.data[0].id;
    setText("model", this.model);
  },

  // The request body from the settings panel; throws Error with a message for bad settings.
  body(messages) {
    const num = (id, parse, name) => {
      const raw = document.getElementById(id).value.trim();
      if (raw === "") return undefined;
      const v = parse(raw);
      if (!isFinite(v)) throw new Error(name + " must be a number, not " + JSON.stringify(raw));
      return v;
    };
    const body = {
      model: this.model, messages, stream: true, stream_options: {include_usage: true},
      temperature: num("temperature", parseFloat, "temperature"),
      top_p: num("top-p", parseFloat, "top_p"),
      max_tokens: num("max-tokens", (s) => /^\d+$/.test(s) ? parseInt(s, 10) : NaN, "max_tokens"),
    };
    const stop = document.getElementById("stop").value.split("\n").filter((s) => s !== "")
      .map((s) => s.replace(/\\n/g, "\n"));
    if (stop.length) body.stop = stop;
    if (document.getElementById("json-mode").checked) {
      let schema;
      try { schema = JSON.parse(document.getElementById("json-schema").value); } catch (e) {
        throw new Error("The JSON schema is not valid JSON: " + e.message);
      }
      body.response_format = {type: "json_schema", json_schema: {name: "playground", schema}};
    }
    return body;
  },

  bubble(role, text) {
    const div = document.createElement("div");
    div.className = "msg " + role;
    const who = document.createElement("span");
    who.className = "role";
    who.textContent = role;
    const content = document.createElement("div");
    content.className = "content";
    content.textContent = text;
    div.append(who, content);
    const box = document.getElementById("messages");
    box.append(div);
    box.scrollTop = box.scrollHeight;
    return content;
  },

  setState(state, text) {
    const el = document.getElementById("status");
    el.dataset.state = state;
    el.textContent = text || state;
  },

  resetReadout() {
    for (const id of ["ttft", "tps", "prompt-tokens", "completion-tokens", "total-tokens"]) setText(id, "–");
  },

  async send() {
    if (this.controller) return;
    const promptEl = document.getElementById("prompt");
    const text = promptEl.value.trim();
    if (!text) return;
    const system = document.getElementById("system").value.trim();
    const turn = {role: "user", content: text};
    const messages = (system ? [{role: "system", content: system}] : []).concat(this.history, [turn]);
    let body;
    try { body = this.body(messages); } catch (e) { this.setState("error", e.message); return; }

    promptEl.value = "";
    this.bubble("user", text);
    const out = this.bubble("assistant", "");
    out.parentElement.classList.add("streaming");
    this.resetReadout();
    this.setState("streaming");
    this.controller = new AbortController();
    document.getElementById("send").disabled = true;
    document.getElementById("abort").disabled = false;

    const t0 = performance.now();
    let tFirst = null, tLast = null, chunks = 0, usage = null, finish = null, reply = "";
    try {
      const resp = await api.call("/v1/chat/completions", {
        method: "POST", headers: {"Content-Type": "application/json"},
        body: JSON.stringify(body), signal: this.controller.signal,
      });
      if (!resp.ok) throw new Error(errorMessage(await resp.json().catch(() => null), resp));
      for await (const ev of sseEvents(resp)) {
        if (ev.error) throw new Error(errorMessage(ev));
        if (ev.usage) usage = ev.usage;
        for (const choice of ev.choices || []) {
          const piece = (choice.delta && (choice.delta.content || choice.delta.reasoning_content)) || "";
          if (piece) {
            const now = performance.now();
            if (tFirst === null) { tFirst = now; setText("ttft", fmt(now - t0) + " ms"); }
            tLast = now;
            chunks += 1;
            reply += piece;
            out.textContent = reply;
            setText("completion-tokens", "~" + chunks);
          }
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
      this.setState("done", "done" + (finish ? " (" + finish + ")" : ""));
    } catch (e) {
      if (e.name === "AbortError") {
        this.setState("stopped");
      } else {
        this.setState("error", e.message);
        const err = document.createElement("div");
        err.className = "error";
        err.textContent = e.message;
        out.parentElement.append(err);
      }
    } finally {
      out.parentElement.classList.remove("streaming");
      this.controller = null;
      document.getElementById("send").disabled = false;
      document.getElementById("abort").disabled = true;
    }
    this.readout(usage, t0, tFirst, tLast, chunks);
    if (reply) this.history.push(turn, {role: "assistant", content: reply});
  },

  // usage: the final chunk's (absent when stopped); tokens/s is the decode speed after the first token.
  readout(usage, t0, tFirst, tLast, chunks) {
    const n = usage ? usage.completion_tokens : chunks;
    if (usage) {
      setText("prompt-tokens", fmt(usage.prompt_tokens));
      setText("completion-tokens", fmt(usage.completion_tokens));
      setText("total-tokens", fmt(usage.total_tokens));
    }
    if (tFirst !== null && n > 1 && tLast > tFirst) {
      setText("tps", fmt((n - 1) / ((tLast - tFirst) / 1000), 1));
    } else if (tFirst !== null && n > 0) {
      setText("tps", fmt(n / ((tLast - t0) / 1000), 1));
    }
  },

  abort() {
    if (this.controller) this.controller.abort();
  },

  clear() {
    this.abort();
    this.history = [];
    document.getElementById("messages").replaceChildren();
    this.resetReadout();
    this.setState("idle");
  },
};

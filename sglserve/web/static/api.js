"use strict";
// Calls to the server: the API key (--api-key) and JSON/SSE helpers shared by both views.

const KEY_STORAGE = "sglserve-api-key";
const authRequired = document.querySelector('meta[name="sglserve-auth"]').content === "bearer";

class AuthError extends Error {}

const api = {
  key() { return sessionStorage.getItem(KEY_STORAGE) || ""; },
  setKey(key) { sessionStorage.setItem(KEY_STORAGE, key); },
  forgetKey() { sessionStorage.removeItem(KEY_STORAGE); },
  needsKey() { return authRequired && !this.key(); },

  headers(extra) {
    const h = Object.assign({}, extra || {});
    if (this.key()) h.Authorization = "Bearer " + this.key();
    return h;
  },

  // fetch() with the key; a 401 forgets the key and raises AuthError (the key form shows again).
  async call(path, options) {
    const opts = Object.assign({}, options || {});
    opts.headers = this.headers(opts.headers);
    const resp = await fetch(path, opts);
    if (resp.status === 401) {
      this.forgetKey();
      window.dispatchEvent(new CustomEvent("sglserve-auth", {detail: "The server refused the key."}));
      throw new AuthError("Unauthorized: the API key is missing or wrong.");
    }
    return resp;
  },

  async json(path, options) {
    const resp = await this.call(path, options);
    const body = await resp.json().catch(() => null);
    if (!resp.ok) throw new Error(errorMessage(body, resp));
    return body;
  },
};

// The message of an OpenAI-shaped error body ({"message"} or {"error": {"message"}}).
function errorMessage(body, resp) {
  const err = body && (body.error || body);
  const msg = err && typeof err.message === "string" ? err.message : "";
  return (resp ? "HTTP " + resp.status + ": " : "") + (msg || "request failed");
}

// Yields each JSON payload of a text/event-stream response; returns at "data: [DONE]".
async function* sseEvents(resp) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buf += decoder.decode(value, {stream: true}).replace(/\r\n/g, "\n");
    let end;
    while ((end = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

// Text into an element: always textContent, never HTML (model output is untrusted).
function setText(id, text) {
  document.getElementById(id).textContent = text;
}

function fmt(n, digits) {
  if (n === null || n === undefined || !isFinite(n)) return "–";
  return Number(n).toLocaleString("en-US", {maximumFractionDigits: digits === undefined ? 0 : digits});
}

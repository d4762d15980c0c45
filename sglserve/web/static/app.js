"use strict";
// The page shell: the two views (tabs) and the API key form; starts the playground and dashboard.

const app = {
  view: "playground",

  init() {
    playground.init();
    dashboard.init();
    for (const tab of document.querySelectorAll(".tab")) {
      tab.addEventListener("click", () => this.show(tab.dataset.view));
    }
    document.getElementById("key-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const input = document.getElementById("key-input");
      api.setKey(input.value.trim());
      input.value = "";
      this.ready();
    });
    document.getElementById("forget-key").addEventListener("click", () => {
      api.forgetKey();
      this.askKey("");
    });
    window.addEventListener("sglserve-auth", (e) => this.askKey(e.detail));
    document.addEventListener("visibilitychange", () => this.pollIfShown());
    const view = location.hash.slice(1);
    this.show(view === "dashboard" ? view : "playground");
    if (api.needsKey()) this.askKey(""); else this.ready();
  },

  askKey(message) {
    dashboard.stop();
    document.getElementById("key-panel").hidden = false;
    document.getElementById("forget-key").hidden = true;
    setText("key-error", message || "");
    document.getElementById("key-input").focus();
  },

  // The key (if any) is set: load the model's name; a refused key brings the form back.
  async ready() {
    document.getElementById("key-panel").hidden = true;
    document.getElementById("forget-key").hidden = !authRequired;
    try {
      await playground.loadModel();
    } catch (e) {
      if (!(e instanceof AuthError)) playground.setState("error", "Cannot reach the server: " + e.message);
      return;
    }
    this.pollIfShown();
  },

  show(view) {
    this.view = view;
    for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.view === view);
    document.getElementById("playground").hidden = view !== "playground";
    document.getElementById("dashboard").hidden = view !== "dashboard";
    history.replaceState(null, "", "#" + view);
    this.pollIfShown();
  },

  pollIfShown() {
    if (this.view === "dashboard" && !document.hidden && !api.needsKey()) dashboard.start(); else dashboard.stop();
  },
};

app.init();

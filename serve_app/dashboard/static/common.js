// What both pages share: requests to the API, sign-in, live refresh, small formatters.
// Data reaches the page only through textContent and attributes, never as HTML.
"use strict";

const RB = (() => {
  const here = location.pathname;
  // where the API lives: everything before /dashboard (a proxy may add a prefix)
  const root = here.slice(0, Math.max(0, here.search(/\/dashboard(\/|$)/)));
  const FINAL = new Set(["COMPLETE", "FAILED", "CANCELLED", "TIMEOUT", "EXPIRED"]);

  class Unauthorized extends Error {}

  async function api(method, path, body) {
    const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(root + path, init);
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
    if (response.status === 401) throw new Unauthorized(describe(data, response));
    if (!response.ok) throw new Error(describe(data, response));
    return data;
  }

  function describe(data, response) {
    if (data && data.error) {
      const detail = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail);
      return `${data.error}: ${detail}`;
    }
    return `${response.status} ${response.statusText}`;
  }

  // el("td", {class: "num"}, "3") — strings become text nodes, never markup
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function badge(status) {
    return el("span", { class: `badge ${status}`, "data-status": status }, status);
  }

  function time(iso) {
    if (!iso) return "–";
    const at = new Date(iso);
    const sameDay = at.toDateString() === new Date().toDateString();
    return sameDay ? at.toLocaleTimeString() : at.toLocaleString();
  }

  function seconds(from, to) {
    if (!from) return "–";
    const s = ((to ? new Date(to) : new Date()) - new Date(from)) / 1000;
    if (s < 60) return `${s.toFixed(1)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} m ${Math.round(s % 60)} s`;
    return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} m`;
  }

  function progressOf(value) {
    if (value === null || value === undefined) return null;
    if (typeof value === "number") {
      return el("span", {}, el("progress", { max: 1, value }), ` ${Math.round(value * 100)}%`);
    }
    return el("code", {}, JSON.stringify(value));
  }

  function show(id, visible) {
    document.getElementById(id).hidden = !visible;
  }

  function problem(message) {
    const node = document.getElementById("problem");
    node.textContent = message || "";
    node.hidden = !message;
  }

  // Calls `refresh` now and again every poll_seconds (it returns them) while the tab is
  // visible and `refresh` returns a number; asks for a token on a 401 and starts again.
  function live(refresh) {
    let timer = null;
    let stopped = false;
    const badgeOf = document.getElementById("live");

    async function tick() {
      clearTimeout(timer);
      timer = null;
      let next = null;
      try {
        next = await refresh();
        problem("");
        show("login", false);
        show("content", true);
      } catch (err) {
        if (err instanceof Unauthorized) {
          badgeOf.classList.add("paused");
          show("content", false);
          show("login", true);
          document.getElementById("token").focus();
          return;
        }
        problem(String(err.message || err));
        next = 5;
      }
      stopped = typeof next !== "number";
      badgeOf.classList.toggle("paused", stopped || document.hidden);
      if (!stopped && !document.hidden) timer = setTimeout(tick, next * 1000);
    }

    document.addEventListener("visibilitychange", () => {
      badgeOf.classList.toggle("paused", stopped || document.hidden);
      if (!document.hidden && !stopped && timer === null) tick();
    });

    document.getElementById("login-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const input = document.getElementById("token");
      const error = document.getElementById("login-error");
      error.textContent = "";
      try {
        await api("POST", "/dashboard/login", { token: input.value });
        input.value = "";
        tick();
      } catch (err) {
        error.textContent = err instanceof Unauthorized ? "That token is not one of the API's." : String(err.message);
      }
    });

    const logout = document.getElementById("logout");
    logout.addEventListener("click", async () => {
      await api("POST", "/dashboard/logout", {});
      location.reload();
    });

    tick();
    return {
      now: () => { stopped = false; return tick(); },
      signedIn: (open) => { logout.hidden = open; },
    };
  }

  // A local-storage output link names the API's public URL; this page may have been reached
  // by another name (a tunnel, a proxy), so such links go to the origin that served the page.
  function outputUrl(url) {
    try {
      const parsed = new URL(url, location.href);
      if (parsed.protocol !== "https:" && parsed.protocol !== "http:") return "about:blank";
      if (/^(.*)\/output\/id\/[^/]+$/.test(parsed.pathname) && parsed.searchParams.has("signature")) {
        const at = parsed.pathname.lastIndexOf("/output/id/");
        return root + parsed.pathname.slice(at) + parsed.search;
      }
      return parsed.href;
    } catch (_) {
      return url;
    }
  }

  return { api, el, badge, time, seconds, progressOf, show, problem, live, outputUrl, root, FINAL, Unauthorized };
})();

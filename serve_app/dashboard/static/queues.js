// The queues page: one row per registered queue, and one page of tasks with the listing's
// filters (queue, status), paged by cursor; both refreshed while the tab is visible.
"use strict";

(() => {
  const { api, el, badge, time, seconds, progressOf } = RB;
  const STATUSES = ["PENDING", "RETRY", "COMPLETE", "FAILED", "CANCELLED", "TIMEOUT", "EXPIRED"];
  const params = new URLSearchParams(location.search);
  const state = {
    queue: params.get("queue") || "",
    status: params.get("status") || "",
    limit: Math.min(1000, Math.max(1, Number(params.get("limit")) || 50)),
    // cursors[i] opens page i (null: the newest tasks)
    cursors: [null],
    next: null,
  };
  const queueSelect = document.getElementById("filter-queue");
  const statusSelect = document.getElementById("filter-status");
  statusSelect.value = state.status;

  function remember() {
    const query = new URLSearchParams();
    if (state.queue) query.set("queue", state.queue);
    if (state.status) query.set("status", state.status);
    if (params.has("limit")) query.set("limit", String(state.limit));
    const search = query.toString();
    history.replaceState(null, "", search ? `?${search}` : location.pathname);
  }

  function refilter() {
    state.cursors = [null];
    remember();
    view.now();
  }

  queueSelect.addEventListener("change", () => { state.queue = queueSelect.value; refilter(); });
  statusSelect.addEventListener("change", () => { state.status = statusSelect.value; refilter(); });
  document.getElementById("next").addEventListener("click", () => {
    if (state.next) { state.cursors.push(state.next); view.now(); }
  });
  document.getElementById("prev").addEventListener("click", () => {
    if (state.cursors.length > 1) { state.cursors.pop(); view.now(); }
  });
  document.getElementById("newest").addEventListener("click", () => {
    state.cursors = [null];
    view.now();
  });

  function count(value, key) {
    return el("td", { class: value ? "num" : "num zero", "data-key": key }, value);
  }

  function spark(done, failed) {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    const peak = Math.max(1, ...done.filter((n) => n !== null));
    svg.setAttribute("class", "spark");
    svg.setAttribute("width", String(done.length * 7));
    svg.setAttribute("height", "18");
    done.forEach((n, i) => {
      const bar = document.createElementNS(ns, "rect");
      const h = n === null ? 2 : Math.max(1, Math.round((n / peak) * 18));
      bar.setAttribute("x", String(i * 7));
      bar.setAttribute("y", String(18 - h));
      bar.setAttribute("width", "5");
      bar.setAttribute("height", String(h));
      bar.setAttribute("class", n === null ? "unknown" : failed[i] ? "failed" : "done");
      const tip = document.createElementNS(ns, "title");
      tip.textContent = n === null ? "no sample yet" : `${n} ended (${failed[i] || 0} failed), ${done.length - i} min ago`;
      bar.append(tip);
      svg.append(bar);
    });
    return svg;
  }

  function renderQueues(rows) {
    const body = document.querySelector("#queues tbody");
    body.replaceChildren(...rows.map((q) => {
      const last = q.finished_per_minute[q.finished_per_minute.length - 1];
      const pick = el("a", {
        href: `?queue=${encodeURIComponent(q.name)}`,
        onclick: (event) => {
          event.preventDefault();
          state.queue = q.name;
          queueSelect.value = q.name;
          refilter();
        },
      }, q.name);
      return el("tr", { "data-queue": q.name, class: q.name === state.queue ? "picked" : null },
        el("td", {}, pick),
        count(q.queue_depth, "depth"),
        count(q.running, "RUNNING"),
        count(q.active_containers, "containers"),
        ...STATUSES.map((s) => count(q.by_status[s], s)),
        el("td", { class: "num", "data-key": "per-minute" }, last === null ? "–" : last),
        el("td", {}, spark(q.finished_per_minute, q.failed_per_minute)));
    }));
    document.getElementById("no-queues").hidden = rows.length > 0;
    const names = rows.map((q) => q.name);
    if (state.queue && !names.includes(state.queue)) names.push(state.queue);
    const shown = [...queueSelect.options].slice(1).map((o) => o.value);
    if (shown.join("\n") !== names.join("\n")) {
      queueSelect.replaceChildren(el("option", { value: "" }, "all"), ...names.map((n) => el("option", { value: n }, n)));
    }
    queueSelect.value = state.queue;
  }

  function renderTasks(page) {
    const body = document.querySelector("#tasks tbody");
    body.replaceChildren(...page.tasks.map((t) => el("tr", { "data-task": t.id },
      el("td", {}, el("a", { href: `dashboard/task/${encodeURIComponent(t.id)}` }, el("code", {}, t.id.slice(0, 8)))),
      el("td", {}, t.queue),
      el("td", {}, badge(t.status)),
      el("td", { title: t.created_at }, time(t.created_at)),
      el("td", { title: t.started_at || "" }, time(t.started_at)),
      el("td", { class: "num" }, t.started_at ? seconds(t.started_at, t.ended_at) : "–"),
      el("td", { class: "num" }, t.attempts),
      el("td", {}, progressOf(t.progress)))));
    document.getElementById("no-tasks").hidden = page.tasks.length > 0;
    state.next = page.next_cursor;
    document.getElementById("next").disabled = !page.next_cursor;
    document.getElementById("prev").disabled = state.cursors.length <= 1;
    document.getElementById("newest").disabled = state.cursors.length <= 1;
    document.getElementById("page-label").textContent = `page ${state.cursors.length}`;
  }

  async function refresh() {
    const query = new URLSearchParams({ limit: String(state.limit) });
    if (state.queue) query.set("queue", state.queue);
    if (state.status) query.set("status", state.status);
    const cursor = state.cursors[state.cursors.length - 1];
    if (cursor) query.set("cursor", cursor);
    const [summary, page] = await Promise.all([
      api("GET", "/dashboard/api/queues"),
      api("GET", `/v2/task/?${query}`),
    ]);
    renderQueues(summary.queues);
    renderTasks(page);
    view.signedIn(summary.open);
    return summary.poll_seconds;
  }

  const view = RB.live(refresh);
})();

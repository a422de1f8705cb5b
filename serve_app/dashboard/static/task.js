// The task page: the record, its attempts and history, progress, outputs (images inline),
// webhook attempts, and Cancel / Retry; refreshed until the task is final.
"use strict";

(() => {
  const { api, el, badge, time, progressOf, outputUrl, FINAL } = RB;
  const taskId = decodeURIComponent(location.pathname.split("/").pop());
  const IMAGE = /\.(png|jpe?g|gif|webp|bmp|svg|avif)$/i;
  document.getElementById("task-id").textContent = taskId;
  document.title = `raybeam · task ${taskId.slice(0, 8)}`;

  function taskLink(id) {
    return el("a", { href: encodeURIComponent(id) }, el("code", {}, id));
  }

  function fact(name, value) {
    if (value === null || value === undefined || value === "") return [];
    return [el("dt", {}, name), el("dd", {}, value instanceof Node ? value : String(value))];
  }

  function renderFacts(t) {
    const queue = el("a", { href: `../../dashboard?queue=${encodeURIComponent(t.queue)}` }, t.queue);
    document.getElementById("facts").replaceChildren(
      ...fact("Queue", queue),
      ...fact("Attempts", t.attempts),
      ...fact("Created", time(t.created_at)),
      ...fact("Started", t.started_at && time(t.started_at)),
      ...fact("Ended", t.ended_at && time(t.ended_at)),
      ...fact("Updated", time(t.updated_at)),
      ...fact("Scheduled for", t.scheduled_for && time(t.scheduled_for)),
      ...fact("Next attempt at", t.next_attempt_at && time(t.next_attempt_at)),
      ...fact("Priority", t.priority),
      ...fact("Container", t.container_id),
      ...fact("Idempotency key", t.idempotency_key),
      ...fact("Retry of", t.retry_of && taskLink(t.retry_of)),
      ...fact("Retried as", t.retried_as && el("span", { id: "retried-as" }, taskLink(t.retried_as))),
      ...fact("Queue depth", t.stats && t.stats.queue_depth),
    );
  }

  function renderAttempts(attempts, history) {
    document.querySelector("#attempts tbody").replaceChildren(...attempts.map((a) => {
      // the reason's last line names the error; the whole traceback is above
      const reason = a.failure_reason ? a.failure_reason.trim().split("\n").pop() : "";
      return el("tr", { "data-attempt": a.n },
        el("td", { class: "num" }, a.n),
        el("td", { title: a.started_at || "" }, time(a.started_at)),
        el("td", { title: a.ended_at || "" }, time(a.ended_at)),
        el("td", { class: "num" }, a.seconds === null ? "–" : a.seconds.toFixed(2)),
        el("td", {}, badge(a.outcome)),
        el("td", { class: "reason", title: a.failure_reason || "" }, reason));
    }));
    document.getElementById("no-attempts").hidden = attempts.length > 0;
    document.querySelector("#history tbody").replaceChildren(...history.map((h) =>
      el("tr", {}, el("td", {}, badge(h.status)), el("td", { title: h.at }, time(h.at)))));
  }

  function renderOutputs(outputs) {
    document.getElementById("outputs-box").hidden = outputs.length === 0;
    document.getElementById("outputs").replaceChildren(...outputs.map((o) => {
      const url = outputUrl(o.url);
      const link = el("a", { href: url, download: o.name, "data-output": o.name }, o.name);
      const expiry = el("span", { class: "expiry" }, ` · link valid ${o.expires_in} s from this view`);
      if (IMAGE.test(o.name)) {
        return el("figure", {}, el("img", { src: url, alt: o.name, "data-output": o.name }), el("figcaption", {}, link, expiry));
      }
      return el("div", { class: "file" }, link, expiry);
    }));
  }

  function renderWebhook(hook) {
    document.getElementById("webhook-box").hidden = !hook;
    if (!hook) return;
    document.getElementById("webhook-summary").replaceChildren(
      el("code", {}, hook.url), hook.delivered ? " — delivered" : " — not delivered yet");
    document.querySelector("#webhook tbody").replaceChildren(...hook.attempts.map((a) =>
      el("tr", {}, el("td", { title: a.at }, time(a.at)), el("td", {}, a.status_code ?? "–"), el("td", {}, a.error ?? ""))));
  }

  function render(data) {
    const t = data.task;
    document.getElementById("status").replaceWith(Object.assign(badge(t.status), { id: "status" }));
    renderFacts(t);
    const progress = progressOf(t.progress);
    document.getElementById("progress-box").hidden = progress === null;
    document.getElementById("progress").replaceChildren(...(progress ? [progress] : []));
    document.getElementById("failure-box").hidden = !t.failure_reason;
    document.getElementById("failure").textContent = t.failure_reason || "";
    renderAttempts(data.attempts, data.history);
    document.getElementById("result").textContent = JSON.stringify(t.result, null, 2);
    renderOutputs(t.outputs || []);
    renderWebhook(t.webhook);
    document.getElementById("cancel").disabled = FINAL.has(t.status);
    document.getElementById("retry").disabled = !FINAL.has(t.status);
  }

  function notice(...parts) {
    const node = document.getElementById("notice");
    node.replaceChildren(...parts);
    node.hidden = parts.length === 0;
  }

  async function refresh() {
    const data = await api("GET", `/dashboard/api/task/${encodeURIComponent(taskId)}`);
    render(data);
    view.signedIn(data.open);
    return FINAL.has(data.task.status) ? null : data.poll_seconds;
  }

  document.getElementById("cancel").addEventListener("click", async () => {
    if (!confirm(`Cancel task ${taskId}?`)) return;
    try {
      await api("DELETE", "/v2/task/cancel/", { task_ids: [taskId] });
      notice("Cancel sent.");
      view.now();
    } catch (err) {
      RB.problem(String(err.message));
    }
  });

  document.getElementById("retry").addEventListener("click", async () => {
    try {
      const answer = await api("POST", "/v2/task/retry/", { task_ids: [taskId] });
      const made = answer.tasks.find((t) => t.retry_of === taskId) || answer.tasks[0];
      if (made) notice("Requeued as ", el("a", { id: "retry-link", href: encodeURIComponent(made.task_id) }, el("code", {}, made.task_id)), ".");
      view.now();
    } catch (err) {
      RB.problem(String(err.message));
    }
  });

  const view = RB.live(refresh);
})();

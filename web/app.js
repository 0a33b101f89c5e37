// Ferry dashboard: reads /api/admin/events (server-sent events, one summary a second)
// with the admin token and draws the numbers, charts and tables. No libraries, no
// network beyond this server. The token comes from the URL fragment (#token=…), which
// browsers never send to servers, or from the form; it is kept in localStorage.
"use strict";

(function () {
  const KEY = "ferry-admin-token";
  const HISTORY = 600;
  const STALE_MS = 5000;
  const body = document.body;
  const $ = (sel) => document.querySelector(sel);

  let points = [];
  let updates = 0;
  let lastEvent = 0;
  let controller = null;
  let retryMs = 1000;
  let retryTimer = null;

  // ---- token ---------------------------------------------------------------------
  function takeTokenFromUrl() {
    const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
    if (m) {
      localStorage.setItem(KEY, decodeURIComponent(m[1]));
      window.history.replaceState(null, "", location.pathname + location.search);
    }
  }
  const token = () => localStorage.getItem(KEY) || "";

  function lock(message) {
    if (controller) controller.abort();
    clearTimeout(retryTimer);
    body.dataset.state = "locked";
    $("#status").textContent = "locked";
    $("#board").hidden = true;
    $("#signout").hidden = true;
    $("#login-error").textContent = message || "";
    clearNumbers();
  }

  function clearNumbers() {
    document.querySelectorAll("[data-metric]").forEach((el) => (el.textContent = "—"));
    document.querySelectorAll("tbody").forEach((tb) => tb.replaceChildren());
    points = [];
  }

  // ---- formatting ----------------------------------------------------------------
  function fmtRate(v) {
    if (v == null || !isFinite(v)) return "—";
    if (v === 0) return "0";
    if (v < 1) return v.toFixed(2);
    if (v < 10) return v.toFixed(1);
    return Math.round(v).toLocaleString("en");
  }
  function fmtInt(v) {
    return v == null ? "—" : Math.round(v).toLocaleString("en");
  }
  function fmtMs(v) {
    if (v == null || !isFinite(v)) return "—";
    if (v === 0) return "0";
    if (v < 1) return v.toFixed(2);
    if (v < 10) return v.toFixed(1);
    return Math.round(v).toLocaleString("en");
  }
  function fmtBytes(n) {
    if (n == null) return "—";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let v = n, u = 0;
    while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
    return u === 0 ? n + " B" : v.toFixed(1) + " " + units[u];
  }
  function fmtUptime(s) {
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m";
    if (s < 86400) return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
    return Math.floor(s / 86400) + "d" + Math.floor((s % 86400) / 3600) + "h";
  }

  function set(name, text) {
    document.querySelectorAll('[data-metric="' + name + '"]').forEach((el) => (el.textContent = text));
  }

  function cell(text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }
  function fillTable(id, rows) {
    const tb = document.querySelector(id + " tbody");
    tb.replaceChildren(...rows.map((cells) => {
      const tr = document.createElement("tr");
      tr.append(...cells);
      return tr;
    }));
  }

  // ---- charts ----------------------------------------------------------------------
  const SVG = "http://www.w3.org/2000/svg";
  function el(name, attrs, text) {
    const e = document.createElementNS(SVG, name);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (text != null) e.textContent = text;
    return e;
  }
  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }
  // series: [{values: [number|null], cls}]; times: [ms]
  function chart(svg, times, series, fmt) {
    const w = Math.max(svg.clientWidth, 200), h = Math.max(svg.clientHeight, 100);
    const padL = 40, padR = 6, padT = 6, padB = 16;
    svg.setAttribute("viewBox", "0 0 " + w + " " + h);
    const all = series.flatMap((s) => s.values.filter((v) => v != null && isFinite(v)));
    const max = niceMax(Math.max(0, ...all));
    const nodes = [];
    for (let i = 0; i <= 2; i++) {
      const y = padT + (h - padT - padB) * (1 - i / 2);
      nodes.push(el("line", { class: "grid", x1: padL, x2: w - padR, y1: y, y2: y }));
      nodes.push(el("text", { x: padL - 4, y: y + 3, "text-anchor": "end" }, fmt((max * i) / 2)));
    }
    const n = times.length;
    if (n > 0) {
      const t0 = times[0], t1 = times[n - 1];
      const span = Math.max(t1 - t0, 1);
      const x = (t) => padL + ((w - padL - padR) * (t - t0)) / span;
      const y = (v) => padT + (h - padT - padB) * (1 - v / max);
      nodes.push(el("text", { x: padL, y: h - 3 }, "-" + fmtUptime(Math.round(span / 1000))));
      nodes.push(el("text", { x: w - padR, y: h - 3, "text-anchor": "end" }, "now"));
      for (const s of series) {
        let d = "", pen = false;
        s.values.forEach((v, i) => {
          if (v == null || !isFinite(v)) { pen = false; return; }
          d += (pen ? "L" : "M") + x(times[i]).toFixed(1) + " " + y(v).toFixed(1);
          pen = true;
        });
        if (d) nodes.push(el("path", { d: d, class: s.cls }));
      }
    }
    svg.replaceChildren(...nodes);
  }

  function drawCharts() {
    const t = points.map((p) => p.t_ms);
    chart($("#chart-rates"), t, [
      { values: points.map((p) => p.messages_per_s), cls: "s1" },
      { values: points.map((p) => p.logins_per_s), cls: "s2" },
    ], fmtRate);
    chart($("#chart-connections"), t, [{ values: points.map((p) => p.connections), cls: "s1" }], fmtInt);
    chart($("#chart-delivery"), t, [
      { values: points.map((p) => p.delivery_p50_ms), cls: "s1" },
      { values: points.map((p) => p.delivery_p99_ms), cls: "s3" },
    ], fmtMs);
    chart($("#chart-errors"), t, [{ values: points.map((p) => p.errors_per_s), cls: "s4" }], fmtRate);
  }

  // ---- rendering -------------------------------------------------------------------
  function render(s) {
    if (s.history && s.history.length) points = s.history.slice(-HISTORY);
    else if (s.point) {
      points.push(s.point);
      if (points.length > HISTORY) points.shift();
    }
    const t = s.totals, r = s.rates;
    set("connections", fmtInt(t.connections));
    set("links", fmtInt(t.links));
    set("logins_per_s", fmtRate(r.logins));
    set("logins_total", fmtInt(t.logins));
    set("messages_per_s", fmtRate(r.messages_in));
    set("messages_total", fmtInt(t.messages_in));
    set("delivery_p50", fmtMs(s.delivery_ms.p50));
    set("delivery_p99", fmtMs(s.delivery_ms.p99));
    set("errors_per_s", fmtRate(r.errors));
    set("errors_total", fmtInt(t.errors));
    set("sync_lag_p50", s.sync_lag.p50 == null ? "—" : fmtInt(s.sync_lag.p50));
    set("sync_lag_p99", s.sync_lag.p99 == null ? "—" : fmtInt(s.sync_lag.p99));
    set("storage_bytes", fmtBytes(s.store.total_bytes));
    set("write_queue", fmtInt(s.store.write_queue));
    $("#rate-window").textContent = Math.round(s.rate_window_s);
    $("#q-window").textContent = Math.round(s.quantile_window_s);

    fillTable("#t-nodes", s.nodes.map((n) => [
      cell(n.id), cell(n.role),
      cell(n.healthy ? "healthy" : "unhealthy", n.healthy ? "healthy" : "unhealthy"),
      cell(fmtUptime(n.uptime_s)), cell(n.detail),
    ]));
    fillTable("#t-gateways", s.gateways.map((g) => [
      cell(g.id), cell(fmtInt(g.connections), "n"), cell(fmtInt(g.links), "n"),
      cell(fmtRate(g.frames_in_per_s), "n"), cell(fmtRate(g.frames_out_per_s), "n"),
      cell(fmtInt(g.bad_input), "n"), cell(fmtInt(g.timeouts), "n"), cell(fmtInt(g.slow_consumers), "n"),
    ]));
    fillTable("#t-commands", s.commands.map((c) => [
      cell(c.cmd), cell(fmtRate(c.per_s), "n"), cell(fmtMs(c.latency_ms.p50), "n"),
      cell(fmtMs(c.latency_ms.p99), "n"), cell(fmtRate(c.errors_per_s), "n"),
    ]));
    fillTable("#t-errors", s.errors.map((e) => [
      cell(e.cmd), cell(e.code), cell(fmtInt(e.total), "n"), cell(fmtRate(e.per_s), "n"),
    ]));
    $("#errors-empty").hidden = s.errors.length > 0;
    fillTable("#t-regions", s.regions.map((g) => [
      cell(g.region), cell(fmtInt(g.reports), "n"),
      cell(g.success == null ? "—" : (g.success * 100).toFixed(1) + "%", "n"),
      cell(fmtMs(g.connect_ms.p50), "n"), cell(fmtMs(g.connect_ms.p99), "n"),
    ]));
    $("#regions-empty").hidden = s.regions.length > 0;
    const pu = s.push;
    fillTable("#t-push", pu.providers.map((p) => [
      cell(p.provider), cell(fmtInt(p.targets), "n"), cell(fmtInt(p.sent_total), "n"),
      cell(fmtRate(p.sent_per_s), "n"), cell(fmtInt(p.failed_total), "n"), cell(fmtRate(p.failed_per_s), "n"),
    ]));
    fillTable("#t-push-stats", [
      [cell("write → provider p50 · p99 ms"), cell(fmtMs(pu.latency_ms.p50) + " · " + fmtMs(pu.latency_ms.p99), "n")],
      [cell("queued devices (due now)"), cell(fmtInt(pu.queue) + " (" + fmtInt(pu.queue_due) + ")", "n")],
    ]);
    fillTable("#t-push-reasons", pu.reasons.map((r) => [
      cell(r.outcome), cell(r.reason), cell(fmtInt(r.total), "n"), cell(fmtRate(r.per_s), "n"),
    ]));
    $("#push-empty").hidden = pu.providers.some((p) => p.targets > 0 || p.sent_total > 0);
    const st = s.store;
    fillTable("#t-store", [
      [cell("size"), cell(fmtBytes(st.total_bytes), "n")],
      ...st.files.map((f) => [cell(f.name), cell(fmtBytes(f.bytes), "n")]),
      [cell("commit p50 · p99 ms"), cell(fmtMs(st.commit_ms.p50) + " · " + fmtMs(st.commit_ms.p99), "n")],
      [cell("batch size p50 · p99"), cell(fmtInt(st.batch_size.p50) + " · " + fmtInt(st.batch_size.p99), "n")],
      [cell("write queue"), cell(fmtInt(st.write_queue), "n")],
    ]);
    drawCharts();
    updates++;
    if (updates === 1) hooks();
    body.dataset.updates = String(updates);
    $("#updated").textContent = "updated " + new Date(s.time_ms).toLocaleTimeString();
  }

  // ---- webhooks (the admin API, every 5 s while live) --------------------------------
  async function api(method, path) {
    const resp = await fetch("/v1/" + path, {
      method, headers: { Authorization: "Bearer " + token() }, cache: "no-store",
    });
    if (!resp.ok) throw new Error(method + " " + path + ": " + resp.status);
    return resp.json();
  }
  async function hooks() {
    if (body.dataset.state !== "live") return;
    let st, dead;
    try {
      [st, dead] = await Promise.all([api("GET", "admin/webhooks/stats"), api("GET", "admin/webhooks/dead?limit=20")]);
    } catch (e) { return; }
    fillTable("#t-hooks", st.endpoints.map((e) => [
      cell(e.url + (e.enabled ? "" : " (paused)")), cell(fmtInt(e.delivered), "n"), cell(fmtInt(e.failed), "n"),
      cell(fmtInt(e.pending), "n"), cell(fmtInt(e.dead), "n"),
    ]));
    fillTable("#t-hooks-dead", dead.dead.map((d) => {
      const b = document.createElement("button");
      b.textContent = "Redrive";
      b.className = "redrive";
      b.addEventListener("click", async () => {
        b.disabled = true;
        try { await api("POST", "admin/webhooks/dead/" + d.id + "/redrive"); } catch (e) { b.disabled = false; return; }
        hooks();
      });
      const td = document.createElement("td");
      td.append(b);
      return [cell(d.event_id), cell(String(d.endpoint)), cell(d.type), cell(d.last_error), td];
    }));
    $("#hooks-empty").hidden = st.endpoints.length > 0;
  }
  setInterval(hooks, 5000);

  // ---- the event stream -------------------------------------------------------------
  function live(state) {
    body.dataset.state = state;
    $("#status").textContent = state;
  }

  async function connect() {
    clearTimeout(retryTimer);
    if (!token()) return lock("");
    $("#board").hidden = false;
    $("#signout").hidden = false;
    if (body.dataset.state === "locked") live("connecting");
    refreshAudit();
    controller = new AbortController();
    let resp;
    try {
      resp = await fetch("/api/admin/events", {
        headers: { Authorization: "Bearer " + token(), Accept: "text/event-stream" },
        cache: "no-store",
        signal: controller.signal,
      });
    } catch (e) {
      return retry();
    }
    if (resp.status === 401) {
      localStorage.removeItem(KEY);
      return lock("The server refused this token.");
    }
    if (!resp.ok || !resp.body) return retry();
    retryMs = 1000;
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          handle(block);
        }
      }
    } catch (e) {
      if (body.dataset.state === "locked") return;
    }
    retry();
  }

  function handle(block) {
    let event = "message", data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) continue;
      const i = line.indexOf(":");
      const field = i < 0 ? line : line.slice(0, i);
      const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
      if (field === "event") event = value;
      else if (field === "data") data.push(value);
    }
    if (event !== "summary" || !data.length) return;
    let s;
    try { s = JSON.parse(data.join("\n")); } catch (e) { return; }
    lastEvent = Date.now();
    live("live");
    render(s);
  }

  function retry() {
    if (body.dataset.state === "locked") return;
    live("reconnecting");
    retryTimer = setTimeout(connect, retryMs);
    retryMs = Math.min(retryMs * 2, 10000);
  }

  setInterval(() => {
    if (body.dataset.state === "live" && Date.now() - lastEvent > STALE_MS) live("stale");
  }, 1000);

  // ---- the audit log (admin API), every 5 s while live --------------------------------
  async function refreshAudit() {
    if (body.dataset.state === "locked" || !token()) return;
    let resp;
    try {
      resp = await fetch("/v1/admin/audit?limit=20", {
        headers: { Authorization: "Bearer " + token() },
        cache: "no-store",
      });
    } catch (e) {
      return;
    }
    if (!resp.ok) return;
    let v;
    try { v = await resp.json(); } catch (e) { return; }
    const rows = (v.entries || []).map((e) => {
      const params = e.detail && e.detail.params ? Object.values(e.detail.params).join(" ") : "";
      return [
        cell(new Date(e.at_ms).toLocaleString()), cell(e.actor), cell(e.peer),
        cell(e.op), cell(params), cell(String(e.status), "n"),
      ];
    });
    fillTable("#t-audit", rows);
    $("#audit-empty").hidden = rows.length > 0;
    body.dataset.auditRows = String(rows.length);
  }
  setInterval(refreshAudit, 5000);

  // ---- start -------------------------------------------------------------------------
  $("#login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = $("#token-input").value.trim();
    if (!t) return;
    localStorage.setItem(KEY, t);
    $("#token-input").value = "";
    $("#login-error").textContent = "";
    connect();
  });
  $("#signout").addEventListener("click", () => {
    localStorage.removeItem(KEY);
    lock("");
  });
  window.addEventListener("hashchange", () => { takeTokenFromUrl(); connect(); });
  window.addEventListener("resize", () => { if (points.length) drawCharts(); });

  takeTokenFromUrl();
  if (token()) connect(); else lock("");
})();

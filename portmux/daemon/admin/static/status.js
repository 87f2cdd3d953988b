// portmux's live status page: polls status.json every second and updates the
// page in place. Rates are computed here from successive counter values; the
// charts show the last HISTORY samples. No external assets, no framework.
"use strict";
(function () {
  const INTERVAL_MS = 1000;
  const HISTORY = 300; // five minutes at one sample a second
  const histories = new Map(); // key -> [rate, ...]
  let previous = null; // {now, counters: Map key -> value}

  const $ = (id) => document.getElementById(id);
  const fmt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en"));
  const rateText = (r) => (r === null ? "–" : r < 10 ? r.toFixed(1) : Math.round(r).toLocaleString("en"));

  function bytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(n)) + " " + units[i];
  }

  function duration(s) {
    s = Math.floor(s);
    const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
    return (d ? d + "d " : "") + (d || h ? h + "h " : "") + m + "m " + (s % 60) + "s";
  }

  // Rate of counter `key` since the previous poll, remembered in its history.
  function rate(key, value, now, current) {
    current.set(key, value);
    if (!previous || !previous.counters.has(key)) return null;
    const dt = now - previous.now;
    const r = dt > 0 ? Math.max(0, value - previous.counters.get(key)) / dt : 0;
    let h = histories.get(key);
    if (!h) { h = []; histories.set(key, h); }
    h.push(r);
    if (h.length > HISTORY) h.shift();
    return r;
  }

  function spark(svg, key) {
    const h = histories.get(key) || [];
    let line = svg.querySelector("polyline");
    if (!line) {
      line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
      svg.appendChild(line);
    }
    const max = Math.max(1, ...h);
    const step = 120 / Math.max(1, HISTORY - 1);
    const start = HISTORY - h.length;
    line.setAttribute("points", h.map((v, i) => ((start + i) * step).toFixed(1) + "," + (29 - (v / max) * 27).toFixed(1)).join(" "));
    svg.setAttribute("data-max", max.toFixed(2));
  }

  // Keep one <tr> per key, created once and then updated in place.
  function row(table, key, cells, className) {
    const body = $(table).tBodies[0];
    let tr = body.querySelector(`tr[data-key="${CSS.escape(key)}"]`);
    if (!tr) {
      tr = document.createElement("tr");
      tr.dataset.key = key;
      for (const cell of cells) {
        const td = document.createElement("td");
        if (cell.num) td.className = "num";
        if (cell.chart) {
          td.innerHTML = '<svg class="spark" viewBox="0 0 120 30" preserveAspectRatio="none"></svg>';
        }
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
    tr.className = className || "";
    tr.dataset.seen = "1";
    cells.forEach((cell, i) => {
      const td = tr.cells[i];
      if (cell.chart) spark(td.firstChild, cell.chart);
      else if (cell.html !== undefined) { if (td.innerHTML !== cell.html) td.innerHTML = cell.html; }
      else if (td.textContent !== String(cell.text)) td.textContent = cell.text;
    });
    return tr;
  }

  function begin(table) { for (const tr of $(table).tBodies[0].rows) tr.dataset.seen = ""; }
  function finish(table, emptyText) {
    const body = $(table).tBodies[0];
    for (const tr of [...body.rows]) if (!tr.dataset.seen && tr.dataset.key !== "") tr.remove();
    if (!body.rows.length) {
      const tr = body.insertRow();
      tr.className = "empty";
      tr.dataset.key = "";
      tr.dataset.seen = "1";
      const td = tr.insertCell();
      td.colSpan = $(table).tHead.rows[0].cells.length;
      td.textContent = emptyText;
    } else if (body.rows.length > 1) {
      for (const tr of [...body.rows]) if (tr.dataset.key === "") tr.remove();
    }
  }

  const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);

  function render(s) {
    const now = s.now;
    const current = new Map();
    $("version").textContent = "version " + (s.version || "?");
    $("uptime").textContent = s.uptime !== undefined ? duration(s.uptime) : "–";
    const state = $("state");
    state.textContent = s.draining ? "draining" : "running";
    state.className = "badge " + (s.draining ? "bad" : "ok");
    $("accepted").textContent = fmt(s.connections.accepted);
    const total = rate("accepted", s.connections.accepted, now, current);
    $("rate").textContent = rateText(total);
    spark($("rate-chart"), "accepted");
    $("open").textContent = fmt(s.connections.open);
    $("sniffing").textContent = fmt(s.connections.sniffing);
    let bytesIn = 0, bytesOut = 0;
    for (const r of s.routes) if (r.depth === 0) { bytesIn += r.counters.bytes_in || 0; bytesOut += r.counters.bytes_out || 0; }
    $("bytes").textContent = bytes(bytesIn) + " / " + bytes(bytesOut);
    $("refused").textContent = fmt(Object.values(s.refusals).reduce((a, b) => a + b, 0));

    begin("listeners");
    for (const l of s.listeners) {
      const key = "listener:" + l.name;
      const r = rate(key, l.accepted || 0, now, current);
      row("listeners", key, [
        { html: "<code>" + esc(l.name) + "</code>" }, { text: l.address || (l.listening ? "" : "stopped") },
        { text: fmt(l.accepted || 0), num: true }, { text: rateText(r), num: true }, { chart: key },
        { text: fmt(l.refused || 0), num: true }, { text: fmt(l.closed_while_sniffing || 0), num: true },
      ]);
    }
    finish("listeners", "not listening");

    begin("routes");
    begin("backends");
    for (const route of s.routes) {
      const key = "route:" + route.path;
      const c = route.counters;
      const r = rate(key, c.connections, now, current);
      row("routes", key, [
        { text: route.path }, { text: route.description + (route.registered ? " (registered)" : "") },
        { html: "<code>" + esc(route.match) + "</code>" },
        { text: fmt(c.connections), num: true }, { text: rateText(r), num: true }, { chart: key },
        { text: fmt(c.active), num: true }, { text: bytes(c.bytes_in), num: true },
        { text: bytes(c.bytes_out), num: true }, { text: fmt(c.refused), num: true },
      ], route.depth ? "nested" : "");
      for (const b of route.backends || []) {
        const seen = b.last_check ? duration(Math.max(0, now - b.last_check)) + " ago: " + b.last_result : (b.checked ? "pending" : "not checked");
        row("backends", "backend:" + route.path + ":" + b.name, [
          { text: route.path }, { html: "<code>" + esc(b.name) + "</code>" },
          { html: b.up ? '<span class="up">UP</span>' : '<span class="down">DOWN</span>' }, { text: seen },
        ]);
      }
    }
    finish("routes", "no routes");
    finish("backends", "no proxy backends");

    begin("refusals");
    for (const [reason, count] of Object.entries(s.refusals).sort((a, b) => b[1] - a[1])) {
      row("refusals", "reason:" + reason, [{ html: "<code>" + esc(reason) + "</code>" }, { text: fmt(count), num: true }]);
    }
    finish("refusals", "none");

    begin("workers");
    for (const w of s.workers || []) {
      const members = w.members.map((m) => "pid " + m.pid + (m.endpoint ? " → " + m.endpoint : "")).join(", ");
      row("workers", "worker:" + w.name, [
        { text: w.name }, { html: "<code>" + esc(JSON.stringify(w.match)) + "</code>" }, { text: w.mode }, { text: members },
      ]);
    }
    finish("workers", "no registered workers");

    begin("certificates");
    for (const cert of s.certificates || []) {
      const days = (cert.expiry_timestamp - now) / 86400;
      row("certificates", "cert:" + cert.route + ":" + cert.source, [
        { text: cert.names.join(", ") }, { text: cert.route }, { text: cert.not_after.replace("T", " ") },
        { html: '<span class="' + (days < 14 ? "soon" : "") + '">' + Math.floor(days) + "</span>" },
      ]);
    }
    finish("certificates", "no TLS termination routes");

    previous = { now, counters: current };
    $("updated").textContent = new Date().toLocaleTimeString();
    document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
  }

  async function poll() {
    try {
      const answer = await fetch("status.json", { cache: "no-store" });
      if (!answer.ok) throw new Error("HTTP " + answer.status);
      render(await answer.json());
    } catch (e) {
      const state = $("state");
      state.textContent = "unreachable";
      state.className = "badge bad";
    } finally {
      setTimeout(poll, INTERVAL_MS);
    }
  }
  poll();
})();

// chimneyd web view: the one WebSocket every page shares, and small DOM helpers.
"use strict";

const Live = (() => {
  const handlers = {};
  const subs = new Map();  // topic -> the last subscription, sent again after a reconnect
  let ws = null;
  let retry = 0;

  function setStatus(text, on) {
    const el = document.getElementById("status");
    if (el) {
      el.textContent = text;
      el.className = "status " + (on ? "on" : "off");
    }
  }

  function connect() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    ws = new WebSocket(`${proto}//${location.host}/ws`);
    ws.onopen = () => {
      retry = 0;
      setStatus("live", true);
      for (const m of subs.values()) ws.send(JSON.stringify(m));
    };
    ws.onmessage = (ev) => {
      const msg = JSON.parse(ev.data);
      for (const fn of handlers[msg.type] || []) fn(msg);
    };
    ws.onclose = () => {
      setStatus("reconnecting…", false);
      setTimeout(connect, Math.min(5000, 300 * 2 ** retry++));
    };
  }

  function on(type, fn) {
    (handlers[type] = handlers[type] || []).push(fn);
  }

  function sub(topic, params) {
    const m = Object.assign({ op: "sub", topic }, params || {});
    subs.set(topic, m);
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(m));
  }

  async function get(path) {
    const r = await fetch(path, { headers: { Accept: "application/json" } });
    if (!r.ok && r.status !== 404) throw new Error(`${path}: HTTP ${r.status}`);
    return r.json();
  }

  // The daemon's figures are fetched, not pushed: `/api/stats` and `/api/conns` answer for
  // every shard of a daemon of several (docs/metrics.md, Shards), what the socket pushes is
  // the serving shard's own. `poll(path, fn)` asks `path()` at once and then every
  // `web.push_interval_ms` (from /api/info), hands `fn` the answer, and returns a function
  // that asks again at once (an older answer arriving late is dropped).
  let every = null;
  function interval() {
    every = every || get("/api/info").then((i) => (i.web || {}).push_interval_ms || 1000, () => 1000);
    return every;
  }

  function poll(path, fn) {
    let asked = 0;
    let timer = null;
    async function now() {
      const mine = ++asked;
      clearTimeout(timer);
      try {
        const answer = await get(path());
        if (mine === asked && !answer.error) fn(answer);
      } catch (e) {
        // a shard that did not answer in time (503), or the daemon gone: the next round
      }
      const wait = await interval();
      if (mine === asked) timer = setTimeout(now, wait);
    }
    now();
    return now;
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") node.textContent = v;
      else if (k === "cls") node.className = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c);
    return node;
  }

  const SVGNS = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined) node.setAttribute(k, v);
    }
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function num(n) {
    return (n || 0).toLocaleString("en-US");
  }

  function bytes(n) {
    n = n || 0;
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return i ? `${n.toFixed(1)} ${units[i]}` : `${n} B`;
  }

  function clock(t) {
    const d = new Date(t * 1000);
    return d.toLocaleTimeString("en-GB", { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
  }

  function details(info) {
    return Object.entries(info || {})
      .filter(([, v]) => v !== null && v !== undefined)
      .map(([k, v]) => `${k}=${Array.isArray(v) ? v.join("→") : v}`)
      .join(" ");
  }

  // the event line used by every page's event list
  function eventItem(e, withConn) {
    const li = el("li", { "data-event": e.event, "data-conn": e.conn ?? "" });
    li.append(el("span", { cls: "t", text: clock(e.t) }));
    if (withConn) {
      li.append(e.conn ? el("a", { href: `/conn/${e.conn}`, text: `#${e.conn}` }) : el("span", { cls: "muted", text: "stack" }));
    }
    li.append(el("span", { cls: `ev ${e.event}`, text: e.event }));
    li.append(el("span", { cls: "muted", text: details(e.info) }));
    return li;
  }

  document.addEventListener("DOMContentLoaded", () => {
    const page = document.body.dataset.page;
    for (const a of document.querySelectorAll("nav a")) {
      if (a.dataset.nav === page) a.classList.add("here");
    }
    // the bar: the daemon's connections from /api/stats (every shard's), its RPC clients and
    // faults from the socket's `stats` (the serving shard's); shown once the first is known
    const bar = { connections: null, rpc: 0, faults: 0 };
    const show = () => {
      const s = document.getElementById("summary");
      if (s && bar.connections !== null) s.textContent = `${num(bar.connections)} connections · ${num(bar.rpc)} RPC clients · ${num(bar.faults)} faults`;
    };
    on("stats", (m) => {
      bar.rpc = (m.rpc || {}).clients;
      bar.faults = m.faults;
      show();
    });
    // pages take the daemon's gauges from the same answers: `on("daemon", fn)`
    poll(() => "/api/stats", (m) => {
      bar.connections = m.connections;
      show();
      for (const fn of handlers.daemon || []) fn(m);
    });
    sub("stats");  // pages add their own topics
    connect();
  });

  return { on, sub, get, poll, el, svg, num, bytes, clock, details, eventItem };
})();

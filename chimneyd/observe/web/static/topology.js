// The topology page: layers as boxes, NDIS bindings as edges, each box with the daemon's gauges.
"use strict";

(() => {
  const GAUGES = [
    ["offloads_active", "offloads active"],
    ["handles", "handles"],
    ["outstanding_nbls", "outstanding NBLs"],
    ["bytes", "bytes"],
    ["calls", "calls"],
    ["failures", "failures"],
    ["inbox", "inbox depth"],
  ];
  // a target's box has one row more: the ACKs it would answer forwarded segments with and
  // cannot send (`unsent_acks`, docs/metrics.md), their sum, each kind in the row's tooltip
  // and, once any is not 0, written out under it, a line each (on one line, every kind with a
  // long-lived daemon's counts is twice as wide as the box); not NDIS calls, so not in "calls".
  // Every box has room for those lines, so the boxes keep one size.
  const UNSENT_KINDS = ["challenge_rst", "challenge_syn", "ack_syn", "ack_urg"];
  const W = 270, H = 66 + 18 * (GAUGES.length + 1 + UNSENT_KINDS.length), GAP_X = 60, GAP_Y = 80, PAD = 20;
  const values = {};  // layer -> gauge -> <text>
  const unsent = {};  // layer -> {total: <text>, kinds: <text>, tip: <title>}

  // rows of layers by depth below the host; a layer bound under two goes at its deepest
  function layout(layers) {
    const byName = Object.fromEntries(layers.map((l) => [l.name, l]));
    const depth = {};
    const host = layers.find((l) => l.kind === "host") || layers[0];
    const visit = (name, d) => {
      if (!(name in byName) || (depth[name] !== undefined && depth[name] >= d)) return;
      depth[name] = d;
      for (const lower of byName[name].lower || []) visit(lower, d + 1);
    };
    if (host) visit(host.name, 0);
    for (const l of layers) if (depth[l.name] === undefined) depth[l.name] = 0;
    const rows = [];
    for (const l of layers) (rows[depth[l.name]] = rows[depth[l.name]] || []).push(l);
    return rows.filter(Boolean);
  }

  function draw(layers) {
    const rows = layout(layers);
    const widest = Math.max(...rows.map((r) => r.length));
    const width = PAD * 2 + widest * W + (widest - 1) * GAP_X;
    const height = PAD * 2 + rows.length * H + (rows.length - 1) * GAP_Y;
    const root = Live.svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "topology" });
    const pos = {};
    rows.forEach((row, r) => {
      const rowWidth = row.length * W + (row.length - 1) * GAP_X;
      row.forEach((l, i) => {
        pos[l.name] = { x: (width - rowWidth) / 2 + i * (W + GAP_X), y: PAD + r * (H + GAP_Y) };
      });
    });
    const edges = Live.svg("g", { class: "edges" });
    for (const l of layers) {
      for (const lower of l.lower || []) {
        if (!pos[lower]) continue;
        const a = pos[l.name], b = pos[lower];
        const x1 = a.x + W / 2, y1 = a.y + H, x2 = b.x + W / 2, y2 = b.y;
        const g = Live.svg("g", { class: "edge", "data-upper": l.name, "data-lower": lower });
        g.append(Live.svg("line", { x1, y1, x2, y2 }));
        const mx = (x1 + x2) / 2, my = (y1 + y2) / 2;
        g.append(Live.svg("rect", { x: mx - 58, y: my - 11, width: 116, height: 22, rx: 11 }));
        g.append(Live.svg("text", { x: mx, y: my + 4, "text-anchor": "middle" }, "NDIS binding"));
        edges.append(g);
      }
    }
    root.append(edges);
    for (const l of layers) {
      const { x, y } = pos[l.name];
      const g = Live.svg("g", { class: `node ${l.kind}`, "data-layer": l.name, "data-kind": l.kind, transform: `translate(${x},${y})` });
      g.append(Live.svg("rect", { class: "box", width: W, height: H, rx: 8 }));
      g.append(Live.svg("text", { class: "title", x: 12, y: 22 }, l.name));
      const kind = l.kind === "target" ? "offload target (NIC)" : l.kind === "passthrough" ? "IM driver" : l.kind === "host" ? "host stack" : l.kind;
      g.append(Live.svg("text", { class: "kind", x: 12, y: 40 }, kind));
      g.append(Live.svg("text", { class: `layer-state ${l.state}`, x: W - 12, y: 22, "text-anchor": "end" }, l.state));
      values[l.name] = {};
      GAUGES.forEach(([key, label], i) => {
        const ty = 62 + i * 18;
        g.append(Live.svg("text", { x: 12, y: ty }, label));
        const v = Live.svg("text", { class: "value", x: W - 12, y: ty, "text-anchor": "end", "data-gauge": key }, "–");
        values[l.name][key] = v;
        g.append(v);
      });
      if (l.kind === "target") {
        const ty = 62 + GAUGES.length * 18;
        const row = Live.svg("g", { class: "unsent", "data-unsent": "" });
        const tip = Live.svg("title", {}, "unsent ACKs: none counted yet");
        row.append(tip);
        row.append(Live.svg("text", { x: 12, y: ty }, "unsent ACKs"));
        const total = Live.svg("text", { class: "value", x: W - 12, y: ty, "text-anchor": "end", "data-unsent-total": "" }, "–");
        const kinds = Live.svg("g", { class: "kinds", "data-unsent-kinds": "" });
        row.append(total, kinds);
        unsent[l.name] = { total, kinds, tip, y: ty };
        g.append(row);
      }
      root.append(g);
    }
    const box = document.getElementById("topology");
    box.replaceChildren(root);
  }

  function update(msg) {
    for (const [layer, gauges] of Object.entries(msg.layers || {})) {
      const texts = values[layer];
      if (!texts) continue;
      for (const [key] of GAUGES) {
        const t = texts[key];
        if (!t) continue;
        const raw = gauges[key] ?? 0;
        const shown = key === "bytes" ? Live.bytes(raw) : Live.num(raw);
        const changed = t.dataset.raw !== undefined && t.dataset.raw !== String(raw);
        t.dataset.raw = String(raw);
        t.textContent = shown;
        t.classList.toggle("bad", key === "failures" && raw > 0);
        if (changed) {
          t.classList.add("changed");
          setTimeout(() => t.classList.remove("changed"), 700);
        }
      }
      showUnsent(layer, gauges.unsent_acks);
    }
  }

  // a target's unsent ACKs: the sum, and each kind that is not 0 as `kind n`
  function showUnsent(layer, counts) {
    const row = unsent[layer];
    if (!row || !counts) return;
    const kinds = Object.keys(counts).sort((a, b) => {
      const ia = UNSENT_KINDS.indexOf(a), ib = UNSENT_KINDS.indexOf(b);
      return (ia < 0 ? UNSENT_KINDS.length : ia) - (ib < 0 ? UNSENT_KINDS.length : ib);
    });
    const total = kinds.reduce((n, k) => n + (counts[k] || 0), 0);
    const changed = row.total.dataset.raw !== undefined && row.total.dataset.raw !== String(total);
    row.total.dataset.raw = String(total);
    row.total.textContent = Live.num(total);
    // a line per kind that is not 0, as many as the box has room for; kinds a newer daemon
    // reports beyond them are summed up on the last line (all of them are in the tooltip)
    let shown = kinds.filter((k) => counts[k]).map((k) => [k, Live.num(counts[k])]);
    if (shown.length > UNSENT_KINDS.length) {
      const rest = shown.length - UNSENT_KINDS.length + 1;
      shown = [...shown.slice(0, UNSENT_KINDS.length - 1), [`${rest} more kinds`, "see tooltip"]];
    }
    row.kinds.replaceChildren(...shown.map(([k, n], i) => {
      const y = row.y + 18 * (i + 1);
      const line = Live.svg("g", { "data-unsent-kind": k });
      line.append(Live.svg("text", { class: "kinds", x: 24, y }, k));
      line.append(Live.svg("text", { class: "kinds count", x: W - 12, y, "text-anchor": "end" }, n));
      return line;
    }));
    row.kinds.dataset.raw = JSON.stringify(Object.fromEntries(kinds.map((k) => [k, counts[k] || 0])));
    row.tip.textContent = "unsent ACKs (not NDIS calls): " + kinds.map((k) => `${k} ${Live.num(counts[k] || 0)}`).join(", ");
    if (changed) {
      row.total.classList.add("changed");
      setTimeout(() => row.total.classList.remove("changed"), 700);
    }
  }

  const latest = () => document.getElementById("latest");
  Live.on("events", (m) => {
    const list = latest();
    for (const e of m.events) list.prepend(Live.eventItem(e, true));
    while (list.children.length > 40) list.lastChild.remove();
  });
  // the gauges: /api/stats, every shard's in a daemon of several (live.js fetches it every
  // push interval); the last answer is kept for the boxes drawn after it came
  let last = null;
  Live.on("daemon", (m) => {
    last = m;
    update(m);
  });

  document.addEventListener("DOMContentLoaded", async () => {
    const info = await Live.get("/api/info");
    draw(info.layers || []);
    if (last) update(last);
    Live.sub("events", {});
  });
})();

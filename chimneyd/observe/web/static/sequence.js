// One connection's hops as a live sequence diagram (the seed's figure), built as SVG from the
// hop JSON of trace.get. Same picture as `chimneyctl trace ID --svg`: a lane per layer, an NDIS
// lane between two adjacent layers, one arrow per hop, one colour per NET_BUFFER_LIST.
"use strict";

(() => {
  const conn = parseInt(location.pathname.split("/").pop(), 10);
  const DOWN_NDIS = ["NdisOffloadTcp", "NdisInitiateOffload", "NdisTerminateOffload", "NdisUpdateOffload", "NdisQueryOffloadState", "NdisInvalidateOffload"];
  const RETURN = ":return";
  const PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#8C564B", "#7F7F7F", "#BCBD22", "#17BECF"];
  const NO_NBL = "#333333";
  const LANE_GAP = 230, LEFT = 130, ROW = 44, HEAD = 44;
  const MAX_HOPS = 3000;  // in the page; older ones are dropped (the daemon keeps its own ring)

  let order = [];      // layer names, top to bottom (the topology's order)
  let lanes = [];      // layers this diagram shows
  let hops = [];       // hop maps shown, oldest first
  let lastSeq = 0;
  let dropped = 0;     // hops the daemon could not push in time (it says how many)
  let colours = new Map();
  let t0 = null;
  let body = null, head = null, rowsG = null, lifelines = [];

  const goingDown = (call) =>
    call.startsWith("Miniport") ? true : call.startsWith("Protocol") ? false : DOWN_NDIS.some((p) => call.startsWith(p));

  function lanesFor(list) {
    const seen = [];
    for (const h of list) if (!seen.includes(h.layer)) seen.push(h.layer);
    const out = order.filter((n) => seen.includes(n));
    for (const n of seen) if (!out.includes(n)) out.push(n);
    return out;
  }

  const columns = () => lanes.flatMap((n, i) => (i ? ["NDIS", n] : [n]));
  const x = (col) => LEFT + 70 + LANE_GAP * col;

  // where a hop's arrow goes: layer i in column 2i, the NDIS lanes beside it in 2i±1
  function arrow(hop) {
    const col = 2 * lanes.indexOf(hop.layer);
    const last = 2 * (lanes.length - 1);
    const call = hop.call || "";
    const returning = call.endsWith(RETURN);
    const base = returning ? call.slice(0, -RETURN.length) : call;
    const down = goingDown(base);
    let src, dst, other;
    if (base.startsWith("Miniport") || base.startsWith("Protocol")) {
      other = down ? col - 1 : col + 1;  // NDIS calls the handler from the side the call came from
      src = other; dst = col;
    } else {
      other = down ? col + 1 : col - 1;  // the layer calls NDIS on the side the call goes to
      src = col; dst = other;
    }
    if (other < 0 || other > last) src = dst = col;  // nothing that side: a note on the lane
    if (returning) [src, dst] = [dst, src];
    return { src, dst, style: returning ? "return" : down ? "down" : "up" };
  }

  function colourOf(nbl) {
    if (!nbl) return NO_NBL;
    if (!colours.has(nbl)) {
      colours.set(nbl, PALETTE[colours.size % PALETTE.length]);
      const legend = document.getElementById("nbl-legend");
      const item = Live.el("span", { "data-nbl": nbl, text: `NBL ${nbl}` });
      item.style.setProperty("--c", colours.get(nbl));
      legend.append(item);
    }
    return colours.get(nbl);
  }

  function label(hop) {
    let text = hop.call || "";
    if (hop.handle != null) text += ` (handle ${hop.handle})`;
    if (hop.context != null) text += ` (context ${hop.context})`;
    return text;
  }

  function relTime(hop) {
    if (t0 === null || hop.t_ns == null) return "";
    const us = (hop.t_ns - t0) / 1000;
    return us >= 1000 ? `+${(us / 1000).toFixed(3)} ms` : `+${us.toFixed(1)} µs`;
  }

  function tooltip(hop) {
    return ["seq", "layer", "call", "handle", "context", "nbl", "status", "event", "t_ns"]
      .filter((k) => hop[k] != null).map((k) => `${k}=${hop[k]}`).join(" ");
  }

  function drawHop(hop, row, fresh) {
    const a = arrow(hop);
    const y = HEAD / 2 + ROW * row + 22;
    const colour = colourOf(hop.nbl);
    const dash = { down: null, up: "7,4", return: "2,3" }[a.style];
    const g = Live.svg("g", {
      class: fresh ? "hop fresh" : "hop",
      "data-seq": hop.seq, "data-layer": hop.layer, "data-call": hop.call, "data-style": a.style,
      "data-nbl": hop.nbl ?? null, "data-status": hop.status ?? null, "data-event": hop.event ?? null,
    });
    g.append(Live.svg("title", {}, tooltip(hop)));
    g.append(Live.svg("text", { x: 10, y: y + 4, fill: "#666" }, String(hop.seq)));
    g.append(Live.svg("text", { x: 48, y: y + 4, fill: "#666" }, relTime(hop)));
    const x1 = x(a.src), x2 = x(a.dst);
    let mid = (x1 + x2) / 2, anchor = "middle";
    if (x1 === x2) {
      g.append(Live.svg("path", { d: `M${x1} ${y - 6} h30 v12 h-30`, fill: "none", stroke: colour, "stroke-width": 1.6, "stroke-dasharray": dash }));
      mid = x1 + 40; anchor = "start";
    } else {
      const tip = x2 > x1 ? -8 : 8;
      g.append(Live.svg("line", { x1, y1: y, x2, y2: y, stroke: colour, "stroke-width": 1.6, "stroke-dasharray": dash }));
      g.append(Live.svg("polygon", { points: `${x2},${y} ${x2 + tip},${y - 4} ${x2 + tip},${y + 4}`, fill: colour }));
    }
    g.append(Live.svg("text", { x: mid, y: y - 6, "text-anchor": anchor }, label(hop)));
    const below = Live.svg("text", { x: mid, y: y + 14, "text-anchor": anchor });
    const parts = [];
    if (hop.nbl) parts.push(Live.svg("tspan", { class: "nbl", fill: colour, "font-weight": "bold" }, `NBL ${hop.nbl}`));
    const detail = [hop.status ? hop.status.replace(/^NDIS_STATUS_/, "") : null, hop.event].filter(Boolean).join(" · ");
    if (detail) parts.push(Live.svg("tspan", { fill: hop.status && hop.status !== "NDIS_STATUS_SUCCESS" ? "#b3261e" : "#444" }, detail));
    parts.forEach((p, i) => { if (i) below.append(Live.svg("tspan", { fill: "#444" }, " · ")); below.append(p); });
    if (parts.length) g.append(below);
    rowsG.append(g);
  }

  function sizeBody() {
    const cols = columns();
    const width = LEFT + LANE_GAP * Math.max(cols.length - 1, 0) + 220;
    const height = HEAD / 2 + ROW * Math.max(hops.length, 1) + 20;
    for (const s of [head, body]) s.setAttribute("width", width);
    head.setAttribute("height", HEAD);
    body.setAttribute("height", height);
    for (const l of lifelines) l.setAttribute("y2", height);
  }

  function render() {
    const box = document.getElementById("seq");
    lanes = lanesFor(hops);
    const cols = columns();
    head = Live.svg("svg", { class: "seq-head" });
    body = Live.svg("svg", { class: "seq-body", "data-conn": conn });
    head.style.position = "sticky"; head.style.top = "0"; head.style.background = "#fff";
    head.append(Live.svg("text", { x: 10, y: HEAD - 14, fill: "#666" }, "seq  time"));
    lifelines = [];
    cols.forEach((name, i) => {
      const ndis = i % 2 === 1, cx = x(i);
      const g = Live.svg("g", { class: "lane", "data-name": name, "data-kind": ndis ? "ndis" : "layer" });
      g.append(Live.svg("rect", { x: cx - 55, y: 8, width: 110, height: 26, rx: 4, fill: ndis ? "#eeeeee" : "#dde8f5", stroke: "#888" }));
      g.append(Live.svg("text", { x: cx, y: 25, "text-anchor": "middle", "font-weight": "bold" }, name));
      head.append(g);
      const line = Live.svg("line", { x1: cx, y1: 0, x2: cx, y2: 0, stroke: "#aaa", "stroke-dasharray": ndis ? "2,4" : "6,4" });
      lifelines.push(line);
      body.append(line);
    });
    rowsG = Live.svg("g", { class: "hops" });
    body.append(rowsG);
    hops.forEach((h, i) => drawHop(h, i, false));
    sizeBody();
    box.replaceChildren(head, body);
  }

  function add(list, fresh) {
    const added = list.filter((h) => h.seq > lastSeq);
    if (!added.length) return;
    lastSeq = added[added.length - 1].seq;
    if (t0 === null) t0 = added[0].t_ns;
    const newLane = added.some((h) => !lanes.includes(h.layer));
    hops.push(...added);
    if (hops.length > MAX_HOPS || newLane || !body) {
      if (hops.length > MAX_HOPS) hops = hops.slice(-Math.floor(MAX_HOPS * 0.7));
      render();
      follow();
      return;
    }
    const start = hops.length - added.length;
    added.forEach((h, i) => drawHop(h, start + i, fresh));
    sizeBody();
    follow();
  }

  // keep the newest arrows in sight unless the reader scrolled up to read older ones
  function follow() {
    const box = document.getElementById("seq");
    if (document.getElementById("follow").checked) box.scrollTop = box.scrollHeight;
  }

  function showInfo(info) {
    if (!info) return;
    setState(info.state);
    const facts = document.getElementById("conn-info");
    const items = [
      ["path", (info.path || []).join(" → ")], ["NIC", info.nic || "—"],
      ["local", info.local], ["remote", info.remote],
      ["bytes sent", Live.num(info.bytes_sent)], ["bytes received", Live.num(info.bytes_received)],
    ];
    facts.replaceChildren(...items.flatMap(([k, v]) => [Live.el("dt", { text: k }), Live.el("dd", { text: v, "data-fact": k })]));
  }

  function setState(state) {
    const el = document.getElementById("conn-state");
    el.textContent = state;
    el.className = `state ${state}`;
  }

  Live.on("hops", (m) => {
    if (m.conn !== conn) return;
    const live = document.getElementById("live");
    if (m.reset) {
      hops = []; lastSeq = 0; dropped = 0; colours = new Map(); t0 = null; body = null;
      document.getElementById("nbl-legend").replaceChildren();
      if (m.error) {
        live.textContent = m.error;
        return;
      }
      live.textContent = m.live ? "live" : "closed: its last hops";
      live.className = m.live ? "badge live" : "badge";
      if (!m.info) setState("closed");
    }
    showInfo(m.info);
    dropped += m.dropped || 0;
    add(m.hops || [], !m.reset);
    if (m.reset && !hops.length) render();
    document.body.dataset.hops = String(hops.length);
    document.getElementById("hop-count").textContent = `${Live.num(hops.length)} hops shown${dropped ? ` (${Live.num(dropped)} more went by too fast to draw)` : ""}`;
  });

  Live.on("events", (m) => {
    const list = document.getElementById("conn-events");
    for (const e of m.events) {
      const mine = e.conn === conn || (e.conn == null && (e.info || {}).conn === conn);
      if (!mine) continue;
      list.prepend(Live.eventItem(e, false));
      const state = { offloaded: "offloaded", uploaded: "host", closed: "closed" }[e.event];
      if (state) setState(state);
    }
  });

  document.addEventListener("DOMContentLoaded", async () => {
    document.getElementById("conn-id").textContent = `#${conn}`;
    document.title = `chimneyd · connection ${conn}`;
    try {
      const info = await Live.get("/api/info");
      order = (info.layers || []).map((l) => l.name);
    } catch (e) { /* the hops still draw, in order of appearance */ }
    Live.sub("hops", { conn });
    Live.sub("events", { conn });
  });
})();

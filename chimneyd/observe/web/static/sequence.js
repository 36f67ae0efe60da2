// One connection's hops as a live sequence diagram (as the README's figure), built as SVG from the
// hop JSON of trace.get. Same picture as `chimneyctl trace ID --svg`: a lane per layer, an NDIS
// lane between a layer and the layers under it, one arrow per hop, one colour per
// NET_BUFFER_LIST. The lanes follow the path the connection took: each NIC a team moved it to
// (spec §5.5) is a lane of its own under the MUX, reached through the MUX's NDIS lane.
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
  let lowerOf = {};    // layer -> its lower layers (the topology)
  let lanes = [];      // layers this diagram shows, left to right
  let upper = new Map();      // lane -> the lane above it
  let cols = [];              // {name, ndis, upper} left to right
  let colOf = new Map();      // layer -> its column
  let ndisBelow = new Map();  // layer -> the NDIS lane between it and the layers under it
  let hops = [];       // hop maps shown, oldest first
  let lastSeq = 0;
  let dropped = 0;     // hops the daemon could not push in time (it says how many)
  let colours = new Map();
  let t0 = null;
  let body = null, head = null, rowsG = null, lifelines = [];

  const goingDown = (call) =>
    call.startsWith("Miniport") ? true : call.startsWith("Protocol") ? false : DOWN_NDIS.some((p) => call.startsWith(p));

  const isHandler = (call) => (call.startsWith("Miniport") || call.startsWith("Protocol")) && !call.endsWith(RETURN);

  // layer -> the layer above it, as the hops show: NDIS records a layer's Ndis* call and the
  // handler it runs in the next layer as consecutive hops, so the nearest earlier hop of another
  // layer is the caller; a Miniport* handler runs below it, a Protocol* handler above it
  function links(list) {
    const out = new Map();
    let run = null, caller = null, last = null;
    for (const h of list) {
      const call = h.call || "";
      if (h.layer !== run) { caller = last; run = h.layer; }
      last = h;
      if (!isHandler(call) || !caller) continue;
      const made = caller.call || "";
      if (!made.startsWith("Ndis") || made.endsWith(RETURN)) continue;
      const [up, low] = call.startsWith("Miniport") ? [caller.layer, h.layer] : [h.layer, caller.layer];
      if (!out.has(low)) out.set(low, up);
    }
    return out;
  }

  // the lanes (chimneyctl's lanes_for): those of the topology's order the hops name, then the
  // others; each under the layer the hops show calling it, else its nearest upper in the
  // topology that the diagram shows, else (a layer the topology does not place) the one before
  function layout(list) {
    const names = [];
    for (const n of order) if (list.some((h) => h.layer === n)) names.push(n);
    for (const h of list) if (!names.includes(h.layer)) names.push(h.layer);
    const topo = new Map();
    for (const n of order) for (const low of (Object.hasOwn(lowerOf, n) && lowerOf[n]) || []) if (!topo.has(low)) topo.set(low, n);
    const called = links(list);
    upper = new Map();
    const above = (name, cand) => {  // cand may sit above name unless that closes a loop
      for (let node = cand; node != null; node = upper.get(node)) if (node === name) return false;
      return cand != null && names.includes(cand);
    };
    names.forEach((name, i) => {
      let cand = called.get(name);
      if (!above(name, cand)) {
        if (topo.has(name) || Object.hasOwn(lowerOf, name)) {
          const passed = new Set([name]);
          cand = topo.get(name);
          while (cand != null && !names.includes(cand) && !passed.has(cand)) { passed.add(cand); cand = topo.get(cand); }
        } else {
          cand = i ? names[i - 1] : null;
        }
        if (!above(name, cand)) cand = null;
      }
      if (cand != null) upper.set(name, cand);
    });
    lanes = [];
    const walk = (name) => { lanes.push(name); for (const c of names) if (upper.get(c) === name) walk(c); };
    for (const n of names) if (!upper.has(n)) walk(n);
    const parents = new Set(upper.values());
    cols = []; colOf = new Map(); ndisBelow = new Map();
    for (const name of lanes) {
      colOf.set(name, cols.length);
      cols.push({ name, ndis: false, upper: upper.get(name) ?? null });
      if (parents.has(name)) {  // one NDIS lane between a layer and every layer under it
        ndisBelow.set(name, cols.length);
        cols.push({ name: "NDIS", ndis: true, upper: name });
      }
    }
  }

  const x = (col) => LEFT + 70 + LANE_GAP * col;

  // where a hop's arrow goes: between its layer's lane and the NDIS lane on the side the call
  // goes to or came from: the one towards the layer above, or the one under the layer
  function arrow(hop) {
    const col = colOf.get(hop.layer);
    const up = upper.get(hop.layer);
    const aboveLane = up != null ? ndisBelow.get(up) : undefined;
    const belowLane = ndisBelow.get(hop.layer);
    const call = hop.call || "";
    const returning = call.endsWith(RETURN);
    const base = returning ? call.slice(0, -RETURN.length) : call;
    const down = goingDown(base);
    const handler = base.startsWith("Miniport") || base.startsWith("Protocol");
    // NDIS calls a handler from the side the call came from; a layer calls NDIS on the side
    // the call goes to
    const other = down === handler ? aboveLane : belowLane;
    let src, dst;
    if (other === undefined) src = dst = col;  // nothing that side: a note on the lane
    else if (handler !== returning) { src = other; dst = col; }  // a return goes back the way its call came
    else { src = col; dst = other; }
    return { src, dst, style: returning ? "return" : down ? "down" : "up" };
  }

  // an arrow's text is centred mid-way, or, over a sibling's lane (the NDIS lane under a MUX to
  // its second NIC), in the last gap, so no text sits on a lane it skips
  function labelX(a) {
    const lo = Math.min(a.src, a.dst), hi = Math.max(a.src, a.dst);
    return (x(Math.max(lo, hi - 1)) + x(hi)) / 2;
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
    let mid = labelX(a), anchor = "middle";
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
    const width = LEFT + LANE_GAP * Math.max(cols.length - 1, 0) + 220;
    const height = HEAD / 2 + ROW * Math.max(hops.length, 1) + 20;
    for (const s of [head, body]) s.setAttribute("width", width);
    head.setAttribute("height", HEAD);
    body.setAttribute("height", height);
    for (const l of lifelines) l.setAttribute("y2", height);
  }

  function render() {
    const box = document.getElementById("seq");
    layout(hops);
    head = Live.svg("svg", { class: "seq-head" });
    body = Live.svg("svg", { class: "seq-body", "data-conn": conn });
    head.style.position = "sticky"; head.style.top = "0"; head.style.background = "#fff";
    head.append(Live.svg("text", { x: 10, y: HEAD - 14, fill: "#666" }, "seq  time"));
    lifelines = [];
    cols.forEach(({ name, ndis, upper: up }, i) => {
      const cx = x(i);
      const g = Live.svg("g", { class: "lane", "data-name": name, "data-kind": ndis ? "ndis" : "layer", "data-upper": up });
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
      lowerOf = Object.fromEntries((info.layers || []).map((l) => [l.name, l.lower || []]));
    } catch (e) { /* the hops still draw, in order of appearance */ }
    Live.sub("hops", { conn });
    Live.sub("events", { conn });
  });
})();

// The event stream: every connection event and fault, newest first.
"use strict";

(() => {
  const MAX_ROWS = 1000;
  const KINDS = {
    conn: new Set(["connected", "offloaded", "uploaded", "closed"]),
    fault: new Set(["fault_injected", "fault_cleared"]),
  };
  let paused = false;
  let held = [];
  let seen = 0;

  function kindOf(event) {
    if (KINDS.conn.has(event)) return "conn";
    if (KINDS.fault.has(event)) return "fault";
    return "ndis";
  }

  function row(e) {
    const tr = Live.el("tr", { "data-event": e.event, "data-conn": e.conn ?? "", "data-kind": kindOf(e.event) });
    tr.append(
      Live.el("td", { text: Live.clock(e.t) }),
      Live.el("td", {}, e.conn ? Live.el("a", { href: `/conn/${e.conn}`, text: `#${e.conn}` }) : Live.el("span", { cls: "muted", text: "stack" })),
      Live.el("td", {}, Live.el("span", { cls: `ev ${e.event}`, text: e.event })),
      Live.el("td", { text: Live.details(e.info) }),
    );
    return tr;
  }

  function filter() {
    const kind = document.getElementById("kind").value;
    for (const tr of document.querySelectorAll("#events tr")) tr.hidden = kind !== "" && tr.dataset.kind !== kind;
  }

  function show(events) {
    const body = document.getElementById("events");
    const kind = document.getElementById("kind").value;
    for (const e of events) {
      const tr = row(e);
      tr.hidden = kind !== "" && tr.dataset.kind !== kind;
      body.prepend(tr);
    }
    while (body.children.length > MAX_ROWS) body.lastChild.remove();
    seen += events.length;
    document.getElementById("event-count").textContent = `${Live.num(seen)} seen since this page opened`;
  }

  Live.on("events", (m) => {
    if (paused) held.push(...m.events);
    else show(m.events);
  });

  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("kind").onchange = filter;
    const button = document.getElementById("pause");
    button.onclick = () => {
      paused = !paused;
      button.textContent = paused ? "resume" : "pause";
      if (!paused) { show(held); held = []; }
    };
    Live.sub("events", {});
  });
})();

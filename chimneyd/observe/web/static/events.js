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
  let seen = 0;      // events of this page's time: shown, or held while paused
  let notShown = 0;  // of those, the ones the daemon could not send (it says how many) or held past MAX_ROWS

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
    count();
  }

  function count() {
    const lost = notShown ? `, ${Live.num(notShown)} not shown (too many)` : "";
    document.getElementById("event-count").textContent = `${Live.num(seen)} seen since this page opened${lost}`;
  }

  Live.on("events", (m) => {
    // the backlog happened before this page opened: listed, not counted
    if (!m.backlog) seen += m.events.length + (m.dropped || 0);
    notShown += m.dropped || 0;
    if (paused) {
      held.push(...m.events);
      // a paused page keeps only what it could list
      if (held.length > MAX_ROWS) notShown += held.splice(0, held.length - MAX_ROWS).length;
      count();
    } else show(m.events);
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

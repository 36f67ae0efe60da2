// The connections page: one page of rows cut by the daemon (/api/conns: every shard's in a
// daemon of several), fetched again every push interval.
"use strict";

(() => {
  const params = new URLSearchParams(location.search);
  let page = Math.max(0, parseInt(params.get("page") || "0", 10) || 0);
  let size = 0;  // the daemon's default until the page says otherwise
  let pages = 1;
  let painted = false;
  let refresh = null;  // asks for the page at once (Live.poll)

  function want(p) {
    page = Math.max(0, Math.min(p, pages - 1));
    const q = new URLSearchParams(location.search);
    q.set("page", String(page));
    history.replaceState(null, "", `${location.pathname}?${q}`);
    refresh();
  }

  function row(c) {
    const tr = Live.el("tr", { "data-conn": c.id, "data-state": c.state });
    tr.append(
      Live.el("td", {}, Live.el("a", { href: `/conn/${c.id}`, text: `#${c.id}` })),
      Live.el("td", {}, Live.el("span", { cls: `state ${c.state}`, text: c.state })),
      Live.el("td", { text: (c.path || []).join(" → ") }),
      Live.el("td", { text: c.nic || "—", cls: "nic" }),
      Live.el("td", { cls: "num", text: Live.num(c.bytes_sent) }),
      Live.el("td", { cls: "num", text: Live.num(c.bytes_received) }),
      Live.el("td", { text: `${c.local} → ${c.remote}` }),
      Live.el("td", {}, Live.el("a", { href: `/conn/${c.id}`, text: "sequence diagram" })),
    );
    return tr;
  }

  function show(m) {
    pages = m.pages;
    page = m.page;
    size = m.size;
    const body = document.getElementById("rows");
    const frag = document.createDocumentFragment();
    for (const c of m.rows) frag.append(row(c));
    body.replaceChildren(frag);
    document.getElementById("empty").hidden = m.total > 0;
    document.getElementById("conn-count").textContent = `${Live.num(m.total)} open`;
    document.getElementById("page-label").textContent = `page ${m.page + 1} of ${m.pages} (${m.size} per page)`;
    document.getElementById("first").disabled = document.getElementById("prev").disabled = m.page === 0;
    document.getElementById("last").disabled = document.getElementById("next").disabled = m.page >= m.pages - 1;
    if (!painted) {
      painted = true;
      performance.mark("conns-rendered");
      document.body.dataset.ready = "1";
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("first").onclick = () => want(0);
    document.getElementById("prev").onclick = () => want(page - 1);
    document.getElementById("next").onclick = () => want(page + 1);
    document.getElementById("last").onclick = () => want(pages - 1);
    document.getElementById("jump").onsubmit = (ev) => {
      ev.preventDefault();
      const id = parseInt(document.getElementById("jump-id").value, 10);
      if (id > 0) location.href = `/conn/${id}`;
    };
    refresh = Live.poll(() => `/api/conns?page=${page}` + (size ? `&size=${size}` : ""), show);
  });
})();

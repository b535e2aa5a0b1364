// sdnctl live view: draws /api/state and redraws on every server-sent "state" event.
// Hosts are laid out by the browser (a wrapping flex row); inside each host, one block per
// network the host takes part in (its bridge, and on an overlay its VXLAN device), the
// containers bridged to it, joined containers beside their donor, open (host-mode) and closed
// (none) containers in rows of their own. VXLAN tunnels are lines drawn between the VXLAN
// devices of one network on different hosts. Every element is a button: Tab reaches it, Enter
// or a click opens its details. No framework, nothing loaded from elsewhere.
"use strict";

let state = null;
let selected = null;  // data-id of the element whose details are open
const byId = new Map();  // data-id -> the object shown in details

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function element(id, cls, label, details, extra) {
  byId.set(id, details);
  const button = el("button", {type: "button", class: "el " + cls, "data-id": id,
                               "aria-label": details.title + (extra ? ", " + extra : "")});
  button.textContent = label;
  return button;
}

function modeOf(c) {
  const n = c.network || "";
  if (n === "none") return ["closed", ""];
  if (n === "host") return ["open", ""];
  if (n.startsWith("container:")) return ["joined", n.slice("container:".length)];
  return ["bridged", n];
}

function rate(bps) {
  if (bps >= 1e6) return (bps / 1e6).toFixed(1) + " MB/s";
  if (bps >= 1e3) return (bps / 1e3).toFixed(1) + " kB/s";
  return Math.round(bps) + " B/s";
}

// Drops come in three kinds: a container's guard (spoofing), a network's forwarding rules
// (isolation, internal) and a host's VXLAN filter.
function dropKind(d) {
  return (d.kind || "DROP_KIND_CONTAINER").replace("DROP_KIND_", "").toLowerCase();
}

function dropsOf(name) {
  return (state.drops || []).filter(d => dropKind(d) === "container" && d.container === name);
}

function networkDrops(host, network) {
  return (state.drops || []).filter(d => dropKind(d) === "network" && d.host === host &&
                                         d.network === network);
}

function dropSubject(d) {
  const kind = dropKind(d);
  if (kind === "network") return "network " + d.network;
  if (kind === "vxlan") return "VXLAN filter";
  return d.container;
}

function containerButton(c) {
  const st = (c.status && c.status.state) || "pending";
  const drops = dropsOf(c.name);
  const [mode, target] = modeOf(c);
  const label = c.name + (c.ip ? " " + c.ip : "") + " · " + st;
  const details = {title: "container " + c.name, kind: "container", mode: mode,
                   network: target || "-", state: st, host: c.host, ip: c.ip || "-",
                   pid: (c.status && c.status.pid) || "-", image: c.image || "-",
                   restarts: (c.status && c.status.restarts) || 0,
                   message: (c.status && c.status.message) || "",
                   ports: (c.ports || []).join(", ") || "-",
                   limits: JSON.stringify(c.resources || {}),
                   restart: c.restart || "no"};
  for (const d of drops) details["dropped: " + d.reason] = d.packets + " packets";
  const dropText = drops.map(d => "× " + d.reason + " " + d.packets).join(" ");
  const b = element("container:" + c.name, "container " + st + (drops.length ? " dropping" : ""),
                    label + (dropText ? " " + dropText : ""), details,
                    mode + (drops.length ? ", dropping " + drops.map(d => d.reason).join(" ") : ""));
  b.dataset.search = [c.name, c.host, c.ip, mode, target, st].join(" ").toLowerCase();
  return b;
}

function render() {
  const root = document.getElementById("hosts");
  const focused = document.activeElement && document.activeElement.dataset
    ? document.activeElement.dataset.id : null;
  byId.clear();
  root.replaceChildren();
  const networks = new Map(state.networks.map(n => [n.name, n]));
  const containers = [...state.containers].sort((a, b) => a.name.localeCompare(b.name));
  const hosts = [...state.hosts].sort((a, b) => a.name.localeCompare(b.name));
  for (const h of hosts) {
    const mine = containers.filter(c => c.host === h.name);
    const up = h.agent_connected;
    const hostDetails = {title: "host " + h.name, kind: "host", underlay: h.underlay_ip || "-",
                         agent: up ? "connected" : "not connected", agent_pid: h.agent_pid,
                         synced: h.agent_synced ? "yes" : "no",
                         "last pass (revision)": h.observed_revision,
                         vtep_mac: h.vtep_mac || "-", mtu: h.underlay_mtu || "-",
                         metrics: h.metrics_url || "-", lab: h.lab ? "yes" : "no"};
    const head = element("host:" + h.name, "hostname", "", hostDetails,
                         up ? "agent connected" : "agent not connected");
    head.append(el("span", {class: "dot" + (up ? " up" : "")}), h.name);
    head.dataset.search = [h.name, h.underlay_ip].join(" ").toLowerCase();
    const card = el("section", {class: "host" + (up ? "" : " down"), "data-host": h.name},
                    head, el("div", {class: "mode", text: h.underlay_ip || ""}));
    const netNames = new Set((h.leases || []).map(l => l.network));
    for (const c of mine) { const [m, t] = modeOf(c); if (m === "bridged" && t) netNames.add(t); }
    for (const name of [...netNames].sort()) {
      const n = networks.get(name) || {name: name, driver: "bridge"};
      const lease = (h.leases || []).find(l => l.network === name) || {};
      const overlay = n.driver === "overlay";
      const block = el("div", {class: "net" + (overlay ? " overlay" : "")});
      const devices = el("div", {class: "devices"});
      const dropped = networkDrops(h.name, name);
      const bridgeDetails = {title: "bridge of " + name + " on " + h.name, kind: "bridge",
         network: name, driver: n.driver, subnet: lease.subnet || "-",
         gateway: lease.gateway || "-", "network CIDR": n.subnet || "-", mtu: n.mtu || "-",
         internal: n.internal ? "yes" : "no"};
      for (const d of dropped) bridgeDetails["dropped: " + d.reason] = d.packets + " packets";
      const bridge = element("bridge:" + h.name + ":" + name,
        "device bridge" + (dropped.length ? " dropping" : ""),
        "bridge " + name + (lease.subnet ? " " + lease.subnet : "") +
        dropped.map(d => " × " + d.reason + " " + d.packets).join(""), bridgeDetails,
        dropped.length ? "dropping " + dropped.map(d => d.reason).join(" ") : "");
      bridge.dataset.search = ("bridge " + name + " " + (lease.subnet || "")).toLowerCase();
      devices.append(bridge);
      if (overlay) {
        const vx = element("vxlan:" + h.name + ":" + name, "device vxlan",
          "vxlan " + name + " vni " + (n.vni || "?"),
          {title: "VXLAN device of " + name + " on " + h.name, kind: "vxlan", network: name,
           vni: n.vni || "-", port: n.vxlan_port || "-", vtep: h.underlay_ip || "-",
           vtep_mac: h.vtep_mac || "-"});
        vx.dataset.search = ("vxlan " + name + " " + (n.vni || "")).toLowerCase();
        vx.dataset.tunnel = name;
        devices.append(vx);
      }
      block.append(devices);
      const members = el("div", {class: "members"});
      for (const c of mine.filter(c => { const [m, t] = modeOf(c); return m === "bridged" && t === name; })) {
        members.append(containerButton(c));
        for (const j of mine.filter(j => { const [m, t] = modeOf(j); return m === "joined" && t === c.name; })) {
          members.append(el("span", {class: "mode", text: "↳"}), containerButton(j));
        }
      }
      block.append(members);
      card.append(block);
    }
    const bridgedNames = new Set(mine.filter(c => modeOf(c)[0] === "bridged").map(c => c.name));
    for (const [mode, title] of [["open", "open (host network)"], ["closed", "closed (no network)"],
                                 ["joined", "joined"]]) {
      const rows = mine.filter(c => {
        const [m, t] = modeOf(c);
        return m === mode && !(mode === "joined" && bridgedNames.has(t));
      });
      if (!rows.length) continue;
      const members = el("div", {class: "members"});
      rows.forEach(c => members.append(containerButton(c)));
      card.append(el("div", {class: "row-title", text: title}), members);
    }
    root.append(card);
  }
  renderTraffic();
  applySearch();
  drawTunnels();
  if (selected && byId.has(selected)) showDetails(selected, false);
  else if (selected) closeDetails();
  if (focused) {
    const again = root.querySelector(`[data-id="${CSS.escape(focused)}"]`);
    if (again) again.focus();
  }
}

function flowName(f, end) {
  const name = end === "src" ? f.src_container : f.dst_container;
  const address = end === "src" ? f.src : f.dst;
  return name ? name + " (" + address + ")" : address;
}

function renderTraffic() {
  const flows = document.getElementById("flows");
  const drops = document.getElementById("drops");
  flows.replaceChildren();
  drops.replaceChildren();
  for (const f of state.flows || []) {
    const id = "flow:" + f.host + ":" + f.src + ">" + f.dst + ":" + f.proto;
    const b = element(id, "flow", flowName(f, "src") + " → " + flowName(f, "dst") + " " +
                      f.proto + " " + rate(f.rate_bps || 0),
                      {title: "flow " + f.src + " → " + f.dst, kind: "flow", from: flowName(f, "src"),
                       to: flowName(f, "dst"), proto: f.proto, "seen by": f.host,
                       packets: f.packets, bytes: f.bytes, rate: rate(f.rate_bps || 0)});
    b.dataset.search = [f.src, f.dst, f.src_container, f.dst_container, f.proto].join(" ").toLowerCase();
    if (f.src_container && f.dst_container) {
      b.dataset.flowSrc = f.src_container;
      b.dataset.flowDst = f.dst_container;
      b.dataset.flowRate = rate(f.rate_bps || 0);
    }
    flows.append(b);
  }
  for (const d of state.drops || []) {
    const kind = dropKind(d);
    const subject = kind === "network" ? "net/" + d.network : kind === "vxlan" ? "vxlan" : d.container;
    const id = "drop:" + d.host + ":" + subject + ":" + d.reason;
    const b = element(id, "drop " + kind, "× " + dropSubject(d) + " " + d.reason + " " + d.packets,
                      {title: "dropped by " + dropSubject(d) + " on " + d.host, kind: "drop " + kind,
                       container: d.container || "-", network: d.network || "-",
                       host: d.host, reason: d.reason, packets: d.packets});
    b.dataset.search = [d.container, d.network, kind, d.reason, d.host].join(" ").toLowerCase();
    drops.append(b);
  }
  document.getElementById("traffic").hidden = !(state.flows || []).length && !(state.drops || []).length;
}

function drawTunnels() {
  const svg = document.getElementById("tunnels");
  svg.replaceChildren();
  const canvas = document.getElementById("canvas").getBoundingClientRect();
  const byNet = new Map();
  for (const node of document.querySelectorAll("[data-tunnel]")) {
    const list = byNet.get(node.dataset.tunnel) || [];
    list.push(node);
    byNet.set(node.dataset.tunnel, list);
  }
  for (const [, nodes] of byNet) {
    for (let i = 0; i < nodes.length; i++) {
      for (let j = i + 1; j < nodes.length; j++) {
        let a = nodes[i].getBoundingClientRect(), b = nodes[j].getBoundingClientRect();
        if (b.right < a.left) [a, b] = [b, a];
        // side to side when one is left of the other, else centre to centre
        const apart = a.right < b.left;
        const line = document.createElementNS("http://www.w3.org/2000/svg", "line");
        line.setAttribute("x1", (apart ? a.right : a.left + a.width / 2) - canvas.left);
        line.setAttribute("y1", a.top + a.height / 2 - canvas.top);
        line.setAttribute("x2", (apart ? b.left : b.left + b.width / 2) - canvas.left);
        line.setAttribute("y2", b.top + b.height / 2 - canvas.top);
        svg.append(line);
      }
    }
  }
  const svgNS = "http://www.w3.org/2000/svg";
  const drawn = new Set();
  for (const node of document.querySelectorAll("[data-flow-src]")) {
    const a = document.querySelector(`[data-id="container:${CSS.escape(node.dataset.flowSrc)}"]`);
    const b = document.querySelector(`[data-id="container:${CSS.escape(node.dataset.flowDst)}"]`);
    const key = [node.dataset.flowSrc, node.dataset.flowDst].sort().join("|");
    if (!a || !b || drawn.has(key)) continue;
    drawn.add(key);
    const ra = a.getBoundingClientRect(), rb = b.getBoundingClientRect();
    const x1 = ra.left + ra.width / 2 - canvas.left, y1 = ra.top + ra.height / 2 - canvas.top;
    const x2 = rb.left + rb.width / 2 - canvas.left, y2 = rb.top + rb.height / 2 - canvas.top;
    const line = document.createElementNS(svgNS, "line");
    line.setAttribute("class", "flow");
    line.setAttribute("data-flow", node.dataset.flowSrc + ">" + node.dataset.flowDst);
    for (const [k, v] of [["x1", x1], ["y1", y1], ["x2", x2], ["y2", y2]]) line.setAttribute(k, v);
    const label = document.createElementNS(svgNS, "text");
    label.setAttribute("x", (x1 + x2) / 2);
    label.setAttribute("y", (y1 + y2) / 2 - 4);
    label.setAttribute("text-anchor", "middle");
    label.textContent = node.dataset.flowRate;
    svg.append(line, label);
  }
}

function applySearch() {
  const q = document.getElementById("search").value.trim().toLowerCase();
  for (const node of document.querySelectorAll("#hosts [data-search]")) {
    node.classList.toggle("match", q !== "" && node.dataset.search.includes(q));
  }
  for (const card of document.querySelectorAll("#hosts .host")) {
    const hit = q === "" || card.querySelector(".match");
    card.classList.toggle("dim", !hit);
  }
}

function showDetails(id, focus) {
  const details = byId.get(id);
  if (!details) return;
  document.querySelectorAll(".selected").forEach(n => n.classList.remove("selected"));
  const node = document.querySelector(`[data-id="${CSS.escape(id)}"]`);
  if (node) node.classList.add("selected");
  selected = id;
  const aside = document.getElementById("details");
  document.getElementById("details-title").textContent = details.title;
  const body = document.getElementById("details-body");
  body.replaceChildren();
  for (const [k, v] of Object.entries(details)) {
    if (k === "title" || v === "") continue;
    body.append(el("dt", {text: k}), el("dd", {text: String(v)}));
  }
  aside.hidden = false;
  if (focus) document.getElementById("close").focus();
}

function closeDetails() {
  const back = selected;
  selected = null;
  document.getElementById("details").hidden = true;
  document.querySelectorAll(".selected").forEach(n => n.classList.remove("selected"));
  const node = back && document.querySelector(`[data-id="${CSS.escape(back)}"]`);
  if (node) node.focus();
  drawTunnels();
}

function connect() {
  const conn = document.getElementById("conn");
  const source = new EventSource("/api/events");
  source.addEventListener("state", event => {
    state = JSON.parse(event.data);
    conn.textContent = "live · revision " + state.revision;
    conn.className = "live";
    render();
  });
  source.onerror = () => { conn.textContent = "reconnecting…"; conn.className = ""; };
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("hosts").addEventListener("click", event => {
    const node = event.target.closest("[data-id]");
    if (node) showDetails(node.dataset.id, false);
  });
  document.getElementById("close").addEventListener("click", closeDetails);
  document.getElementById("search").addEventListener("input", applySearch);
  document.getElementById("search").addEventListener("keydown", event => {
    if (event.key === "Enter") {
      const first = document.querySelector("#hosts .match");
      if (first) first.focus();
    }
  });
  document.addEventListener("keydown", event => {
    if (event.key === "Escape" && selected) closeDetails();
    else if (event.key === "/" && document.activeElement.id !== "search") {
      event.preventDefault();
      document.getElementById("search").focus();
    }
  });
  window.addEventListener("resize", drawTunnels);
  connect();
});

// Soulfra master control panel: plain JavaScript, no build step. It talks to the admin API on this origin
// (signed in by an HttpOnly session cookie; every change carries the session's CSRF token) and, to try a
// world, to the gateway directly (CORS allows this panel's origin for every world).
"use strict";

const state = { csrf: "", status: null, live: null, feed: null, logs: null, keys: {}, view: "" };
const main = () => document.getElementById("main");

// --- DOM helpers -----------------------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function render(...nodes) {
  const m = main();
  m.replaceChildren(...nodes);
}

function toast(text, bad) {
  const t = document.getElementById("toast");
  t.textContent = text;
  t.className = "toast show" + (bad ? " error" : "");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.className = "toast"; }, 2600);
}

const fmt = {
  num: (n) => (n === null || n === undefined ? "—" : Number(n).toLocaleString("en")),
  ms: (n) => (n === null || n === undefined ? "—" : n >= 1000 ? (n / 1000).toFixed(2) + " s" : n < 10 ? "≤ " + n + " ms" : "≤ " + Math.round(n) + " ms"),
  money: (n, c) => (n || 0).toFixed(4) + " " + (c || ""),
  ago: (ms) => { if (!ms) return "—"; const s = Math.max(0, Math.round((Date.now() - ms) / 1000)); return s < 60 ? s + " s ago" : s < 3600 ? Math.round(s / 60) + " min ago" : Math.round(s / 3600) + " h ago"; },
  time: (ms) => new Date(ms).toLocaleTimeString("en-GB"),
};

// --- API -------------------------------------------------------------------------------------------------

class APIError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && method !== "HEAD") headers["X-CSRF-Token"] = state.csrf;
  const res = await fetch(path, { method, headers, credentials: "same-origin", body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  let data = {};
  try { data = text ? JSON.parse(text) : {}; } catch (_) { data = { error: { code: "bad_answer", message: text.slice(0, 200) } }; }
  if (res.status === 401 && !path.startsWith("/panel/")) { signedOut(); }
  if (!res.ok) throw new APIError(res.status, data.error?.code || "error", data.error?.message || res.statusText);
  return data;
}

/// One message to a world through the gateway (the app's path), as the panel's browser: JSON reply.
async function sendMessage(world, key, text, session) {
  const res = await fetch(state.status.gateway + "/v1/worlds/" + encodeURIComponent(world) + "/messages", {
    method: "POST", headers: { "Authorization": "Bearer " + key, "Content-Type": "application/json" },
    body: JSON.stringify({ text, session: session || "panel" }),
  });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new APIError(res.status, data.error?.code || "error", data.error?.message || res.statusText);
  return data;
}

// --- sign-in, feed, routing --------------------------------------------------------------------------------

async function boot() {
  document.getElementById("signout").addEventListener("click", signOut);
  window.addEventListener("hashchange", route);
  try {
    const s = await api("GET", "/panel/session");
    state.csrf = s.csrf;
    await signedIn();
  } catch (_) {
    signedOut();
  }
}

function signedOut() {
  state.csrf = "";
  if (state.feed) { state.feed.close(); state.feed = null; }
  stopLogs();
  document.getElementById("nav").hidden = true;
  document.getElementById("feed").className = "feed";
  const token = h("input", { type: "password", name: "token", autocomplete: "current-password", required: true, "data-testid": "token", placeholder: "admin token" });
  const error = h("p", { class: "error" });
  const form = h("form", { class: "card signin", onsubmit: async (e) => {
    e.preventDefault();
    try {
      const r = await api("POST", "/panel/login", { token: token.value });
      token.value = "";
      state.csrf = r.csrf;
      await signedIn();
    } catch (err) { error.textContent = err.message; }
  } },
  h("h1", {}, "Sign in"),
  h("p", { class: "muted" }, "With the daemon's admin token (", h("code", {}, "<home>/admin.token"), "). It is sent once, never kept in the page or a URL; a session cookie stands for it."),
  h("div", { class: "row-form" }, h("label", {}, "Admin token", token), h("button", { type: "submit", "data-testid": "signin" }, "Sign in")),
  error);
  render(form);
  token.focus();
}

async function signedIn() {
  state.status = await api("GET", "/admin/v1/status");
  document.getElementById("nav").hidden = false;
  startFeed();
  if (!location.hash || location.hash === "#/") location.hash = "#/worlds"; else route();
}

async function signOut() {
  try { await api("POST", "/panel/logout"); } catch (_) { /* signed out anyway */ }
  signedOut();
}

function startFeed() {
  if (state.feed) return;
  const dot = document.getElementById("feed");
  const es = new EventSource("/admin/v1/live?follow=1");
  es.onopen = () => { dot.className = "feed live"; dot.textContent = "● live"; };
  es.onerror = () => { dot.className = "feed"; dot.textContent = "○ reconnecting"; };
  es.onmessage = (e) => {
    state.live = JSON.parse(e.data);
    if (state.view === "worlds") fillWorlds();
    if (state.view.startsWith("world/")) fillWorldLive(state.view.slice(6));
  };
  state.feed = es;
}

function stopLogs() { if (state.logs) { state.logs.close(); state.logs = null; } }

function route() {
  if (!state.csrf) return;
  stopLogs();
  const parts = location.hash.replace(/^#\//, "").split("/");
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("on", a.dataset.nav === parts[0]);
  switch (parts[0]) {
    case "deploy": return deployView();
    case "usage": return usageView();
    case "webhooks": return webhooksView();
    case "world": return worldView(decodeURIComponent(parts[1] || ""));
    default: return worldsView();
  }
}

// --- worlds table ------------------------------------------------------------------------------------------

function worldsView() {
  state.view = "worlds";
  render(h("h1", {}, "Worlds", h("a", { href: "#/deploy", class: "pill" }, "+ deploy")),
    h("div", { class: "card" }, h("table", { "data-testid": "worlds" },
      h("thead", {}, h("tr", {}, ["World", "Type", "Health", "Users", "Interactions", "Req/s", "p99", "Instances"].map((c, i) => h("th", { class: i > 2 ? "num" : "" }, c)))),
      h("tbody", { id: "worlds-body" }))));
  fillWorlds();
}

function fillWorlds() {
  const body = document.getElementById("worlds-body");
  if (!body) return;
  const worlds = state.live?.worlds || [];
  if (!worlds.length) {
    body.replaceChildren(h("tr", {}, h("td", { colspan: 8, class: "muted" }, state.live ? "No worlds yet — deploy one." : "Waiting for the live feed…")));
    return;
  }
  body.replaceChildren(...worlds.map((w) => h("tr", { class: "row", "data-testid": "world-row-" + w.name, onclick: () => { location.hash = "#/world/" + encodeURIComponent(w.name); } },
    h("td", {}, h("a", { href: "#/world/" + encodeURIComponent(w.name) }, w.name)),
    h("td", {}, w.type),
    h("td", {}, h("span", { class: "pill " + w.health, "data-field": "health" }, w.health)),
    h("td", { class: "num", "data-field": "users" }, fmt.num(w.users)),
    h("td", { class: "num", "data-field": "interactions" }, fmt.num(w.interactions)),
    h("td", { class: "num", "data-field": "rps" }, w.requests_per_second.toFixed(1)),
    h("td", { class: "num", "data-field": "p99" }, fmt.ms(w.p99_ms)),
    h("td", { class: "num", "data-field": "instances" }, w.instances_ready + "/" + w.instances_desired))));
}

// --- deploy ------------------------------------------------------------------------------------------------

function deployView() {
  state.view = "deploy";
  const st = state.status;
  const type = h("select", { name: "type", "data-testid": "deploy-type" }, st.templates.map((t) => h("option", { value: t }, t)));
  const name = h("input", { name: "name", required: true, pattern: "[a-z][a-z0-9-]{0,39}", placeholder: "playground", "data-testid": "deploy-name" });
  const agents = h("div", { class: "checks", "data-testid": "deploy-agents" });
  const runtime = h("select", { name: "runtime" }, ["balanced", "enterprise"].map((r) => h("option", { value: r }, r)));
  const stream = h("select", { name: "stream" }, ["3way_full", "realtime"].map((s) => h("option", { value: s }, s)));
  const region = h("input", { name: "region", value: "local" });
  const instances = h("input", { name: "instances", type: "number", min: 0, value: 1, "data-testid": "deploy-instances" });
  const fillDefaults = () => {
    const t = type.value, d = st.template_defaults?.[t] || {};
    agents.replaceChildren(...(st.template_agents?.[t] || []).map((a) => h("label", {}, h("input", { type: "checkbox", value: a, checked: true }), a)));
    runtime.value = d.runtime || "balanced"; stream.value = d.stream || "3way_full";
    instances.value = d.instances ?? 1; instances.max = d.max_instances ?? 10;
  };
  type.addEventListener("change", fillDefaults);
  const steps = h("ol", { class: "steps", "data-testid": "deploy-steps" });
  const result = h("div", { class: "result" });
  const submit = h("button", { type: "submit", "data-testid": "deploy-submit" }, "Deploy");
  const form = h("form", { class: "card", onsubmit: async (e) => {
    e.preventDefault();
    submit.disabled = true;
    try { await runDeploy({ type: type.value, name: name.value, agents: [...agents.querySelectorAll("input:checked")].map((i) => i.value),
      runtime: runtime.value, stream: stream.value, region: region.value, instances: Number(instances.value) }, steps, result); }
    finally { submit.disabled = false; }
  } },
  h("div", { class: "row-form" }, h("label", {}, "Template", type), h("label", {}, "Name", name), h("label", {}, "Runtime", runtime),
    h("label", {}, "Stream mode", stream), h("label", {}, "Region", region), h("label", {}, "Instances", instances)),
  h("p", {}, h("span", { class: "muted" }, "Agents "), agents),
  submit, steps, result);
  fillDefaults();
  render(h("h1", {}, "Deploy a world"), form);
}

/// The CLI's steps, in the browser: stored, instances ready, a first reply through every hop.
async function runDeploy(spec, steps, result) {
  steps.replaceChildren();
  result.replaceChildren();
  const started = performance.now();
  const step = (text) => {
    const li = h("li", {}, text, h("time"));
    steps.append(li);
    const t0 = performance.now();
    return { done: (more) => { li.className = "done"; if (more) li.firstChild.textContent = text + " — " + more; li.querySelector("time").textContent = ((performance.now() - t0) / 1000).toFixed(2) + " s"; },
             fail: (err) => { li.className = "fail"; li.firstChild.textContent = text + " — " + err; } };
  };
  let s = step("Validate the spec and store the world");
  let world;
  try { world = await api("POST", "/admin/v1/worlds", spec); s.done(world.driver + " driver"); } catch (err) { s.fail(err.message); return; }
  state.keys[world.name] = world.key.secret;
  result.append(h("h2", {}, "Its first key — shown once"), secretBox(world.key.secret, "deploy-key"),
    h("p", { class: "muted" }, "Try it: ", h("code", {}, world.curl)));
  s = step(`Start ${spec.instances} instance${spec.instances === 1 ? "" : "s"} and attach to the broker`);
  const deadline = Date.now() + 60000;
  let detail;
  for (;;) {
    detail = await api("GET", "/admin/v1/worlds/" + encodeURIComponent(world.name));
    if (detail.instances_ready >= detail.instances_desired) break;
    if (Date.now() > deadline) { s.fail("not ready after 60 s: " + detail.instances_ready + "/" + detail.instances_desired); return; }
    await new Promise((r) => setTimeout(r, 250));
  }
  s.done(detail.instances_ready + "/" + detail.instances_desired + " ready");
  if (spec.instances > 0) {
    s = step("First reply: gateway → instance → runtime → vault");
    for (let i = 0; ; i++) {
      try {
        const reply = await sendMessage(world.name, world.key.secret, "hello", "panel");
        s.done(`${reply.agent}: “${(reply.text || "").slice(0, 80)}”`);
        break;
      } catch (err) {
        if (i > 40 || err.status !== 503) { s.fail(err.message); return; }
        await new Promise((r) => setTimeout(r, 250));
      }
    }
  }
  const total = h("li", { class: "done", "data-testid": "deploy-done" }, `Deployed ${world.name} in ${((performance.now() - started) / 1000).toFixed(2)} s — `,
    h("a", { href: "#/world/" + encodeURIComponent(world.name) }, "open it"));
  steps.append(total);
}

function secretBox(secret, testid) {
  const code = h("code", { "data-testid": testid }, secret);
  return h("div", { class: "secret" }, code, h("button", { type: "button", class: "ghost", "data-testid": testid + "-copy", onclick: async () => {
    try { await navigator.clipboard.writeText(secret); toast("Copied to the clipboard"); } catch (err) { toast("Copy failed: " + err.message, true); }
  } }, "Copy"));
}

// --- one world ---------------------------------------------------------------------------------------------

async function worldView(name) {
  state.view = "world/" + name;
  let w;
  try { w = await api("GET", "/admin/v1/worlds/" + encodeURIComponent(name)); } catch (err) {
    render(h("h1", {}, name), h("p", { class: "error" }, err.message)); return;
  }
  const max = state.status.template_defaults?.[w.type]?.max_instances ?? 10;
  const scaleTo = h("input", { type: "number", min: 0, max, value: w.instances_desired, "data-testid": "scale-to" });
  const keyInput = h("input", { type: "password", placeholder: "sk-slfr_…", value: state.keys[name] || "", "data-testid": "try-key" });
  const text = h("input", { value: "Tell me about space", "data-testid": "try-text", size: 40 });
  const reply = h("p", { class: "muted", "data-testid": "try-reply" });
  const logs = h("pre", { class: "logs", "data-testid": "logs" });
  render(
    h("h1", {}, name, h("span", { class: "pill" }, w.type), h("span", { class: "pill", id: "world-health", "data-testid": "world-health" }, "…")),
    h("div", { class: "card" }, h("div", { class: "stats", id: "world-stats" })),
    h("div", { class: "grid" },
      h("div", { class: "card" }, h("h2", {}, "3-way stream"), h("div", { class: "peers", id: "world-peers", "data-testid": "peers" }),
        h("p", { class: "muted" }, "Messages go gateway → broker → instance ↔ runtime, and every event to the vault before it is shown.")),
      h("div", { class: "card" }, h("h2", {}, "Scale"), h("form", { class: "row-form", onsubmit: async (e) => {
        e.preventDefault();
        try { await api("POST", `/admin/v1/worlds/${encodeURIComponent(name)}/scale`, { instances: Number(scaleTo.value) }); toast(`Scaling ${name} to ${scaleTo.value}`); }
        catch (err) { toast(err.message, true); }
      } }, h("label", {}, `Instances (0–${max})`, scaleTo), h("button", { type: "submit", "data-testid": "scale-submit" }, "Scale")),
      h("table", { id: "world-instances", "data-testid": "instances" })),
      h("div", { class: "card" }, h("h2", {}, "Try it"), h("form", { class: "row-form", onsubmit: async (e) => {
        e.preventDefault();
        reply.textContent = "…";
        try { const r = await sendMessage(name, keyInput.value, text.value, "panel-" + Date.now().toString(36)); reply.textContent = `${r.agent}: ${r.text}`; reply.className = ""; }
        catch (err) { reply.textContent = err.message; reply.className = "error"; }
      } }, h("label", {}, "Key", keyInput), h("label", {}, "Message", text), h("button", { type: "submit", "data-testid": "try-send" }, "Send")), reply)),
    h("div", { class: "card" }, h("h2", {}, "Keys"), h("div", { id: "key-secret" }),
      h("button", { type: "button", "data-testid": "key-create", onclick: () => keyAction(name, "POST", "keys") }, "Create key"),
      h("table", { id: "world-keys", "data-testid": "keys" })),
    h("div", { class: "card" }, h("h2", {}, "Live logs"), logs),
    h("div", { class: "card" }, h("h2", {}, "Recent webhook deliveries"), h("table", { id: "world-deliveries", "data-testid": "deliveries" })),
    h("div", { class: "card" }, h("h2", {}, "Shut down"), h("p", { class: "muted" }, "Drains the instances, revokes every key; the vault is kept unless purged."),
      h("button", { type: "button", class: "danger", "data-testid": "shutdown", onclick: () => confirmShutdown(name) }, "Shut down…")));
  // Just fetched: the live feed's refreshes start from here.
  state.lastDetail = w.instances_ready + "/" + w.instances_desired;
  state.detailAt = state.deliveriesAt = Date.now();
  fillWorld(w);
  fillWorldLive(name);
  loadKeys(name);
  loadDeliveries(name).catch(() => {});
  followLogs(name, logs);
}

function fillWorld(w) {
  const t = document.getElementById("world-instances");
  if (!t || state.view !== "world/" + w.name) return;  // an answer that came after the page changed
  t.replaceChildren(h("tr", {}, ["Instance", "Health", "CPU", "Memory"].map((c) => h("th", {}, c))),
    ...(w.instances || []).map((i) => h("tr", {}, h("td", {}, i.id), h("td", {}, h("span", { class: "pill " + i.health }, i.health)),
      h("td", {}, i.cpu_seconds !== undefined ? i.cpu_seconds.toFixed(1) + " s" : "—"),
      h("td", {}, i.memory_bytes ? (i.memory_bytes / 1048576).toFixed(0) + " MiB" : "—"))));
}

function fillWorldLive(name) {
  const row = state.live?.worlds?.find((w) => w.name === name);
  const stats = document.getElementById("world-stats");
  if (!row || !stats) return;
  const stat = (label, value, id) => h("div", { class: "stat" }, h("b", { "data-testid": id }, value), h("span", {}, label));
  stats.replaceChildren(stat("users", fmt.num(row.users), "stat-users"), stat("active (5 min)", fmt.num(row.active_users), "stat-active"),
    stat("interactions", fmt.num(row.interactions), "stat-interactions"), stat("req/s (10 s)", row.requests_per_second.toFixed(1), "stat-rps"),
    stat("p99 (10 s)", fmt.ms(row.p99_ms), "stat-p99"), stat("instances ready", row.instances_ready + "/" + row.instances_desired, "stat-instances"));
  const health = document.getElementById("world-health");
  health.textContent = row.health;
  health.className = "pill " + row.health;
  const node = (label, up) => h("span", { class: "node " + (up ? "up" : "off") }, label);
  document.getElementById("world-peers").replaceChildren(node("gateway", true), "→", node(row.peers.instance + " instance" + (row.peers.instance === 1 ? "" : "s"), row.peers.instance > 0),
    "↔", node(row.peers.runtime + " runtime", row.peers.runtime > 0), "→", node("vault", row.peers.vault > 0));
  // The instances' table: when their count moves, and every 10 s for their CPU and memory (sampled that often).
  if (state.lastDetail !== row.instances_ready + "/" + row.instances_desired || !(Date.now() - state.detailAt < 10000)) {
    state.lastDetail = row.instances_ready + "/" + row.instances_desired;
    state.detailAt = Date.now();
    api("GET", "/admin/v1/worlds/" + encodeURIComponent(name)).then(fillWorld).catch(() => {});
  }
  // Deliveries follow every 5 s (a scale, an alert, a milestone each send one).
  if (!(Date.now() - state.deliveriesAt < 5000)) {
    state.deliveriesAt = Date.now();
    loadDeliveries(name).catch(() => {});
  }
}

async function loadKeys(name) {
  const t = document.getElementById("world-keys");
  if (!t) return;
  const { keys } = await api("GET", `/admin/v1/worlds/${encodeURIComponent(name)}/keys`);
  t.replaceChildren(h("tr", {}, ["Id", "Prefix", "State", "Permissions", "Last used", ""].map((c) => h("th", {}, c))),
    ...keys.map((k) => h("tr", { "data-testid": "key-row-" + k.id }, h("td", {}, k.id), h("td", {}, h("code", {}, k.prefix)),
      h("td", {}, h("span", { class: "pill " + k.state }, k.state)), h("td", {}, k.permissions.join(", ")), h("td", {}, fmt.ago(k.last_used_at_ms)),
      h("td", {}, k.state === "active" ? [h("button", { type: "button", class: "ghost", onclick: () => keyAction(name, "POST", `keys/${k.id}/rotate`) }, "Rotate"), " ",
        h("button", { type: "button", class: "ghost", "data-testid": "key-revoke-" + k.id, onclick: () => keyAction(name, "DELETE", `keys/${k.id}`) }, "Revoke")] : ""))));
}

async function keyAction(name, method, path) {
  try {
    const k = await api(method, `/admin/v1/worlds/${encodeURIComponent(name)}/${path}`, method === "POST" ? {} : undefined);
    if (k.secret) {
      state.keys[name] = k.secret;
      const input = document.querySelector("[data-testid=try-key]");
      if (input) input.value = k.secret;
      document.getElementById("key-secret").replaceChildren(h("p", { class: "muted" }, `Key ${k.id} — its secret is shown this once:`), secretBox(k.secret, "new-key"));
    } else {
      toast(`Key ${path.split("/")[1]} revoked`);
    }
    loadKeys(name);
  } catch (err) { toast(err.message, true); }
}

async function loadDeliveries(name) {
  if (state.view !== "world/" + name) return;
  const { deliveries } = await api("GET", `/admin/v1/webhooks/deliveries?world=${encodeURIComponent(name)}&limit=10`);
  const t = document.getElementById("world-deliveries");
  if (!t || state.view !== "world/" + name) return;  // another page by now
  fillDeliveries(t, deliveries, "No webhook has been sent about this world.", () => loadDeliveries(name));
}

// Messages with their attempts (newest first), each with Redeliver; `reload` runs once a redelivery had time to go.
function fillDeliveries(t, deliveries, empty, reload) {
  if (!deliveries.length) { t.replaceChildren(h("tr", {}, h("td", { class: "muted" }, empty))); return; }
  t.replaceChildren(h("tr", {}, ["Event", "Endpoint", "State", "Attempts", "Last answer", "When", ""].map((c) => h("th", {}, c))),
    ...deliveries.map((d) => { const last = d.attempts[d.attempts.length - 1]; return h("tr", { "data-testid": "delivery-" + d.event }, h("td", {}, d.event), h("td", {}, d.endpoint),
      h("td", {}, h("span", { class: "pill " + d.state }, d.state)), h("td", { "data-testid": "delivery-attempts" }, d.attempts.length),
      h("td", {}, last ? (last.status ? "HTTP " + last.status : last.error) : "—"), h("td", {}, fmt.ago(d.created_at_ms)),
      h("td", {}, h("button", { type: "button", class: "ghost", "data-testid": "redeliver", onclick: async () => {
        try { await api("POST", `/admin/v1/webhooks/${d.endpoint}/deliveries/${encodeURIComponent(d.id)}/redeliver`); toast("Sent again"); setTimeout(reload, 800); }
        catch (err) { toast(err.message, true); }
      } }, "Redeliver"))); }));
}

function followLogs(name, pre) {
  const es = new EventSource(`/admin/v1/worlds/${encodeURIComponent(name)}/logs?follow=1&lines=50`);
  const lines = [];
  es.onmessage = (e) => {
    const l = JSON.parse(e.data);
    lines.push(`${l.instance} | ${l.text}`);
    if (lines.length > 500) lines.splice(0, lines.length - 500);
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.textContent = lines.join("\n");
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  };
  state.logs = es;
}

function confirmShutdown(name) {
  const typed = h("input", { placeholder: name, "data-testid": "shutdown-name" });
  const purge = h("input", { type: "checkbox" });
  const dialog = h("dialog", {},
    h("form", { method: "dialog", onsubmit: async (e) => {
      e.preventDefault();
      if (typed.value !== name) { toast("Type the world's name to confirm", true); return; }
      try {
        await api("DELETE", `/admin/v1/worlds/${encodeURIComponent(name)}${purge.checked ? "?purge=true" : ""}`);
        dialog.close(); dialog.remove();
        toast(`${name} is shutting down`);
        location.hash = "#/worlds";
      } catch (err) { toast(err.message, true); }
    } },
    h("h2", {}, `Shut down ${name}?`), h("p", {}, "Its keys stop working at once; its instances drain and stop."),
    h("label", {}, "Type the world's name", typed), h("p", { class: "checks" }, h("label", {}, purge, "and purge its vault (for good)")),
    h("div", { class: "row-form" }, h("button", { type: "submit", class: "danger", "data-testid": "shutdown-confirm" }, "Shut down"),
      h("button", { type: "button", class: "ghost", onclick: () => { dialog.close(); dialog.remove(); } }, "Cancel"))));
  document.body.append(dialog);
  dialog.showModal();
  typed.focus();
}

// --- usage and cost ----------------------------------------------------------------------------------------

async function usageView() {
  state.view = "usage";
  render(h("h1", {}, "Usage & cost"), h("p", { class: "muted" }, "Loading…"));
  const u = await api("GET", "/admin/v1/usage?by=day&since=29d");
  const days = [];
  for (let i = 29; i >= 0; i--) days.push(new Date(Date.now() - i * 86400000).toISOString().slice(0, 10));
  const worlds = u.worlds.map((w) => w.world);
  const colors = ["#7aa2ff", "#3ecf8e", "#f5b942", "#ff6b6b", "#c084fc", "#22d3ee", "#fb923c", "#a3e635"];
  const series = (field) => u.worlds.map((w) => days.map((d) => { const r = (w.days || []).find((x) => x.day === d); return r ? (field === "cost" ? r.cost.total : r[field]) : 0; }));
  render(h("h1", {}, "Usage & cost", h("span", { class: "pill" }, "since " + u.since)),
    h("div", { class: "card" }, h("div", { class: "stats" },
      h("div", { class: "stat" }, h("b", { "data-testid": "usage-cost" }, fmt.money(u.total.cost, u.currency)), h("span", {}, "cost")),
      h("div", { class: "stat" }, h("b", {}, fmt.num(u.total.requests)), h("span", {}, "requests")),
      h("div", { class: "stat" }, h("b", { "data-testid": "usage-interactions" }, fmt.num(u.total.interactions)), h("span", {}, "interactions")),
      h("div", { class: "stat" }, h("b", {}, fmt.num(u.total.tokens_out)), h("span", {}, "tokens out")),
      h("div", { class: "stat" }, h("b", {}, fmt.num(Math.round(u.total.instance_seconds))), h("span", {}, "instance-seconds")))),
    h("div", { class: "grid" },
      h("div", { class: "card" }, h("h2", {}, `Cost per day (${u.currency})`), barChart(days, series("cost"), colors, (v) => v.toFixed(3)), legend(worlds, colors)),
      h("div", { class: "card" }, h("h2", {}, "Interactions per day"), barChart(days, series("interactions"), colors, (v) => Math.round(v)), legend(worlds, colors))),
    h("div", { class: "card" }, h("table", { "data-testid": "usage-table" },
      h("tr", {}, ["World", "Type", "Requests", "Interactions", "Tokens in", "Tokens out", "Instance-s", "Cost"].map((c, i) => h("th", { class: i > 1 ? "num" : "" }, c))),
      ...u.worlds.map((w) => h("tr", {}, h("td", {}, w.world), h("td", {}, w.template), ...[w.requests, w.interactions, w.tokens_in, w.tokens_out, Math.round(w.instance_seconds)]
        .map((v) => h("td", { class: "num" }, fmt.num(v))), h("td", { class: "num" }, fmt.money(w.cost.total, u.currency)))))),
    h("p", { class: "muted" }, "Prices (", u.currency, "): ", Object.entries(u.pricing.instance_second).map(([t, v]) => `${t} ${v}/instance-s`).join(" · "),
      ` · ${u.pricing.interaction}/interaction · ${u.pricing.token_in}/token in · ${u.pricing.token_out}/token out — the config's pricing table.`));
}

/// Stacked bars, one per day, one colour per world (SVG, no library).
function barChart(days, series, colors, label) {
  const W = 560, H = 200, pad = 34, n = days.length;
  const totals = days.map((_, i) => series.reduce((s, row) => s + row[i], 0));
  const max = Math.max(...totals, 1e-9);
  const bw = (W - pad) / n;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H + 20}`);
  svg.setAttribute("class", "chart");
  const add = (tag, attrs, text) => { const e = document.createElementNS(ns, tag); for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); if (text !== undefined) e.textContent = text; svg.append(e); return e; };
  add("line", { x1: pad, y1: H, x2: W, y2: H, stroke: "#262d44" });
  add("text", { x: 0, y: 12 }, label(max));
  days.forEach((d, i) => {
    let y = H;
    series.forEach((row, s) => {
      const v = row[i], bh = (v / max) * (H - 10);
      if (v > 0) {
        const bar = add("rect", { x: pad + i * bw + 1, y: y - bh, width: Math.max(1, bw - 2), height: bh, fill: colors[s % colors.length] });
        const tip = document.createElementNS(ns, "title");
        tip.textContent = `${d} · ${label(v)}`;
        bar.append(tip);
      }
      y -= bh;
    });
    if (i % 7 === 0 || (i === n - 1 && i % 7 >= 4)) add("text", { x: pad + i * bw, y: H + 14 }, d.slice(5));
  });
  return svg;
}

function legend(names, colors) {
  return h("div", { class: "legend" }, names.map((n, i) => { const sw = h("i"); sw.style.background = colors[i % colors.length]; return h("span", {}, sw, n); }));
}

// --- webhooks ----------------------------------------------------------------------------------------------

async function webhooksView() {
  state.view = "webhooks";
  const url = h("input", { type: "url", required: true, placeholder: "https://hooks.example.com/soulfra", size: 40, "data-testid": "hook-url" });
  const world = h("input", { placeholder: "every world" });
  const events = h("div", { class: "checks" }, ["deployment_complete", "scaling_event", "error_alert", "user_milestone", "endpoint.disabled"]
    .map((e) => h("label", {}, h("input", { type: "checkbox", value: e, checked: true }), e)));
  const secret = h("div");
  const list = h("table", { "data-testid": "hooks" });
  // Under the table: one endpoint's deliveries, or its secret rotation (the new secret is shown once).
  const detail = h("div", { class: "card", hidden: true, "data-testid": "hook-detail" });
  const showDeliveries = async (w) => {
    const t = h("table", { "data-testid": "hook-deliveries" });
    detail.replaceChildren(h("h2", {}, `Deliveries to ${w.url}`), t);
    detail.hidden = false;
    const reload = async () => {
      try { fillDeliveries(t, (await api("GET", `/admin/v1/webhooks/${w.id}/deliveries?limit=20`)).deliveries, "Nothing has been sent to this endpoint yet.", reload); }
      catch (err) { toast(err.message, true); }
    };
    await reload();
  };
  const showRotate = (w) => {
    const grace = h("select", { "data-testid": "rotate-grace" }, [["0", "no overlap"], ["3600", "1 hour"], ["86400", "24 hours"], ["604800", "7 days"]]
      .map(([v, label]) => h("option", { value: v, selected: v === "86400" }, label)));
    const out = h("div");
    detail.replaceChildren(h("h2", {}, `Rotate the signing secret of ${w.url}`),
      h("div", { class: "row-form" }, h("label", {}, "The old secret keeps signing for", grace),
        h("button", { type: "button", "data-testid": "rotate-confirm", onclick: async () => {
          try {
            const r = await api("POST", `/admin/v1/webhooks/${w.id}/rotate`, { grace_seconds: Number(grace.value) });
            out.replaceChildren(h("p", { class: "muted" }, "The new signing secret — shown this once:"), secretBox(r.secret, "rotated-secret"));
          } catch (err) { toast(err.message, true); }
        } }, "Rotate now")), out);
    detail.hidden = false;
  };
  const load = async () => {
    const { webhooks } = await api("GET", "/admin/v1/webhooks");
    list.replaceChildren(h("tr", {}, ["Id", "URL", "World", "Events", "State", "Pending", ""].map((c) => h("th", {}, c))),
      ...webhooks.map((w) => h("tr", { "data-testid": "hook-" + w.id }, h("td", {}, w.id), h("td", {}, w.url), h("td", {}, w.world || "*"), h("td", { class: "wrap" }, w.events.join(", ")),
        h("td", {}, h("span", { class: "pill " + w.state, title: w.disabled_reason }, w.state)), h("td", {}, w.pending),
        h("td", {}, h("button", { type: "button", class: "ghost", "data-testid": "hook-deliveries-open", onclick: () => showDeliveries(w) }, "Deliveries"),
          " ", h("button", { type: "button", class: "ghost", "data-testid": "hook-rotate", onclick: () => showRotate(w) }, "Rotate secret"),
          w.state === "disabled" ? [" ", h("button", { type: "button", class: "ghost", onclick: async () => { await api("POST", `/admin/v1/webhooks/${w.id}/enable`); load(); } }, "Enable")] : "",
          " ", h("button", { type: "button", class: "ghost", onclick: async () => {
            await api("DELETE", `/admin/v1/webhooks/${w.id}`);
            detail.hidden = true;
            load();
          } }, "Remove")))));
  };
  render(h("h1", {}, "Webhooks"),
    h("form", { class: "card", onsubmit: async (e) => {
      e.preventDefault();
      try {
        const body = { url: url.value, events: [...events.querySelectorAll("input:checked")].map((i) => i.value) };
        if (world.value) body.world = world.value;
        const w = await api("POST", "/admin/v1/webhooks", body);
        secret.replaceChildren(h("p", { class: "muted" }, "Its signing secret — shown this once:"), secretBox(w.secret, "hook-secret"));
        load();
      } catch (err) { toast(err.message, true); }
    } }, h("div", { class: "row-form" }, h("label", {}, "Endpoint URL", url), h("label", {}, "World", world), h("button", { type: "submit" }, "Add")), events, secret),
    h("div", { class: "card" }, list), detail,
    h("p", { class: "muted" }, "Signed the Standard Webhooks way (webhook-id, webhook-timestamp, webhook-signature: v1,…); retried after 5 s, 5 min, 30 min, 2 h, 5 h, 10 h."));
  load();
}

boot();

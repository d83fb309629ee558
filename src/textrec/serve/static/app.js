// textrec's page: search the catalogue, build a session by clicking items, see recommendations, add items.
"use strict";
const session = [];
const added = new Set();
const $ = (id) => document.getElementById(id);

async function api(method, path, body, retried) {
  const opts = { method, headers: {} };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const key = sessionStorage.getItem("textrec-api-key");
  if (key) opts.headers["X-API-Key"] = key;
  const res = await fetch(path, opts);
  if (res.status === 401 && !retried) {  // writes need the server's API key: ask once, keep it for this tab
    const given = window.prompt("This server needs an API key for changes (X-API-Key):");
    if (given) {
      sessionStorage.setItem("textrec-api-key", given.trim());
      return api(method, path, body, true);
    }
  }
  const data = await res.json().catch(() => ({ error: res.statusText }));
  if (!res.ok) throw new Error(data.error || res.statusText);
  return data;
}

function itemRow(item, withScore) {
  const li = document.createElement("li");
  li.dataset.key = item.item;
  const key = document.createElement("span");
  key.className = "key";
  key.textContent = item.item;
  li.appendChild(key);
  if (added.has(item.item) || item.added) {
    li.classList.add("new");
    const b = document.createElement("span");
    b.className = "badge";
    b.textContent = "new";
    key.appendChild(b);
  }
  if (withScore) {
    const s = document.createElement("span");
    s.className = "score";
    s.textContent = item.score.toFixed(3);
    li.appendChild(s);
  }
  li.appendChild(document.createTextNode(item.text));
  li.addEventListener("click", () => addToSession(item));
  return li;
}

async function search() {
  const q = $("search").value;
  try {
    const data = await api("GET", `/items?q=${encodeURIComponent(q)}&limit=30`);
    $("results").replaceChildren(...data.items.map((it) => itemRow(it, false)));
  } catch (e) {
    $("results").replaceChildren(errorRow(e));
  }
}

function errorRow(e) {
  const li = document.createElement("li");
  li.className = "error";
  li.textContent = e.message;
  return li;
}

function addToSession(item) {
  session.push(item);
  renderSession();
  recommend();
}

function renderSession() {
  $("session").replaceChildren(...session.map((it) => {
    const li = document.createElement("li");
    li.dataset.key = it.item;
    li.textContent = `${it.item}: ${it.text}`;
    return li;
  }));
}

async function recommend() {
  if (!session.length) {
    $("recs").replaceChildren();
    $("recs-status").textContent = "Build a session to see recommendations.";
    return;
  }
  try {
    const data = await api("POST", "/recommend", { items: session.map((it) => it.item), k: 20 });
    $("recs").replaceChildren(...data.recommendations.map((r) => itemRow(r, true)));
    const unknown = data.unknown.length ? ` (not in the catalogue: ${data.unknown.join(", ")})` : "";
    $("recs-status").textContent = `top ${data.recommendations.length} after ${data.history.length} item(s)${unknown}`;
  } catch (e) {
    $("recs-status").textContent = e.message;
  }
}

async function addItem(ev) {
  ev.preventDefault();
  const key = $("new-key").value.trim();
  const text = $("new-text").value.trim();
  $("add-status").classList.remove("error");
  try {
    const data = await api("POST", "/items", { items: [{ key, text }] });
    added.add(key);
    $("add-status").textContent = `added ${key}: the catalogue now holds ${data.items} items`;
    $("new-key").value = "";
    $("new-text").value = "";
    await recommend();
    const li = document.querySelector(`#recs li[data-key="${CSS.escape(key)}"]`);
    if (li) $("add-status").textContent += `; it ranks ${[...li.parentNode.children].indexOf(li) + 1} for this session`;
    else if (session.length) $("add-status").textContent += "; not in this session's top 20";
    search();
  } catch (e) {
    $("add-status").textContent = e.message;
    $("add-status").classList.add("error");
  }
}

async function start() {
  try {
    const s = await api("GET", "/stats");
    $("about").textContent = `${s.model} run ${s.run} on ${s.dataset}: ${s.items.toLocaleString()} items, index ${s.index.kind}` +
      (s.read_only ? ", read-only" : "") + (s.can_add_items ? "" : " (this model cannot take new items)");
    if (s.read_only || !s.can_add_items) $("add").disabled = true;
  } catch (e) {
    $("about").textContent = e.message;
  }
  let timer;
  $("search").addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(search, 150); });
  $("clear").addEventListener("click", () => { session.length = 0; renderSession(); recommend(); });
  $("add-form").addEventListener("submit", addItem);
  search();
}
start();

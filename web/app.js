// The reference web client: plain JavaScript, no build step, no CDN.
//
// It talks to the api at its own origin, or at `?api=<origin>` (a page served
// from another origin, which the api must allow with CORS_ALLOWED_ORIGINS).
// Tokens live in sessionStorage, so two tabs can be two users. A conversation
// streams through the browser's own EventSource, opened with a stream ticket;
// EventSource reconnects on its own (with Last-Event-ID), and once its ticket is
// spent the page gets a new one and reopens after the last row it has.
"use strict";

const API = new URLSearchParams(location.search).get("api") || "";
const $ = (id) => document.getElementById(id);
const state = { bot: null, stream: null, rows: new Map(), oldest: null, newest: 0, live: new Map() };

function tokens() {
  return JSON.parse(sessionStorage.getItem("tokens") || "null");
}

function setTokens(value) {
  if (value) sessionStorage.setItem("tokens", JSON.stringify(value));
  else sessionStorage.removeItem("tokens");
}

// One request; a 401 with a refresh token refreshes once and tries again.
async function api(method, path, body, retried) {
  const headers = { "Content-Type": "application/json" };
  const t = tokens();
  if (t) headers.Authorization = "Bearer " + t.access;
  const response = await fetch(API + path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401 && t && !retried) {
    if (await refresh()) return api(method, path, body, true);
    signedOut("Your session ended; log in again.");
  }
  const data = await response.json().catch(() => ({}));
  // Bot-module failures answer HTTP 200 with `code: -1`, as the original did.
  if (!response.ok || (typeof data.code === "number" && (data.code < 0 || data.code >= 400))) {
    const why = data.msg || data.detail || Object.values(data).flat().join(" ") || response.statusText;
    throw new Error(why);
  }
  return data;
}

async function refresh() {
  const t = tokens();
  if (!t) return false;
  const response = await fetch(API + "/login/refresh/", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ refresh: t.refresh }),
  });
  if (!response.ok) return false;
  const fresh = await response.json();
  setTokens({ ...t, access: fresh.access, refresh: fresh.refresh });
  return true;
}

function signedOut(message) {
  setTokens(null);
  closeStream();
  $("auth").hidden = false;
  $("bots").hidden = $("chat").hidden = $("logout").hidden = true;
  $("who").textContent = "";
  $("auth-error").textContent = message || "";
}

async function signedIn() {
  const t = tokens();
  $("auth").hidden = true;
  $("bots").hidden = $("logout").hidden = false;
  $("who").textContent = t.username;
  const personas = await api("GET", "/bots/get_persona");
  $("personas").replaceChildren(...personas.data.map((p) => new Option(p)));
  await loadBots();
}

$("auth-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const form = new FormData(e.target);
  const credentials = { username: form.get("username"), password: form.get("password") };
  $("auth-error").textContent = "";
  try {
    if (e.submitter && e.submitter.value === "register") {
      await api("POST", "/users/register/", credentials);
    }
    const login = await api("POST", "/login/", credentials);
    setTokens({ access: login.access, refresh: login.refresh, username: login.username });
    await signedIn();
  } catch (error) {
    $("auth-error").textContent = error.message;
  }
});

$("logout").addEventListener("click", async () => {
  const t = tokens();
  if (t) await fetch(API + "/logout/", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ refresh: t.refresh }),
  }).catch(() => {});
  signedOut();
});

async function loadBots() {
  const bots = await api("POST", "/bots/list", {});
  $("bot-list").replaceChildren(...bots.data.map((bot) => {
    const item = document.createElement("li");
    const open = document.createElement("button");
    open.type = "button";
    open.textContent = bot.chatbot_type === 1 ? `${bot.chatbot_name} (as ${bot.chatbot_persona})` : bot.chatbot_name;
    open.setAttribute("aria-current", String(state.bot === bot.chatbot_id));
    open.addEventListener("click", () => openChat(bot));
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "Delete";
    remove.setAttribute("aria-label", `Delete ${bot.chatbot_name}`);
    remove.addEventListener("click", async () => {
      await api("POST", "/bots/delete", { chatbot_id: bot.chatbot_id });
      if (state.bot === bot.chatbot_id) { closeStream(); $("chat").hidden = true; state.bot = null; }
      await loadBots();
    });
    item.append(open, remove);
    return item;
  }));
}

$("bot-form").kind.addEventListener("change", (e) => {
  $("persona-field").hidden = e.target.value !== "1";
});

$("bot-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const form = new FormData(e.target);
  $("bot-error").textContent = "";
  try {
    await api("POST", "/bots/create", {
      chatbot_name: form.get("name"), chatbot_type: Number(form.get("kind")),
      chatbot_persona: form.get("kind") === "1" ? form.get("persona") : "",
    });
    e.target.reset();
    $("persona-field").hidden = true;
    await loadBots();
  } catch (error) {
    $("bot-error").textContent = error.message;
  }
});

// --- a conversation -------------------------------------------------------

async function openChat(bot) {
  closeStream();
  Object.assign(state, { bot: bot.chatbot_id, rows: new Map(), oldest: null, newest: 0, live: new Map() });
  $("chat").hidden = false;
  $("chat-title").textContent = bot.chatbot_name;
  $("messages").replaceChildren();
  $("chat-error").textContent = "";
  await loadBots();
  const page = await api("GET", `/chat/history?chatbot_id=${bot.chatbot_id}&format=object&limit=50&before=${2 ** 53}`);
  page.data.forEach(showRow);
  $("older").hidden = page.data.length < 50;
  await openStream();
  await showMemory();
  $("send-form").input.focus();
}

$("older").addEventListener("click", async () => {
  const page = await api("GET", `/chat/history?chatbot_id=${state.bot}&format=object&limit=50&before=${state.oldest}`);
  page.data.slice().reverse().forEach((row) => showRow(row, true));
  $("older").hidden = page.data.length < 50;
});

// A history row, placed by its seq; a row seen twice is shown once.
function showRow(row, older) {
  if (state.rows.has(row.seq)) return;
  const item = document.createElement("li");
  item.className = row.by_user === 1 ? "user" : row.status === "failed" ? "bot failed" : "bot";
  item.dataset.seq = row.seq;
  item.dataset.messageId = row.message_id;
  item.textContent = row.content;
  if (row.by_user === 1 && row.status === "pending") status(item, "waiting for the reply…");
  if (row.status === "failed") status(item, "the bot could not answer");
  if (row.status === "stopped") status(item, "stopped");
  state.rows.set(row.seq, item);
  if (older) $("messages").prepend(item);
  else place(item, row.seq);
  state.oldest = state.oldest === null ? row.seq : Math.min(state.oldest, row.seq);
  state.newest = Math.max(state.newest, row.seq);
}

function place(item, seq) {
  const list = $("messages");
  const after = [...list.children].reverse().find((li) => li.dataset.seq && Number(li.dataset.seq) < seq);
  if (after) after.after(item);
  else list.prepend(item);
  // A reply being written stays right after its message.
  list.scrollTop = list.scrollHeight;
}

function status(item, text) {
  let note = item.querySelector(".status");
  if (!note) { note = document.createElement("span"); note.className = "status"; item.append(note); }
  note.textContent = text;
}

// The text of a reply being written, grown by deltas.
function writing(messageId) {
  let live = state.live.get(messageId);
  if (!live) {
    const item = document.createElement("li");
    item.className = "bot writing";
    item.setAttribute("aria-busy", "true");
    live = { item, attempt: null, text: "" };
    state.live.set(messageId, live);
    const message = [...$("messages").children].find((li) => li.dataset.messageId === messageId);
    if (message) message.after(item); else $("messages").append(item);
  }
  return live;
}

function finished(row) {
  // Replies come in message order: this one answers the oldest message still waiting.
  const waiting = [...$("messages").children].find((li) => li.classList.contains("user") && li.querySelector(".status"));
  if (waiting) {
    waiting.querySelector(".status").remove();
    const live = state.live.get(waiting.dataset.messageId);
    if (live) { live.item.remove(); state.live.delete(waiting.dataset.messageId); }
  }
  showRow(row);
}

async function openStream() {
  const bot = state.bot;
  let ticket;
  try {
    ticket = await api("POST", "/chat/stream/ticket", { chatbot_id: bot });
  } catch (error) {
    connection(true);
    setTimeout(() => state.bot === bot && openStream(), 2000);
    return;
  }
  if (state.bot !== bot) return;
  const source = new EventSource(`${API}${ticket.data.url}&after=${state.newest}`);
  state.stream = source;
  source.onopen = () => connection(false);
  source.onerror = () => {
    connection(true);
    // Reconnecting on its own (CONNECTING), or given up (CLOSED: the ticket is
    // spent or refused): then a new ticket, from after the last row shown.
    if (source.readyState === EventSource.CLOSED && state.stream === source) {
      state.stream = null;
      setTimeout(() => state.bot === bot && !state.stream && openStream(), 1000);
    }
  };
  const on = (name, handle) => source.addEventListener(name, (e) => handle(JSON.parse(e.data)));
  on("message", (row) => showRow(row));
  on("reply", finished);
  on("failed", finished);
  on("stopped", finished);
  on("delta", (delta) => {
    const live = writing(delta.message_id);
    if (live.attempt !== delta.attempt) { live.attempt = delta.attempt; live.text = ""; }
    live.text += delta.text;
    live.item.textContent = live.text;
  });
  on("reset", (reset) => {
    const live = writing(reset.message_id);
    live.attempt = reset.attempt;
    live.text = "";
    live.item.textContent = "";
  });
}

function closeStream() {
  if (state.stream) state.stream.close();
  state.stream = null;
  connection(false);
}

function connection(lost) {
  $("connection").hidden = !lost;
}

$("send-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const input = e.target.input;
  const text = input.value.trim();
  if (!text) return;
  $("chat-error").textContent = "";
  try {
    await api("POST", "/chat/new_chat?wait=false", {
      chatbot_id: state.bot, input: text, client_msg_id: crypto.randomUUID(),
    });
    input.value = "";
  } catch (error) {
    $("chat-error").textContent = error.message;
  }
});

async function showMemory() {
  const memory = await api("GET", `/chat/memory?chatbot_id=${state.bot}`);
  $("memory-summary").textContent = memory.data.summary || "—";
  $("memory-profile").textContent = memory.data.profile || "—";
}

$("memory").addEventListener("toggle", () => {
  if ($("memory").open && state.bot !== null) showMemory().catch(() => {});
});

$("forget").addEventListener("click", async () => {
  await api("POST", "/chat/memory/forget", { chatbot_id: state.bot });
  await showMemory();
});

if (tokens()) signedIn().catch(() => signedOut());

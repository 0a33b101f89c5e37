// Ferry chat: a small chat client on the TypeScript SDK (./ferry-sdk.js, sdk/js/API.md).
// No framework and no build step: the SDK does the protocol (link, sync, media); this file
// keeps the conversations, draws them and persists them per user in IndexedDB.

import { FerryClient, IndexedDbStore } from "./ferry-sdk.js";

// ---- constants ---------------------------------------------------------------------------

const FRIEND = 1, REQUEST_OUT = 2, REQUEST_IN = 3;          // FriendState
const FE_REQUEST_RECEIVED = 0, FE_ADDED = 2;                // FriendEvent.Kind
const GE = ["created the group", "joined", "left", "was removed", "renamed the group to",
  "changed the announcement", "changed a role"];             // GroupEvent.Kind, as words
const RECALL_WINDOW_MS = 2 * 60 * 1000;
const THUMB_MAX = 200;
const KEEP_PER_CONV = 500;
const LAST_USER_KEY = "ferry-chat:user";
const STATE_KEY = "chat:state";

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k.startsWith("data-")) e.dataset[k.slice(5).replace(/-(\w)/g, (_, c) => c.toUpperCase())] = v;
    else if (v === true) e.setAttribute(k, "");
    else e.setAttribute(k, String(v));
  }
  for (const k of kids) if (k !== null && k !== undefined) e.append(k);
  return e;
};

const big = (x) => BigInt(x ?? 0);
const gt = (a, b) => big(a) > big(b);
const time = (ms) => new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });

function describe(err) {
  if (!err) return "unknown error";
  const names = {
    BAD_CREDENTIALS: "Wrong user name or password.",
    USER_EXISTS: "That user name is taken.",
    UNKNOWN_USER: "There is no such user.",
    PERMISSION_DENIED: "Not allowed (are you friends?).",
    RATE_LIMITED: "Too many requests: wait a moment and try again.",
    UNAUTHORIZED: "Your session ended: sign in again.",
    INVALID_ARGUMENT: err.message || "That is not accepted.",
    TOO_LARGE: "Too large.",
    NOT_FOUND: "Not found.",
  };
  if (err.codeName && names[err.codeName]) return names[err.codeName];
  if (err.kind === "network" || err.kind === "timeout") return "The server cannot be reached: try again.";
  return err.message || String(err);
}

// ---- state -------------------------------------------------------------------------------

/** Everything the page knows; conversations are persisted (ids as strings). */
const S = {
  client: null,
  store: null,
  me: "",
  convs: new Map(),      // "u:bob" | "g:17" → conv
  friends: [],
  groups: new Map(),     // group id (string) → Group
  open: null,            // the open conversation's key
  online: false,
  everOnline: false,
  typingUntil: new Map(),// peer → ms
  lastTypingSent: 0,
  unsubs: [],
};

let localIds = 0;

/** A conversation: `kind` "user" (peer) or "group" (groupId). */
function conv(key, init) {
  let c = S.convs.get(key);
  if (!c) {
    c = { key, kind: key.startsWith("g:") ? "group" : "user", peer: "", groupId: "", name: "",
          msgs: [], unread: 0, peerRead: "0", myRead: "0", lastTime: 0 };
    if (c.kind === "user") c.peer = c.name = key.slice(2);
    else c.groupId = key.slice(2);
    S.convs.set(key, c);
  }
  if (init) Object.assign(c, init);
  return c;
}

const userKey = (peer) => `u:${peer}`;
const groupKey = (id) => `g:${String(id)}`;

function groupName(id) {
  const g = S.groups.get(String(id));
  return g ? g.name : `Group ${id}`;
}

// ---- persistence (the app's own keys in the SDK's per-user IndexedDB store) ---------------

// Saves are batched (one per 100 ms at most). saveSoon() answers a promise that settles
// once what changed so far is stored: the listeners of synced events return it, and the
// SDK stores the synckey covering an event only after that (sdk/js/API.md, on()), so a
// tab closed mid-way shows everything again on its next start — nothing is lost.
let saveTimer = 0;
let saveWaiters = [];
function saveSoon() {
  clearTimeout(saveTimer);
  saveTimer = setTimeout(async () => {
    const waiters = saveWaiters;
    saveWaiters = [];
    await save();
    for (const w of waiters) w();
  }, 100);
  return new Promise((resolve) => saveWaiters.push(resolve));
}

async function save() {
  if (!S.store) return;
  const convs = [...S.convs.values()].map((c) => ({
    key: c.key, name: c.name, unread: c.unread, peerRead: c.peerRead, myRead: c.myRead,
    lastTime: c.lastTime,
    msgs: c.msgs.filter((m) => m.id || m.note).slice(-KEEP_PER_CONV).map((m) => ({
      key: m.key, id: m.id, order: m.order, gseq: m.gseq, from: m.from, time: m.time, text: m.text, media: m.media,
      recalled: m.recalled, note: m.note,
    })),
  }));
  try {
    await S.store.set(STATE_KEY, { v: 1, convs });
  } catch (e) {
    console.warn("saving the conversations failed", e);
  }
}

async function load() {
  const saved = await S.store.get(STATE_KEY);
  if (!saved || saved.v !== 1) return;
  for (const c of saved.convs) {
    const x = conv(c.key, { name: c.name, unread: c.unread, peerRead: c.peerRead,
      myRead: c.myRead, lastTime: c.lastTime });
    x.msgs = c.msgs.map((m) => ({ ...m, key: m.key || `m${m.id}`, status: "sent" }));
  }
}

// ---- messages in and out ------------------------------------------------------------------

function mediaOf(ref) {
  if (!ref || !ref.mediaId) return null;
  return { id: ref.mediaId, thumb: ref.thumbId || "", type: ref.contentType || "",
           w: ref.width || 0, h: ref.height || 0, size: Number(ref.size || 0) };
}

/** Messages by server id (notes carry an `order`); unsent ones last, in the order written. */
const orderOf = (m) => m.id ?? m.order ?? null;
function sortMsgs(c) {
  c.msgs.sort((a, b) => {
    const x = orderOf(a), y = orderOf(b);
    if (x === null || y === null) return (x === null) - (y === null) || (a.seqLocal || 0) - (b.seqLocal || 0);
    const p = big(x), q = big(y);
    return p < q ? -1 : p > q ? 1 : 0;
  });
}

/** A stored message (1:1 or group) reached this device: add it once. */
function addMessage(c, message, gseq) {
  const id = String(message.msgId);
  const mine = message.from === S.me;
  let m = c.msgs.find((x) => x.id === id);
  if (!m && mine) {
    // Our own send, from this tab: adopt the pending copy by the client_msg_id it was
    // sent with (its ack may still be on the way).
    const cmid = String(message.clientMsgId);
    m = c.msgs.find((x) => !x.id && x.cmid === cmid);
  }
  const fresh = !m;
  if (!m) {
    m = { key: `m${id}`, seqLocal: 0 };
    c.msgs.push(m);
  }
  Object.assign(m, {
    id, from: message.from, time: Number(message.timeMs) || Date.now(), text: message.text,
    media: mediaOf(message.media) || m.media || null, recalled: m.recalled || false,
  });
  if (gseq !== undefined) m.gseq = String(gseq);
  if (m.status !== "uploading") m.status = "sent";
  if (m.local && m.media) {
    // The sender already has both pictures: no need to download them.
    if (m.localThumb && m.media.thumb) media.set(m.media.thumb, { url: m.localThumb, state: "done" });
    if (m.localOrig) media.set(m.media.id, { url: m.localOrig, state: "done" });
  }
  sortMsgs(c);
  c.lastTime = Math.max(c.lastTime, m.time);
  if (fresh && !mine) {
    // A message ends its sender's "typing…".
    if (c.kind === "user" && S.typingUntil.delete(message.from)) renderTyping();
    if (isShown(c)) scheduleRead(c);
    else c.unread += 1;
  }
  changed(c);
}

function isShown(c) {
  return S.open === c.key && document.visibilityState === "visible";
}

function onMessage({ message }) {
  if (message.groupId) return; // group messages come as groupMessage
  const peer = message.from === S.me ? message.to : message.from;
  addMessage(conv(userKey(peer)), message);
}

function groupConv(id) {
  const c = conv(groupKey(id));
  if (S.groups.has(String(id)) || !c.name) c.name = groupName(id);
  return c;
}

function onGroupMessage({ groupId, gseq, message }) {
  const c = groupConv(groupId);
  addMessage(c, message, gseq);
}

function onGroupEntry({ groupId, entry }) {
  if (entry.kind?.case !== "event") return;
  const ev = entry.kind.value;
  const c = groupConv(groupId);
  const id = `n${groupId}-${entry.gseq}`;
  if (c.msgs.some((m) => m.key === id)) return;
  const who = ev.users && ev.users.length ? ev.users.join(", ") : ev.by;
  let text = `${ev.by || who} ${GE[ev.kind] || "changed the group"}`;
  if (ev.kind === 1 || ev.kind === 2 || ev.kind === 3) text = `${who} ${GE[ev.kind]}`;
  if (ev.kind === 4) text += ` “${ev.text}”`;
  // Notes sort with the messages: give them the id space just past the newest message.
  const last = c.msgs.filter((m) => m.id).at(-1);
  c.msgs.push({ key: id, id: null, order: last ? last.id : "0", note: text, time: Number(entry.timeMs) || Date.now(),
                from: "", text: "", seqLocal: 0, status: "sent" });
  sortMsgs(c);
  c.lastTime = Math.max(c.lastTime, Number(entry.timeMs) || 0);
  if (ev.kind === 4) { const g = S.groups.get(String(groupId)); if (g) g.name = ev.text; c.name = ev.text; }
  changed(c);
}

function onRecall(r) {
  const id = String(r.msgId);
  let cands = [];
  if (r.groupId) cands = [conv(groupKey(r.groupId))];
  else if (r.by && r.by !== S.me) cands = [conv(userKey(r.by))];
  else cands = [...S.convs.values()];
  for (const c of cands) {
    const m = c.msgs.find((x) => x.id === id);
    if (!m) continue;
    Object.assign(m, { recalled: true, text: "", media: null, by: r.by });
    changed(c);
  }
}

function onRead(r) {
  if (r.reader === S.me) return; // another device of ours read: nothing to show
  const c = conv(userKey(r.reader));
  if (gt(r.msgId, c.peerRead)) {
    c.peerRead = String(r.msgId);
    changed(c);
  }
}

function onTyping({ from }) {
  S.typingUntil.set(from, Date.now() + 5000);
  renderTyping();
  setTimeout(renderTyping, 5100);
}

let friendsTimer = 0;
function onFriend(ev) {
  if (ev.kind === FE_ADDED) conv(userKey(ev.peer));
  clearTimeout(friendsTimer);
  friendsTimer = setTimeout(refreshFriends, 150);
  if (ev.kind === FE_REQUEST_RECEIVED) renderContacts();
}

let groupsTimer = 0;
function onGroup(ev) {
  groupConv(ev.groupId);
  clearTimeout(groupsTimer);
  groupsTimer = setTimeout(refreshGroups, 150);
}

async function refreshFriends() {
  try {
    S.friends = await S.client.friends();
    for (const f of S.friends) if (f.state === FRIEND && !S.convs.has(userKey(f.username))) conv(userKey(f.username));
  } catch (e) {
    console.warn("friend list", e);
  }
  renderContacts();
  renderList();
}

async function refreshGroups() {
  try {
    const gs = await S.client.groups();
    S.groups = new Map(gs.map((g) => [String(g.groupId), g]));
    for (const g of gs) conv(groupKey(g.groupId), { name: g.name });
  } catch (e) {
    console.warn("group list", e);
  }
  renderList();
  if (S.open) renderConv();
}

// ---- read receipts -----------------------------------------------------------------------

const readTimers = new Map();
function scheduleRead(c) {
  clearTimeout(readTimers.get(c.key));
  readTimers.set(c.key, setTimeout(() => sendRead(c), 200));
}

async function sendRead(c) {
  const theirs = c.msgs.filter((m) => m.id && !m.note && m.from !== S.me);
  const last = theirs.at(-1);
  if (!last || !gt(last.id, c.myRead)) return;
  const was = c.myRead;
  c.myRead = last.id;
  saveSoon();
  try {
    if (c.kind === "user") await S.client.markRead(c.peer, big(last.id));
    else if (last.gseq) await S.client.markGroupRead(big(c.groupId), big(last.gseq));
  } catch (e) {
    if (c.myRead === last.id) c.myRead = was;
    console.warn("read receipt", e);
  }
}

// ---- sending -----------------------------------------------------------------------------

/** A random non-zero u64: the client_msg_id a send goes with. */
function newClientMsgId() {
  const v = crypto.getRandomValues(new BigUint64Array(1))[0];
  return v === 0n ? 1n : v;
}

function pending(c, fields) {
  const cmid = newClientMsgId();
  const m = { key: `l${++localIds}`, id: null, local: true, seqLocal: localIds, from: S.me,
              time: Date.now(), text: "", media: null, status: "sending", cmid: String(cmid), ...fields };
  c.msgs.push(m);
  changed(c);
  return m;
}

async function sendText(c, text) {
  const m = pending(c, { text, hasMedia: false });
  try {
    const opts = { clientMsgId: BigInt(m.cmid) };
    const ack = c.kind === "user"
      ? await S.client.sendText(c.peer, text, opts)
      : await S.client.sendGroupText(big(c.groupId), text, mentionsIn(text, c), opts);
    settle(c, m, ack);
  } catch (e) {
    m.status = "failed";
    m.error = describe(e);
    changed(c);
  }
}

function mentionsIn(text, c) {
  const g = S.groups.get(c.groupId);
  const names = new Set((g?.members || []).map((x) => x.username));
  return [...text.matchAll(/@([\w.-]+)/g)].map((x) => x[1]).filter((n) => names.has(n));
}

/** The ack of a pending message: it has an id now (the stored copy may have come first). */
function settle(c, m, ack) {
  const id = String(ack.msgId);
  const other = c.msgs.find((x) => x !== m && x.id === id);
  if (other) {
    c.msgs.splice(c.msgs.indexOf(m), 1);
  } else {
    if (!m.id) {
      m.id = id;
      m.time = Number(ack.timeMs) || m.time;
    }
    if (m.status === "sending") m.status = "sent";
  }
  sortMsgs(c);
  changed(c);
}

/** A JPEG thumbnail no larger than THUMB_MAX px on its longer side. */
async function thumbnail(file) {
  const bmp = await createImageBitmap(file);
  const scale = Math.min(1, THUMB_MAX / Math.max(bmp.width, bmp.height));
  const w = Math.max(1, Math.round(bmp.width * scale)), h = Math.max(1, Math.round(bmp.height * scale));
  const canvas = document.createElement("canvas");
  canvas.width = w;
  canvas.height = h;
  const g = canvas.getContext("2d");
  g.fillStyle = "#fff";
  g.fillRect(0, 0, w, h);
  g.drawImage(bmp, 0, 0, w, h);
  const blob = await new Promise((ok) => canvas.toBlob(ok, "image/jpeg", 0.8));
  const out = { bytes: new Uint8Array(await blob.arrayBuffer()), w, h, width: bmp.width, height: bmp.height, blob };
  bmp.close();
  return out;
}

async function sendImage(c, file) {
  const m = pending(c, { hasMedia: true, status: "uploading", progress: 0 });
  try {
    const t = await thumbnail(file);
    const bytes = new Uint8Array(await file.arrayBuffer());
    m.localThumb = URL.createObjectURL(t.blob);
    m.localOrig = URL.createObjectURL(file);
    m.media = { id: "", thumb: "", type: file.type, w: t.width, h: t.height, size: bytes.length };
    changed(c);
    const to = c.kind === "user" ? { user: c.peer } : { groupId: big(c.groupId) };
    const ack = await S.client.sendImage(to, bytes, {
      contentType: file.type || "application/octet-stream",
      width: t.width, height: t.height, thumbnail: t.bytes, thumbWidth: t.w, thumbHeight: t.h,
      clientMsgId: BigInt(m.cmid),
      onProgress: (p) => {
        // The thumbnail is small: it counts for the first 5 %.
        const f = p.total ? p.sent / p.total : 1;
        m.progress = p.phase === "thumbnail" ? 0.05 * f : 0.05 + 0.95 * f;
        updateProgress(m);
      },
      onSent: (a) => settle(c, m, a),
    });
    m.status = "sent";
    m.progress = 1;
    settle(c, m, ack);
  } catch (e) {
    m.status = "failed";
    m.error = describe(e);
    changed(c);
  }
}

// ---- media downloads (thumbnail first, then the original) ---------------------------------

const media = new Map(); // media id → { url, state: "loading" | "done" | "error" }

function fetchMedia(id, type) {
  let e = media.get(id);
  if (e) return e.promise || Promise.resolve(e);
  e = { url: "", state: "loading" };
  media.set(id, e);
  e.promise = S.client.downloadMedia(id).then((bytes) => {
    e.url = URL.createObjectURL(new Blob([bytes], { type: type || "application/octet-stream" }));
    e.state = "done";
    return e;
  }, (err) => {
    e.state = "error";
    e.error = describe(err);
    media.delete(id); // try again at the next render
    return e;
  });
  return e.promise;
}

/** Loads the pictures of a message into its figure: the thumbnail at once, then the original. */
async function loadPictures(m, fig) {
  const img = fig.querySelector("img");
  const show = (e, which) => {
    if (!e || e.state !== "done") return false;
    if (img.dataset.state === "original") return true;
    img.src = e.url;
    img.dataset.state = which;
    fig.dataset.state = which;
    return true;
  };
  const ref = m.media;
  if (!ref || !ref.id) {
    if (m.localThumb && !img.dataset.state) { img.src = m.localThumb; img.dataset.state = "thumb"; fig.dataset.state = "thumb"; }
    return;
  }
  if (ref.thumb && !show(media.get(ref.thumb), "thumb")) {
    show(await fetchMedia(ref.thumb, "image/jpeg"), "thumb");
  }
  const o = await fetchMedia(ref.id, ref.type);
  if (!show(o, "original") && o.state === "error") {
    fig.dataset.state = "error";
    fig.querySelector("figcaption").textContent = `Image not loaded: ${o.error}`;
  }
}

// ---- drawing -----------------------------------------------------------------------------

let drawQueued = false;
const dirty = new Set();
function changed(c) {
  dirty.add(c.key);
  saveSoon();
  if (drawQueued) return;
  drawQueued = true;
  requestAnimationFrame(() => {
    drawQueued = false;
    renderList();
    if (S.open && dirty.has(S.open)) renderConv();
    dirty.clear();
  });
}

function lastText(c) {
  const m = c.msgs.at(-1);
  if (!m) return "";
  if (m.note) return m.note;
  const who = c.kind === "group" ? `${m.from === S.me ? "You" : m.from}: ` : m.from === S.me ? "You: " : "";
  if (m.recalled) return "Message recalled";
  if (m.media || m.hasMedia) return `${who}[image]`;
  return who + m.text;
}

function renderList() {
  const ul = $("#conv-list");
  const convs = [...S.convs.values()].sort((a, b) => b.lastTime - a.lastTime || a.name.localeCompare(b.name));
  const total = convs.reduce((n, c) => n + c.unread, 0);
  $("#unread-total").hidden = total === 0;
  $("#unread-total").textContent = String(total);
  $("#conv-empty").hidden = convs.length > 0;
  const focusedKey = document.activeElement?.closest?.("#conv-list")
    ? document.activeElement.dataset.key : null;
  ul.replaceChildren(...convs.map((c) => {
    const label = `${c.kind === "group" ? "Group" : "Chat with"} ${c.name}${c.unread ? `, ${c.unread} unread` : ""}`;
    const b = el("button", { type: "button", class: "conv-item", "data-key": c.key,
                             "aria-label": label, "aria-current": S.open === c.key ? "true" : null,
                             onclick: () => openConv(c.key) },
      el("span", { class: "avatar", "aria-hidden": "true", text: (c.name[0] || "?").toUpperCase() }),
      el("span", { class: "conv-main" },
        el("span", { class: "conv-name", text: c.kind === "group" ? `# ${c.name}` : c.name }),
        el("span", { class: "conv-last", text: lastText(c) })),
      el("span", { class: "conv-meta" },
        el("span", { class: "muted", text: c.lastTime ? time(c.lastTime) : "" }),
        c.unread ? el("span", { class: "badge", "data-unread": String(c.unread), text: String(c.unread) }) : null));
    return el("li", {}, b);
  }));
  if (focusedKey) ul.querySelector(`[data-key="${CSS.escape(focusedKey)}"]`)?.focus();
  document.title = total ? `(${total}) Ferry · chat` : "Ferry · chat";
}

function renderContacts() {
  const inc = S.friends.filter((f) => f.state === REQUEST_IN);
  const out = S.friends.filter((f) => f.state === REQUEST_OUT);
  const fr = S.friends.filter((f) => f.state === FRIEND).sort((a, b) => a.username.localeCompare(b.username));
  $("#requests-count").hidden = inc.length === 0;
  $("#requests-count").textContent = String(inc.length);
  $("#requests-empty").hidden = inc.length + out.length > 0;
  $("#friends-empty").hidden = fr.length > 0;
  $("#requests").replaceChildren(
    ...inc.map((f) => el("li", { class: "contact", "data-user": f.username, "data-state": "in" },
      el("span", { class: "conv-main" },
        el("span", { class: "conv-name", text: f.username }),
        el("span", { class: "conv-last", text: f.greeting || "wants to be friends" })),
      el("span", { class: "row" },
        el("button", { type: "button", class: "primary", "aria-label": `Accept ${f.username}`, text: "Accept",
                       onclick: () => friendAction("acceptFriend", f.username) }),
        el("button", { type: "button", "aria-label": `Decline ${f.username}`, text: "Decline",
                       onclick: () => friendAction("declineFriend", f.username) })))),
    ...out.map((f) => el("li", { class: "contact", "data-user": f.username, "data-state": "out" },
      el("span", { class: "conv-main" },
        el("span", { class: "conv-name", text: f.username }),
        el("span", { class: "conv-last", text: "request sent" })),
      el("button", { type: "button", "aria-label": `Withdraw the request to ${f.username}`, text: "Withdraw",
                     onclick: () => friendAction("removeFriend", f.username) }))));
  $("#friends").replaceChildren(...fr.map((f) => el("li", { class: "contact", "data-user": f.username, "data-state": "friend" },
    el("span", { class: "avatar", "aria-hidden": "true", text: f.username[0].toUpperCase() }),
    el("span", { class: "conv-main" }, el("span", { class: "conv-name", text: f.username })),
    el("button", { type: "button", "aria-label": `Message ${f.username}`, text: "Message",
                   onclick: () => { showTab("chats"); openConv(userKey(f.username)); } }))));
}

async function friendAction(fn, user) {
  try {
    await S.client[fn](user);
  } catch (e) {
    $("#add-result").textContent = describe(e);
  }
  refreshFriends();
}

const figures = new Map(); // message key → its <figure> (kept across redraws)

function figureFor(m) {
  let fig = figures.get(m.key);
  if (!fig) {
    const w = m.media?.w || 0, h = m.media?.h || 0;
    const scale = w && h ? Math.min(1, 240 / Math.max(w, h)) : 1;
    const img = el("img", { alt: `Image from ${m.from === S.me ? "you" : m.from}`,
      width: w ? Math.round(w * scale) : null, height: h ? Math.round(h * scale) : null });
    fig = el("figure", { class: "image", "data-state": "loading" }, img,
      el("progress", { max: "100", value: "0", "aria-label": "Upload progress", hidden: true }),
      el("figcaption", { class: "muted" }));
    figures.set(m.key, fig);
  }
  if (m.media?.id) { fig.dataset.mediaId = m.media.id; fig.dataset.thumbId = m.media.thumb; }
  return fig;
}

function updateProgress(m) {
  const fig = figures.get(m.key);
  if (!fig) return;
  const p = fig.querySelector("progress");
  const cap = fig.querySelector("figcaption");
  if (m.status === "uploading") {
    p.hidden = false;
    p.value = Math.round((m.progress || 0) * 100);
    cap.textContent = `Uploading ${Math.round((m.progress || 0) * 100)} %`;
    fig.dataset.upload = "active";
  } else {
    p.hidden = true;
    cap.textContent = m.status === "failed" ? "" : "";
    fig.dataset.upload = m.status === "failed" ? "failed" : "done";
  }
}

function renderConv() {
  const c = S.open ? S.convs.get(S.open) : null;
  $("#composer").hidden = !c;
  $("#conv-title").textContent = c ? (c.kind === "group" ? `# ${c.name}` : c.name) : "No conversation open";
  document.body.dataset.open = c ? c.key : "";
  renderTyping();
  const ol = $("#messages");
  if (!c) { ol.replaceChildren(); ol.dataset.conv = ""; return; }
  if (ol.dataset.conv !== c.key) { ol.replaceChildren(); ol.dataset.conv = c.key; }
  const mine = c.msgs.filter((m) => m.from === S.me && m.id && !m.note);
  const lastMine = c.msgs.filter((m) => m.from === S.me && !m.note).at(-1);
  const readOne = c.kind === "user" ? mine.filter((m) => !gt(m.id, c.peerRead)).at(-1) : null;
  const atBottom = ol.scrollHeight - ol.scrollTop - ol.clientHeight < 40;
  const now = Date.now();
  const items = c.msgs.map((m) => {
    if (m.note) return cached(m, m.note, () => el("li", { class: "note", "data-key": m.key, text: m.note }));
    const me = m.from === S.me;
    let st = "";
    if (me && !m.recalled) {
      if (m.status === "failed") st = `Not sent: ${m.error || ""}`;
      else if (m === readOne) st = "Read";
      else if (m === lastMine) st = m.status === "uploading" ? "Uploading…" : m.status === "sending" ? "Sending…" : "Sent";
    }
    const canRecall = me && !m.recalled && !!m.id && now - m.time < RECALL_WINDOW_MS;
    const sig = JSON.stringify([m.id, m.from, m.time, m.text, m.recalled, m.status, st, canRecall, !!(m.media || m.hasMedia), c.kind]);
    if (m.media || m.hasMedia) updateProgressSoon(m);
    return cached(m, sig, () => {
      const li = el("li", { class: `msg ${me ? "out" : "in"}`, "data-key": m.key, "data-id": m.id || null,
                            "data-from": m.from, "data-status": m.status });
      if (c.kind === "group" && !me) li.append(el("span", { class: "from", text: m.from }));
      if (m.recalled) {
        li.classList.add("recalled");
        li.append(el("span", { class: "body", text: me ? "You recalled a message" : `${m.from} recalled a message` }));
      } else {
        if (m.media || m.hasMedia) li.append(figureFor(m));
        if (m.text) li.append(el("span", { class: "body", text: m.text }));
      }
      const meta = el("span", { class: "meta" }, el("time", { datetime: new Date(m.time).toISOString(), text: time(m.time) }));
      if (st) meta.append(el("span", { class: `receipt${st === "Read" ? " read" : ""}`, "data-receipt": st, text: ` · ${st}` }));
      if (canRecall) {
        meta.append(el("button", { type: "button", class: "link recall", "aria-label": `Recall “${m.text || "image"}”`,
                                   text: "Recall", onclick: () => recall(c, m) }));
      }
      li.append(meta);
      return li;
    });
  });
  for (const m of c.msgs) if ((m.media || m.hasMedia) && !m.recalled) loadPictures(m, figureFor(m));
  // Move only what changed, so the live region announces only new messages.
  const focused = document.activeElement?.closest?.("#messages li")?.dataset.key;
  items.forEach((li, i) => { if (ol.children[i] !== li) ol.insertBefore(li, ol.children[i] || null); });
  while (ol.children.length > items.length) ol.lastElementChild.remove();
  if (focused && !ol.contains(document.activeElement)) ol.querySelector(`[data-key="${CSS.escape(focused)}"] button`)?.focus();
  if (atBottom || dirty.has("scroll")) ol.scrollTop = ol.scrollHeight;
  $("#messages").setAttribute("aria-label", `Messages with ${c.name}`);
}

/** The list item of a message, rebuilt only when what it shows (`sig`) changed. */
const nodes = new Map(); // message key → { sig, li }
function cached(m, sig, make) {
  const n = nodes.get(m.key);
  if (n && n.sig === sig) return n.li;
  const li = make();
  nodes.set(m.key, { sig, li });
  return li;
}

function updateProgressSoon(m) { queueMicrotask(() => updateProgress(m)); }

function renderTyping() {
  const c = S.open ? S.convs.get(S.open) : null;
  const until = c && c.kind === "user" ? S.typingUntil.get(c.peer) || 0 : 0;
  $("#typing").textContent = until > Date.now() ? `${c.peer} is typing…` : "";
}

async function recall(c, m) {
  try {
    await S.client.recall(big(m.id));
    Object.assign(m, { recalled: true, text: "", media: null });
    changed(c);
  } catch (e) {
    $("#conv-error").textContent = `Recall failed: ${describe(e)}`;
  }
}

function openConv(key) {
  S.open = key;
  const c = conv(key);
  c.unread = 0;
  $("#conv-error").textContent = "";
  document.body.dataset.view = "conv";
  dirty.add("scroll");
  renderConv();
  dirty.delete("scroll");
  const ol = $("#messages");
  ol.scrollTop = ol.scrollHeight;
  renderList();
  scheduleRead(c);
  saveSoon();
  $("#composer-input").focus();
}

function back() {
  const key = S.open;
  document.body.dataset.view = "list";
  if (window.matchMedia("(max-width: 44rem)").matches) {
    S.open = null;
    renderConv();
  }
  renderList();
  const b = key && $("#conv-list").querySelector(`[data-key="${CSS.escape(key)}"]`);
  (b || $("#tab-chats")).focus();
}

function showTab(which) {
  const chats = which === "chats";
  $("#tab-chats").setAttribute("aria-selected", String(chats));
  $("#tab-contacts").setAttribute("aria-selected", String(!chats));
  $("#tab-chats").tabIndex = chats ? 0 : -1;
  $("#tab-contacts").tabIndex = chats ? -1 : 0;
  $("#panel-chats").hidden = !chats;
  $("#panel-contacts").hidden = chats;
  document.body.dataset.view = "list";
  if (!chats) refreshFriends();
}

// ---- connection state --------------------------------------------------------------------

let bannerTimer = 0;
function onState(e) {
  S.online = e.state === "online";
  document.body.dataset.state = e.state;
  document.body.dataset.transport = e.transport || "";
  const how = e.transport === "ws" ? "WebSocket" : e.transport === "lp" ? "long-poll" : "";
  $("#status").textContent = S.online ? `online${how ? ` · ${how}` : ""}` : e.state;
  clearTimeout(bannerTimer);
  if (S.online) {
    S.everOnline = true;
    $("#offline").hidden = true;
  } else {
    // A first connect is not "offline"; a lost link is (after a short grace for blips).
    bannerTimer = setTimeout(() => { if (!S.online && S.client) $("#offline").hidden = false; },
      S.everOnline ? 300 : 3000);
  }
}

// ---- sign in / out -----------------------------------------------------------------------

async function clientFor(user) {
  const store = new IndexedDbStore(`ferry-chat-${user}`);
  const client = await FerryClient.create({ store });
  return { client, store };
}

/** A synced event's listener: applies it, and answers once it is stored (see saveSoon). */
function stored(apply) {
  return (e) => {
    apply(e);
    return saveSoon();
  };
}

async function start(client, store, user) {
  S.client = client;
  S.store = store;
  S.me = user;
  localStorage.setItem(LAST_USER_KEY, user);
  await load();
  S.unsubs = [
    client.on("state", onState),
    client.on("message", stored(onMessage)),
    client.on("groupMessage", stored(onGroupMessage)),
    client.on("groupEntry", stored(onGroupEntry)),
    client.on("recall", stored(onRecall)),
    client.on("read", stored(onRead)),
    client.on("typing", onTyping),
    client.on("friend", stored(onFriend)),
    client.on("group", stored(onGroup)),
  ];
  $("#auth").hidden = true;
  $("#app").hidden = false;
  $("#signout").hidden = false;
  $("#me").textContent = `signed in as ${user}`;
  document.body.dataset.me = user;
  document.body.dataset.state = "connecting";
  $("#status").textContent = "connecting";
  renderList();
  renderConv();
  refreshFriends();
  refreshGroups();
  try {
    await client.connect();
  } catch (e) {
    if (e && (e.codeName === "UNAUTHORIZED" || e.codeName === "KICKED")) {
      await stop();
      showAuth(describe(e));
      return;
    }
    console.warn("connect", e);
  }
  refreshFriends();
  refreshGroups();
}

async function stop() {
  await save();
  for (const u of S.unsubs) u();
  S.unsubs = [];
  clearTimeout(bannerTimer);
  for (const e of media.values()) if (e.url) URL.revokeObjectURL(e.url);
  media.clear();
  figures.clear();
  nodes.clear();
  Object.assign(S, { client: null, store: null, me: "", convs: new Map(), friends: [],
                     groups: new Map(), open: null, online: false, everOnline: false });
  localStorage.removeItem(LAST_USER_KEY);
  $("#offline").hidden = true;
}

function showAuth(msg = "") {
  $("#app").hidden = true;
  $("#signout").hidden = true;
  $("#auth").hidden = false;
  $("#me").textContent = "";
  $("#status").textContent = "signed out";
  document.body.dataset.state = "signed-out";
  $("#auth-error").textContent = msg;
  $("#auth-user").focus();
}

async function authSubmit(signUp) {
  const user = $("#auth-user").value.trim();
  const pass = $("#auth-pass").value;
  const err = $("#auth-error");
  err.textContent = "";
  if (!user || !pass) { err.textContent = "Enter a user name and a password."; return; }
  const buttons = [$("#auth-signin"), $("#auth-signup")];
  buttons.forEach((b) => (b.disabled = true));
  try {
    const { client, store } = await clientFor(user);
    if (signUp) await client.register(user, pass);
    await client.signIn(user, pass);
    $("#auth-pass").value = "";
    await start(client, store, user);
  } catch (e) {
    err.textContent = describe(e);
  } finally {
    buttons.forEach((b) => (b.disabled = false));
  }
}

// ---- wiring ------------------------------------------------------------------------------

function wire() {
  $("#auth-form").addEventListener("submit", (e) => { e.preventDefault(); authSubmit(false); });
  $("#auth-signup").addEventListener("click", () => {
    if ($("#auth-form").reportValidity()) authSubmit(true);
  });
  $("#signout").addEventListener("click", async () => {
    const c = S.client;
    await stop();
    try { await c?.logout(); } catch (e) { console.warn("logout", e); }
    showAuth("Signed out.");
  });
  $("#tab-chats").addEventListener("click", () => showTab("chats"));
  $("#tab-contacts").addEventListener("click", () => showTab("contacts"));
  $(".tabs").addEventListener("keydown", (e) => {
    if (e.key !== "ArrowLeft" && e.key !== "ArrowRight") return;
    const to = $("#tab-chats").getAttribute("aria-selected") === "true" ? "contacts" : "chats";
    showTab(to);
    $(`#tab-${to}`).focus();
  });
  $("#back").addEventListener("click", back);
  $("#composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = $("#composer-input");
    const text = input.value.trim();
    const c = S.open && S.convs.get(S.open);
    if (!text || !c) return;
    input.value = "";
    sendText(c, text);
  });
  $("#composer-input").addEventListener("input", () => {
    const c = S.open && S.convs.get(S.open);
    if (!c || c.kind !== "user" || !S.online) return;
    if (Date.now() - S.lastTypingSent < 3000) return;
    S.lastTypingSent = Date.now();
    S.client.typing(c.peer).catch(() => {});
  });
  $("#image-input").addEventListener("change", (e) => {
    const c = S.open && S.convs.get(S.open);
    const file = e.target.files && e.target.files[0];
    e.target.value = "";
    if (c && file) sendImage(c, file);
  });
  $("#add-friend").addEventListener("submit", async (e) => {
    e.preventDefault();
    const user = $("#add-user").value.trim();
    const out = $("#add-result");
    if (!user) return;
    if (user === S.me) { out.textContent = "That is you."; return; }
    out.textContent = "Sending…";
    try {
      await S.client.requestFriend(user, $("#add-greeting").value.trim() || undefined);
      out.textContent = `Request sent to ${user}.`;
      $("#add-user").value = "";
      $("#add-greeting").value = "";
    } catch (err) {
      out.textContent = describe(err);
    }
    refreshFriends();
  });
  $("#new-group").addEventListener("click", openGroupDialog);
  $("#group-cancel").addEventListener("click", () => $("#group-dialog").close());
  $("#group-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const name = $("#group-name").value.trim();
    const members = [...document.querySelectorAll("#group-members input:checked")].map((x) => x.value);
    const out = $("#group-error");
    if (!name) { out.textContent = "Give the group a name."; return; }
    if (!members.length) { out.textContent = "Pick at least one friend."; return; }
    out.textContent = "";
    try {
      const g = await S.client.createGroup(name, members);
      S.groups.set(String(g.groupId), g);
      conv(groupKey(g.groupId), { name: g.name, lastTime: Date.now() });
      $("#group-dialog").close();
      openConv(groupKey(g.groupId));
    } catch (err) {
      out.textContent = describe(err);
    }
  });
  document.addEventListener("keydown", (e) => {
    if (e.key !== "Escape" || $("#group-dialog").open) return;
    if (document.body.dataset.view === "conv") { e.preventDefault(); back(); }
  });
  document.addEventListener("visibilitychange", () => {
    const c = S.open && S.convs.get(S.open);
    if (c && document.visibilityState === "visible") { c.unread = 0; scheduleRead(c); changed(c); }
  });
  // The browser knows it lost the network before the link does: say so at once.
  window.addEventListener("offline", () => { if (S.client) $("#offline").hidden = false; });
  window.addEventListener("online", () => { if (S.online) $("#offline").hidden = true; });
  // Recall buttons expire after two minutes, "typing…" after five seconds.
  setInterval(() => { if (S.open) renderConv(); }, 15000);
}

async function openGroupDialog() {
  await refreshFriends();
  const fr = S.friends.filter((f) => f.state === FRIEND);
  $("#group-members").replaceChildren(...fr.map((f) => el("label", { class: "check" },
    el("input", { type: "checkbox", value: f.username, name: "member" }), ` ${f.username}`)));
  $("#group-none").hidden = fr.length > 0;
  $("#group-error").textContent = "";
  $("#group-name").value = "";
  $("#group-dialog").showModal();
  $("#group-name").focus();
}

async function boot() {
  wire();
  const last = localStorage.getItem(LAST_USER_KEY);
  if (last) {
    try {
      const { client, store } = await clientFor(last);
      if (client.signedIn) {
        await start(client, store, client.username || last);
        return;
      }
    } catch (e) {
      console.warn("restoring the session", e);
    }
  }
  showAuth();
}

boot();

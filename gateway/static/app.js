// Syncopate Web Player: signs in with OAuth 2.0 + PKCE (the built-in public client), is a Connect
// device on /v1/ws, and shows the user's library, search and live collaborative playlists.
// Plain ES module, no dependencies. docs/protocol.md and docs/connect.md describe the messages.

const CLIENT_ID = "syncopatewebplayer";
const REDIRECT = location.origin + "/";
const SCOPES = ["user-read-private", "user-read-email", "user-read-playback-state", "user-modify-playback-state",
  "user-read-currently-playing", "streaming", "playlist-read-private", "playlist-read-collaborative",
  "playlist-modify-private", "playlist-modify-public", "user-library-read", "user-library-modify"].join(" ");
const DEVICE_NAME = "Web Player (Chromium)";
const $ = (sel) => document.querySelector(sel);

const MESSAGES = {
  NO_ACTIVE_DEVICE: "Nothing is playing: play something or pick a device first.",
  PREMIUM_REQUIRED: "Controlling playback needs a Premium account.",
  RATE_LIMITED: "Too many requests: slow down for a moment.",
  FORBIDDEN: "You may not do that.",
  NOT_FOUND: "That no longer exists.",
  CONFLICT: "Someone changed this meanwhile: try again.",
  TOKEN_EXPIRED: "Your sign-in expired: sign in again.",
  SESSION_ENDED: "This device was signed out: sign in again.",
  HOST_UNAVAILABLE: "The server is busy restarting a part of itself: try again.",
};

const st = {
  token: null, refresh: null, expiresAt: 0, user: null, ws: null, nextId: 1, pending: new Map(),
  offset: 0, cluster: null, deviceId: null, playlist: null, entries: [], trackInfo: new Map(),
  backoff: 500, refreshTimer: null, heartbeat: null, registered: false,
  stream: null, audioUri: null, audioUrl: null, audioLoad: 0,
};

// -- errors in words ---------------------------------------------------------------------------
function say(text, info = false) {
  const el = $("#status");
  el.textContent = text;
  el.className = info ? "info" : "";
  el.hidden = !text;
}
function explain(err) {
  if (!err) return "Something went wrong.";
  const code = err.code || err.reason;
  return MESSAGES[code] || err.message || err.error_description || String(err);
}

// -- OAuth 2.0 with PKCE ---------------------------------------------------------------------------
const b64url = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes)))
  .replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
function randomString(n = 32) { return b64url(crypto.getRandomValues(new Uint8Array(n))); }

async function signIn() {
  const verifier = randomString(48), state = randomString(16);
  const challenge = b64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
  sessionStorage.setItem("pkce", JSON.stringify({ verifier, state }));
  const q = new URLSearchParams({ client_id: CLIENT_ID, response_type: "code", redirect_uri: REDIRECT, state,
    scope: SCOPES, code_challenge_method: "S256", code_challenge: challenge });
  location.assign("/authorize?" + q);
}

async function tokenRequest(params) {
  const r = await fetch("/api/token", { method: "POST", body: new URLSearchParams(params),
    headers: { "Content-Type": "application/x-www-form-urlencoded" } });
  const body = await r.json();
  if (!r.ok) throw body;
  saveTokens(body);
  return body;
}

function saveTokens(t) {
  st.token = t.access_token;
  if (t.refresh_token) st.refresh = t.refresh_token;
  st.expiresAt = Date.now() + t.expires_in * 1000;
  sessionStorage.setItem("tokens", JSON.stringify({ token: st.token, refresh: st.refresh, expiresAt: st.expiresAt }));
  clearTimeout(st.refreshTimer);
  st.refreshTimer = setTimeout(refreshTokens, Math.max(5000, t.expires_in * 1000 - 60000));
}

async function refreshTokens() {
  try {
    await tokenRequest({ grant_type: "refresh_token", refresh_token: st.refresh, client_id: CLIENT_ID });
    if (st.ws && st.ws.readyState === WebSocket.OPEN) await send("auth", { token: st.token });
  } catch (err) {
    say("Your sign-in could not be renewed: " + explain(err));
    signedOut();
  }
}

async function handleRedirect() {
  const q = new URLSearchParams(location.search);
  if (!q.has("code") && !q.has("error")) return;
  const saved = JSON.parse(sessionStorage.getItem("pkce") || "{}");
  history.replaceState(null, "", "/");
  sessionStorage.removeItem("pkce");
  if (q.get("state") !== saved.state) { say("The sign-in answer did not match this page: sign in again."); return; }
  if (q.has("error")) { say(q.get("error") === "access_denied" ? "Sign-in was cancelled." : "Sign-in failed: " + q.get("error")); return; }
  await tokenRequest({ grant_type: "authorization_code", code: q.get("code"), redirect_uri: REDIRECT,
    client_id: CLIENT_ID, code_verifier: saved.verifier });
}

function tokenClaims() {
  try { return JSON.parse(atob(st.token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/"))); } catch { return {}; }
}

async function signOut() {
  const sid = tokenClaims().sid;
  try { if (sid) await api("DELETE", `/v1/me/sessions/${encodeURIComponent(sid)}`); } catch { /* signed out anyway */ }
  signedOut();
}

function signedOut() {
  sessionStorage.removeItem("tokens");
  st.token = st.refresh = null;
  clearTimeout(st.refreshTimer);
  if (st.ws) { st.ws.onclose = null; st.ws.close(); st.ws = null; }
  leavePresence();
  $("#app").hidden = $("#player").hidden = $("#signout").hidden = true;
  $("#login").hidden = false;
  $("#me").textContent = "";
  setConn(false);
}

// -- REST ----------------------------------------------------------------------------------------
async function api(method, path, body) {
  const r = await fetch(path, { method, headers: { Authorization: `Bearer ${st.token}`,
    ...(body ? { "Content-Type": "application/json" } : {}) }, body: body ? JSON.stringify(body) : undefined });
  if (r.status === 204) return null;
  const data = await r.json().catch(() => null);
  if (!r.ok) throw (data && data.error) || { message: `HTTP ${r.status}` };
  return data;
}

// -- the websocket ---------------------------------------------------------------------------------
function setConn(online, text) {
  const el = $("#conn");
  el.textContent = text || (online ? "online" : "offline");
  el.className = online ? "conn online" : "conn";
}

function send(type, payload = {}) {
  return new Promise((resolve, reject) => {
    if (!st.ws || st.ws.readyState !== WebSocket.OPEN) { reject({ message: "Not connected: reconnecting…" }); return; }
    const id = st.nextId++;
    st.pending.set(id, { resolve, reject });
    st.ws.send(JSON.stringify({ id, type, payload, op_id: type === "ping" ? undefined : `web-${randomString(9)}` }));
  });
}

function connect() {
  setConn(false, "connecting");
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/ws?token=${encodeURIComponent(st.token)}&client=web`);
  st.ws = ws;
  ws.onmessage = (ev) => onFrame(JSON.parse(ev.data));
  ws.onclose = (ev) => {
    for (const p of st.pending.values()) p.reject({ message: "The connection dropped." });
    st.pending.clear();
    st.registered = false;
    clearInterval(st.heartbeat);
    if (st.ws !== ws) return;
    if (ev.code === 4001) { say(MESSAGES.SESSION_ENDED); signedOut(); return; }
    setConn(false, "reconnecting");
    const delay = st.backoff;
    st.backoff = Math.min(st.backoff * 2, 10000);
    setTimeout(async () => {
      if (st.ws !== ws) return;
      if (ev.code === 4401 || Date.now() > st.expiresAt - 30000) await refreshTokens();
      if (st.token) connect();
    }, delay);
  };
}

async function onFrame(f) {
  if (f.type === "result" || f.type === "error" || f.type === "pong") {
    const p = st.pending.get(f.id);
    if (!p) return;
    st.pending.delete(f.id);
    if (f.type === "error") p.reject(f.error); else p.resolve(f.payload);
    return;
  }
  if (f.type === "hello") {
    st.offset = f.payload.server_time_ms - Date.now();
    st.backoff = 500;
    setConn(true);
    $("#conn").dataset.connects = String(Number($("#conn").dataset.connects || 0) + 1);
    say("");
    await register();
    if (st.playlist) openPlaylist(st.playlist.id, true);
    return;
  }
  if (f.type === "player.changed" || (f.type === "resync" && f.entity?.startsWith("devicegroup:"))) {
    renderCluster(f.payload);
    if (f.type === "player.changed") playAudio(f.payload);
  } else if (f.type === "stream.manifest") {
    st.stream = f.payload;               // fresh signed URLs for the same tracks (docs/rights.md)
  } else if (f.entity && st.playlist && f.entity === `playlist:${st.playlist.id}`) {
    if (f.type === "playlist.changed") applyDelta(f.payload.delta || []);
    else if (f.type === "resync") loadPlaylistState(f.payload);
    else if (f.type === "subscription.ended") { say("You no longer have access to this playlist."); closePlaylist(); }
  } else if (f.type === "library.changed") {
    loadLibrary().catch(() => {});
  } else if (f.type === "session.ended") {
    say(MESSAGES.SESSION_ENDED);
  } else if (f.type === "auth.expired") {
    await refreshTokens();
  }
}

async function register() {
  try {
    const cluster = await send("device.register", { device_id: st.deviceId, name: DEVICE_NAME, type: "computer",
      volume_percent: Number($("#volume").value) });
    st.registered = true;
    renderCluster(cluster);
    clearInterval(st.heartbeat);
    st.heartbeat = setInterval(() => send("device.heartbeat", { device_id: st.deviceId }).catch(() => {}),
      cluster.heartbeat_interval_ms || 10000);
  } catch (err) { say("This browser could not join your devices: " + explain(err)); }
}

// -- audio: this browser plays what the edge serves when it is the active device (docs/rights.md) --
function audioEl() {
  let a = $("#audio");
  if (!a) {
    a = document.createElement("audio"); a.id = "audio"; a.preload = "auto";
    a.onloadedmetadata = () => { a.dataset.duration = String(a.duration); };   // decoded: what tests look for
    document.body.append(a);
  }
  return a;
}

async function playAudio(c) {
  const a = audioEl();
  const p = c.player || {};
  if (c.active_device_id !== st.deviceId || !p.track) {   // another device plays (or nothing): stay silent
    a.pause();
    return;
  }
  if (c.stream) st.stream = c.stream;
  const cur = st.stream && st.stream.tracks.find((t) => t.current);
  if (cur && cur.uri === p.track.uri && st.audioUri !== cur.uri) {
    // The URL alone opens nothing: the edge wants this user's token and this device, so fetch it
    // with them and hand the <audio> element the bytes.
    const load = ++st.audioLoad;
    const best = String(cur.bitrates[cur.bitrates.length - 1]);
    try {
      const r = await fetch(cur.urls[best], { headers: { Authorization: `Bearer ${st.token}` } });
      if (!r.ok) throw { code: "STREAM", message: `the edge answered ${r.status}` };
      const blob = await r.blob();
      if (load !== st.audioLoad) return;          // a newer track started meanwhile
      if (st.audioUrl) URL.revokeObjectURL(st.audioUrl);
      st.audioUrl = URL.createObjectURL(blob);
      st.audioUri = cur.uri;
      delete a.dataset.duration;
      a.src = st.audioUrl;
      a.dataset.uri = cur.uri;
    } catch (err) { say("Could not load the audio: " + explain(err)); return; }
  }
  if (st.audioUri !== p.track.uri) return;
  const want = position() / 1000;
  if (Math.abs(a.currentTime - want) > 1.5) a.currentTime = want;
  if (p.is_playing) a.play().catch(() => {}); else a.pause();
}

// -- now playing and devices ---------------------------------------------------------------------
const fmt = (ms) => { const s = Math.max(0, Math.floor(ms / 1000)); return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`; };

function position() {
  const p = st.cluster && st.cluster.player;
  if (!p || !p.track) return 0;
  const now = Date.now() + st.offset;
  const pos = p.position_as_of_timestamp + (p.is_playing ? (now - p.timestamp) * (p.playback_speed || 1) : 0);
  return Math.min(p.duration || p.track.duration_ms || 0, Math.max(0, pos));
}

function renderCluster(c) {
  if (!c) return;
  if (st.cluster && c.revision !== undefined && st.cluster.revision > c.revision) return;
  st.cluster = c;
  const p = c.player || {};
  const active = (c.devices || []).find((d) => d.id === c.active_device_id);
  $("#now-name").textContent = p.track ? p.track.name : "Nothing playing";
  $("#now-artist").textContent = p.track ? (p.track.artists || []).map((a) => a.name).join(", ") : "";
  $("#active-device").textContent = active ? `Playing on ${active.name}` : "No active device";
  $("#active-device").dataset.device = active ? active.name : "";
  $("#playpause").textContent = p.is_playing ? "Pause" : "Play";
  $("#playpause").title = p.is_playing ? "Pause" : "Play";
  $("#shuffle").setAttribute("aria-pressed", String(!!p.shuffle));
  $("#repeat").textContent = `Repeat: ${p.repeat || "off"}`;
  if (active && typeof active.volume_percent === "number") $("#volume").value = active.volume_percent;
  const ul = $("#devices");
  ul.replaceChildren(...(c.devices || []).filter((d) => d.is_online !== false).map((d) => {
    const li = document.createElement("li");
    li.textContent = d.name + (d.id === st.deviceId ? " (this browser)" : "");
    li.dataset.deviceId = d.id;
    if (d.id === c.active_device_id) li.className = "active";
    else {
      const b = document.createElement("button");
      b.textContent = "Transfer here";
      b.onclick = () => command("player.transfer", { device_ids: [d.id], play: true });
      li.append(" ", b);
    }
    return li;
  }));
  tick();
}

function tick() {
  const p = st.cluster && st.cluster.player;
  const dur = p && p.track ? (p.duration || p.track.duration_ms) : 0;
  const pos = position();
  $("#pos").textContent = fmt(pos);
  $("#dur").textContent = fmt(dur);
  const seek = $("#seek");
  if (document.activeElement !== seek) { seek.max = String(dur || 1); seek.value = String(pos); }
}

async function command(type, payload = {}) {
  try {
    if (st.cluster && typeof st.cluster.revision === "number") payload = { revision: st.cluster.revision, ...payload };
    await send(type, payload);
  } catch (err) { say(explain(err)); }
}

function playUris(uris, offset) {
  const args = { uris };
  if (offset !== undefined) args.offset = { position: offset };
  if (!st.cluster || !st.cluster.active_device_id) args.device_id = st.deviceId;
  return command("player.play", args);
}

// -- library, search -------------------------------------------------------------------------------
async function trackInfo(uris) {
  const missing = [...new Set(uris.filter((u) => !st.trackInfo.has(u)))].map((u) => u.split(":")[2]);
  for (let i = 0; i < missing.length; i += 50) {
    const r = await api("GET", `/v1/tracks?ids=${missing.slice(i, i + 50).join(",")}`);
    for (const t of r.tracks) if (t) st.trackInfo.set(t.uri, t);
  }
}
const trackLabel = (t) => t ? `${t.name} — ${t.artists.map((a) => a.name).join(", ")}` : "(unavailable)";

function trackItem(t, actions) {
  const li = document.createElement("li");
  li.append(trackLabel(t));
  const span = document.createElement("span");
  span.className = "track-actions";
  for (const [label, fn] of actions) {
    const b = document.createElement("button");
    b.textContent = label;
    b.onclick = fn;
    span.append(b);
  }
  li.append(span);
  return li;
}

async function loadLibrary() {
  const [pls, saved] = await Promise.all([api("GET", "/v1/me/playlists?limit=50"), api("GET", "/v1/me/tracks?limit=20")]);
  $("#playlists").replaceChildren(...pls.items.map((p) => {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.textContent = p.name;
    b.className = "playlist-link";
    b.onclick = () => openPlaylist(p.id);
    li.append(b);
    return li;
  }));
  $("#saved").replaceChildren(...saved.items.map((it) => trackItem(it.track, [["Play", () => playUris([it.track.uri])]])));
}

async function search(q) {
  try {
    const r = await api("GET", `/v1/search?q=${encodeURIComponent(q)}&type=track&limit=10`);
    for (const t of r.tracks.items) st.trackInfo.set(t.uri, t);
    $("#results").replaceChildren(...r.tracks.items.map((t) => trackItem(t, [
      ["Play", () => playUris([t.uri])],
      ["Save", () => api("PUT", `/v1/me/tracks?ids=${t.id}`).catch((e) => say(explain(e)))],
      ["Add to playlist", () => addToPlaylist(t.uri)],
    ])));
    if (!r.tracks.items.length) say(`Nothing found for “${q}”.`, true);
  } catch (err) { say("Search failed: " + explain(err)); }
}

// -- a playlist, live ----------------------------------------------------------------------------
async function openPlaylist(id, again = false) {
  try {
    if (st.playlist && st.playlist.id !== id && !again) send("unsubscribe", { entity: `playlist:${st.playlist.id}` }).catch(() => {});
    st.playlist = { id, name: st.playlist && st.playlist.id === id ? st.playlist.name : "" };
    const answer = await send("subscribe", { entity: `playlist:${id}` });
    await loadPlaylistState(answer);
    $("#playlist-view").hidden = false;
    if (presence.id !== id || !presence.ws) joinPresence(id);
  } catch (err) { say("The playlist could not be opened: " + explain(err)); }
}

async function loadPlaylistState(answer) {
  if (answer.mode === "full") {
    st.playlist.name = answer.playlist.name;
    st.playlist.owner = answer.playlist.owner && answer.playlist.owner.id;
    st.playlist.snapshot = answer.snapshot_id;
    st.entries = answer.items.map((e) => ({ entry_id: e.entry_id, uri: e.uri, added_by: e.added_by }));
  } else {
    for (const d of answer.deltas) applyDelta(d.delta, false);
  }
  const roles = (answer.access && answer.access.roles) || {};
  const people = [st.playlist.owner, ...Object.keys(roles)].filter((u, i, a) => u && a.indexOf(u) === i);
  $("#collaborators").textContent = people.length ? `Owner and collaborators: ${people.join(", ")}` : "";
  await renderPlaylist();
}

function applyDelta(delta, render = true) {
  for (const op of delta) {
    if (op.op === "delete") st.entries.splice(op.index, op.entry_ids.length);
    else if (op.op === "insert") st.entries.splice(op.index, 0, ...op.items.map((e) => ({ entry_id: e.entry_id, uri: e.uri, added_by: e.added_by })));
    else if (op.op === "details" && op.changes.name) st.playlist.name = op.changes.name;
  }
  if (render) renderPlaylist().catch((e) => say(explain(e)));
}

async function renderPlaylist() {
  await trackInfo(st.entries.map((e) => e.uri));
  $("#playlist-name").textContent = st.playlist.name;
  const n = st.entries.length;
  $("#playlist-rows").replaceChildren(...st.entries.map((e, i) => {
    const li = trackItem(st.trackInfo.get(e.uri), [
      ["Play", () => command("player.play", { context_uri: `spotify:playlist:${st.playlist.id}`, offset: { position: i },
        ...(!st.cluster || !st.cluster.active_device_id ? { device_id: st.deviceId } : {}) })],
      ...(i > 0 ? [["Up", () => edit("playlist.reorder", { range_start: i, insert_before: i - 1 })]] : []),
      ...(i < n - 1 ? [["Down", () => edit("playlist.reorder", { range_start: i, insert_before: i + 2 })]] : []),
      ["Remove", () => edit("playlist.remove", { tracks: [{ uri: e.uri, positions: [i] }] })],
    ]);
    li.dataset.entry = e.entry_id;
    if (e.added_by) li.title = `added by ${e.added_by}`;
    return li;
  }));
}

async function edit(type, payload) {
  try { await send(type, { id: st.playlist.id, ...payload }); } catch (err) { say(explain(err)); }
}

function addToPlaylist(uri) {
  if (!st.playlist) { say("Open a playlist first, then add to it.", true); return; }
  return edit("playlist.add", { uris: [uri] });
}

function closePlaylist() { st.playlist = null; leavePresence(); presence.id = null; $("#playlist-view").hidden = true; }

// -- presence: who has the playlist open, through Yjs awareness on /v1/yjs/playlists/{id} -----------
// The awareness protocol of y-protocols (lib0 encoding), so stock Yjs editors show up here and see
// this page. The document sync messages on the same socket are ignored: edits come over /v1/ws.
const AWARE = 1, QUERY_AWARENESS = 3, AWARE_RENEW_MS = 15000, AWARE_TIMEOUT_MS = 30000;
const presence = { ws: null, id: null, clientId: crypto.getRandomValues(new Uint32Array(1))[0] >>> 1, clock: 0,
  states: new Map(), timer: null };

function varUint(out, n) { while (n > 127) { out.push(128 | (n & 127)); n = Math.floor(n / 128); } out.push(n); }
function varBytes(out, bytes) { varUint(out, bytes.length); for (const b of bytes) out.push(b); }
function readerOf(buf) {
  let i = 0;
  const u = () => { let n = 0, mult = 1; for (;;) { const b = buf[i++]; n += (b & 127) * mult; mult *= 128; if (b < 128) return n; if (i > buf.length) throw new Error("eof"); } };
  const bytes = () => { const len = u(); const v = buf.subarray(i, i + len); i += len; return v; };
  return { u, bytes, done: () => i >= buf.length };
}

function announce(state) {
  if (!presence.ws || presence.ws.readyState !== WebSocket.OPEN) return;
  const update = [];
  varUint(update, 1); varUint(update, presence.clientId); varUint(update, ++presence.clock);
  varBytes(update, new TextEncoder().encode(JSON.stringify(state)));
  const msg = []; varUint(msg, AWARE); varBytes(msg, update);
  presence.ws.send(new Uint8Array(msg));
}

function onAwareness(update) {
  const r = readerOf(update);
  const n = r.u();
  for (let k = 0; k < n; k++) {
    const client = r.u(), clock = r.u(), json = new TextDecoder().decode(r.bytes());
    if (client === presence.clientId) continue;
    const state = JSON.parse(json);
    if (state === null) presence.states.delete(client);
    else presence.states.set(client, { state, seen: Date.now() });
  }
  renderPresence();
}

function renderPresence() {
  const now = Date.now();
  for (const [c, v] of presence.states) if (now - v.seen > AWARE_TIMEOUT_MS) presence.states.delete(c);
  const names = [...new Set([...presence.states.values()].map((v) => v.state && v.state.user && v.state.user.name).filter(Boolean))];
  $("#presence").textContent = names.length ? `Here now: ${names.join(", ")}` : "Only you are here";
}

function joinPresence(id) {
  leavePresence();
  presence.id = id;
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/yjs/playlists/${encodeURIComponent(id)}?token=${encodeURIComponent(st.token)}`);
  ws.binaryType = "arraybuffer";
  presence.ws = ws;
  let joined = false;
  const me = { user: { name: (st.user && (st.user.display_name || st.user.id)) || "someone", id: st.user && st.user.id } };
  ws.onmessage = (ev) => {
    const buf = new Uint8Array(ev.data);
    try {
      const r = readerOf(buf);
      const type = r.u();
      if (!joined) {              // the server speaks once this socket has joined: announce, then ask
        joined = true;
        announce(me);
        ws.send(new Uint8Array([QUERY_AWARENESS]));
      }
      if (type === AWARE) onAwareness(r.bytes());
    } catch { /* a sync message this page does not read */ }
  };
  ws.onclose = () => {
    if (presence.ws !== ws) return;
    presence.ws = null;
    if (st.playlist && st.playlist.id === id && st.token) setTimeout(() => { if (st.playlist && st.playlist.id === id) joinPresence(id); }, 2000);
  };
  clearInterval(presence.timer);
  presence.timer = setInterval(() => { announce(me); renderPresence(); }, AWARE_RENEW_MS);
  renderPresence();
}

function leavePresence() {
  clearInterval(presence.timer);
  if (presence.ws) {
    try { announce(null); } catch { /* closing anyway */ }
    const ws = presence.ws;
    presence.ws = null;
    ws.close();
  }
  presence.states.clear();
}

// -- wiring ---------------------------------------------------------------------------------------
function wire() {
  $("#signin").onclick = () => signIn().catch((e) => say(explain(e)));
  $("#signout").onclick = () => signOut();
  $("#playpause").onclick = () => {
    const p = st.cluster && st.cluster.player;
    if (p && p.is_playing) command("player.pause");
    else command("player.play", !st.cluster || !st.cluster.active_device_id ? { device_id: st.deviceId } : {});
  };
  $("#next").onclick = () => command("player.next");
  $("#prev").onclick = () => command("player.previous");
  $("#shuffle").onclick = () => command("player.shuffle", { state: !(st.cluster && st.cluster.player && st.cluster.player.shuffle) });
  $("#repeat").onclick = () => {
    const order = ["off", "context", "track"];
    const cur = (st.cluster && st.cluster.player && st.cluster.player.repeat) || "off";
    command("player.repeat", { state: order[(order.indexOf(cur) + 1) % 3] });
  };
  $("#seek").onchange = (ev) => command("player.seek", { position_ms: Math.round(Number(ev.target.value)) });
  $("#volume").onchange = (ev) => command("player.volume", { volume_percent: Number(ev.target.value) });
  $("#search-form").onsubmit = (ev) => { ev.preventDefault(); const q = $("#search").value.trim(); if (q) search(q); };
  $("#new-playlist").onsubmit = async (ev) => {
    ev.preventDefault();
    try {
      const p = await api("POST", "/v1/me/playlists", { name: $("#new-playlist-name").value, public: false, collaborative: true });
      $("#new-playlist-name").value = "";
      await loadLibrary();
      openPlaylist(p.id);
    } catch (err) { say("The playlist could not be created: " + explain(err)); }
  };
  $("#share").onsubmit = async (ev) => {
    ev.preventDefault();
    try {
      await api("PUT", `/v1/playlists/${st.playlist.id}/collaborators/${encodeURIComponent($("#share-user").value)}`, { role: "editor" });
      say(`Shared with ${$("#share-user").value}.`, true);
      $("#share-user").value = "";
    } catch (err) { say("Sharing failed: " + explain(err)); }
  };
  setInterval(tick, 250);
}

async function main() {
  wire();
  st.deviceId = localStorage.getItem("syncopate-device") || `web-${randomString(9)}`;
  localStorage.setItem("syncopate-device", st.deviceId);
  try { await handleRedirect(); } catch (err) { say("Sign-in failed: " + explain(err)); }
  if (!st.token) {
    const saved = JSON.parse(sessionStorage.getItem("tokens") || "null");
    if (saved && saved.expiresAt > Date.now() + 30000) {
      saveTokens({ access_token: saved.token, refresh_token: saved.refresh, expires_in: Math.floor((saved.expiresAt - Date.now()) / 1000) });
    }
  }
  if (!st.token) { $("#login").hidden = false; return; }
  try {
    st.user = await api("GET", "/v1/me");
  } catch (err) { say(explain(err)); signedOut(); return; }
  $("#me").textContent = st.user.display_name || st.user.id;
  $("#me").dataset.user = st.user.id;
  $("#login").hidden = true;
  $("#app").hidden = $("#player").hidden = $("#signout").hidden = false;
  connect();
  loadLibrary().catch((err) => say("Your library could not be loaded: " + explain(err)));
}

main();

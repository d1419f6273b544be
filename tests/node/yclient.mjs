// A scriptable Yjs client for the interop tests: UNMODIFIED npm `yjs` + `y-websocket` (the `ws`
// package as the WebSocket polyfill, BroadcastChannel disabled), editing playlists through
// /v1/yjs/playlists/{id}?token= with the documented schema (docs/playlist-document.md):
//   meta   Y.Map {name, description, public, collaborative}
//   tracks Y.Array of Y.Map {id, uri, added_by, added_at}
//
// One process holds any number of named clients (each its own Y.Doc and WebsocketProvider).
// Commands arrive as JSON lines on stdin, each with a request id `rid`; every command is answered
// with one JSON line on stdout: {"rid", "ok": true, ...} or {"rid", "ok": false, "error"}. Nothing else is
// written to stdout (diagnostics go to stderr).
//
// Commands (`c` names the client):
//   open      {c, base, room, token, connect?=true, load?: file, load_b64?: update}   a new Y.Doc,
//             optionally loaded from a file / base64 update written by `save` (an old copy)
//   connect / disconnect {c}            provider.connect() / provider.disconnect() (offline mode)
//   retarget  {c, base, token?}         drop the provider, keep the Y.Doc, connect to another server
//   close     {c}                       provider.destroy() (the Y.Doc stays readable)
//   save      {c, file?}                Y.encodeStateAsUpdate -> file and/or {update_b64}
//   wait      {c, timeout_ms?=10000, ...condition}   until the condition holds -> {state}; on the
//             deadline {ok: false, error: "timeout", state}. Conditions (all must hold):
//               synced, connected (bool), ids [exact order], has_ids, lacks_ids, length, unique_ids,
//               meta {subset}, peers (number of other awareness states), peer_state {subset of some
//               other client's awareness state}, no_peer_state {...}, expr (JS over `s` = state)
//   state     {c}                       -> {state}
//   seen      {c}                       -> {ids: every entry id ever present after a remote
//                                           transaction ("$raw" for non-Y.Map content, "$noid" for a
//                                           map without a string id), metas: every distinct meta seen}
//   insert    {c, index?=end, entries: [{id, uri, added_by, added_at}, ...]}   one transaction
//   insert_raw{c, index?=end, items: [json, ...]}     non-Y.Map content (invalid on purpose)
//   insert_map_later {c, index?=end, entry}   an empty Y.Map now, its keys in a later transaction
//   delete    {c, ids?: [...], index?, length?=1}      one transaction
//   move      {c, id, to}                delete + insert a copy with the same id, one transaction;
//                                        `to` is the index in the array after the delete
//   set_entry {c, id, key, value}        change a key of an existing entry (immutable: reverted)
//   set_meta  {c, values: {k: v}}, delete_meta {c, keys: [...]}
//   set_root  {c, root, key, value}      keyed content in another root map (junk: removed)
//   awareness {c, state}                 awareness.setLocalState(state) (null: leave)
//   quit      {}
//
// State: {client_id, synced, connected, tracks: [entry JSON | {$raw: value}], ids, meta,
//         peers: {clientID: state} (other clients' awareness states), closed_code (a terminal close
//         by the server, e.g. 4403 refused), last_close_code, pending (the doc holds updates it
//         can't integrate yet: something before them is missing)}
import * as Y from 'yjs'
import WebSocket from 'ws'
import { WebsocketProvider } from 'y-websocket'
import { readFileSync, writeFileSync } from 'node:fs'
import { createInterface } from 'node:readline'

const clients = new Map()
const out = o => process.stdout.write(JSON.stringify(o) + '\n')
const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))

function entryJSON (x) {
  return x instanceof Y.Map ? x.toJSON() : { $raw: x instanceof Y.AbstractType ? x.toJSON() : x }
}

function state (x) {
  const tracks = x.tracks.toArray().map(entryJSON)
  const peers = {}
  for (const [cid, st] of x.provider ? x.provider.awareness.getStates() : []) {
    if (cid !== x.doc.clientID) peers[cid] = st
  }
  return {
    client_id: x.doc.clientID,
    synced: !!(x.provider && x.provider.synced),
    connected: !!(x.provider && x.provider.wsconnected),
    tracks,
    ids: tracks.map(t => t.id),
    meta: x.meta.toJSON(),
    peers,
    pending: !!(x.doc.store.pendingStructs || x.doc.store.pendingDs),   // updates waiting for missing ones
    closed_code: x.closedCode ?? null,        // a terminal close by the server (4400..4499): no reconnect
    last_close_code: x.lastCloseCode ?? null
  }
}

function subset (want, have) {
  if (want === null || typeof want !== 'object') return want === have
  if (have === null || typeof have !== 'object') return false
  return Object.keys(want).every(k => subset(want[k], have[k]))
}

function holds (cond, s) {
  if (cond.synced !== undefined && s.synced !== cond.synced) return false
  if (cond.connected !== undefined && s.connected !== cond.connected) return false
  if (cond.ids && JSON.stringify(s.ids) !== JSON.stringify(cond.ids)) return false
  if (cond.has_ids && !cond.has_ids.every(i => s.ids.includes(i))) return false
  if (cond.lacks_ids && cond.lacks_ids.some(i => s.ids.includes(i))) return false
  if (cond.length !== undefined && s.tracks.length !== cond.length) return false
  if (cond.unique_ids && new Set(s.ids).size !== s.ids.length) return false
  if (cond.meta && !subset(cond.meta, s.meta)) return false
  const peers = Object.values(s.peers)
  if (cond.peers !== undefined && peers.length !== cond.peers) return false
  if (cond.peer_state && !peers.some(p => subset(cond.peer_state, p))) return false
  if (cond.no_peer_state && peers.some(p => subset(cond.no_peer_state, p))) return false
  if (cond.expr && !(new Function('s', `return (${cond.expr})`))(s)) return false  // eslint-disable-line no-new-func
  return true
}

function attach (x, base, token) {
  x.token = token
  x.provider = new WebsocketProvider(base, x.room, x.doc, {
    WebSocketPolyfill: WebSocket, disableBc: true, params: { token }, connect: x.connectOnOpen
  })
  x.provider.on('closed', ev => { x.closedCode = ev.code; x.changed() })
  x.provider.on('connection-close', ev => { if (ev) x.lastCloseCode = ev.code })
  for (const ev of ['status', 'sync']) x.provider.on(ev, () => x.changed())
  x.provider.awareness.on('change', () => x.changed())
  x.changed()
}

function open (cmd) {
  if (clients.has(cmd.c)) throw new Error(`client ${cmd.c} exists`)
  const doc = new Y.Doc()
  if (cmd.load) Y.applyUpdate(doc, readFileSync(cmd.load))
  if (cmd.load_b64) Y.applyUpdate(doc, Buffer.from(cmd.load_b64, 'base64'))
  const x = {
    name: cmd.c, room: cmd.room, doc, tracks: doc.getArray('tracks'), meta: doc.getMap('meta'),
    connectOnOpen: cmd.connect !== false, waiters: new Set(), seenIds: new Set(), seenMeta: new Set()
  }
  x.changed = () => { for (const w of x.waiters) w() }
  doc.on('afterTransaction', tr => {
    if (!tr.local) {
      for (const e of x.tracks.toArray()) {
        x.seenIds.add(!(e instanceof Y.Map) ? '$raw' : typeof e.get('id') === 'string' ? e.get('id') : '$noid')
      }
      x.seenMeta.add(JSON.stringify(x.meta.toJSON()))
    }
    x.changed()
  })
  attach(x, cmd.base, cmd.token)
  clients.set(cmd.c, x)
  return { client_id: doc.clientID }
}

function get (cmd) {
  const x = clients.get(cmd.c)
  if (!x) throw new Error(`no client ${cmd.c}`)
  return x
}

function indexOfId (x, id) {
  const arr = x.tracks.toArray()
  const i = arr.findIndex(e => e instanceof Y.Map && e.get('id') === id)
  if (i < 0) throw new Error(`no entry ${id}`)
  return i
}

const mapOf = e => new Y.Map(Object.entries(e))

async function wait (cmd) {
  const x = get(cmd)
  const timeout = cmd.timeout_ms ?? 10000
  let s = state(x)
  if (holds(cmd, s)) return { state: s }
  return await new Promise(resolve => {
    let timer = null
    const check = () => {
      s = state(x)
      if (holds(cmd, s)) { done(); resolve({ state: s }) }
    }
    const done = () => { clearTimeout(timer); x.waiters.delete(check) }
    x.waiters.add(check)
    timer = setTimeout(() => { done(); resolve({ ok: false, error: 'timeout', state: state(x) }) }, timeout)
  })
}

const ops = {
  open,
  connect: cmd => { get(cmd).provider.connect(); return {} },
  disconnect: cmd => { get(cmd).provider.disconnect(); get(cmd).changed(); return {} },
  retarget: cmd => {
    const x = get(cmd)
    x.provider.destroy()
    x.connectOnOpen = true
    attach(x, cmd.base, cmd.token ?? x.token)
    return {}
  },
  close: cmd => { const x = get(cmd); x.provider.destroy(); x.changed(); return {} },
  save: cmd => {
    const update = Y.encodeStateAsUpdate(get(cmd).doc)
    if (cmd.file) writeFileSync(cmd.file, update)
    return { update_b64: Buffer.from(update).toString('base64'), bytes: update.length }
  },
  wait,
  state: cmd => ({ state: state(get(cmd)) }),
  seen: cmd => {
    const x = get(cmd)
    return { ids: [...x.seenIds], metas: [...x.seenMeta].map(m => JSON.parse(m)) }
  },
  insert: cmd => {
    const x = get(cmd)
    x.doc.transact(() => x.tracks.insert(cmd.index ?? x.tracks.length, cmd.entries.map(mapOf)))
    return {}
  },
  insert_raw: cmd => {
    const x = get(cmd)
    x.doc.transact(() => x.tracks.insert(cmd.index ?? x.tracks.length, cmd.items))
    return {}
  },
  insert_map_later: cmd => {
    const x = get(cmd)
    const m = new Y.Map()
    x.doc.transact(() => x.tracks.insert(cmd.index ?? x.tracks.length, [m]))
    x.doc.transact(() => { for (const [k, v] of Object.entries(cmd.entry)) m.set(k, v) })
    return {}
  },
  delete: cmd => {
    const x = get(cmd)
    x.doc.transact(() => {
      if (cmd.ids) {
        for (const id of cmd.ids) x.tracks.delete(indexOfId(x, id), 1)
      } else {
        x.tracks.delete(cmd.index, cmd.length ?? 1)
      }
    })
    return {}
  },
  move: cmd => {
    const x = get(cmd)
    x.doc.transact(() => {
      const from = indexOfId(x, cmd.id)
      const entry = x.tracks.get(from).toJSON()
      x.tracks.delete(from, 1)
      x.tracks.insert(Math.min(cmd.to, x.tracks.length), [mapOf(entry)])
    })
    return {}
  },
  set_entry: cmd => {
    const x = get(cmd)
    x.tracks.get(indexOfId(x, cmd.id)).set(cmd.key, cmd.value)
    return {}
  },
  set_meta: cmd => {
    const x = get(cmd)
    x.doc.transact(() => { for (const [k, v] of Object.entries(cmd.values)) x.meta.set(k, v) })
    return {}
  },
  delete_meta: cmd => {
    const x = get(cmd)
    x.doc.transact(() => { for (const k of cmd.keys) x.meta.delete(k) })
    return {}
  },
  set_root: cmd => { get(cmd).doc.getMap(cmd.root).set(cmd.key, cmd.value); return {} },
  awareness: cmd => { get(cmd).provider.awareness.setLocalState(cmd.state); return {} }
}

const rl = createInterface({ input: process.stdin })
let pending = Promise.resolve()
for await (const line of rl) {
  if (!line.trim()) continue
  let cmd
  try {
    cmd = JSON.parse(line)
  } catch (e) {
    out({ rid: null, ok: false, error: `bad JSON: ${e.message}` })
    continue
  }
  if (cmd.op === 'quit') break
  // commands run concurrently (a `wait` must not block an edit on another client), each answered
  pending = Promise.resolve().then(async () => {
    try {
      const fn = ops[cmd.op]
      if (!fn) throw new Error(`unknown op ${cmd.op}`)
      const res = await fn(cmd)
      out({ rid: cmd.rid, ok: true, ...res })
    } catch (e) {
      out({ rid: cmd.rid, ok: false, error: String(e && e.stack ? e.stack : e) })
    }
  })
}
for (const x of clients.values()) { try { x.provider.destroy() } catch (e) {} }
await sleep(50)
process.exit(0)

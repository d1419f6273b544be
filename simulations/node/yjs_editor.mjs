// Yjs editors for `syncopate simulate collab`: unmodified Yjs clients (yjs + y-websocket) that edit
// playlists through /v1/yjs/playlists/{id}. Reads one JSON config from the file named by argv[2]:
//   {base: "ws://127.0.0.1:8080/v1/yjs/playlists", rate, seconds, settle_ms,
//    clients: [{pid, token, user, uris: [...], offline: [[at_s, dur_s], ...]}]}
// Writes JSON lines to stdout (t = unix ms, sub-ms precision):
//   {"ev":"synced","k"}                        the client finished its initial sync
//   {"ev":"sent","k","pid","uri","id","t"}     an entry this client appended
//   {"ev":"recv","k","pid","uri","t"}          an entry another replica added arrived here
//   {"ev":"offline"|"online","k","t"}
//   {"ev":"final","k","pid","entries":[[id, uri], ...]}   the replica at the end
//   {"ev":"done"}
import * as Y from 'yjs'
import WebSocket from 'ws'
import { WebsocketProvider } from 'y-websocket'
import { readFileSync } from 'node:fs'

const cfg = JSON.parse(readFileSync(process.argv[2], 'utf8'))
const now = () => performance.timeOrigin + performance.now()
const out = o => process.stdout.write(JSON.stringify(o) + '\n')
const sleep = ms => new Promise(r => setTimeout(r, ms))
let seq = 0

function start (c, k) {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(cfg.base, c.pid, doc, {
    WebSocketPolyfill: WebSocket, disableBc: true, params: { token: c.token }, resyncInterval: -1
  })
  const tracks = doc.getArray('tracks')
  let synced = false
  const ready = new Promise(resolve => provider.on('sync', s => { if (s && !synced) { synced = true; out({ ev: 'synced', k }); resolve() } }))
  tracks.observe(ev => {
    if (ev.transaction.local) return
    const t = now()
    for (const d of ev.changes.delta) {
      if (!d.insert) continue
      for (const it of d.insert) {
        if (it && it.get) out({ ev: 'recv', k, pid: c.pid, uri: it.get('uri'), id: it.get('id'), t })
      }
    }
  })
  return { c, k, doc, provider, tracks, ready, next: 0 }
}

const clients = cfg.clients.map(start)
await Promise.race([Promise.all(clients.map(x => x.ready)), sleep(30000)])
out({ ev: 'ready', synced: clients.filter(x => x.provider.synced).length })
let t0 = 0, end = 0
const period = 1000 / cfg.rate

async function offlineLoop (x) {
  for (const [at, dur] of x.c.offline || []) {
    const wait = t0 + at * 1000 - now()
    if (wait > 0) await sleep(wait)
    if (now() >= end) return
    x.provider.disconnect(); out({ ev: 'offline', k: x.k, t: now() })
    await sleep(dur * 1000)
    x.provider.connect(); out({ ev: 'online', k: x.k, t: now() })
  }
}

async function editLoop (x) {
  await sleep(Math.random() * period)
  while (now() < end) {
    if (x.next < x.c.uris.length) {
      const uri = x.c.uris[x.next++]
      const id = `y${x.k}-${seq++}-${Math.floor(Math.random() * 1e9).toString(36)}`
      const t = now()
      const pos = Math.floor(Math.random() * (x.tracks.length + 1))
      x.tracks.insert(pos, [new Y.Map([['id', id], ['uri', uri], ['added_by', x.c.user], ['added_at', Math.floor(Date.now())]])])
      out({ ev: 'sent', k: x.k, pid: x.c.pid, uri, id, t, online: x.provider.wsconnected })
    }
    await sleep(-Math.log(1 - Math.random()) * period)
  }
}

// commands on stdin, one per line: go | final | quit
const { createInterface } = await import('node:readline')
const rl = createInterface({ input: process.stdin })
for await (const line of rl) {
  const cmd = line.trim()
  if (cmd === 'go') {
    t0 = now(); end = t0 + cfg.seconds * 1000
    Promise.all(clients.flatMap(x => [editLoop(x), offlineLoop(x)])).then(() => out({ ev: 'load_done' }))
  } else if (cmd === 'final') {
    const deadline = now() + (cfg.settle_ms || 10000)
    while (now() < deadline && !clients.every(x => x.provider.wsconnected && x.provider.synced)) await sleep(20)
    for (const x of clients) {
      out({ ev: 'final', k: x.k, pid: x.c.pid, connected: x.provider.wsconnected, synced: x.provider.synced,
            entries: x.tracks.toArray().map(m => (m && m.get) ? [m.get('id'), m.get('uri')] : [null, null]) })
    }
    out({ ev: 'finals_done' })
  } else if (cmd === 'quit') {
    break
  }
}
for (const x of clients) x.provider.destroy()
out({ ev: 'done' })
process.exit(0)

// The web player in a real browser: two users (two browser contexts) sign in through the OAuth login
// page, edit one collaborative playlist and each sees the other's edit within a second; the first
// transfers playback to a websocket device and back. Screenshots of each main view go to docs/screenshots/.
// Run by tests/browser/test_web_player.py: node player.mjs CONFIG_JSON
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

const stdin = createInterface({ input: process.stdin });
const lines = stdin[Symbol.asyncIterator]();
async function ask(what) { console.log(what); const { value } = await lines.next(); return value; }   // the Python side acts

const cfg = JSON.parse(process.argv[2]);
const LIVE_MS = 1000;          // "each sees the other's edit within a second"
const shot = (page, name) => page.screenshot({ path: `${cfg.screenshots}/${name}.png` });

const browser = await chromium.launch({
  executablePath: cfg.chromium,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
const log = (...a) => console.log(new Date().toISOString(), ...a);
try {
  async function signedIn(user, password, screenshot) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    page.on("pageerror", (e) => log(`[${user}] page error:`, e.message));
    await page.goto(cfg.url + "/");
    await page.locator("#signin").click();
    await page.locator("#username").waitFor();
    if (screenshot) await shot(page, "login");
    await page.locator("#username").fill(user);
    await page.locator("#password").fill(password);
    await page.getByRole("button", { name: "Agree" }).click();
    await page.locator(`#me[data-user="${user}"]`).waitFor({ timeout: 10000 });
    await page.locator("#conn.online").waitFor({ timeout: 10000 });
    return page;
  }

  const a = await signedIn(cfg.alice, cfg.password, true);
  const b = await signedIn(cfg.bob, cfg.password, false);
  log("both signed in");

  // the web player is a Connect device of its own
  await a.locator("#devices li", { hasText: "Web Player (Chromium) (this browser)" }).waitFor();
  await a.locator("#devices li", { hasText: cfg.speaker }).waitFor();

  // both open the collaborative playlist
  for (const p of [a, b]) {
    await p.locator("button.playlist-link", { hasText: cfg.playlist_name }).click();
    await p.locator("#playlist-name", { hasText: cfg.playlist_name }).waitFor();
    await p.locator("#playlist-rows li").first().waitFor();
  }

  // presence: each sees the other in the playlist (Yjs awareness)
  await a.locator("#presence", { hasText: "Here now: Bob" }).waitFor({ timeout: 5000 });
  await b.locator("#presence", { hasText: "Here now: Alice" }).waitFor({ timeout: 5000 });
  log("presence shown");

  // alice adds a track from search: bob sees it within a second
  await a.locator("#search").fill(cfg.query);
  await a.getByRole("button", { name: "Search" }).click();
  const result = a.locator("#results li", { hasText: cfg.track_name }).first();
  await result.waitFor();
  await shot(a, "search");
  await result.getByRole("button", { name: "Add to playlist" }).click();
  const t0 = Date.now();
  await b.locator("#playlist-rows li", { hasText: cfg.track_name }).waitFor({ timeout: LIVE_MS });
  log(`bob saw alice's add after ${Date.now() - t0} ms`);
  await a.locator("#playlist-rows li", { hasText: cfg.track_name }).waitFor({ timeout: LIVE_MS });

  // bob moves the first entry down and removes alice's track: alice sees both within a second
  const firstBefore = await b.locator("#playlist-rows li").first().textContent();
  await b.locator("#playlist-rows li").first().getByRole("button", { name: "Down" }).click();
  const t1 = Date.now();
  await a.locator("#playlist-rows li").nth(1).filter({ hasText: firstBefore.split(" — ")[0] }).waitFor({ timeout: LIVE_MS });
  log(`alice saw bob's move after ${Date.now() - t1} ms`);
  await b.locator("#playlist-rows li", { hasText: cfg.track_name }).getByRole("button", { name: "Remove" }).click();
  const t2 = Date.now();
  await a.locator("#playlist-rows li", { hasText: cfg.track_name }).waitFor({ state: "detached", timeout: LIVE_MS });
  log(`alice saw bob's remove after ${Date.now() - t2} ms`);
  await shot(b, "playlist");

  // alice plays the playlist here, transfers to the websocket device and back
  await a.locator("#playlist-rows li").first().getByRole("button", { name: "Play" }).click();
  await a.locator("#active-device", { hasText: "Playing on Web Player (Chromium)" }).waitFor({ timeout: 5000 });
  await a.locator("#playpause[title=Pause]").waitFor();
  // the page is the active player: it fetched the track from the edge with its signed URL, and the
  // <audio> element decoded it (a WAV of the track's duration)
  const audio = a.locator("#audio[data-uri][data-duration]");
  try {
    await audio.waitFor({ state: "attached", timeout: 15000 });
  } catch (e) {
    throw new Error(`no audio: status "${await a.locator("#status").textContent()}", audio element ` +
      `${await a.locator("#audio").count()}, uri ${await a.locator("#audio").getAttribute("data-uri").catch(() => null)}`);
  }
  const seconds = Number(await audio.getAttribute("data-duration"));
  if (!(seconds > 10)) throw new Error(`the audio decoded to ${seconds} s`);
  log(`audio loaded: ${await audio.getAttribute("data-uri")}, ${seconds} s`);
  // the controls act through the server and show its answer (pushes)
  const firstTrack = await a.locator("#now-name").textContent();
  await a.locator("#next").click();
  await a.locator("#now-name").filter({ hasNotText: firstTrack }).waitFor({ timeout: 5000 });
  await a.locator("#prev").click();
  await a.locator("#now-name", { hasText: firstTrack }).waitFor({ timeout: 5000 });
  await a.locator("#shuffle").click();
  await a.locator('#shuffle[aria-pressed="true"]').waitFor({ timeout: 5000 });
  await a.locator("#repeat").click();
  await a.locator("#repeat", { hasText: "Repeat: context" }).waitFor({ timeout: 5000 });
  await a.locator("#seek").evaluate((el) => { el.value = "60000"; el.dispatchEvent(new Event("change")); });
  await a.locator("#pos", { hasText: /^1:0\d$/ }).waitFor({ timeout: 5000 });
  log("next, previous, shuffle, repeat, seek");
  await shot(a, "player");
  await a.locator("#devices li", { hasText: cfg.speaker }).getByRole("button", { name: "Transfer here" }).click();
  await a.locator("#active-device", { hasText: `Playing on ${cfg.speaker}` }).waitFor({ timeout: 5000 });
  log("transferred to the speaker");
  await a.locator("#devices li", { hasText: "(this browser)" }).getByRole("button", { name: "Transfer here" }).click();
  await a.locator("#active-device", { hasText: "Playing on Web Player (Chromium)" }).waitFor({ timeout: 5000 });
  log("transferred back");

  // a transfer made elsewhere (REST, by the Python side) shows live
  if ((await ask("TRANSFER")) !== "TRANSFERRED") throw new Error("the test did not transfer");
  await a.locator("#active-device", { hasText: `Playing on ${cfg.speaker}` }).waitFor({ timeout: LIVE_MS });
  log("a transfer from elsewhere shown");
  await a.locator("#devices li", { hasText: "(this browser)" }).getByRole("button", { name: "Transfer here" }).click();
  await a.locator("#active-device", { hasText: "Playing on Web Player (Chromium)" }).waitFor({ timeout: 5000 });

  // the server drops the page's socket: it reconnects by itself and keeps working
  const connects = Number(await a.locator("#conn").getAttribute("data-connects"));
  if ((await ask("DROP")) !== "DROPPED") throw new Error("the test did not drop the socket");
  await a.locator(`#conn.online[data-connects="${connects + 1}"]`).waitFor({ timeout: 10000 });
  log("reconnected");
  // the server paused playback when the active device dropped; back, it is the active device again
  await a.locator("#playpause[title=Play]").waitFor({ timeout: 5000 });
  await a.locator("#active-device", { hasText: "Playing on Web Player (Chromium)" }).waitFor({ timeout: 5000 });
  await a.locator("#playpause").click();
  await a.locator("#playpause[title=Pause]").waitFor({ timeout: 5000 });
  log("resumed after the reconnect");

  // a refusal is shown in words
  await b.locator("#next").click();
  await b.locator("#status", { hasText: /./ }).waitFor({ timeout: 5000 });
  log("error shown:", await b.locator("#status").textContent());
  await shot(a, "devices");
  console.log("OK");
} finally {
  stdin.close();
  await browser.close();
}

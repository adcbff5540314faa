// End-to-end check of the demo page in headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core).
//
// Usage: node export/test/browser_e2e.mjs --url http://127.0.0.1:PORT/ --out DIR [--chromium PATH]
// Loads the demo (its default /sample.png), makes a positive click, a negative shift-click, then clears and drags a
// box; after each step it reads the mask the page DREW (the mask layer's pixels), asks the server for the same
// prompt (POST /segment) and computes the IoU with the server's candidate the page picked. Writes a screenshot per
// step into DIR and prints one JSON line: {"steps": [{name, iou, picked, serverBest, ...}], "errors": [...]}.
// Exit status 0 when the page ran (the caller judges the IoUs), 1 when it could not.

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";

import { chromium } from "playwright-core";

import { cocoRleToMask, maskIou } from "../segany-decoder.js";

const { values } = parseArgs({
  options: {
    url: { type: "string" },
    out: { type: "string", default: "artifacts/browser" },
    chromium: { type: "string", default: process.env.CHROMIUM ?? "/usr/bin/chromium" },
    timeout: { type: "string", default: "120000" },
  },
});
if (!values.url && process.env.NODE_TEST_CONTEXT) {
  // picked up by `node --test test/`: this is a driver for tests/export/test_browser_demo.py, not a test file
  console.log("# browser_e2e.mjs needs --url; run by tests/export/test_browser_demo.py");
  process.exit(0);
}
if (!values.url) {
  console.error("usage: node browser_e2e.mjs --url http://127.0.0.1:PORT/ --out DIR");
  process.exit(2);
}
const base = new URL(values.url);
const outDir = resolve(values.out);
const timeout = Number(values.timeout);

// A closed network: no background requests, no component updates, no QUIC; a fresh empty profile.
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

const profile = mkdtempSync(join(tmpdir(), "segany-chromium-"));
const errors = [];
const steps = [];
let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: values.chromium,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1000, height: 900 },
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(timeout);
  page.on("pageerror", (err) => errors.push(`pageerror: ${err.message}`));
  page.on("console", (msg) => {
    if (msg.type() === "error") errors.push(`console: ${msg.text()}`);
  });
  page.on("requestfailed", (req) => errors.push(`requestfailed: ${req.url()} ${req.failure()?.errorText}`));
  // only this server may be reached; anything else would be a hidden dependency on the internet
  await context.route("**/*", (route) => {
    const url = new URL(route.request().url());
    if (url.host === base.host) return route.continue();
    errors.push(`blocked off-origin request: ${url.href}`);
    return route.abort();
  });

  await page.goto(new URL("/", base).href);
  await page.waitForFunction(() => window.segany && window.segany.ready, null, { timeout });
  await page.evaluate(() => window.segany.ready);
  const info = await page.evaluate(() => ({
    width: window.segany.state.width,
    height: window.segany.state.height,
    imageId: window.segany.state.imageId,
    isolated: window.crossOriginIsolated,
  }));

  const canvas = page.locator("#image");
  const box = await canvas.boundingBox();
  // image pixels -> page coordinates (the canvas may be drawn scaled)
  const toPage = (x, y) => [box.x + (x * box.width) / info.width, box.y + (y * box.height) / info.height];

  async function check(name) {
    await page.evaluate(() => window.segany.idle());
    const page_ = await page.evaluate(() => ({
      prompt: window.segany.lastPrompt,
      drawn: window.segany.drawnMaskRle(),
      picked: window.segany.last?.picked,
      scores: window.segany.last?.scores,
      decodes: window.segany.state.decodes,
    }));
    const response = await fetch(new URL("/segment", base), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ id: info.imageId, ...page_.prompt }),
    });
    const server = await response.json();
    if (!response.ok) throw new Error(`POST /segment: ${server.error}`);
    const drawn = cocoRleToMask(page_.drawn);
    const candidate = server.masks.find((m) => m.index === page_.picked) ?? server.masks[0];
    const serverMask = cocoRleToMask(candidate.rle);
    const area = drawn.reduce((a, b) => a + b, 0);
    const screenshot = join(outDir, `demo-${steps.length + 1}-${name}.png`);
    await page.screenshot({ path: screenshot, fullPage: true });
    steps.push({
      name,
      prompt: page_.prompt,
      iou: maskIou(drawn, serverMask),
      drawnArea: area,
      serverArea: candidate.area,
      picked: page_.picked,
      serverBest: server.best,
      browserScores: page_.scores,
      serverScores: server.scores,
      screenshot,
    });
  }

  const { width: w, height: h } = info;
  await page.mouse.click(...toPage(w * 0.33, h * 0.47));
  await check("click");
  await page.keyboard.down("Shift");
  await page.mouse.click(...toPage(w * 0.3, h * 0.3));
  await page.keyboard.up("Shift");
  await check("negative-click");
  await page.click("#clear");
  const [x0, y0] = toPage(w * 0.56, h * 0.27);
  const [x1, y1] = toPage(w * 0.88, h * 0.83);
  await page.mouse.move(x0, y0);
  await page.mouse.down();
  await page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, { steps: 4 });
  await page.mouse.move(x1, y1, { steps: 4 });
  await page.mouse.up();
  await check("box");
  console.log(JSON.stringify({ ok: true, isolated: info.isolated, size: [h, w], steps, errors }));
} catch (err) {
  console.log(JSON.stringify({ ok: false, error: String(err?.stack ?? err), steps, errors }));
  process.exitCode = 1;
} finally {
  await context?.close();
  rmSync(profile, { recursive: true, force: true });
}

// Drives a page exported by `squeezenet export --format web` in headless Chromium and prints JSON:
// the page's results for image URLs, and for files picked through its file input.
//   node web/check_page.mjs URL '{"urls": ["a.png"], "files": ["/tmp/x.png"], "runs": 1}'
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [url, spec] = process.argv.slice(2);
const { urls = [], files = [], runs = 1, screenshot = null } = JSON.parse(spec || "{}");
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const profile = mkdtempSync(join(tmpdir(), "squeezenet-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath, headless: true, timeout: 60000,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
const out = { console: [], requests: [] };
try {
  const page = context.pages()[0] || await context.newPage();
  page.on("console", (m) => out.console.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => out.console.push(`pageerror: ${e.message}`));
  page.on("request", (r) => out.requests.push(r.url()));
  await page.goto(url, { waitUntil: "load" });
  await page.waitForFunction(() => window.squeezenet !== undefined, null, { timeout: 30000 });
  await page.evaluate(() => window.squeezenet.ready);
  out.status = await page.textContent("#status");
  out.results = [];
  for (const u of urls) {
    let r;
    for (let i = 0; i < runs; i++) r = await page.evaluate((u) => window.squeezenet.classifyUrl(u), u);
    out.results.push(r);
  }
  if (files.length) {
    await page.setInputFiles("#files", files);
    await page.waitForFunction((n) => document.querySelectorAll("#results .result").length >= n, files.length,
                               { timeout: 30000 });
    out.shown = await page.$$eval("#results .result", (els) => els.map((e) => e.innerText));
  }
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
} catch (e) {
  out.error = String(e && e.message || e);
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(out));

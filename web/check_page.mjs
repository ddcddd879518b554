// Drives a page exported by `squeezenet export --format web` in headless Chromium and prints JSON:
// the page's results for image URLs, and for files picked through its file input.
//   node web/check_page.mjs URL '{"urls": ["a.png"], "files": ["/tmp/x.png"], "runs": 1}'
// Several pages in one browser, one after the other (their timings comparable):
//   node web/check_page.mjs - '{"pages": [{"url": URL, "urls": [...]}, ...]}'   -> {"pages": [...]}
//   node web/check_page.mjs - @spec.json
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [firstUrl, spec] = process.argv.slice(2);
// the spec, or @FILE holding it (thousands of image URLs do not fit in a command line)
const parsed = JSON.parse((spec && spec.startsWith("@") ? readFileSync(spec.slice(1), "utf8") : spec) || "{}");
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const profile = mkdtempSync(join(tmpdir(), "squeezenet-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath, headless: true, timeout: 60000,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
async function visit(page, { url, urls = [], files = [], runs = 1, screenshot = null }) {
  const out = { console: [], requests: [] };
  page.removeAllListeners();
  page.on("console", (m) => out.console.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => out.console.push(`pageerror: ${e.message}`));
  page.on("request", (r) => out.requests.push(r.url()));
  try {
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
  }
  return out;
}

let result;
try {
  const page = context.pages()[0] || await context.newPage();
  if (parsed.pages) {
    result = { pages: [] };
    for (const p of parsed.pages) result.pages.push(await visit(page, p));
  } else {
    result = await visit(page, { ...parsed, url: firstUrl });
  }
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(result));

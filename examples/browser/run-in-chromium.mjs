// Runs the page in Debian's headless Chromium with spec-conformant CORS
// (CorsNonWildcardRequestHeadersSupport: a `*` in Access-Control-Allow-Headers does not
// cover Authorization) and checks what the page shows. Exits non-zero on any failure.
//
// Environment: SERVER_ADDR, SECRETD_JWT_SECRET (as for serve.mjs), PAGE_PORT
// (default: any free port; secretd must allow the page's origin), CHROMIUM (default
// /usr/bin/chromium).

import puppeteer from "puppeteer-core";

import { start } from "./serve.mjs";

const secret = process.env.SECRETD_JWT_SECRET;
if (!secret) throw new Error("set SECRETD_JWT_SECRET to the server's JWT secret");
const { server, url } = await start({
  port: Number(process.env.PAGE_PORT ?? 0),
  addr: process.env.SERVER_ADDR ?? "127.0.0.1:50051",
  secret,
});

const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-features=CorsNonWildcardRequestHeadersSupport",
  ],
});
let failed = false;
try {
  const page = await browser.newPage();
  page.on("console", (m) => console.log(`page console: ${m.text()}`));
  page.on("pageerror", (e) => console.log(`page error: ${e.message}`));
  page.on("requestfailed", (r) => {
    // ERR_ABORTED: the page cancelled the call itself (the subscription, a drained body).
    if (r.failure()?.errorText !== "net::ERR_ABORTED") console.log(`request failed: ${r.url()}`);
  });
  await page.goto(url);
  await page.waitForFunction(() => document.getElementById("status").textContent !== "", {
    timeout: 120_000,
  });
  const shown = await page.evaluate(() => ({
    status: document.getElementById("status").textContent,
    steps: [...document.querySelectorAll("#steps li")].map((li) => li.textContent),
    live: [...document.querySelectorAll("#live li")].map((li) => li.textContent),
    history: [...document.querySelectorAll("#history li")].map((li) => li.textContent),
  }));
  for (const s of shown.steps) console.log(`page step: ${s}`);
  const expect = (ok, what) => {
    console.log(`${ok ? "ok" : "NOT OK"}: ${what}`);
    if (!ok) failed = true;
  };
  expect(shown.status === "PASS", `the page says ${shown.status}`);
  expect(
    shown.live.length === 2 && shown.live[0].endsWith(": hello from the browser"),
    `the live list shows the posts made after subscribing (${JSON.stringify(shown.live)})`,
  );
  expect(
    JSON.stringify(shown.history) ===
      JSON.stringify(["event 1: hello from the browser", "event 2: second message"]),
    `the history list shows both events (${JSON.stringify(shown.history)})`,
  );
} catch (err) {
  console.log(`NOT OK: ${err.message}`);
  failed = true;
} finally {
  await browser.close();
  server.close();
}
console.log(`browser example: ${failed ? "FAIL" : "PASS"}`);
process.exit(failed ? 1 : 0);

// The web demo in headless Chromium: `homepocket-relay demo --web` serves the page and
// a relay; two phones pair with the six digits and the SAS, sync entries live, one goes
// offline and catches up, and both panels end with the same ledger.
// DEMO_SCREENSHOT=path saves a screenshot of the end state (the README's picture).
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, before, test } from "node:test";
import { chromium } from "playwright-core";
import { REPO, freePort } from "./server.mjs";

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"];

let demo;
let url;
let browser;

before(async () => {
  const port = await freePort();
  demo = spawn(join(REPO, ".venv", "bin", "homepocket-relay"), ["demo", "--web", "--port", String(port)], { stdio: ["ignore", "pipe", "inherit"] });
  url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("the demo did not start")), 30_000);
    createInterface({ input: demo.stdout }).on("line", (line) => {
      const found = /Open (http\S+) in a browser/.exec(line);
      if (found) {
        clearTimeout(timer);
        resolve(found[1]);
      }
    });
    demo.once("exit", (code) => reject(new Error(`the demo exited with ${code}`)));
  });
  assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM}: scripts/test installs Debian's chromium`);
  browser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS });
});

after(async () => {
  await browser?.close();
  if (demo && demo.exitCode === null) {
    demo.kill("SIGINT");
    await new Promise((r) => {
      const t = setTimeout(() => { demo.kill("SIGKILL"); r(); }, 10_000);
      demo.once("exit", () => { clearTimeout(t); r(); });
    });
  }
});

const entriesOf = (page, who) => page.locator(`#${who} ul.entries li`).allInnerTexts();

async function add(page, who, note, amount) {
  await page.fill(`#${who} input.note`, note);
  await page.fill(`#${who} input.amount`, amount);
  await page.click(`#${who} button.add`);
}

async function waitCount(page, who, n) {
  await page.waitForFunction(([w, k]) => document.querySelectorAll(`#${w} ul.entries li`).length === k, [who, n], { timeout: 15_000 });
}

test("two phones pair with six digits, sync live, and one catches up after being offline", async () => {
  const page = await browser.newPage({ viewport: { width: 860, height: 940 } });
  const problems = [];
  page.on("pageerror", (err) => problems.push(String(err)));
  await page.goto(url);

  await page.click("#alice button.invite");
  await page.waitForFunction(() => /^\d{6}$/.test(document.querySelector("#alice .code")?.textContent ?? ""));
  const code = await page.textContent("#alice .code");
  await page.fill("#bob input.code-input", code);
  await page.click("#bob button.join");

  await page.waitForSelector("#alice .compare-box:not(.hidden)");
  await page.waitForSelector("#bob .compare-box:not(.hidden)");
  const [sasAlice, sasBob] = [await page.textContent("#alice .sas"), await page.textContent("#bob .sas")];
  assert.match(sasAlice, /^\d{6}$/);
  assert.equal(sasAlice, sasBob, "both phones show the same short authentication string");
  await page.click("#bob button.match");
  await page.click("#alice button.match");
  await page.waitForSelector("#alice .status.live", { timeout: 15_000 });
  await page.waitForSelector("#bob .status.live", { timeout: 15_000 });

  await add(page, "alice", "Groceries", "-42.50");
  await add(page, "bob", "Bakery", "-3.80");
  await waitCount(page, "alice", 2);
  await waitCount(page, "bob", 2);

  await page.click("#bob button.toggle"); // Bob goes offline
  await page.waitForSelector("#bob .status.offline");
  await add(page, "alice", "Electricity bill", "-61.20");
  await add(page, "bob", "Pharmacy", "-12.99");
  await waitCount(page, "alice", 3);
  await waitCount(page, "bob", 3);
  assert.notDeepEqual(await entriesOf(page, "alice"), await entriesOf(page, "bob"), "apart while Bob is offline");
  assert.match(await page.textContent("#bob .status-text"), /1 waiting to send/);

  await page.click("#bob button.toggle"); // and back
  await waitCount(page, "alice", 4);
  await waitCount(page, "bob", 4);
  await page.waitForFunction(() => [...document.querySelectorAll(".status-text")].every((s) => /^live .* 0 waiting/.test(s.textContent)), null, { timeout: 15_000 });
  const [a, b] = [await entriesOf(page, "alice"), await entriesOf(page, "bob")];
  assert.deepEqual(a, b, "both panels converge");
  assert.equal(await page.textContent("#alice .balance"), await page.textContent("#bob .balance"));
  assert.deepEqual(problems, []);
  if (process.env.DEMO_SCREENSHOT) await page.screenshot({ path: process.env.DEMO_SCREENSHOT });
  await page.close();
});

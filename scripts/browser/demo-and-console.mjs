// The demo and the operator console in a real browser (Debian's chromium, driven by
// playwright-core): a newcomer pays an order on /demo, signs in to the console, finds the
// order, sees its timeline, refunds part of it, switches the language, and signs out; a
// console action without its CSRF token is refused. One line per check; screenshots go to
// SHOTS. Run by scripts/browser.sh, which starts the demo and passes BASE and PASSWORD.
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";

const BASE = process.env.BASE;
const PASSWORD = process.env.PASSWORD;
const SHOTS = process.env.SHOTS ?? "target/browser";
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
assert.ok(BASE && PASSWORD, "BASE and PASSWORD are needed");
mkdirSync(SHOTS, { recursive: true });

let step = 0;
const ok = (what) => console.log(`ok ${++step} - ${what}`);
const shot = async (page, name) => page.screenshot({ path: `${SHOTS}/${name}.png`, fullPage: true });

// Root in a container has no user namespace for chromium's sandbox.
const browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
try {
  const context = await browser.newContext({ locale: "en-US", viewport: { width: 1200, height: 900 } });
  context.setDefaultTimeout(20_000);
  const page = await context.newPage();

  // The demo: log in, buy, pay on the simulator's checkout, see it paid.
  await page.goto(`${BASE}/demo`);
  await page.click("#login");
  await page.locator("button.item:not([disabled])").first().click();
  await page.click("#pay");
  await page.frameLocator("#checkout").locator("button.pay").click();
  await page.locator("#status.paid").waitFor();
  const no = (await page.textContent("#order-no")).trim();
  assert.match(no, /^[0-9A-Za-z_|*-]{6,32}$/);
  await shot(page, "1-demo-paid");
  ok(`the demo pays order ${no}`);

  // The console: sign-in first.
  await page.goto(`${BASE}/console`);
  assert.equal(new URL(page.url()).pathname, "/console/login");
  await page.fill("input[name=password]", "not the password");
  await page.click("form button");
  assert.match(await page.textContent("[role=alert]"), /not right/);
  await page.fill("input[name=password]", PASSWORD);
  await page.click("form button");
  await page.waitForURL(`${BASE}/console`);
  assert.match(await page.textContent("h1"), /Overview/);
  await shot(page, "2-console-overview");
  ok("a wrong password is refused and the printed one signs in");

  // Finding the order, and its timeline with the payment.
  await page.goto(`${BASE}/console/orders`);
  await page.fill("input[name=q]", no);
  await page.click("form.filters button");
  const rows = page.locator("table tr");
  assert.equal(await rows.count(), 2, "the header and the order");
  await page.click(`a:has-text("${no}")`);
  assert.match(await page.textContent("h1"), new RegExp(no));
  const timeline = await page.textContent("table");
  assert.match(timeline, /Placed with WeChat Pay/);
  assert.match(timeline, /Paid/);
  assert.match(timeline, /notification \(payment\)\s*applied/, "the notification, applied");
  await shot(page, "3-console-order");
  ok("the order is found by its number and its timeline shows the notification");

  // A partial refund, reviewed then confirmed.
  await page.fill("input[name=amount]", "1.00");
  await page.fill("input[name=reason]", "browser test");
  await page.click("text=Review");
  assert.match(await page.textContent("main"), /¥1\.00/);
  const refundNo = await page.inputValue("input[name=out_refund_no]");
  await shot(page, "4-console-refund-review");
  await page.click("text=Confirm the refund");
  await page.waitForURL((u) => u.pathname === `/console/orders/${encodeURIComponent(no)}`);
  // The refunds table's row (the timeline mentions the number too, in its details).
  const refundRow = page.locator("tr", { has: page.locator("td:first-child", { hasText: refundNo }) });
  assert.equal(await refundRow.count(), 1, "the refund is listed");
  assert.match(await refundRow.textContent(), /¥1\.00/);
  await shot(page, "5-console-refunded");
  ok("a partial refund is reviewed, confirmed and listed");

  // The outbox: the demo's backend takes every event (the refund's within a round or two).
  await page.click("text=Outbox");
  for (let i = 0; !/Every event has been delivered/.test(await page.textContent("main")); i++) {
    assert.ok(i < 20, "the outbox empties");
    await page.waitForTimeout(500);
    await page.reload();
  }
  ok("the outbox page shows nothing waiting");
  await page.goBack();
  await page.reload();
  assert.match(await page.textContent("table"), /Webhook\s*order\.paid\s*delivered/);
  ok("the order's timeline shows its webhook event delivered");

  // The language: Chinese on the switch, kept on the next page.
  await page.click("a.lang");
  assert.match(await page.textContent("main"), /时间线/);
  await page.click("text=订单");
  assert.match(await page.textContent("h1"), /订单/);
  await shot(page, "6-console-zh");
  await page.click("a.lang");
  assert.match(await page.textContent("h1"), /Orders/);
  ok("the language switches to Chinese, stays, and switches back");

  // An action with the session cookie but without its CSRF token is refused. (The page
  // itself cannot even try: its CSP allows it no request of its own.)
  const bare = await context.request.post(`${BASE}/console/logout`, { maxRedirects: 0 });
  assert.equal(bare.status(), 403);
  const blocked = await page.evaluate(async () => {
    try {
      await fetch("/console/logout", { method: "POST" });
      return "sent";
    } catch {
      return "blocked";
    }
  });
  assert.equal(blocked, "blocked", "the page's CSP blocks its own requests");
  // A form on another site does not even carry the cookie (SameSite=Strict).
  const other = await context.newPage();
  await other.setContent(
    `<form method="post" action="${BASE}/console/logout"><input name="csrf" value="x"><button>go</button></form>`,
  );
  await other.click("button");
  await other.waitForURL(`${BASE}/console/login`);
  await other.close();
  await page.reload();
  assert.equal(new URL(page.url()).pathname, "/console/orders", "still signed in");
  ok("a sign-out without the CSRF token, or from another site, is refused");

  // Sign-out.
  await page.click("text=Sign out");
  await page.waitForURL(`${BASE}/console/login`);
  await page.goto(`${BASE}/console/orders`);
  assert.equal(new URL(page.url()).pathname, "/console/login");
  await shot(page, "7-console-signed-out");
  ok("signing out ends the session");

  // A browser that asks for Chinese first gets it from the start.
  const zh = await browser.newContext({ locale: "zh-CN" });
  const zhPage = await zh.newPage();
  await zhPage.goto(`${BASE}/console/login`);
  assert.match(await zhPage.textContent("h1"), /登录/);
  ok("a Chinese browser gets the console in Chinese");

  // The demo in Chinese, paid with a fault one click away on the checkout: the same
  // notification five times at once. The gateway applies one and calls the rest duplicates.
  await zhPage.goto(`${BASE}/demo`);
  assert.match(await zhPage.textContent("h1"), /wxpay 演示/);
  await zhPage.click("#login");
  await zhPage.locator("button.item:not([disabled])").first().click();
  // The button names the amount once the backend has placed the order.
  await zhPage.waitForFunction(() => /^支付 ¥/.test(document.getElementById("pay").textContent));
  await zhPage.click("#pay");
  const checkout = zhPage.frameLocator("#checkout");
  assert.equal((await checkout.locator("button.pay").textContent()).trim(), "支付");
  await checkout.locator("button[value=notify_duplicate]").click();
  await zhPage.locator("#status.paid").waitFor();
  assert.match(await zhPage.textContent("#status"), /支付成功/);
  const faulty = (await zhPage.textContent("#order-no")).trim();
  await shot(zhPage, "8-demo-zh-duplicates");
  await zhPage.goto(`${BASE}/console/login`);
  await zhPage.fill("input[name=password]", PASSWORD);
  await zhPage.click("form button");
  await zhPage.waitForURL(`${BASE}/console`);
  await zhPage.goto(`${BASE}/console/orders/${encodeURIComponent(faulty)}?merchant=default`);
  for (let i = 0; ; i++) {
    const text = await zhPage.textContent("table");
    if ((text.match(/重复/g) ?? []).length === 4) {
      assert.equal((text.match(/已应用/g) ?? []).length, 1, text);
      break;
    }
    assert.ok(i < 20, `four duplicates on the timeline: ${text}`);
    await zhPage.waitForTimeout(500);
    await zhPage.reload();
  }
  await shot(zhPage, "9-console-zh-duplicates");
  ok("the Chinese demo pays with five copies of its notification; one is applied");

  // The demo's language switch, remembered.
  await zhPage.goto(`${BASE}/demo`);
  await zhPage.click("#lang");
  assert.match(await zhPage.textContent("h1"), /end to end/);
  await zhPage.reload();
  assert.match(await zhPage.textContent("h1"), /end to end/);
  await zhPage.click("#lang");
  assert.match(await zhPage.textContent("h1"), /wxpay 演示/);
  ok("the demo page switches language and remembers it");
  console.log(`all ${step} checks passed; screenshots in ${SHOTS}`);
} finally {
  await browser.close();
}

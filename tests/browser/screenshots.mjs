// Screenshots of each console page for the README, from a running demo:
//   node tests/browser/screenshots.mjs http://127.0.0.1:8080 TOKEN docs/screenshots
import { chromium } from 'playwright-core';

const [base, token, out] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
async function shoot(viewport, pages) {
  const ctx = await browser.newContext({ viewport });
  const page = await ctx.newPage();
  await page.goto(base + '/');
  await page.fill('#token', token);
  await page.press('#token', 'Enter');
  await page.locator('#nav').waitFor({ state: 'visible' });
  for (const [name, hash, wait, act] of pages) {
    await page.goto(`${base}/${hash}`);
    await page.locator(wait).first().waitFor();
    if (act) await act(page);
    await page.screenshot({ path: `${out}/${name}.png`, fullPage: false });
  }
  await ctx.close();
}
await shoot({ width: 1280, height: 900 }, [
  ['analytics', '#/', '#scores svg'],
  ['customers', '#/customers?stage=repeat', '#customers'],
  ['customer', '#/customers/trade-longterm', '#timeline'],
  ['plugins', '#/plugins', '#plugins'],
  ['plugin-dry-run', '#/plugins/value-tiers', '#versions', async (p) => {
    await p.fill('#rules', JSON.stringify({ high_min_net_cents: 20000, high_min_purchase_days: 2, medium_min_net_cents: 5000,
      cost_per_order_cents: 500, cost_per_touchpoint_cents: 300, cost_per_complaint_cents: 5000 }, null, 2));
    await p.click('#run-dry-run');
    await p.locator('#dry-run-result').waitFor();
    await p.locator('#dry-run').scrollIntoViewIfNeeded();
  }],
  ['audit', '#/audit', '#audit'],
]);
await shoot({ width: 390, height: 844 }, [['phone-customer', '#/customers/trade-longterm', '#timeline']]);
await browser.close();

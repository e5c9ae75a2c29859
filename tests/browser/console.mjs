// Drives the real console in Debian's headless Chromium through playwright-core:
// sign in, upload a plugin version, dry-run it, activate it, see the funnel
// change, roll back; plus the rule editor's inline errors, customers, the audit
// trail, a phone-sized screen and the keyboard. Screenshots go to ARTIFACTS.
//
// Run by host/tests/console.rs, which starts the server and seeds the tenant:
//   node console.mjs BASE_URL ADMIN_TOKEN VIEWER_TOKEN PLUGIN_WASM ARTIFACTS
import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';

const [base, adminToken, viewerToken, wasm, artifacts] = process.argv.slice(2);
assert.ok(base && adminToken && viewerToken && wasm && artifacts, 'usage: console.mjs BASE ADMIN VIEWER WASM ARTIFACTS');
fs.mkdirSync(artifacts, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const errors = [];
let step = 'start';
const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
const page = await context.newPage();
page.setDefaultTimeout(20_000);
page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
// Chromium logs every 4xx fetch as an error; those the test provokes (a wrong
// token, a rejected rule set) are expected, so only other console errors count.
page.on('console', (m) => {
  if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) errors.push(`console: ${m.text()}`);
});
const shot = (name, p = page) => p.screenshot({ path: path.join(artifacts, `${name}.png`), fullPage: true });
const log = (s) => { step = s; console.log(`- ${s}`); };

async function signIn(p, token) {
  await p.goto(base + '/');
  await p.locator('#token').waitFor();
  await p.locator('#token').focus();
  await p.keyboard.type(token);
  await p.keyboard.press('Enter'); // the keyboard alone signs in
  await p.locator('#nav').waitFor({ state: 'visible' });
}

// What the funnel card says, once the analytics page is shown.
async function funnel() {
  await page.goto(base + '/#/');
  await page.locator('#funnel').waitFor();
  const bars = await page.locator('#funnel svg g').evaluateAll((gs) =>
    gs.map((g) => ({ id: g.dataset.id, label: g.dataset.label, value: Number(g.dataset.value) })));
  const noOwner = await page.locator('#no-owner').count();
  return { bars, staged: bars.reduce((a, b) => a + b.value, 0), noOwner };
}

try {
  log('no data without a token');
  await page.goto(base + '/');
  await page.locator('#signin').waitFor({ state: 'visible' });
  assert.equal(await page.locator('#nav').isVisible(), false);
  assert.equal((await page.locator('#view').innerText()).trim(), '', 'nothing is shown before sign-in');
  await shot('01-sign-in');

  log('a wrong token is refused');
  await page.fill('#token', 'sc_not_a_real_token');
  await page.click('#signin-form button[type=submit]');
  await page.locator('#signin-error').filter({ hasText: 'not accepted' }).waitFor();
  assert.equal((await page.locator('#view').innerText()).trim(), '');

  log('sign in with the keyboard');
  await signIn(page, adminToken);
  assert.match(await page.locator('#who').innerText(), /acme · admin/);
  const before = await funnel();
  assert.equal(before.noOwner, 1, 'no plugin owns the lifecycle yet');
  await page.locator('#scores svg').first().waitFor();
  await shot('02-analytics-before');

  log('upload a plugin version');
  await page.click('#nav a[href="#/plugins"]');
  await page.locator('#upload-form').waitFor();
  await page.setInputFiles('#component', wasm);
  await page.click('#upload-form button[type=submit]');
  const link = page.locator('#upload-result a');
  await link.waitFor();
  const label = await link.innerText();
  assert.match(label, /^b2b-trade@/);
  await shot('03-plugins-uploaded');

  log('a rule set the plugin rejects shows its error inline');
  await link.click();
  await page.locator('#rules').waitFor();
  await page.fill('#rules', '{"no_such_rule": true}');
  await page.click('#save-rules');
  await page.locator('#rules-error').filter({ hasText: /rejected|invalid|unknown|additional/i }).waitFor();
  assert.equal(await page.locator('#rules').getAttribute('aria-invalid'), 'true');
  await shot('04-rules-error');
  await page.fill('#rules', '{ not json');
  await page.click('#save-rules');
  await page.locator('#rules-error').filter({ hasText: 'Not JSON' }).waitFor();

  log('dry-run it');
  await page.selectOption('#dry-run-rules', 'defaults');
  await page.click('#run-dry-run');
  await page.locator('#dry-run-result').waitFor();
  const changed = await page.locator('#dry-run-changed').innerText();
  assert.match(changed, /\d+ scores/);
  const compared = await page.locator('#dry-run-result').innerText();
  assert.match(compared, /Compared [1-9]\d* customers/);
  assert.ok(await page.locator('#dry-run-customers tbody tr').count() > 0, 'the customers that change are listed');
  await shot('05-dry-run');

  log('activate it, with a confirmation');
  await page.selectOption('#dry-run-rules', 'defaults');
  await page.click('#activate-candidate');
  await page.locator('#confirm[open]').waitFor();
  assert.equal(await page.locator('#activate-lifecycle').isChecked(), true);
  assert.equal(await page.locator('#activate-rescore').isChecked(), true);
  await shot('06-activate-confirm');
  await page.click('#confirm-ok');
  await page.locator('#versions .pill.active').waitFor({ timeout: 60_000 });
  await shot('07-plugin-active');

  log('the funnel changed');
  const after = await funnel();
  assert.equal(after.noOwner, 0);
  assert.ok(after.staged > 0, `customers are in stages now: ${JSON.stringify(after.bars)}`);
  await shot('08-analytics-after-activation');

  log('customers: search, filter, a customer page');
  await page.click('#nav a[href="#/customers"]');
  await page.locator('#customers').waitFor();
  const stage = after.bars.find((b) => b.value > 0);
  await page.goto(`${base}/#/customers?stage=${encodeURIComponent(stage.id)}`);
  // The filtered page is rendered when its form shows the filter.
  await page.locator(`#f-stage[value="${stage.id}"]`).waitFor();
  await page.locator('#customers tbody tr').first().waitFor();
  assert.equal(await page.locator('#customers tbody tr').count(), Math.min(stage.value, 50), `the ${stage.id} filter`);
  await page.fill('#f-q', 'buyer');
  await page.press('#f-q', 'Enter');
  await page.locator('#f-q[value="buyer"]').waitFor();
  await page.locator('#customers tbody tr').first().waitFor();
  const rows = await page.locator('#customers tbody tr').count();
  assert.ok(rows > 0);
  await shot('09-customers');
  await page.locator('#customers tbody tr a').first().click();
  await page.locator('#customer-scores').waitFor();
  assert.ok(await page.locator('#customer-scores .reasons li').count() > 0, 'scores come with reasons');
  assert.ok(await page.locator('#timeline li').count() > 0);
  await shot('10-customer');

  log('roll back, with a confirmation');
  await page.goto(`${base}/#/plugins/b2b-trade`);
  await page.click('#rollback');
  await page.locator('#confirm[open]').waitFor();
  await page.fill('#rollback-reason', 'browser test rollback');
  await page.click('#confirm-ok');
  await page.locator('#versions .pill.active').waitFor({ state: 'detached', timeout: 60_000 });
  const back = await funnel();
  assert.equal(back.noOwner, 1, 'the funnel is back to no lifecycle owner');
  await shot('11-analytics-after-rollback');

  log('the audit trail');
  await page.click('#nav a[href="#/audit"]');
  await page.locator('#audit').waitFor();
  const audit = await page.locator('#audit').innerText();
  for (const action of ['plugin.upload', 'plugin.activate', 'plugin.rollback']) assert.ok(audit.includes(action), `${action} is in the audit trail`);
  assert.ok(audit.includes('browser test rollback'));
  await shot('12-audit');

  log('my follow-ups: the work list, done and snooze');
  await page.click('#nav a[href="#/follow-ups"]');
  await page.locator('#later li').first().waitFor();
  const listed = await page.locator('#later li').count();
  assert.equal(listed, 4, 'the four buyers the agent looks after');
  assert.equal(await page.locator('#overdue li').count(), 0);
  await page.locator('#later li button[data-done]').first().click();
  await page.waitForFunction(() => document.querySelectorAll('#later li').length === 3);
  await page.locator('#later li button[data-snooze]').first().click();
  await page.waitForFunction(() => document.querySelectorAll('#later li button[data-snooze]:not([disabled])').length === 3);
  await shot('12b-follow-ups');

  log('schedules: a bad cron is refused, a nightly rescore added');
  await page.click('#nav a[href="#/schedules"]');
  await page.locator('#schedule-form').waitFor();
  await page.fill('#cron', '61 * * * *');
  await page.click('#schedule-form button[type=submit]');
  await page.locator('#schedule-error:has-text("not a cron expression")').waitFor();
  await page.fill('#cron', '0 3 * * *');
  await page.click('#schedule-form button[type=submit]');
  await page.locator('#schedules tbody tr').first().waitFor();
  assert.ok((await page.locator('#schedules').innerText()).includes('0 3 * * *'));
  await shot('12c-schedules');

  log('keyboard: the sections are reachable with Tab');
  await page.goto(base + '/#/');
  await page.reload(); // focus starts at the top of the page
  await page.locator('#funnel').waitFor();
  await page.keyboard.press('Tab'); // the skip link comes first
  assert.equal(await page.evaluate(() => document.activeElement.className), 'skip');
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement.getAttribute('href')), '#/');
  await page.keyboard.press('Tab');
  await page.keyboard.press('Enter');
  await page.locator('#customers').waitFor();

  log('a phone-sized screen, as a viewer');
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  const p2 = await phone.newPage();
  p2.on('pageerror', (e) => errors.push(`page error (phone): ${e.message}`));
  await signIn(p2, viewerToken);
  await p2.locator('#funnel').waitFor();
  const overflow = await p2.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 1, `no sideways scrolling on a phone (${overflow}px)`);
  await shot('13-phone-analytics', p2);
  await p2.goto(base + '/#/plugins/b2b-trade');
  await p2.locator('#versions').waitFor();
  assert.equal(await p2.locator('#rollback').count(), 0, 'a viewer gets no rollback button');
  assert.equal(await p2.locator('[data-activate]').count(), 0, 'nor activation');
  await shot('14-phone-plugin-viewer', p2);

  log('sign out clears the page');
  await page.click('#signout');
  await page.locator('#signin').waitFor({ state: 'visible' });
  assert.equal((await page.locator('#view').innerText()).trim(), '');
  await page.reload();
  await page.locator('#signin').waitFor({ state: 'visible' });

  assert.deepEqual(errors, [], 'no script errors');
  console.log('console test passed');
} catch (e) {
  console.error(`FAILED at "${step}": ${e.stack || e}`);
  if (errors.length) console.error(errors.join('\n'));
  await shot('failure').catch(() => {});
  process.exitCode = 1;
} finally {
  await browser.close();
}

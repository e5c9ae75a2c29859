// The Stagecraft console: plain JavaScript, no build step. Every figure on the
// page comes from the HTTP API with the token the user signs in with; nothing is
// rendered before /v1/me accepts it. Elements are built with `el` (text nodes,
// never innerHTML), so customer data cannot inject markup.
'use strict';

const TOKEN_KEY = 'stagecraft.token';
const ROLES = ['viewer', 'agent', 'integrator', 'admin'];
const state = { token: sessionStorage.getItem(TOKEN_KEY), me: null };

// ---------------------------------------------------------------- helpers

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

const SVG = 'http://www.w3.org/2000/svg';
function svg(tag, attrs, ...children) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

const fmtTime = (ms) => (ms ? new Date(ms).toISOString().replace('T', ' ').slice(0, 16) : '');
const fmtNum = (n) => (typeof n === 'number' ? (Number.isInteger(n) ? n.toLocaleString('en') : n.toFixed(2)) : '');
const fmtMoney = (cents) => (typeof cents === 'number' ? (cents / 100).toFixed(2) : '');
const can = (role) => state.me && ROLES.indexOf(state.me.role) >= ROLES.indexOf(role);

class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

// One call to the API. JSON in and out; `raw` sends bytes as they are.
async function api(method, path, body, { raw = false } = {}) {
  const headers = { Authorization: `Bearer ${state.token}` };
  let payload;
  if (raw) { payload = body; headers['Content-Type'] = 'application/octet-stream'; }
  else if (body !== undefined) { payload = JSON.stringify(body); headers['Content-Type'] = 'application/json'; }
  let resp;
  try {
    resp = await fetch(path, { method, headers, body: payload });
  } catch (e) {
    throw new ApiError(0, 'network', `the server cannot be reached (${e.message})`);
  }
  const data = await resp.json().catch(() => null);
  if (resp.status === 401) {
    signOut('The token is no longer valid: sign in again.');
    throw new ApiError(401, 'unauthorized', 'signed out');
  }
  if (!resp.ok) {
    const err = (data && data.error) || {};
    throw new ApiError(resp.status, err.code || 'error', err.message || `HTTP ${resp.status}`);
  }
  return { status: resp.status, data };
}

function errorBox(e) {
  return el('p', { class: 'error', role: 'alert' }, e instanceof ApiError ? e.message : String(e));
}

// A confirmation in a modal <dialog>; resolves true on Confirm.
function confirmDialog(title, body, okLabel = 'Confirm', danger = false) {
  const d = document.getElementById('confirm');
  document.getElementById('confirm-title').textContent = title;
  const b = document.getElementById('confirm-body');
  b.replaceChildren(...[].concat(body));
  const ok = document.getElementById('confirm-ok');
  ok.textContent = okLabel;
  ok.className = danger ? 'danger' : '';
  return new Promise((resolve) => {
    d.addEventListener('close', () => resolve(d.returnValue === 'ok'), { once: true });
    d.showModal();
  });
}

async function waitForJob(id, onProgress) {
  for (;;) {
    const { data } = await api('GET', `/v1/jobs/${encodeURIComponent(id)}`);
    if (onProgress) onProgress(data);
    if (data.status === 'done' || data.status === 'failed') return data;
    await new Promise((r) => setTimeout(r, 400));
  }
}

// ---------------------------------------------------------------- sign-in

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  state.me = null;
  showSignIn(message);
}

function showSignIn(message) {
  document.getElementById('nav').hidden = true;
  document.getElementById('who').hidden = true;
  document.getElementById('signout').hidden = true;
  document.getElementById('view').replaceChildren();
  document.getElementById('signin').hidden = false;
  document.getElementById('signin-error').textContent = message || '';
  document.getElementById('token').focus();
}

async function signIn(token) {
  state.token = token;
  try {
    const { data } = await api('GET', '/v1/me');
    state.me = data;
  } catch (e) {
    state.token = null;
    showSignIn(e.status === 401 || e.message === 'signed out' ? 'That token was not accepted.' : e.message);
    return false;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  document.getElementById('signin').hidden = true;
  document.getElementById('nav').hidden = false;
  const who = document.getElementById('who');
  who.textContent = `${state.me.tenant} · ${state.me.role}`;
  who.hidden = false;
  document.getElementById('signout').hidden = false;
  return true;
}

// ---------------------------------------------------------------- charts (SVG)

// Horizontal bars: [{label, value, href?}].
function barChart(title, rows, { unit = 'customers' } = {}) {
  const max = Math.max(1, ...rows.map((r) => r.value));
  const rowH = 26, labelW = 150, width = 560, barW = width - labelW - 70;
  const height = rows.length * rowH + 8;
  const chart = svg('svg', { class: 'chart', viewBox: `0 0 ${width} ${height}`, width: '100%', role: 'img', 'aria-label': title },
    svg('title', {}, title),
    rows.map((r, i) => {
      const y = i * rowH + 4;
      const w = Math.max(r.value > 0 ? 2 : 0, (r.value / max) * barW);
      return svg('g', { 'data-label': r.label, 'data-id': r.id || r.label, 'data-value': r.value },
        svg('text', { x: labelW - 8, y: y + 16, 'text-anchor': 'end' }, r.label.length > 22 ? r.label.slice(0, 21) + '…' : r.label),
        svg('rect', { class: i % 2 ? 'bar alt' : 'bar', x: labelW, y: y + 3, width: w, height: rowH - 8, rx: 3 },
          svg('title', {}, `${r.label}: ${fmtNum(r.value)} ${unit}`)),
        svg('text', { x: labelW + w + 6, y: y + 16 }, fmtNum(r.value)));
    }));
  return chart;
}

// Vertical histogram of counts per equal-width bucket from min to max.
function histogram(title, counts, min, max) {
  const width = 360, height = 140, pad = 24;
  const peak = Math.max(1, ...counts);
  const bw = (width - 2 * pad) / counts.length;
  const step = (max - min) / counts.length;
  return svg('svg', { class: 'chart', viewBox: `0 0 ${width} ${height + 20}`, width: '100%', role: 'img', 'aria-label': title },
    svg('title', {}, title),
    svg('line', { class: 'axis', x1: pad, y1: height, x2: width - pad, y2: height }),
    counts.map((n, i) => {
      const h = (n / peak) * (height - 10);
      return svg('rect', { class: 'bar', x: pad + i * bw + 1, y: height - h, width: bw - 2, height: h },
        svg('title', {}, `${fmtNum(min + i * step)} to ${fmtNum(min + (i + 1) * step)}: ${n} customers`));
    }),
    svg('text', { x: pad, y: height + 16 }, fmtNum(min)),
    svg('text', { x: width - pad, y: height + 16, 'text-anchor': 'end' }, fmtNum(max)));
}

// ---------------------------------------------------------------- pages

async function pageAnalytics(view) {
  const [funnel, segments, scores] = await Promise.all([
    api('GET', '/v1/analytics/funnel'), api('GET', '/v1/analytics/segments'), api('GET', '/v1/analytics/scores'),
  ]).then((rs) => rs.map((r) => r.data));
  const stageRows = funnel.stages.map((s) => ({ label: s.label || s.id, value: s.customers, id: s.id }));
  const funnelCard = el('section', { class: 'card', id: 'funnel' },
    el('h2', {}, 'Stage funnel'),
    funnel.owner
      ? el('p', { class: 'muted' }, `Stages of `, el('a', { href: `#/plugins/${encodeURIComponent(funnel.owner)}` }, funnel.owner),
        funnel.no_stage ? ` · ${funnel.no_stage} customers without a stage` : '')
      : el('p', { class: 'muted', id: 'no-owner' }, 'No plugin owns the lifecycle: enable one with stages.'),
    stageRows.length ? barChart('Customers per stage', stageRows) : null,
    funnel.other_stages.length
      ? el('p', { class: 'muted' }, 'Outside the graph: ', funnel.other_stages.map((o) => `${o.id || 'none'} (${o.customers})`).join(', '))
      : null);
  const byPlugin = {};
  for (const s of segments.segments) (byPlugin[s.plugin] = byPlugin[s.plugin] || []).push(s);
  const segCard = el('section', { class: 'card', id: 'segments' }, el('h2', {}, 'Segment sizes'),
    Object.keys(byPlugin).length === 0 ? el('p', { class: 'muted' }, 'No segments yet.') : null,
    Object.entries(byPlugin).map(([plugin, rows]) => el('div', {},
      el('h3', {}, plugin),
      barChart(`Members per segment of ${plugin}`, rows.map((r) => ({ label: r.segment, value: r.customers }))))));
  const scoreCard = el('section', { class: 'card', id: 'scores' }, el('h2', {}, 'Score distributions'),
    scores.scores.length === 0 ? el('p', { class: 'muted' }, 'No scores yet.') : null,
    scores.scores.map((d) => el('div', {},
      el('h3', {}, `${d.plugin} `, el('span', { class: 'muted' }, `${d.customers} customers · min ${fmtNum(d.min)} · mean ${fmtNum(d.mean)} · max ${fmtNum(d.max)}`)),
      histogram(`Scores of ${d.plugin}`, d.histogram, d.min, d.max),
      el('p', { class: 'muted' }, d.bands.map(([b, n]) => `${b || 'no band'}: ${n}`).join(' · ')))));
  view.replaceChildren(
    el('h1', {}, 'Analytics'),
    el('div', { class: 'grid' },
      el('section', { class: 'card' }, el('h2', {}, 'Follow-ups due today'),
        el('p', { class: 'stat', id: 'due-today' }, fmtNum(scores.follow_ups_due_today))),
      funnelCard),
    el('div', { class: 'grid' }, segCard, scoreCard));
}

async function pageCustomers(view, params) {
  const q = Object.fromEntries(params);
  const form = el('form', { class: 'card row filters', id: 'customer-filters' },
    ...[['q', 'Search name or id'], ['stage', 'Stage'], ['segment', 'Segment'], ['tag', 'Tag'],
      ['min_score', 'Min score'], ['max_score', 'Max score'], ['score_plugin', 'Score of plugin']].map(([k, label]) =>
      el('div', {}, el('label', { for: `f-${k}` }, label),
        el('input', { id: `f-${k}`, name: k, value: q[k] || '', type: k.endsWith('score') ? 'number' : 'text', step: 'any', size: 12 }))),
    el('div', {}, el('button', { type: 'submit' }, 'Search')));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const p = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (String(v).trim()) p.set(k, String(v).trim());
    location.hash = `#/customers?${p}`;
  });
  const apiParams = new URLSearchParams(params);
  apiParams.set('limit', '50');
  const { data } = await api('GET', `/v1/customers?${apiParams}`);
  const rows = data.customers.map((c) => el('tr', {},
    el('td', {}, el('a', { href: `#/customers/${encodeURIComponent(c.id)}` }, c.id)),
    el('td', {}, c.name || ''),
    el('td', {}, c.stage || el('span', { class: 'muted' }, 'none')),
    el('td', { class: 'hide-narrow' }, c.source || ''),
    el('td', {}, fmtNum(c.orders)),
    el('td', {}, fmtMoney(c.spend_cents))));
  let next = null;
  if (data.next) {
    const p = new URLSearchParams(params);
    p.set('after', data.next);
    next = el('a', { href: `#/customers?${p}`, id: 'next-page' }, 'Next page →');
  }
  view.replaceChildren(el('h1', {}, 'Customers'), form,
    el('section', { class: 'card' },
      rows.length === 0 ? el('p', { class: 'muted' }, 'No customer matches.') :
        el('div', { class: 'table-wrap' }, el('table', { id: 'customers' },
          el('thead', {}, el('tr', {}, ['Id', 'Name', 'Stage', 'Source', 'Orders', 'Spend'].map((h, i) =>
            el('th', { class: i === 3 ? 'hide-narrow' : null }, h)))),
          el('tbody', {}, rows))),
      next));
}

function reasonList(reasons) {
  return el('ul', { class: 'reasons' }, (reasons || []).map((r) =>
    el('li', {}, typeof r === 'string' ? r : `${r.text}${r.points ? ` (${r.points > 0 ? '+' : ''}${fmtNum(r.points)})` : ''}`)));
}

function timelineEntry(e) {
  let what;
  switch (e.type) {
    case 'event':
      what = [el('strong', {}, e.kind), e.channel ? ` via ${e.channel}` : '', e.amount_cents != null ? ` · ${fmtMoney(e.amount_cents)}` : '',
        Object.keys(e.fields || {}).length ? el('div', { class: 'muted' }, Object.entries(e.fields).map(([k, v]) => `${k}: ${typeof v === 'object' ? JSON.stringify(v) : v}`).join(' · ')) : ''];
      break;
    case 'stage_move':
      what = [el('strong', {}, `${e.from || 'none'} → ${e.to}`), ` by ${e.plugin || 'hand'}`, e.reason ? el('div', { class: 'muted' }, e.reason) : ''];
      break;
    case 'score_change':
      what = [el('strong', {}, `${e.plugin}: ${fmtNum(e.value)}`), e.band ? ` (${e.band})` : '', reasonList(e.reasons)];
      break;
    case 'follow_up':
      what = [el('strong', {}, 'Follow-up'), ` ${e.status}, due ${fmtTime(e.due_at)}: ${e.note}`];
      break;
    case 'wake':
      what = [el('strong', {}, `Woken by ${e.plugin}`), ` (its timer, set ${fmtTime(e.set_at)})`,
        el('div', { class: 'muted' }, `no event: time passed · fired ${fmtTime(e.fired_at)} by ${e.host}`)];
      break;
    case 'plugin_failure':
      what = [el('strong', {}, `${e.plugin}@${e.version || ''} failed`), el('div', { class: 'error' }, `${e.kind || ''}: ${e.message || ''}`)];
      break;
    default:
      what = [el('strong', {}, e.type), ' ', JSON.stringify(e)];
  }
  return el('li', { class: e.type }, el('div', { class: 'when' }, fmtTime(e.at)), what);
}

async function pageCustomer(view, id) {
  const [{ data: c }, { data: t }] = await Promise.all([
    api('GET', `/v1/customers/${encodeURIComponent(id)}`),
    api('GET', `/v1/customers/${encodeURIComponent(id)}/timeline?limit=100`),
  ]);
  const now = Date.now();
  const followUps = c.follow_ups.filter((f) => f.status === 'open');
  const scores = Object.entries(c.scores || {});
  view.replaceChildren(
    el('p', {}, el('a', { href: '#/customers' }, '← Customers')),
    el('h1', {}, c.name ? `${c.name} ` : '', el('span', { class: 'muted' }, c.id)),
    el('div', { class: 'grid' },
      el('section', { class: 'card', id: 'profile' }, el('h2', {}, 'Profile'),
        el('p', {}, 'Stage: ', el('strong', { id: 'stage' }, c.stage || 'none'), c.source ? ` · source ${c.source}` : ''),
        el('p', {}, 'Owner: ', el('strong', { id: 'owner' }, c.owner || 'nobody')),
        (c.wakes || []).length ? el('p', { class: 'muted', id: 'wakes' }, 'Woken next: ',
          c.wakes.map((w) => `${w.plugin} at ${fmtTime(w.due_at)}`).join(' · ')) : '',
        el('p', {}, `Orders ${fmtNum(c.metrics.orders)} · spend ${fmtMoney(c.metrics.total_spend_cents)} · complaints ${fmtNum(c.metrics.complaints)}`),
        el('p', {}, 'Tags: ', c.tags.length ? c.tags.map((x) => el('span', { class: 'pill' }, x)) : el('span', { class: 'muted' }, 'none')),
        el('p', {}, 'Segments: ', c.segments.length ? c.segments.map((s) =>
          el('span', { class: 'pill', title: s.reason ? s.reason.text : '' }, `${s.segment} (${s.plugin})`), ' ') : el('span', { class: 'muted' }, 'none')),
        el('h3', {}, 'Fields'),
        el('table', {}, el('tbody', {}, Object.entries(c.fields).map(([k, v]) => el('tr', {},
          el('th', {}, k, c.sensitive_fields.includes(k) ? el('span', { class: 'pill', title: 'withheld from plugins unless granted' }, 'sensitive') : ''),
          el('td', {}, v && typeof v === 'object' ? (v.time ? fmtTime(v.time) : JSON.stringify(v)) : String(v))))))),
      el('section', { class: 'card', id: 'follow-ups' }, el('h2', {}, 'Follow-ups'),
        followUps.length === 0 ? el('p', { class: 'muted' }, 'None open.') :
          el('ul', {}, followUps.map((f) => el('li', {},
            el('span', { class: f.due_at <= now ? 'error' : '' }, `due ${fmtTime(f.due_at)}`), `: ${f.note} `,
            can('agent') ? el('button', { class: 'secondary', type: 'button', onclick: async (ev) => {
              ev.target.disabled = true;
              await api('POST', `/v1/customers/${encodeURIComponent(c.id)}/follow-ups/${f.id}/done`);
              route();
            } }, 'Done') : null))))),
    el('section', { class: 'card', id: 'customer-scores' }, el('h2', {}, 'Scores and their reasons'),
      scores.length === 0 ? el('p', { class: 'muted' }, 'No scores yet.') :
        el('div', { class: 'grid' }, scores.map(([plugin, s]) => el('div', {},
          el('h3', {}, `${plugin}: ${fmtNum(s.value)} `, s.band ? el('span', { class: 'pill' }, s.band) : ''),
          reasonList(s.reasons))))),
    el('section', { class: 'card' }, el('h2', {}, 'Timeline'),
      el('ol', { class: 'timeline', id: 'timeline' }, t.entries.map(timelineEntry))));
}

async function pagePlugins(view) {
  const { data } = await api('GET', '/v1/plugins');
  const upload = can('integrator') ? el('section', { class: 'card', id: 'upload' },
    el('h2', {}, 'Upload a version'),
    el('form', { id: 'upload-form' },
      el('label', { for: 'component' }, 'Component (.wasm)'),
      el('input', { id: 'component', name: 'component', type: 'file', accept: '.wasm,application/wasm', required: true }),
      el('p', { class: 'error', id: 'upload-error', role: 'alert' }),
      el('p', { class: 'ok', id: 'upload-result', role: 'status' }),
      el('button', { type: 'submit' }, 'Upload'))) : null;
  if (upload) {
    upload.querySelector('form').addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const file = upload.querySelector('#component').files[0];
      const err = upload.querySelector('#upload-error');
      const res = upload.querySelector('#upload-result');
      err.textContent = ''; res.textContent = '';
      if (!file) { err.textContent = 'Choose a .wasm file.'; return; }
      try {
        const { status, data: up } = await api('POST', '/v1/plugins', await file.arrayBuffer(), { raw: true });
        res.replaceChildren(status === 201 ? 'Stored ' : 'Already stored: ',
          el('a', { href: `#/plugins/${encodeURIComponent(up.name)}` }, `${up.name}@${up.version}`), '. It is not enabled until activated.');
      } catch (e) { err.textContent = e.message; }
    });
  }
  view.replaceChildren(el('h1', {}, 'Plugins'),
    el('section', { class: 'card' },
      data.plugins.length === 0 ? el('p', { class: 'muted' }, 'No plugins yet.') :
        el('div', { class: 'table-wrap' }, el('table', { id: 'plugins' },
          el('thead', {}, el('tr', {}, ['Plugin', 'Active', 'Versions', 'Health'].map((h) => el('th', {}, h)))),
          el('tbody', {}, data.plugins.map((p) => {
            const active = p.versions.find((v) => v.status === 'active');
            const h = active && active.health;
            return el('tr', {},
              el('td', {}, el('a', { href: `#/plugins/${encodeURIComponent(p.name)}` }, p.name),
                p.owns_lifecycle ? el('span', { class: 'pill' }, 'lifecycle') : ''),
              el('td', {}, p.active ? `${p.active.version}${p.active.rules_version ? ` · rules v${p.active.rules_version}` : ''}` : el('span', { class: 'muted' }, 'not enabled')),
              el('td', {}, p.versions.map((v) => el('span', { class: `pill ${v.status}` }, `${v.version} ${v.status}`), ' ')),
              el('td', {}, h ? `${h.calls} calls, ${h.failures} failures` : ''));
          }))))),
    upload);
}

function versionHealth(v) {
  const h = v.health || {};
  return [`${h.calls || 0} calls, ${h.failures || 0} failures`,
    h.last_failure ? el('div', { class: 'error' }, `last: ${h.last_failure}`) : null,
    v.suspended_because ? el('div', { class: 'error' }, `suspended: ${v.suspended_because}`) : null];
}

function dryRunResult(r, name) {
  const changed = r.changed || {};
  return el('div', { id: 'dry-run-result' },
    el('p', {}, `Compared ${fmtNum(r.customers)} customers: `,
      el('strong', { id: 'dry-run-changed' }, `${fmtNum(changed.scores)} scores, ${fmtNum(changed.bands)} bands, ${fmtNum(changed.segments)} segment sets, ${fmtNum(changed.stages)} stages change`),
      changed.errors_after ? el('span', { class: 'error' }, ` · ${changed.errors_after} customers fail with the candidate`) : ''),
    Object.keys(r.band_moves || {}).length ? el('p', {}, 'Band moves: ',
      Object.entries(r.band_moves).map(([k, n]) => el('span', { class: 'pill' }, `${k}: ${n}`)), ' ') : null,
    (r.largest || []).length ? el('div', { class: 'table-wrap' }, el('table', { id: 'dry-run-customers' },
      el('thead', {}, el('tr', {}, ['Customer', 'Before', 'After'].map((h) => el('th', {}, h)))),
      el('tbody', {}, r.largest.map((d) => el('tr', {},
        el('td', {}, el('a', { href: `#/customers/${encodeURIComponent(d.customer_id)}` }, d.customer_id)),
        ['before', 'after'].map((side) => {
          const s = d[side] || {};
          return el('td', {},
            s.error ? el('div', { class: 'error' }, s.error) : el('div', {}, `${fmtNum(s.value)} ${s.band || ''}`,
              s.stage ? ` · stage ${s.stage}` : '', (s.segments || []).length ? ` · ${s.segments.join(', ')}` : ''),
            reasonList(s.reasons));
        })))))) : null);
}

async function pagePlugin(view, name) {
  const { data: p } = await api('GET', `/v1/plugins/${encodeURIComponent(name)}`);
  const enc = encodeURIComponent(name);
  const latestRules = p.rule_sets.length ? p.rule_sets[p.rule_sets.length - 1] : null;
  const activeRules = p.active && p.active.rules_version ? p.rule_sets.find((r) => r.version === p.active.rules_version) : null;
  const startText = activeRules ? JSON.stringify(activeRules.rules, null, 2) : latestRules ? JSON.stringify(latestRules.rules, null, 2) : p.manifest.default_rules;
  const versionOptions = (selected) => p.versions.map((v) => el('option', { value: v.version, selected: v.version === selected }, `${v.version} (${v.status})`));
  const latest = p.versions[p.versions.length - 1].version;

  // Versions, with activation.
  const versions = el('section', { class: 'card', id: 'versions' }, el('h2', {}, 'Versions'),
    el('div', { class: 'table-wrap' }, el('table', {},
      el('thead', {}, el('tr', {}, ['Version', 'Status', 'Health', 'Uploaded', ''].map((h) => el('th', {}, h)))),
      el('tbody', {}, p.versions.map((v) => el('tr', { dataset: { version: v.version } },
        el('td', {}, v.version, el('div', { class: 'muted' }, v.description || '')),
        el('td', {}, el('span', { class: `pill ${v.status}` }, v.status)),
        el('td', {}, versionHealth(v)),
        el('td', { class: 'hide-narrow' }, fmtTime(v.created_at)),
        el('td', {}, can('admin') && v.status !== 'active'
          ? el('button', { type: 'button', class: 'secondary', 'data-activate': v.version, onclick: () => activate(v.version, p.active ? p.active.rules_version : null) }, 'Activate…')
          : null)))))),
    can('admin') && p.active ? el('p', {}, el('button', { type: 'button', class: 'danger', id: 'rollback', onclick: rollback }, 'Roll back…'),
      el('span', { class: 'muted' }, ` to the pair active before ${p.active.version}`)) : null,
    el('p', { class: 'error', id: 'activate-error', role: 'alert' }));

  async function activate(version, rulesVersion, fromDryRun) {
    const ruleChoice = el('select', { id: 'activate-rules' },
      el('option', { value: '' }, 'the plugin\'s default rules'),
      p.rule_sets.map((r) => el('option', { value: r.version, selected: r.version === rulesVersion }, `rule set v${r.version}`)));
    const lifecycle = p.manifest.lifecycle ? el('input', { type: 'checkbox', id: 'activate-lifecycle', checked: p.owns_lifecycle || !p.active }) : null;
    const rescore = el('input', { type: 'checkbox', id: 'activate-rescore', checked: true });
    const ok = await confirmDialog(`Activate ${name} ${version}?`, [
      el('p', {}, `Every host serving this tenant switches to ${name} ${version} within a second. `, fromDryRun ? 'You have seen its dry-run.' : 'Run a dry-run first to see what changes.'),
      el('label', { for: 'activate-rules' }, 'With'), ruleChoice,
      lifecycle ? el('label', {}, lifecycle, ' Owns the lifecycle stages') : null,
      el('label', {}, rescore, ' Rescore every customer afterwards'),
    ], 'Activate');
    if (!ok) return;
    const err = document.getElementById('activate-error');
    try {
      const body = { version, rules_version: ruleChoice.value ? Number(ruleChoice.value) : null };
      if (lifecycle) body.owns_lifecycle = lifecycle.checked;
      await api('POST', `/v1/plugins/${enc}/activate`, body);
      if (rescore.checked) await runRescore();
      route();
    } catch (e) { err.textContent = e.message; }
  }

  async function rollback() {
    const reason = el('input', { type: 'text', class: 'wide', id: 'rollback-reason', value: 'rolled back from the console' });
    const ok = await confirmDialog(`Roll back ${name}?`, [
      el('p', {}, `${name} returns to the pair that was active before ${p.active.version}${p.activations.length < 2 ? ' (none: it will be disabled)' : ''}.`),
      el('label', { for: 'rollback-reason' }, 'Reason (for the audit trail)'), reason,
    ], 'Roll back', true);
    if (!ok) return;
    try {
      await api('POST', `/v1/plugins/${enc}/rollback`, { reason: reason.value || 'rollback' });
      await runRescore();
      route();
    } catch (e) { document.getElementById('activate-error').textContent = e.message; }
  }

  async function runRescore() {
    const status = document.getElementById('job-status');
    const { data } = await api('POST', '/v1/rescore');
    const job = await waitForJob(data.job, (j) => {
      if (status) status.textContent = `Rescoring: ${fmtNum(j.done || 0)} of ${fmtNum(j.total || 0)}…`;
    });
    if (status) status.textContent = job.status === 'done' ? 'Rescored every customer.' : `Rescore ${job.status}: ${job.error || ''}`;
  }

  // Rule-set editor, checked by the server; errors inline.
  const editor = el('textarea', { id: 'rules', 'aria-describedby': 'rules-error', spellcheck: 'false' }, startText);
  const rulesError = el('p', { class: 'error', id: 'rules-error', role: 'alert' });
  const rulesOk = el('p', { class: 'ok', id: 'rules-ok', role: 'status' });
  const checkWith = el('select', { id: 'rules-version' }, versionOptions(p.active ? p.active.version : latest));
  function parseEditor() {
    try {
      const v = JSON.parse(editor.value);
      editor.removeAttribute('aria-invalid');
      rulesError.textContent = '';
      return v;
    } catch (e) {
      editor.setAttribute('aria-invalid', 'true');
      rulesError.textContent = `Not JSON: ${e.message}`;
      return undefined;
    }
  }
  async function saveRules() {
    rulesOk.textContent = '';
    const rules = parseEditor();
    if (rules === undefined) return null;
    try {
      const { data } = await api('PUT', `/v1/plugins/${enc}/rules?version=${encodeURIComponent(checkWith.value)}`, rules);
      rulesOk.textContent = `Saved as rule set v${data.rules_version} (checked with ${data.checked_with}).`;
      return data.rules_version;
    } catch (e) {
      editor.setAttribute('aria-invalid', 'true');
      rulesError.textContent = e.message;
      return null;
    }
  }
  const rulesCard = el('section', { class: 'card', id: 'rules-card' }, el('h2', {}, 'Rule set'),
    el('p', { class: 'muted' }, p.active && p.active.rules_version ? `Active: rule set v${p.active.rules_version}.` : 'Active: the plugin\'s default rules.',
      ' The server checks a rule set against the plugin\'s schema and its configure().'),
    el('label', { for: 'rules' }, 'Rules (JSON)'), editor, rulesError, rulesOk,
    can('integrator') ? el('div', { class: 'row' },
      el('div', {}, el('label', { for: 'rules-version' }, 'Check with version'), checkWith),
      el('div', {}, el('button', { type: 'button', id: 'save-rules', onclick: saveRules }, 'Check and save'))) : null);

  // Dry-run: a candidate version with the editor's rules, stored rules or defaults.
  const candidate = el('select', { id: 'dry-run-version' }, versionOptions(latest));
  const rulesSource = el('select', { id: 'dry-run-rules' },
    el('option', { value: 'editor' }, 'the rules in the editor (not stored)'),
    el('option', { value: 'defaults' }, 'the plugin\'s default rules'),
    p.rule_sets.map((r) => el('option', { value: String(r.version) }, `rule set v${r.version}`)));
  const sample = el('input', { id: 'dry-run-sample', type: 'number', min: 1, max: 1000, value: 1000 });
  const out = el('div', { id: 'dry-run-out' });
  let lastCandidate = null;
  async function dryRun() {
    out.replaceChildren(el('p', { class: 'muted' }, 'Running…'));
    const body = { version: candidate.value, sample: Number(sample.value) || 1000, top: 20 };
    if (rulesSource.value === 'editor') {
      const rules = parseEditor();
      if (rules === undefined) { out.replaceChildren(); return; }
      body.rules = rules;
    } else if (rulesSource.value !== 'defaults') body.rules_version = Number(rulesSource.value);
    try {
      let { status, data } = await api('POST', `/v1/plugins/${enc}/dry-run`, body);
      if (status === 202) data = (await waitForJob(data.job)).result;
      lastCandidate = body;
      out.replaceChildren(dryRunResult(data, name),
        can('admin') ? el('button', { type: 'button', id: 'activate-candidate', onclick: activateCandidate }, `Activate ${body.version} with these rules…`) : null);
    } catch (e) { out.replaceChildren(errorBox(e)); }
  }
  async function activateCandidate() {
    let rv = lastCandidate.rules_version ?? null;
    if (lastCandidate.rules !== undefined) {
      rv = await saveRules();
      if (rv === null) return;
    }
    await activate(lastCandidate.version, rv, true);
  }
  const dryCard = el('section', { class: 'card', id: 'dry-run' }, el('h2', {}, 'Dry-run'),
    el('p', { class: 'muted' }, 'Scores stored customers with a candidate beside the active pair; nothing is changed.'),
    can('integrator') ? el('div', { class: 'row' },
      el('div', {}, el('label', { for: 'dry-run-version' }, 'Version'), candidate),
      el('div', {}, el('label', { for: 'dry-run-rules' }, 'With'), rulesSource),
      el('div', {}, el('label', { for: 'dry-run-sample' }, 'Customers'), sample),
      el('div', {}, el('button', { type: 'button', id: 'run-dry-run', onclick: dryRun }, 'Dry-run'))) : el('p', { class: 'muted' }, 'Dry-runs need the integrator role.'),
    out);

  const history = el('section', { class: 'card', id: 'history' }, el('h2', {}, 'Activation history'),
    el('div', { class: 'table-wrap' }, el('table', {},
      el('thead', {}, el('tr', {}, ['When', 'Version', 'Rules', 'Status', 'By', 'Why'].map((h) => el('th', {}, h)))),
      el('tbody', {}, p.activations.map((a) => el('tr', {},
        el('td', {}, fmtTime(a.at)), el('td', {}, a.version), el('td', {}, a.rules_version ? `v${a.rules_version}` : 'defaults'),
        el('td', {}, a.status), el('td', {}, a.actor), el('td', {}, a.reason || '')))))));

  view.replaceChildren(
    el('p', {}, el('a', { href: '#/plugins' }, '← Plugins')),
    el('h1', {}, name, ' ', p.owns_lifecycle ? el('span', { class: 'pill' }, 'owns the lifecycle') : ''),
    el('p', { class: 'muted' }, p.manifest.description,
      p.active ? ` · active: ${p.active.version}` : ' · not enabled',
      p.granted_fields.length ? ` · sees sensitive fields: ${p.granted_fields.join(', ')}` : ''),
    el('p', { id: 'job-status', role: 'status', class: 'muted' }),
    versions, dryCard, rulesCard, history);
}

// An agent's work list: the open follow-ups of the customers they own.
async function pageFollowUps(view, params) {
  if (!can('agent')) {
    view.replaceChildren(el('h1', {}, 'My follow-ups'), el('p', { class: 'muted' }, 'A work list needs the agent role.'));
    return;
  }
  const owner = params.get('owner') || 'me';
  const { data } = await api('GET', `/v1/follow-ups?owner=${encodeURIComponent(owner)}`);
  const item = (f) => el('li', { dataset: { followUp: f.id } },
    el('span', { class: f.due_at < data.now ? 'error' : '' }, `due ${fmtTime(f.due_at)}`), ' · ',
    el('a', { href: `#/customers/${encodeURIComponent(f.customer_id)}` }, f.customer_name || f.customer_id), `: ${f.note} `,
    f.plugin ? el('span', { class: 'pill', title: f.key ? `key ${f.key}` : '' }, f.plugin) : '', ' ',
    el('button', { class: 'secondary', type: 'button', 'data-done': f.id, onclick: async (ev) => {
      ev.target.disabled = true;
      await api('POST', `/v1/customers/${encodeURIComponent(f.customer_id)}/follow-ups/${f.id}/done`);
      route();
    } }, 'Done'), ' ',
    el('button', { class: 'secondary', type: 'button', 'data-snooze': f.id, onclick: async (ev) => {
      ev.target.disabled = true;
      // A day later than it was due, or than now if it was overdue.
      const until = Math.max(f.due_at, data.now) + 24 * 3600 * 1000;
      await api('POST', `/v1/customers/${encodeURIComponent(f.customer_id)}/follow-ups/${f.id}/snooze`, { until });
      route();
    } }, 'Snooze a day'));
  const part = (id, title, items) => el('section', { class: 'card', id },
    el('h2', {}, `${title} (${items.length})`),
    items.length ? el('ul', {}, items.map(item)) : el('p', { class: 'muted' }, 'Nothing here.'));
  view.replaceChildren(
    el('h1', {}, 'My follow-ups'),
    el('form', { class: 'filters', id: 'owner-form', onsubmit: (ev) => {
      ev.preventDefault();
      location.hash = `#/follow-ups?owner=${encodeURIComponent(document.getElementById('f-owner').value.trim() || 'me')}`;
    } }, el('label', { for: 'f-owner' }, 'Whose '),
      el('input', { id: 'f-owner', value: owner, title: 'me, an agent, or none' }), ' ',
      el('button', { type: 'submit', class: 'secondary' }, 'Show')),
    el('p', { class: 'muted' }, data.owner ? `The open follow-ups of the customers ${data.owner} looks after.` : 'The open follow-ups of customers nobody looks after.'),
    part('overdue', 'Overdue', data.overdue),
    part('due-today', 'Due today', data.due_today),
    part('later', 'Later', data.later));
}

// Cron schedules that start rescores, and the jobs they started.
async function pageSchedules(view) {
  const [{ data }, { data: jobs }] = await Promise.all([api('GET', '/v1/schedules'), api('GET', '/v1/jobs?limit=20')]);
  const add = can('admin') ? el('form', { id: 'schedule-form', onsubmit: async (ev) => {
    ev.preventDefault();
    const err = document.getElementById('schedule-error');
    err.textContent = '';
    try {
      await api('POST', '/v1/schedules', { cron: document.getElementById('cron').value.trim() });
      route();
    } catch (e) { err.textContent = e.message; }
  } }, el('label', { for: 'cron' }, 'Cron expression (UTC)'), el('input', { id: 'cron', value: '0 3 * * *', required: true, spellcheck: 'false' }),
    el('p', { id: 'schedule-error', class: 'error', role: 'alert' }),
    el('button', { type: 'submit' }, 'Add the schedule')) : el('p', { class: 'muted' }, 'Adding a schedule needs the admin role.');
  view.replaceChildren(
    el('h1', {}, 'Schedules'),
    el('section', { class: 'card' }, el('h2', {}, 'Rescores on a schedule'),
      el('p', { class: 'muted' }, 'Each occurrence starts one rescore across every host; occurrences missed while no host ran start one on start.'),
      data.schedules.length === 0 ? el('p', { class: 'muted' }, 'No schedules.') :
        el('div', { class: 'table-wrap' }, el('table', { id: 'schedules' },
          el('thead', {}, el('tr', {}, ['Cron', 'Next', 'Last run', 'Runs', ''].map((h) => el('th', {}, h)))),
          el('tbody', {}, data.schedules.map((x) => el('tr', {},
            el('td', {}, el('code', {}, x.cron)), el('td', {}, fmtTime(x.next_at)),
            el('td', {}, x.last_at ? `${fmtTime(x.last_at)} (${x.last_job})` : 'never'), el('td', {}, fmtNum(x.runs)),
            el('td', {}, can('admin') ? el('button', { class: 'secondary', type: 'button', onclick: async (ev) => {
              if (!(await confirmDialog('Delete this schedule?', el('p', {}, `${x.cron}: its jobs go on.`), 'Delete', true))) return;
              ev.target.disabled = true;
              await api('DELETE', `/v1/schedules/${encodeURIComponent(x.id)}`);
              route();
            } }, 'Delete') : '')))))),
      add),
    el('section', { class: 'card' }, el('h2', {}, 'Recent jobs'),
      el('div', { class: 'table-wrap' }, el('table', { id: 'jobs' },
        el('thead', {}, el('tr', {}, ['Started', 'Kind', 'Status', 'Done', 'By'].map((h) => el('th', {}, h)))),
        el('tbody', {}, jobs.jobs.map((j) => el('tr', {},
          el('td', {}, fmtTime(j.created_at)), el('td', {}, j.kind), el('td', {}, j.status),
          el('td', {}, `${fmtNum(j.done)} / ${fmtNum(j.total)}`), el('td', {}, (j.params && j.params.by) || ''))))))));
}

async function pageAudit(view) {
  if (!can('admin')) {
    view.replaceChildren(el('h1', {}, 'Audit trail'), el('p', { class: 'muted' }, 'The audit trail needs the admin role.'));
    return;
  }
  const { data } = await api('GET', '/v1/audit?limit=200');
  view.replaceChildren(el('h1', {}, 'Audit trail'),
    el('section', { class: 'card' }, el('div', { class: 'table-wrap' }, el('table', { id: 'audit' },
      el('thead', {}, el('tr', {}, ['When', 'Action', 'Target', 'By', 'Detail'].map((h) => el('th', {}, h)))),
      el('tbody', {}, data.entries.map((a) => el('tr', {},
        el('td', {}, fmtTime(a.at)), el('td', {}, a.action), el('td', {}, a.target), el('td', {}, a.actor),
        el('td', { class: 'hide-narrow' }, el('code', {}, JSON.stringify(a.detail))))))))));
}

// ---------------------------------------------------------------- routing

async function route() {
  if (!state.me) return;
  const view = document.getElementById('view');
  const [path, query] = (location.hash.slice(1) || '/').split('?');
  const params = new URLSearchParams(query || '');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  for (const a of document.querySelectorAll('#nav a')) {
    const section = a.getAttribute('href').slice(2);
    a.toggleAttribute('aria-current', (parts[0] || '') === section);
    if ((parts[0] || '') === section) a.setAttribute('aria-current', 'page');
  }
  try {
    if (parts[0] === 'customers' && parts[1]) await pageCustomer(view, parts[1]);
    else if (parts[0] === 'customers') await pageCustomers(view, params);
    else if (parts[0] === 'plugins' && parts[1]) await pagePlugin(view, parts[1]);
    else if (parts[0] === 'plugins') await pagePlugins(view);
    else if (parts[0] === 'audit') await pageAudit(view);
    else if (parts[0] === 'follow-ups') await pageFollowUps(view, params);
    else if (parts[0] === 'schedules') await pageSchedules(view);
    else await pageAnalytics(view);
    document.title = `${document.querySelector('#view h1')?.textContent || 'Console'} · Stagecraft`;
  } catch (e) {
    if (e.message !== 'signed out') view.replaceChildren(el('h1', {}, 'Something went wrong'), errorBox(e));
  }
}

document.addEventListener('DOMContentLoaded', async () => {
  document.getElementById('signin-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const token = document.getElementById('token').value.trim();
    if (await signIn(token)) {
      document.getElementById('token').value = '';
      await route();
      document.getElementById('main').focus();
    }
  });
  document.getElementById('signout').addEventListener('click', () => signOut('Signed out.'));
  window.addEventListener('hashchange', route);
  if (state.token && (await signIn(state.token))) await route();
  else showSignIn();
});

// The Bulkhead dashboard's page. Plain DOM, no framework, nothing loaded
// from elsewhere. Every string from the mesh (service names, localities,
// reasons, paths) reaches the page as a text node or an attribute value,
// never as markup: `el`/`svg` below are the only way nodes are made.
'use strict';

(() => {
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const TOKEN = document.querySelector('meta[name="bulkhead-token"]').content;
  // Figures with no event of their own (rates, latencies) are polled;
  // everything else arrives over the event stream.
  const POLL_MS = 5000;
  // Events the page keeps (newest first).
  const MAX_EVENTS = 500;

  // --- DOM helpers: children that are strings or numbers become text.
  function fill(node, attrs, children) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }
  const el = (tag, attrs, ...children) => fill(document.createElement(tag), attrs, children);
  const svg = (tag, attrs, ...children) => fill(document.createElementNS(SVG_NS, tag), attrs, children);

  const fmt = {
    rps: (v) => (v === null || v === undefined ? '-' : Number(v).toFixed(2)),
    pct: (v) => (v === null || v === undefined ? '-' : (v * 100).toFixed(2) + '%'),
    ms: (v) => (v === null || v === undefined ? '-' : Number(v).toFixed(1)),
    time: (ms) => (ms ? new Date(ms).toLocaleTimeString() : '-'),
  };
  const rateClass = (v) => (v === null || v === undefined ? '' : v >= 0.99 ? 'ok' : v >= 0.95 ? 'warn' : 'bad');
  const serviceHref = (ns, name) => '#/services/' + encodeURIComponent(ns) + '/' + encodeURIComponent(name);

  // --- Talking to the dashboard server.
  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }
  async function api(path, options) {
    let resp;
    try {
      resp = await fetch(path, Object.assign({ cache: 'no-store', headers: { accept: 'application/json' } }, options));
    } catch (e) {
      throw new ApiError(0, 'Dashboard server unreachable: is `bulkheadctl dashboard` still running?');
    }
    let body = null;
    try { body = await resp.json(); } catch (e) { body = null; }
    if (!resp.ok) throw new ApiError(resp.status, (body && body.error) || 'HTTP ' + resp.status);
    return body;
  }
  async function post(path, value) {
    return api(path, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-bulkhead-token': TOKEN, accept: 'application/json' },
      body: JSON.stringify(value),
    });
  }

  const banner = document.getElementById('banner');
  const notice = document.getElementById('notice');
  // Two sources of trouble: the last fetch, and the event stream (which
  // says when the control plane is gone even on a view with no fetch).
  const problems = { fetch: '', stream: '' };
  function showBanner() {
    const text = problems.fetch || problems.stream;
    banner.textContent = text;
    banner.hidden = !text;
  }
  function showProblem(error) {
    const prefix = error.status === 502 || error.status === 0 ? '' : 'Error: ';
    problems.fetch = prefix + error.message + ' — showing the last figures received; retrying every ' + POLL_MS / 1000 + ' s.';
    showBanner();
  }
  function clearProblem() { problems.fetch = ''; showBanner(); }
  function say(text) { notice.textContent = text; notice.hidden = !text; }

  // --- Filter: narrows services by "namespace/name" substring.
  const filterBox = document.getElementById('filter');
  const filterText = () => filterBox.value.trim().toLowerCase();
  const matches = (ns, name) => { const f = filterText(); return !f || (ns + '/' + name).toLowerCase().includes(f); };

  // --- Topology: services as nodes in namespace bands, callers to the
  // left of what they call (longest-path layers), edges with rps and
  // success rate.
  // COL_GAP leaves room for an edge's label between two columns.
  const NODE_W = 180, NODE_H = 42, ROW = 54, COL_GAP = 110, PER_COLUMN = 15, PAD = 16, BAND_HEAD = 26;

  function layers(ids, edges) {
    const layer = new Map(ids.map((id) => [id, 0]));
    const cap = Math.min(ids.length, 8);
    for (let round = 0; round < ids.length; round++) {
      let moved = false;
      for (const e of edges) {
        if (e.from === e.to || !layer.has(e.from) || !layer.has(e.to)) continue;
        const want = Math.min(layer.get(e.from) + 1, cap);
        if (layer.get(e.to) < want) { layer.set(e.to, want); moved = true; }
      }
      if (!moved) break;
    }
    return layer;
  }

  function renderTopology(data) {
    const known = new Map(data.services.map((s) => [s.namespace + '/' + s.name, s]));
    const nodes = new Map();
    for (const s of data.services) nodes.set(s.namespace + '/' + s.name, { id: s.namespace + '/' + s.name, ns: s.namespace, name: s.name, svc: s });
    // Denied calls (from the event stream's recent denials) are edges too,
    // drawn dashed in red: a caller may be no service at all.
    const deniedAll = data.denied || [];
    for (const e of [...data.edges, ...deniedAll]) {
      for (const id of [e.from, e.to]) {
        if (nodes.has(id)) continue;
        // `ns/name`, or a caller that is no SPIFFE ID of the mesh's shape.
        const [ns, ...rest] = id.includes('://') ? [id] : id.split('/');
        nodes.set(id, { id, ns: rest.length ? ns : '(outside)', name: rest.length ? rest.join('/') : id, svc: null });
      }
    }
    // The filter keeps matching services and their neighbours (dimmed).
    const hit = new Set([...nodes.values()].filter((n) => matches(n.ns, n.name)).map((n) => n.id));
    const shown = new Set(hit);
    for (const e of [...data.edges, ...deniedAll]) {
      if (hit.has(e.from)) shown.add(e.to);
      if (hit.has(e.to)) shown.add(e.from);
    }
    const ids = [...shown].filter((id) => nodes.has(id)).sort();
    const edges = data.edges.filter((e) => shown.has(e.from) && shown.has(e.to));
    const denied = deniedAll.filter((e) => shown.has(e.from) && shown.has(e.to));
    const layer = layers(ids, [...edges, ...denied]);
    const columns = Math.max(1, ...ids.map((id) => layer.get(id) + 1));
    // Bands: one per namespace; inside, a column per layer, wrapped every
    // PER_COLUMN nodes into sub-columns.
    const byNs = new Map();
    for (const id of ids) {
      const n = nodes.get(id);
      if (!byNs.has(n.ns)) byNs.set(n.ns, []);
      byNs.get(n.ns).push(n);
    }
    const subcols = new Array(columns).fill(1);
    for (const list of byNs.values()) {
      for (let l = 0; l < columns; l++) {
        const count = list.filter((n) => layer.get(n.id) === l).length;
        subcols[l] = Math.max(subcols[l], Math.ceil(count / PER_COLUMN));
      }
    }
    const colX = [];
    let x = PAD;
    for (let l = 0; l < columns; l++) { colX.push(x); x += subcols[l] * (NODE_W + 30) + COL_GAP; }
    const width = Math.max(x, 600);
    const pos = new Map();
    const bands = [];
    let y = PAD;
    for (const ns of [...byNs.keys()].sort()) {
      const list = byNs.get(ns);
      let rows = 1;
      for (let l = 0; l < columns; l++) {
        const inLayer = list.filter((n) => layer.get(n.id) === l).sort((a, b) => a.name.localeCompare(b.name));
        inLayer.forEach((n, i) => {
          const sub = Math.floor(i / PER_COLUMN), row = i % PER_COLUMN;
          pos.set(n.id, { x: colX[l] + sub * (NODE_W + 30), y: y + BAND_HEAD + row * ROW });
          rows = Math.max(rows, row + 1);
        });
      }
      const height = BAND_HEAD + rows * ROW + 4;
      bands.push({ ns, y, height });
      y += height + 12;
    }
    const height = Math.max(y, 120);
    const root = svg('svg', { width, height, viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': 'Service topology: who calls whom' },
      svg('defs', {}, svg('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' },
        svg('path', { d: 'M 0 0 L 10 5 L 0 10 z' })),
      svg('marker', { id: 'arrow-denied', viewBox: '0 0 10 10', refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' },
        svg('path', { class: 'denied', d: 'M 0 0 L 10 5 L 0 10 z' }))));
    for (const b of bands) {
      root.append(svg('rect', { class: 'ns-band', x: 4, y: b.y, width: width - 8, height: b.height, rx: 8 }),
        svg('text', { class: 'ns-label', x: 14, y: b.y + 17 }, 'namespace ' + b.ns));
    }
    for (const e of edges) {
      const a = pos.get(e.from), b = pos.get(e.to);
      if (!a || !b) continue;
      const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x, y2 = b.y + NODE_H / 2;
      const bend = Math.max(40, Math.abs(x2 - x1) / 2);
      const d = e.from === e.to
        ? `M ${x1} ${y1 - 8} C ${x1 + 40} ${y1 - 40}, ${x1 + 40} ${y1 + 40}, ${x1} ${y1 + 8}`
        : `M ${x1} ${y1} C ${x1 + bend} ${y1}, ${x2 - bend} ${y2}, ${x2} ${y2}`;
      const bad = e.successRate !== null && e.successRate < 0.95;
      const label = fmt.rps(e.rps) + ' rps · ' + fmt.pct(e.successRate);
      root.append(svg('path', { class: 'edge' + (bad ? ' bad' : ''), d, 'marker-end': 'url(#arrow)', 'data-from': e.from, 'data-to': e.to },
        svg('title', {}, e.from + ' → ' + e.to + ': ' + label)));
      root.append(svg('text', { class: 'edge-label' + (bad ? ' bad' : ''), x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 4, 'text-anchor': 'middle' }, label));
    }
    const deniedAt = new Map();
    for (const e of denied) {
      const a = pos.get(e.from), b = pos.get(e.to);
      if (!a || !b) continue;
      // Below the allowed edge between the same two, if any.
      const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2 + 10, x2 = b.x, y2 = b.y + NODE_H / 2 + 10;
      const bend = Math.max(40, Math.abs(x2 - x1) / 2);
      const d = e.from === e.to
        ? `M ${x1} ${y1 - 8} C ${x1 + 50} ${y1 - 50}, ${x1 + 50} ${y1 + 50}, ${x1} ${y1 + 8}`
        : `M ${x1} ${y1} C ${x1 + bend} ${y1 + 24}, ${x2 - bend} ${y2 + 24}, ${x2} ${y2}`;
      root.append(svg('path', { class: 'edge denied', d, 'marker-end': 'url(#arrow-denied)', 'data-from': e.from, 'data-to': e.to },
        svg('title', {}, `${e.from} → ${e.to}: ${e.count} denied (${(e.rules || []).join(', ')})`)));
      deniedAt.set(e.to, (deniedAt.get(e.to) || 0) + e.count);
    }
    // Labels on denied edges would cross the allowed edges' labels: the
    // count goes above the target's top right corner instead (the table
    // below names each caller).
    for (const [id, count] of deniedAt) {
      const p = pos.get(id);
      if (p) root.append(svg('text', { class: 'edge-label denied', x: p.x + NODE_W, y: p.y - 3, 'text-anchor': 'end' }, `✗ ${count} denied`));
    }
    for (const id of ids) {
      const n = nodes.get(id), p = pos.get(id);
      if (!p) continue;
      const s = n.svc;
      const figures = !s ? 'not a declared service' : s.requests ? fmt.rps(s.rps) + ' rps · ' + fmt.pct(s.successRate) : 'no inbound calls';
      const cls = 'node' + (s ? '' : ' external') + (hit.has(id) ? '' : ' dim');
      const body = [svg('title', {}, id), svg('rect', { x: p.x, y: p.y, width: NODE_W, height: NODE_H }),
        svg('text', { class: 'name', x: p.x + 10, y: p.y + 17 }, n.name.length > 24 ? n.name.slice(0, 23) + '…' : n.name),
        svg('text', { class: 'figures', x: p.x + 10, y: p.y + 33 }, figures)];
      root.append(s
        ? svg('a', { class: cls, href: serviceHref(n.ns, n.name), 'data-service': id, 'data-focus-key': 'node:' + id, 'aria-label': id + ', ' + figures }, body)
        : svg('g', { class: cls, 'data-service': id }, body));
    }
    const rows = edges.map((e) => el('tr', { 'data-from': e.from, 'data-to': e.to },
      el('td', {}, e.from), el('td', {}, known.has(e.to) ? el('a', { href: serviceHref(...e.to.split('/')) }, e.to) : e.to),
      el('td', { class: 'num' }, fmt.rps(e.rps)), el('td', { class: 'num ' + rateClass(e.successRate) }, fmt.pct(e.successRate)),
      el('td', { class: 'num' }, fmt.ms(e.p99Ms))));
    return [
      el('h2', {}, 'Topology'),
      el('p', { class: 'muted' }, `${ids.length} of ${nodes.size} services shown · figures over the last ${data.windowMs / 1000} s · select a service for detail`),
      ids.length ? el('div', { class: 'topology' }, root) : el('p', {}, 'No service matches the filter.'),
      el('h3', {}, 'Calls'),
      edges.length
        ? el('table', { class: 'calls' }, el('thead', {}, el('tr', {}, el('th', {}, 'From'), el('th', {}, 'To'), el('th', { class: 'num' }, 'RPS'), el('th', { class: 'num' }, 'Success'), el('th', { class: 'num' }, 'P99 ms'))), el('tbody', {}, rows))
        : el('p', { class: 'muted' }, 'No calls reported in the window (sidecars report every few seconds).'),
      denied.length ? [el('h3', {}, 'Denied calls (last 5 minutes)'),
        table('denied-edges', ['From', 'To', 'Denied', 'Rule or reason'], denied.map((e) => el('tr', { 'data-from': e.from, 'data-to': e.to },
          el('td', {}, e.from), el('td', {}, e.to), el('td', { class: 'num bad' }, String(e.count)), el('td', {}, (e.rules || []).join(', ')))))] : null,
    ];
  }

  // --- Services: the list, and one service in detail.
  function renderServices(data) {
    const list = data.services.filter((s) => matches(s.namespace, s.name));
    const rows = list.map((s) => el('tr', { 'data-service': s.namespace + '/' + s.name },
      el('td', {}, s.namespace),
      el('td', {}, el('a', { href: serviceHref(s.namespace, s.name), 'data-focus-key': 'svc:' + s.namespace + '/' + s.name }, s.name)),
      el('td', {}, s.versions.join(', ') || '-'),
      el('td', { class: 'num' }, `${s.ready}/${s.endpoints}`),
      el('td', { class: 'num' }, fmt.rps(s.rps)),
      el('td', { class: 'num ' + rateClass(s.successRate) }, fmt.pct(s.successRate)),
      el('td', { class: 'num' }, fmt.ms(s.p99Ms)),
      el('td', {}, s.rollout ? el('span', { class: 'phase phase-' + s.rollout.phase }, `${s.rollout.phase || 'pending'} (${s.rollout.canaryWeight ?? 0} %)`) : '-')));
    return [
      el('h2', {}, 'Services'),
      el('table', { class: 'services' },
        el('thead', {}, el('tr', {}, ['Namespace', 'Service', 'Versions', 'Ready/endpoints', 'RPS', 'Success', 'P99 ms', 'Rollout'].map((h, i) => el('th', { class: i >= 3 && i <= 6 ? 'num' : null }, h)))),
        el('tbody', {}, rows)),
      list.length ? null : el('p', {}, 'No service matches the filter.'),
    ];
  }

  function table(cls, heads, rows) {
    return el('table', { class: cls }, el('thead', {}, el('tr', {}, heads.map((h) => el('th', {}, h)))), el('tbody', {}, rows));
  }

  function chart(version, samples) {
    const W = 300, H = 90, L = 34, B = 16;
    const pts = samples.filter((s) => s.p99Ms !== null || s.p50Ms !== null);
    const root = svg('svg', { class: 'latency', width: W, height: H, role: 'img', 'aria-label': `p50 and p99 latency of ${version} over the last minutes` });
    if (pts.length < 2) {
      root.append(svg('text', { x: 8, y: H / 2 }, 'collecting samples (every few seconds)…'));
      return el('figure', { class: 'chart' }, root, el('figcaption', {}, version));
    }
    const t0 = pts[0].tUnixMs, t1 = pts[pts.length - 1].tUnixMs || t0 + 1;
    const max = Math.max(1, ...pts.map((s) => s.p99Ms || 0), ...pts.map((s) => s.p50Ms || 0));
    const sx = (t) => L + ((t - t0) / Math.max(1, t1 - t0)) * (W - L - 4);
    const sy = (v) => H - B - (v / max) * (H - B - 6);
    const line = (key) => pts.filter((s) => s[key] !== null).map((s) => `${sx(s.tUnixMs).toFixed(1)},${sy(s[key]).toFixed(1)}`).join(' ');
    root.append(svg('line', { class: 'axis', x1: L, y1: H - B, x2: W, y2: H - B }), svg('line', { class: 'axis', x1: L, y1: 4, x2: L, y2: H - B }),
      svg('text', { x: 2, y: 12 }, max.toFixed(0) + ' ms'), svg('text', { x: 2, y: H - B }, '0'),
      svg('text', { x: L, y: H - 3 }, fmt.time(t0)), svg('text', { x: W - 60, y: H - 3 }, fmt.time(t1)),
      svg('polyline', { class: 'p50', points: line('p50Ms') }), svg('polyline', { class: 'p99', points: line('p99Ms') }));
    return el('figure', { class: 'chart' }, root, el('figcaption', {}, `${version}: `, el('span', { class: 'muted' }, 'p50 (blue), p99 (red)')));
  }

  function splitBars(split) {
    const backends = (split.spec && split.spec.backends) || [];
    const total = backends.reduce((a, b) => a + (b.weight || 0), 0) || 1;
    return el('div', { class: 'split' }, el('p', {}, 'TrafficSplit ', el('strong', {}, split.metadata ? split.metadata.name : '')),
      table('weights', ['Version', 'Weight', ''], backends.map((b) => el('tr', {},
        el('td', {}, b.version), el('td', { class: 'num' }, String(b.weight)),
        el('td', {}, svg('svg', { width: 200, height: 12, role: 'img', 'aria-label': `${Math.round((b.weight / total) * 100)} %` },
          svg('rect', { class: 'bar-bg', x: 0, y: 0, width: 200, height: 12 }),
          svg('rect', { class: 'bar', x: 0, y: 0, width: (200 * (b.weight || 0)) / total, height: 12 })))))));
  }

  function renderRollout(r) {
    const st = r.status;
    const spec = r.spec || {};
    const head = el('h3', {}, `Rollout ${r.name}: ${spec.stable} → ${spec.canary} (${spec.strategy || 'canary'})`);
    if (!st) return el('section', { class: 'card rollout', 'data-rollout': r.namespace + '/' + r.name }, head, el('p', { class: 'muted' }, 'No status yet: the controller has not acted on it.'));
    const failed = st.phase === 'Failed' || st.phase === 'Aborted';
    const steps = el('ol', { class: 'steps', 'aria-label': 'Steps' }, r.steps.map((label, i) => {
      const state = st.phase === 'Promoted' || i < st.step ? 'done' : i === st.step ? (failed ? 'failed' : 'current') : 'todo';
      // Steps are numbered from 1 for people (the API counts from 0).
      return el('li', { class: state, 'aria-current': state === 'current' ? 'step' : null }, (state === 'done' ? '■ ' : state === 'current' ? '▶ ' : state === 'failed' ? '✗ ' : '□ ') + (i + 1) + '. ' + label);
    }));
    const actions = el('div', { class: 'actions' });
    if (!['Promoted', 'Failed', 'Aborted'].includes(st.phase)) {
      const offer = [['promote', 'Promote'], st.phase === 'Paused' || st.pausedByOperator ? ['resume', 'Resume'] : ['pause', 'Pause'], ['abort', 'Abort']];
      for (const [action, label] of offer) {
        actions.append(el('button', { type: 'button', class: action === 'abort' ? 'danger' : null, 'data-action': action, 'data-focus-key': `act:${r.namespace}/${r.name}/${action}`, onclick: () => confirmAction(r, action) }, label));
      }
    }
    const intervals = (st.intervals || []).slice().reverse().map((i) => el('tr', {},
      el('td', {}, fmt.time(i.endUnixMs)), el('td', { class: 'num' }, String(i.step + 1)), el('td', { class: 'num' }, i.canaryWeight + ' %'),
      el('td', { class: 'num' }, String(i.requests)), el('td', { class: 'num ' + rateClass(i.successRate) }, fmt.pct(i.successRate)),
      el('td', { class: 'num' }, fmt.ms(i.p99Ms)),
      el('td', { class: i.verdict === 'failed' ? 'bad' : i.verdict === 'passed' ? 'ok' : 'warn' }, i.verdict),
      el('td', {}, (i.gates || []).filter((g) => g.gate !== 'minRequests').map((g) => el('div', { class: !g.judged ? 'muted' : g.passed ? 'ok' : 'bad' },
        `${g.gate}: ${g.measured === null ? 'n/a' : Number(g.measured).toFixed(3)} vs ${g.threshold} ${!g.judged ? '(not judged)' : g.passed ? 'ok' : 'FAIL'}`)))));
    return el('section', { class: 'card rollout', 'data-rollout': r.namespace + '/' + r.name }, head,
      el('p', {}, 'Phase ', el('span', { class: 'phase phase-' + st.phase }, st.phase), ` · step ${Math.min(st.step + 1, r.steps.length)} of ${r.steps.length} · canary weight ${st.canaryWeight} % · stable now ${st.stable}`),
      steps,
      el('p', { class: 'reason' }, 'Reason: ', st.reason),
      st.lastAction ? el('p', { class: 'muted last-action' }, `Last action: ${st.lastAction.action} by ${st.lastAction.by} at ${fmt.time(st.lastAction.atUnixMs)}: ${st.lastAction.outcome}`) : null,
      actions,
      intervals.length
        ? table('intervals', ['Ended', 'Step', 'Weight', 'Requests', 'Success', 'P99 ms', 'Verdict', 'Gates (measured vs threshold)'], intervals)
        : el('p', { class: 'muted' }, 'No interval judged yet.'));
  }

  function renderService(d) {
    const versions = d.versions.map((v) => el('tr', { 'data-version': v.version },
      el('td', {}, v.version), el('td', { class: 'num' }, fmt.rps(v.rps)), el('td', { class: 'num ' + rateClass(v.successRate) }, fmt.pct(v.successRate)),
      el('td', { class: 'num' }, fmt.ms(v.p50Ms)), el('td', { class: 'num' }, fmt.ms(v.p95Ms)), el('td', { class: 'num' }, fmt.ms(v.p99Ms)),
      el('td', { class: 'num' }, String(v.requests)), el('td', { class: 'num' }, String(v.failures)), el('td', { class: 'num' }, String(v.meshErrors))));
    const endpoints = d.endpoints.map((e) => el('tr', { 'data-endpoint': e.address + ':' + e.inboundPort },
      el('td', {}, e.version), el('td', { class: 'code' }, e.address), el('td', {}, e.node), el('td', {}, e.zone), el('td', {}, e.region),
      el('td', { class: e.ready ? 'ok' : 'warn' }, e.ready ? 'ready' : 'not ready'),
      el('td', { class: (e.ejectedBy || []).length ? 'bad ejection' : 'ok ejection' }, (e.ejectedBy || []).length
        ? e.ejectedBy.map((j) => `ejected by ${j.by} until ${fmt.time(j.untilUnixMs)}`).join('; ')
        : 'in rotation'),
      el('td', { class: 'code' }, e.identity)));
    const callers = d.callers.map((c) => el('tr', {}, el('td', {}, c.from), el('td', {}, c.version),
      el('td', { class: 'num' }, fmt.rps(c.rps)), el('td', { class: 'num ' + rateClass(c.successRate) }, fmt.pct(c.successRate))));
    const history = d.history || {};
    const chartVersions = [...new Set([...Object.keys(history), ...d.versions.map((v) => v.version)])].sort();
    return [
      el('p', {}, el('a', { href: '#/services' }, '← All services')),
      el('h2', {}, `Service ${d.namespace}/${d.name}`),
      d.resource ? null : el('p', { class: 'warn' }, 'No Service resource declares it (seen in the registry or in traffic only).'),
      el('section', { class: 'card' }, el('h3', {}, `Versions (last ${d.windowMs / 1000} s)`),
        versions.length ? table('versions', ['Version', 'RPS', 'Success', 'P50 ms', 'P95 ms', 'P99 ms', 'Requests', 'Failures', 'Mesh errors'], versions) : el('p', { class: 'muted' }, 'No requests reported in the window.'),
        el('div', { class: 'charts' }, chartVersions.map((v) => chart(v, history[v] || [])))),
      d.rollouts.map(renderRollout),
      el('section', { class: 'card' }, el('h3', {}, 'Traffic split'),
        d.trafficSplits.length ? d.trafficSplits.map(splitBars) : el('p', { class: 'muted' }, 'No TrafficSplit: callers balance over every version.')),
      el('section', { class: 'card' }, el('h3', {}, 'Endpoints'),
        endpoints.length ? table('endpoints', ['Version', 'Address', 'Node', 'Zone', 'Region', 'Health', 'Outlier detection', 'Identity'], endpoints) : el('p', { class: 'muted' }, 'No endpoint registered.')),
      el('section', { class: 'card' }, el('h3', {}, 'Callers'),
        callers.length ? table('callers', ['From', 'Version', 'RPS', 'Success'], callers) : el('p', { class: 'muted' }, 'No calls reported in the window.')),
    ];
  }

  // --- Rollout actions, with a confirmation.
  const dialog = document.getElementById('confirm');
  const WHAT = {
    promote: 'skip the rest of the current step (a pause, or its analysis)',
    pause: 'hold the rollout at its current weight',
    resume: 'go on from where it was held',
    abort: 'send all traffic back to the stable version at once; the rollout ends Aborted',
  };
  function confirmAction(r, action) {
    document.getElementById('confirm-text').textContent =
      `${action[0].toUpperCase()}${action.slice(1)} rollout ${r.namespace}/${r.name}? This will ${WHAT[action]}. It is carried out with your operator identity and recorded.`;
    const ok = document.getElementById('confirm-ok');
    ok.textContent = action[0].toUpperCase() + action.slice(1);
    ok.className = action === 'abort' ? 'danger' : '';
    dialog.returnValue = '';
    dialog.onclose = async () => {
      if (dialog.returnValue !== 'ok') return;
      say(`${action}: sending…`);
      try {
        const state = await post('/api/rollout-action', { namespace: r.namespace, name: r.name, action });
        const st = state.status || {};
        say(`Rollout ${r.namespace}/${r.name}: ${action} done — ${st.phase || ''} at step ${st.step === undefined ? '-' : st.step + 1}, canary weight ${st.canaryWeight ?? '-'} %. ${st.reason || ''}`);
      } catch (e) {
        say(`Rollout ${r.namespace}/${r.name}: ${action} failed: ${e.message}`);
      }
      refresh();
    };
    dialog.showModal();
  }

  // --- Policy: who may call a service, and "can X call this?" answered
  // by the same code as `bulkheadctl explain`.
  const policyForms = new Map(); // 'ns/name' -> {from, port, method, path, answer, error}
  function policyForm(key) {
    if (!policyForms.has(key)) policyForms.set(key, { from: '', port: '', method: 'GET', path: '', answer: null, error: '' });
    return policyForms.get(key);
  }
  const any = (v) => (v === null || v === undefined ? 'any' : v.join(', '));

  function renderPolicyList(data) {
    const list = data.services.filter((s) => s.declared && matches(s.namespace, s.name));
    return [
      el('h2', {}, 'Policy'),
      el('p', { class: 'muted' }, 'Pick a service to see the AllowLists targeting it and ask whether a caller may call it.'),
      table('policy-services', ['Namespace', 'Service'], list.map((s) => el('tr', { 'data-service': s.namespace + '/' + s.name },
        el('td', {}, s.namespace),
        el('td', {}, el('a', { href: '#/policy/' + encodeURIComponent(s.namespace) + '/' + encodeURIComponent(s.name), 'data-focus-key': 'pol:' + s.namespace + '/' + s.name }, s.name))))),
      list.length ? null : el('p', {}, 'No declared service matches the filter.'),
    ];
  }

  function renderAnswer(a) {
    const word = a.decision === 'allowed' ? 'ALLOWED' : a.decision === 'audit' ? 'AUDIT (would be denied; let through)' : 'DENIED';
    return el('div', { class: 'answer ' + (a.decision === 'denied' ? 'bad' : a.decision === 'audit' ? 'warn' : 'ok'), role: 'status', 'data-decision': a.decision },
      el('p', {}, el('strong', { class: 'decision' }, word), ` ${a.from} → ${a.to}:${a.port}`, a.path !== null && a.path !== undefined ? ` ${a.method} ${a.path}` : ''),
      a.normalizedPath !== null && a.normalizedPath !== undefined ? el('p', { class: 'normalized' }, 'Normalized path: ', el('code', {}, a.normalizedPath)) : null,
      a.allowList !== null && a.allowList !== undefined ? el('p', {}, `By AllowList ${a.allowList}, rule #${a.rule}`) : el('p', {}, 'Reason: ', el('code', {}, a.label)),
      a.reasons.length ? el('ul', { class: 'reasons' }, a.reasons.map((r) => el('li', {}, r.allowList !== null && r.rule !== null ? `${r.allowList}#${r.rule}: ` : '', r.message))) : null);
  }

  function renderPolicy(d) {
    const key = d.namespace + '/' + d.name;
    const form = policyForm(key);
    if (!form.port && d.ports.length) form.port = String(d.ports[0].port);
    const rows = d.callers.map((r) => el('tr', { 'data-allowlist': r.allowList },
      el('td', {}, r.allowList), el('td', { class: 'num' }, String(r.rule)), el('td', {}, r.mode),
      el('td', {}, r.callers.join(', ')), el('td', {}, any(r.ports)), el('td', {}, r.httpOnly ? 'http' : 'any'),
      el('td', {}, any(r.methods)), el('td', { class: 'code' }, any(r.paths))));
    const field = (name, label, input) => el('div', { class: 'field' }, el('label', { for: 'explain-' + name }, label), input);
    const bind = (name) => ({ id: 'explain-' + name, name, 'data-focus-key': 'explain:' + name, oninput: (ev) => { form[name] = ev.target.value; } });
    const portSelect = el('select', Object.assign(bind('port'), { onchange: (ev) => { form.port = ev.target.value; } }),
      d.ports.map((p) => el('option', { value: String(p.port), selected: String(p.port) === form.port }, `${p.port} (${p.protocol})`)));
    const inputs = [
      field('from', 'Caller', el('input', Object.assign(bind('from'), { type: 'text', value: form.from, placeholder: 'namespace/service-account or spiffe://…', required: true, autocomplete: 'off', spellcheck: 'false' }))),
      field('port', 'Port', portSelect),
      field('method', 'Method', el('input', Object.assign(bind('method'), { type: 'text', value: form.method, size: 8, autocomplete: 'off' }))),
      field('path', 'Path', el('input', Object.assign(bind('path'), { type: 'text', value: form.path, placeholder: '/v1/… (empty: any)', autocomplete: 'off', spellcheck: 'false' }))),
      el('button', { type: 'submit', 'data-focus-key': 'explain:submit' }, 'Explain'),
    ];
    const askForm = el('form', { class: 'explain', 'aria-label': 'Can a caller call this service?', onsubmit: (ev) => { ev.preventDefault(); ask(d, form); } }, inputs);
    return [
      el('p', {}, el('a', { href: '#/policy' }, '← All services')),
      el('h2', {}, `Policy of ${key}`),
      el('section', { class: 'card' }, el('h3', {}, 'AllowLists targeting it'),
        d.allowLists.length
          ? [el('p', { class: 'muted' }, d.allowLists.map((l) => `${l.name} (${l.mode}, ${l.rules} rule${l.rules === 1 ? '' : 's'})`).join(' · ')),
            rows.length ? table('allow-rules', ['AllowList', 'Rule', 'Mode', 'Callers', 'Ports', 'Protocol', 'Methods', 'Paths'], rows) : el('p', {}, 'No rule lets anyone in.')]
          : el('p', { class: 'warn' }, 'No AllowList targets it: default deny, nobody may call it.')),
      el('section', { class: 'card' }, el('h3', {}, 'Can this caller call it?'),
        el('p', { class: 'muted' }, 'The same answer as bulkheadctl explain, from the sidecar\'s own decision code on the live configuration.'),
        askForm,
        form.error ? el('p', { class: 'bad' }, form.error) : null,
        form.answer ? renderAnswer(form.answer) : null),
    ];
  }

  async function ask(d, form) {
    form.error = '';
    try {
      form.answer = await post('/api/explain', {
        namespace: d.namespace, name: d.name, from: form.from,
        port: form.port ? Number(form.port) : null, method: form.method, path: form.path,
      });
    } catch (e) {
      form.answer = null;
      form.error = e.message;
    }
    draw();
  }

  // --- Denials: added up by the dashboard from the sidecars' denial
  // events (caller, target, rule or reason, normalized path).
  function renderDenials(data) {
    const f = filterText();
    const list = data.denials.filter((x) => !f || [x.from, x.to, x.path, x.rule].join(' ').toLowerCase().includes(f));
    const rows = list.map((x) => el('tr', { 'data-from': x.from, 'data-to': x.to },
      el('td', {}, fmt.time(x.lastUnixMs)), el('td', { class: 'code', title: x.caller }, x.from), el('td', {}, x.to),
      el('td', { class: 'code path' }, x.path || '(tcp)'), el('td', { class: 'rule' }, x.rule), el('td', { class: 'num bad' }, String(x.count))));
    return [
      el('h2', {}, 'Denials'),
      el('p', { class: 'muted' }, 'Requests the sidecars refused, added up per caller, target, rule or reason and path (sidecars report every 10 s).'),
      rows.length
        ? table('denials', ['Last seen', 'Caller', 'Target', 'Path', 'Rule or reason', 'Count'], rows)
        : el('p', {}, data.denials.length ? 'No denial matches the filter.' : 'No denial in the last hour.'),
    ];
  }

  // --- Events: the mesh event stream as it arrives, newest first.
  const events = []; // CloudEvents, newest first, at most MAX_EVENTS
  const eventFilter = { type: '', namespace: '' };
  const EVENT_TYPES = ['endpoint', 'certificate', 'resource', 'authz', 'rollout', 'events'];
  const shortType = (t) => String(t || '').replace(/^dev\.bulkhead\./, '');

  function eventDetail(e) {
    const d = e.data || {};
    switch (e.type) {
      case 'dev.bulkhead.authz.denied': return `${d.count}× ${d.caller} → ${d.target} ${d.path || ''} (${d.rule})`;
      case 'dev.bulkhead.rollout.step': return `${d.rollout}: ${d.phase}, step ${Number(d.step) + 1}, canary ${d.canaryWeight} % — ${d.reason}`;
      case 'dev.bulkhead.endpoint.ejected': return `${d.service} ${d.address}:${d.inboundPort} ejected for ${d.ejectedForSeconds} s by ${e.source}`;
      case 'dev.bulkhead.endpoint.readmitted': return `${d.service} ${d.address}:${d.inboundPort} readmitted by ${e.source}`;
      default: {
        const text = JSON.stringify(d);
        return text.length > 200 ? text.slice(0, 199) + '…' : text;
      }
    }
  }

  function renderEvents() {
    const namespaces = [...new Set(events.map((e) => e.namespace || ''))].filter(Boolean).sort();
    const f = filterText();
    const list = events.filter((e) => (!eventFilter.type || shortType(e.type) === eventFilter.type || shortType(e.type).startsWith(eventFilter.type + '.'))
      && (!eventFilter.namespace || e.namespace === eventFilter.namespace)
      && (!f || [e.type, e.namespace, e.subject, e.source].join(' ').toLowerCase().includes(f)));
    const select = (name, label, options, value) => el('div', { class: 'field' }, el('label', { for: 'events-' + name }, label),
      el('select', { id: 'events-' + name, 'data-focus-key': 'events:' + name, onchange: (ev) => { eventFilter[name] = ev.target.value; draw(); } },
        el('option', { value: '', selected: !value }, 'all'), options.map((o) => el('option', { value: o, selected: o === value }, o))));
    const rows = list.map((e) => el('tr', { 'data-type': e.type, 'data-id': e.id, 'data-namespace': e.namespace || '' },
      el('td', {}, e.time ? new Date(e.time).toLocaleTimeString() : '-'), el('td', { class: 'type' }, shortType(e.type)),
      el('td', {}, e.namespace || '-'), el('td', { class: 'code' }, e.subject || ''), el('td', { class: 'detail' }, eventDetail(e))));
    return [
      el('h2', {}, 'Events'),
      el('div', { class: 'event-filters' }, select('type', 'Type', EVENT_TYPES, eventFilter.type), select('namespace', 'Namespace', namespaces, eventFilter.namespace),
        el('span', { class: 'muted' }, `${list.length} of ${events.length} kept (the latest ${MAX_EVENTS}), live from the control plane`)),
      rows.length ? table('events', ['Time', 'Type', 'Namespace', 'Subject', 'Detail'], rows) : el('p', {}, events.length ? 'No event matches.' : 'No event yet.'),
    ];
  }

  // --- Views: the nav shows exactly the views registered here. A view
  // is {id, label, load(args) -> Promise<data>, render(data, args) ->
  // nodes, poll: whether figures are re-read every POLL_MS, on(event):
  // whether a mesh event changes what it shows}.
  const overview = () => api('/api/overview');
  const detail = (path, args) => api(path + '?namespace=' + encodeURIComponent(args[0]) + '&name=' + encodeURIComponent(args[1]));
  const VIEWS = [
    { id: 'topology', label: 'Topology', load: overview, render: renderTopology, poll: true, on: () => true },
    {
      id: 'services', label: 'Services', poll: true, on: () => true,
      load: (args) => (args.length >= 2 ? detail('/api/service', args) : overview()),
      render: (data, args) => (args.length >= 2 ? renderService(data) : renderServices(data)),
    },
    {
      id: 'policy', label: 'Policy', poll: false, on: (e, args) => args.length < 2 && e.type === 'dev.bulkhead.resource.applied',
      load: (args) => (args.length >= 2 ? detail('/api/policy', args) : overview()),
      render: (data, args) => (args.length >= 2 ? renderPolicy(data) : renderPolicyList(data)),
    },
    { id: 'denials', label: 'Denials', load: () => api('/api/denials'), render: renderDenials, poll: false, on: (e) => e.type === 'dev.bulkhead.authz.denied' },
    { id: 'events', label: 'Events', load: async () => events, render: renderEvents, poll: false, on: () => true },
  ];

  const nav = document.getElementById('nav');
  for (const v of VIEWS) nav.append(el('a', { href: '#/' + v.id, 'data-view': v.id }, v.label));

  function route() {
    const parts = location.hash.replace(/^#\/?/, '').split('/').filter(Boolean).map(decodeURIComponent);
    const view = VIEWS.find((v) => v.id === parts[0]) || VIEWS[0];
    return { view, args: view.id === parts[0] ? parts.slice(1) : [] };
  }

  const main = document.getElementById('view');
  let last = null; // {key, data}
  let seq = 0;

  function draw() {
    const { view, args } = route();
    const key = view.id + '/' + args.join('/');
    for (const a of nav.children) {
      if (a.dataset.view === view.id) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    if (!last || last.key !== key) return;
    const focused = document.activeElement && document.activeElement.getAttribute && document.activeElement.getAttribute('data-focus-key');
    const scroll = window.scrollY;
    main.replaceChildren(...[view.render(last.data, args)].flat(2).filter(Boolean));
    if (focused) {
      const again = [...main.querySelectorAll('[data-focus-key]')].find((n) => n.getAttribute('data-focus-key') === focused);
      if (again) again.focus({ preventScroll: true });
    }
    window.scrollTo(0, scroll);
  }

  async function refresh() {
    const { view, args } = route();
    const key = view.id + '/' + args.join('/');
    const mine = ++seq;
    try {
      const data = await view.load(args);
      if (mine !== seq) return;
      clearProblem();
      document.getElementById('updated').textContent = 'updated ' + new Date().toLocaleTimeString();
      // Unchanged data is not drawn again: the page stays still (focus,
      // selection, scroll) when nothing moved.
      const json = view.id === 'events' ? null : JSON.stringify(data);
      if (json !== null && last && last.key === key && last.json === json) return;
      last = { key, data, json };
      draw();
    } catch (e) {
      if (mine !== seq) return;
      showProblem(e);
      if (!last || last.key !== key) {
        main.replaceChildren(el('h2', {}, view.label), el('p', { class: 'bad' }, e.status === 404 ? e.message : 'Nothing to show yet: ' + e.message));
      }
    }
  }

  window.addEventListener('hashchange', () => { say(''); refresh(); main.focus({ preventScroll: true }); });
  filterBox.addEventListener('input', draw);
  refresh();
  setInterval(() => { if (!document.hidden && !dialog.open && route().view.poll) refresh(); }, POLL_MS);

  // --- Live: the control plane's events, relayed by the dashboard over
  // Server-Sent Events. The browser reconnects by itself and resumes
  // after the last id it saw (Last-Event-ID); each event refreshes the
  // view it concerns, at most once per REFRESH_MS (a burst of events is
  // one fetch).
  const REFRESH_MS = 500;
  let pending = null;
  function soon() {
    if (pending) return;
    pending = setTimeout(() => { pending = null; if (!dialog.open) refresh(); }, REFRESH_MS);
  }
  const seen = new Set();
  const stream = new EventSource('/api/events');
  stream.addEventListener('message', (m) => {
    let e;
    try { e = JSON.parse(m.data); } catch (err) { return; }
    if (!e || typeof e !== 'object' || seen.has(e.id)) return;
    seen.add(e.id);
    events.unshift(e);
    while (events.length > MAX_EVENTS) seen.delete(events.pop().id);
    const { view, args } = route();
    if (view.on(e, args)) soon();
  });
  stream.addEventListener('status', (m) => {
    let st;
    try { st = JSON.parse(m.data); } catch (err) { return; }
    problems.stream = st.connected ? '' : String(st.error || 'control plane unreachable') + ' — live updates paused; the dashboard retries by itself.';
    showBanner();
    if (st.connected) soon();
  });
  stream.addEventListener('error', () => {
    if (stream.readyState !== EventSource.OPEN) {
      problems.stream = 'Live updates interrupted: is `bulkheadctl dashboard` still running? Reconnecting…';
      showBanner();
    }
  });
  stream.addEventListener('open', () => { problems.stream = ''; showBanner(); });
})();

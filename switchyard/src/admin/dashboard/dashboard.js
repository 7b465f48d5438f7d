// Switchyard dashboard: polls GET api/v1/stats, renders listeners, pools and servers,
// computes rates from the counters of two snapshots over their uptime_seconds, draws the
// last minutes on canvases, and sends state changes with the admin token. The token lives
// in the `token` variable only: never in a URL, storage or a cookie. Text from the API is
// set with textContent only.
'use strict';
(() => {
  const HISTORY_SECONDS = 300;
  const CLASSES = ['1xx', '2xx', '3xx', '4xx', '5xx'];
  const STATES = ['drain', 'ready', 'maint'];
  const $ = (id) => document.getElementById(id);
  const ui = {
    meta: $('meta'), pause: $('pause'), interval: $('interval'), filter: $('filter'),
    token: $('token'), tokenForm: $('token-form'), forget: $('token-forget'),
    openMutations: $('open-mutations'), message: $('message'),
    listeners: document.querySelector('#listeners tbody'), pools: $('pools'),
    template: $('pool-template'),
    tenantsSection: $('tenants-section'), tenants: document.querySelector('#tenants tbody'),
    charts: { sessions: $('chart-sessions'), requests: $('chart-requests'), errors: $('chart-errors') },
  };

  let token = '';
  let tokenRequired = true;
  let paused = false;
  let timer = null;
  let inFlight = false;
  let statsFailed = false;
  let previous = null; // { t, counters: Map } of the last snapshot
  let last = null; // the last snapshot, to re-render on filter changes
  const history = []; // { t, sessions, requests, errors, pools: { name: { sessions, errors } } }
  const collapsed = new Set();
  const poolViews = new Map();
  const listenerRows = new Map();

  // ---- formatting ----
  const number = (n) => (n == null ? '–' : String(n));
  function rate(n) {
    if (n == null) return '–';
    return n >= 10 ? Math.round(n).toString() : n.toFixed(1);
  }
  function bytes(n) {
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return (i === 0 ? n.toString() : n.toFixed(1)) + ' ' + units[i];
  }
  function age(seconds) {
    const s = Math.floor(seconds);
    if (s < 60) return s + 's';
    if (s < 3600) return Math.floor(s / 60) + 'm ' + (s % 60) + 's';
    if (s < 86400) return Math.floor(s / 3600) + 'h ' + Math.floor((s % 3600) / 60) + 'm';
    return Math.floor(s / 86400) + 'd ' + Math.floor((s % 86400) / 3600) + 'h';
  }
  const limit = (cur, max) => cur + ' / ' + (max == null ? '∞' : max);
  function setText(cell, text) {
    if (cell.textContent !== text) cell.textContent = text;
  }
  function cell(row, className) {
    const td = document.createElement('td');
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  // ---- messages and controls ----
  function showMessage(text, isError) {
    ui.message.textContent = text;
    ui.message.classList.toggle('error', Boolean(isError));
    ui.message.hidden = false;
  }
  function canMutate() {
    return token !== '' || !tokenRequired;
  }
  function updateMutability() {
    document.body.classList.toggle('can-mutate', canMutate());
    ui.openMutations.hidden = tokenRequired;
  }
  function schedule() {
    clearTimeout(timer);
    timer = paused ? null : setTimeout(poll, Number(ui.interval.value) || 1000);
  }
  function pollNow() {
    clearTimeout(timer);
    if (!inFlight) poll();
  }
  ui.pause.addEventListener('click', () => {
    paused = !paused;
    ui.pause.textContent = paused ? 'Resume' : 'Pause';
    if (paused) { clearTimeout(timer); updateMeta(); } else { pollNow(); }
  });
  ui.interval.addEventListener('change', schedule);
  ui.filter.addEventListener('input', () => { if (last) applyFilter(); });
  ui.token.addEventListener('input', () => { token = ui.token.value; updateMutability(); });
  ui.tokenForm.addEventListener('submit', (event) => event.preventDefault());
  ui.forget.addEventListener('click', () => { token = ''; ui.token.value = ''; updateMutability(); });
  $('expand-all').addEventListener('click', () => setAllCollapsed(false));
  $('collapse-all').addEventListener('click', () => setAllCollapsed(true));

  // ---- polling ----
  async function poll() {
    inFlight = true;
    try {
      const response = await fetch('api/v1/stats', { cache: 'no-store', headers: { Accept: 'application/json' } });
      if (!response.ok) throw new Error('HTTP ' + response.status);
      render(await response.json());
      if (statsFailed) { statsFailed = false; ui.message.hidden = true; }
    } catch (error) {
      statsFailed = true;
      showMessage('Cannot read the stats: ' + error.message, true);
    } finally {
      inFlight = false;
      schedule();
    }
  }

  async function setState(pool, server, state) {
    const headers = { 'Content-Type': 'application/json' };
    if (token) headers.Authorization = 'Bearer ' + token;
    const path = 'api/v1/pools/' + encodeURIComponent(pool) + '/servers/' + encodeURIComponent(server) + '/state';
    try {
      const response = await fetch(path, {
        method: 'POST', headers, body: JSON.stringify({ state }), cache: 'no-store', credentials: 'omit',
      });
      const body = await response.json().catch(() => ({}));
      if (response.ok) showMessage(pool + '/' + server + ': ' + state, false);
      else showMessage(pool + '/' + server + ': ' + (body.error || 'HTTP ' + response.status), true);
    } catch (error) {
      showMessage(pool + '/' + server + ': ' + error.message, true);
    }
    pollNow();
  }

  // ---- rates ----
  // Rates of the counters of this snapshot against the previous one's, over the monotonic
  // uptime; null when there is no earlier value or a counter went back (a replaced server).
  function rater(stats) {
    const t = stats.uptime_seconds;
    const counters = new Map();
    return {
      rate(key, value) {
        counters.set(key, value);
        if (!previous) return null;
        const before = previous.counters.get(key);
        const dt = t - previous.t;
        if (before === undefined || dt <= 0 || value < before) return null;
        return (value - before) / dt;
      },
      done() { previous = { t, counters }; },
    };
  }
  const sum = (values) => values.reduce((total, v) => total + (v || 0), 0);
  const classesTotal = (classes) => (classes ? sum(CLASSES.map((c) => classes[c])) : null);

  // ---- rendering ----
  function render(stats) {
    last = stats;
    tokenRequired = stats.token_required;
    updateMutability();
    const first = previous === null;
    const rates = rater(stats);
    const sample = { t: stats.uptime_seconds, sessions: 0, requests: 0, errors: 0, pools: {} };
    renderListeners(stats.listeners, rates);
    renderTenants(stats.tenants || []);
    const seen = new Set();
    for (const pool of stats.pools) {
      seen.add(pool.name);
      sample.pools[pool.name] = renderPool(pool, rates, sample);
    }
    for (const [name, view] of poolViews) {
      if (!seen.has(name)) { view.section.remove(); poolViews.delete(name); }
    }
    rates.done();
    if (history.length && sample.t <= history[history.length - 1].t) history.length = 0;
    if (!first) history.push(sample);
    while (history.length && sample.t - history[0].t > HISTORY_SECONDS) history.shift();
    drawCharts();
    applyFilter();
    updateMeta();
  }

  function updateMeta() {
    if (!last) return;
    const when = new Date(last.timestamp_ms).toLocaleTimeString();
    ui.meta.textContent = 'v' + last.version + ' · up ' + age(last.uptime_seconds) + ' · ' +
      (paused ? 'paused at ' : 'updated ') + when;
  }

  function renderListeners(listeners, rates) {
    const seen = new Set();
    for (const l of listeners) {
      seen.add(l.name);
      let view = listenerRows.get(l.name);
      if (!view) {
        const row = document.createElement('tr');
        row.dataset.listener = l.name;
        view = { row, cells: {} };
        for (const [key, cls] of [['name', 'text'], ['protocol', 'text'], ['address', 'text'], ['tls', 'text'],
          ['cur', ''], ['rate', ''], ['total', 'opt'], ['failed', 'opt'], ['in', ''], ['out', '']]) {
          view.cells[key] = cell(row, cls + ' cell-' + key);
        }
        ui.listeners.appendChild(row);
        listenerRows.set(l.name, view);
      }
      const c = view.cells;
      setText(c.name, l.name);
      setText(c.protocol, l.protocol);
      setText(c.address, l.address);
      setText(c.tls, l.tls ? 'on' : 'off');
      setText(c.cur, limit(l.active, l.max_connections));
      setText(c.rate, rate(rates.rate(JSON.stringify(['l', l.name]), l.total)));
      setText(c.total, number(l.total));
      setText(c.failed, number(l.failed));
      c.failed.classList.toggle('bad', l.failed > 0);
      setText(c.in, bytes(l.bytes_in));
      setText(c.out, bytes(l.bytes_out));
    }
    for (const [name, view] of listenerRows) {
      if (!seen.has(name)) { view.row.remove(); listenerRows.delete(name); }
    }
  }

  // The snapshot's tenants come largest first: the table is rebuilt in that order.
  function renderTenants(tenants) {
    ui.tenantsSection.hidden = tenants.length === 0;
    const rows = tenants.map((t) => {
      const row = document.createElement('tr');
      row.dataset.tenant = t.tenant;
      for (const [text, cls] of [[t.tenant, 'text cell-tenant'], [number(t.connections), 'cell-connections'],
        [bytes(t.bytes_in), 'cell-in'], [bytes(t.bytes_out), 'cell-out'], [number(t.requests), 'cell-requests'],
        [number(t.transactions), 'opt cell-transactions'], [number(t.messages || 0), 'opt cell-messages'],
        [age(t.connection_ms / 1000), 'opt cell-connected']]) {
        setText(cell(row, cls), text);
      }
      return row;
    });
    ui.tenants.replaceChildren(...rows);
  }

  function poolView(name) {
    let view = poolViews.get(name);
    if (view) return view;
    const section = ui.template.content.firstElementChild.cloneNode(true);
    section.dataset.pool = name;
    view = {
      section,
      name: section.querySelector('.pool-name'),
      summary: section.querySelector('.pool-summary'),
      spark: section.querySelector('.spark'),
      toggle: section.querySelector('.toggle'),
      servers: section.querySelector('.servers tbody'),
      resolved: section.querySelector('.resolved'),
      resolvedBody: section.querySelector('.resolved tbody'),
      txpools: section.querySelector('.txpools'),
      txBody: section.querySelector('.txpools tbody'),
      rows: new Map(),
      txRows: new Map(),
    };
    view.name.textContent = name;
    view.toggle.addEventListener('click', () => setCollapsed(name, !collapsed.has(name)));
    ui.pools.appendChild(section);
    poolViews.set(name, view);
    setCollapsed(name, collapsed.has(name));
    return view;
  }

  function setCollapsed(name, isCollapsed) {
    if (isCollapsed) collapsed.add(name); else collapsed.delete(name);
    const view = poolViews.get(name);
    if (!view) return;
    view.section.classList.toggle('collapsed', isCollapsed);
    view.toggle.textContent = isCollapsed ? '▸' : '▾';
    view.toggle.setAttribute('aria-expanded', String(!isCollapsed));
  }
  function setAllCollapsed(isCollapsed) {
    for (const name of poolViews.keys()) setCollapsed(name, isCollapsed);
  }

  // Renders one pool; adds its rates to the overall `sample`, returns its own for the spark.
  function renderPool(pool, rates, sample) {
    const view = poolView(pool.name);
    const responses = pool.http_responses;
    const own = { sessions: 0, errors: 0 };
    const seen = new Set();
    let up = 0;
    for (const s of pool.servers) {
      seen.add(s.name);
      if (s.state === 'up') up += 1;
      const classes = responses ? (responses.servers[s.name] || {}) : null;
      const key = (what) => JSON.stringify(['s', pool.name, s.name, what]);
      const sessions = rates.rate(key('total'), s.total);
      const requests = classes ? rates.rate(key('requests'), classesTotal(classes)) : null;
      const errors = rates.rate(key('errors'), s.connect_errors + s.checks_failed);
      own.sessions += sessions || 0;
      own.errors += errors || 0;
      renderServer(view, pool.name, s, classes, sessions, requests);
    }
    for (const [name, row] of view.rows) {
      if (!seen.has(name)) { row.row.remove(); view.rows.delete(name); }
    }
    let requests = null;
    if (responses) {
      requests = rates.rate(JSON.stringify(['p', pool.name, 'requests']), classesTotal(responses.all));
      own.errors += rates.rate(JSON.stringify(['p', pool.name, '5xx']), responses.all['5xx'] || 0) || 0;
    }
    renderResolved(view, pool);
    const tx = renderTxPools(view, pool, rates);
    if (tx != null) requests = (requests || 0) + tx;
    sample.sessions += own.sessions;
    sample.requests += requests || 0;
    sample.errors += own.errors;
    const active = sum(pool.servers.map((s) => s.active));
    setText(view.summary, up + '/' + pool.servers.length + ' up · ' + active + ' sessions · queue ' +
      pool.queued + ' · ' + rate(own.sessions) + ' sess/s' + (requests == null ? '' : ' · ' + rate(requests) + ' req/s') +
      ' · refused ' + (pool.no_server + pool.queue_full + pool.queue_timeouts));
    view.summary.title = 'no server: ' + pool.no_server + ', queue full: ' + pool.queue_full +
      ', queue timeouts: ' + pool.queue_timeouts;
    return own;
  }

  function renderServer(view, pool, s, classes, sessions, requests) {
    let r = view.rows.get(s.name);
    if (!r) {
      const row = document.createElement('tr');
      row.dataset.pool = pool;
      row.dataset.server = s.name;
      r = { row, cells: {}, buttons: {} };
      for (const [key, cls] of [['name', 'text'], ['address', 'text opt'], ['state', 'text'], ['role', 'text'],
        ['check', 'text'], ['since', 'opt'], ['cur', ''], ['sessions', ''], ['requests', ''], ['total', 'opt'],
        ['in', ''], ['out', ''], ['errors', ''], ['classes', 'opt'], ['weight', 'opt'], ['actions', 'actions']]) {
        r.cells[key] = cell(row, cls + ' cell-' + key);
      }
      r.badge = document.createElement('span');
      r.cells.state.appendChild(r.badge);
      for (const state of STATES) {
        const button = document.createElement('button');
        button.type = 'button';
        button.textContent = state;
        button.dataset.state = state;
        button.addEventListener('click', () => setState(pool, s.name, state));
        r.cells.actions.appendChild(button);
        r.buttons[state] = button;
      }
      view.servers.appendChild(row);
      view.rows.set(s.name, r);
    }
    const c = r.cells;
    r.row.dataset.state = s.state;
    setText(c.name, s.name);
    setText(c.address, s.address);
    setText(r.badge, s.state);
    r.badge.className = 'state state-' + s.state;
    let role = s.role === 'unknown' ? '' : s.role;
    if (s.replica_lag) role += ' ' + bytes(s.replica_lag.bytes) + ' / ' + s.replica_lag.seconds.toFixed(1) + 's';
    setText(c.role, role || '–');
    const took = s.check_duration_ms == null ? '' : ' (' + s.check_duration_ms.toFixed(1) + ' ms)';
    setText(c.check, s.check == null ? '–' : s.check + took);
    c.check.title = s.check || '';
    c.check.classList.toggle('bad', s.check != null && s.check !== 'ok');
    setText(c.since, age(s.state_age_seconds));
    setText(c.cur, limit(s.active, s.max_connections));
    setText(c.sessions, rate(sessions));
    setText(c.requests, rate(requests));
    setText(c.total, number(s.total));
    setText(c.in, bytes(s.bytes_in));
    setText(c.out, bytes(s.bytes_out));
    const fivexx = classes ? (classes['5xx'] || 0) : null;
    setText(c.errors, s.connect_errors + ' / ' + s.checks_failed + ' / ' + number(fivexx));
    c.errors.title = 'connect errors ' + s.connect_errors + ', failed checks ' + s.checks_failed +
      (classes ? ', HTTP 5xx ' + fivexx : '');
    c.errors.classList.toggle('bad', s.connect_errors + s.checks_failed + (fivexx || 0) > 0);
    setText(c.classes, classes ? CLASSES.map((k) => classes[k] || 0).join(' / ') : '–');
    setText(c.weight, s.effective_weight < s.weight ? s.effective_weight.toFixed(1) + ' / ' + s.weight : String(s.weight));
    for (const state of STATES) r.buttons[state].disabled = s.admin_state === state;
  }

  // A pool with a resolver: a row per server of each set answers route to, with the keys
  // routed there lately (rebuilt at each poll: sets come and go with the answers).
  function renderResolved(view, pool) {
    const sets = pool.resolved || [];
    view.resolved.hidden = sets.length === 0;
    const rows = [];
    for (const set of sets) {
      const keys = set.keys.map((k) => k.tenant ? k.key + ' (' + k.tenant + ')' : k.key).join(', ');
      for (const s of set.servers) {
        const row = document.createElement('tr');
        row.dataset.server = s.name;
        setText(cell(row, 'text cell-server'), s.name);
        const state = document.createElement('span');
        state.className = 'state state-' + s.state;
        state.textContent = s.state;
        const stateCell = cell(row, 'text cell-state');
        stateCell.appendChild(state);
        stateCell.title = s.check || '';
        setText(cell(row, 'text cell-keys'), keys);
        for (const [text, cls] of [[number(s.active), 'cell-active'], [number(s.total), 'opt cell-total'],
          [bytes(s.bytes_in), 'cell-in'], [bytes(s.bytes_out), 'cell-out']]) {
          setText(cell(row, cls), text);
        }
        rows.push(row);
      }
    }
    view.resolvedBody.replaceChildren(...rows);
  }

  // The PostgreSQL transaction pools of a pool; returns their transactions per second.
  function renderTxPools(view, pool, rates) {
    const list = pool.transaction_pools || [];
    view.txpools.hidden = list.length === 0;
    const seen = new Set();
    let total = list.length ? 0 : null;
    for (const t of list) {
      const key = JSON.stringify([t.database, t.user]);
      seen.add(key);
      let r = view.txRows.get(key);
      if (!r) {
        const row = document.createElement('tr');
        r = { row, cells: {} };
        for (const [k, cls] of [['database', 'text'], ['user', 'text'], ['clients', ''], ['waiting', ''],
          ['conns', ''], ['tx', 'opt']]) {
          r.cells[k] = cell(row, cls + ' cell-' + k);
        }
        view.txBody.appendChild(row);
        view.txRows.set(key, r);
      }
      const busy = sum(t.servers.map((s) => s.active));
      const idle = sum(t.servers.map((s) => s.idle));
      const tx = rates.rate(JSON.stringify(['t', pool.name, key]), t.transactions);
      total += tx || 0;
      setText(r.cells.database, t.database);
      setText(r.cells.user, t.user);
      setText(r.cells.clients, number(t.clients));
      setText(r.cells.waiting, number(t.waiting));
      r.cells.waiting.classList.toggle('bad', t.waiting > 0);
      setText(r.cells.conns, busy + ' / ' + idle);
      r.cells.conns.title = t.servers.map((s) => s.server + ': ' + s.active + ' busy, ' + s.idle + ' idle').join('\n');
      setText(r.cells.tx, rate(tx));
    }
    for (const [key, r] of view.txRows) {
      if (!seen.has(key)) { r.row.remove(); view.txRows.delete(key); }
    }
    return total;
  }

  // ---- filter ----
  function applyFilter() {
    const words = ui.filter.value.trim().toLowerCase().split(/\s+/).filter(Boolean);
    const matches = (...texts) => {
      const hay = texts.join(' ').toLowerCase();
      return words.every((w) => hay.includes(w));
    };
    for (const pool of last.pools) {
      const view = poolViews.get(pool.name);
      if (!view) continue;
      const whole = words.length === 0 || matches(pool.name);
      let shown = 0;
      for (const s of pool.servers) {
        const r = view.rows.get(s.name);
        if (!r) continue;
        const show = whole || matches(pool.name, s.name, s.address, s.state, s.role);
        r.row.hidden = !show;
        if (show) shown += 1;
      }
      view.section.hidden = !whole && shown === 0;
    }
  }

  // ---- charts ----
  function drawCharts() {
    drawLine(ui.charts.sessions, history, (s) => s.sessions, '#1f6f5c', true);
    drawLine(ui.charts.requests, history, (s) => s.requests, '#0969da', true);
    drawLine(ui.charts.errors, history, (s) => s.errors, '#cf222e', true);
    for (const [name, view] of poolViews) {
      drawLine(view.spark, history, (s) => (s.pools[name] ? s.pools[name].sessions : null), '#1f6f5c', false);
    }
  }

  // A line of `value(sample)` over the last HISTORY_SECONDS, scaled to its maximum.
  function drawLine(canvas, samples, value, color, labelled) {
    if (!canvas.isConnected || canvas.offsetParent === null) return;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext('2d');
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const points = samples.map((s) => [s.t, value(s)]).filter((p) => p[1] != null);
    const now = samples.length ? samples[samples.length - 1].t : 0;
    const max = points.reduce((m, p) => Math.max(m, p[1]), 0);
    const top = labelled ? 14 : 2;
    const scale = max > 0 ? max : 1;
    const x = (t) => width * (1 - (now - t) / HISTORY_SECONDS);
    const y = (v) => height - 1 - (height - top - 2) * (v / scale);
    ctx.strokeStyle = '#d8dde4';
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(0, height - 0.5);
    ctx.lineTo(width, height - 0.5);
    ctx.stroke();
    if (points.length) {
      ctx.beginPath();
      points.forEach(([t, v], i) => (i ? ctx.lineTo(x(t), y(v)) : ctx.moveTo(x(t), y(v))));
      ctx.strokeStyle = color;
      ctx.lineWidth = 1.5;
      ctx.stroke();
      ctx.lineTo(x(points[points.length - 1][0]), height);
      ctx.lineTo(x(points[0][0]), height);
      ctx.closePath();
      ctx.globalAlpha = 0.12;
      ctx.fillStyle = color;
      ctx.fill();
      ctx.globalAlpha = 1;
    }
    if (labelled) {
      ctx.fillStyle = '#5b6573';
      ctx.font = '11px system-ui, sans-serif';
      const current = points.length ? points[points.length - 1][1] : null;
      ctx.fillText('now ' + rate(current) + ' · max ' + rate(max) + ' · ' + HISTORY_SECONDS / 60 + ' min', 2, 10);
    }
  }

  // A resized window (a phone turned) redraws the charts at their new size at once.
  window.addEventListener('resize', drawCharts);
  updateMutability();
  poll();
})();

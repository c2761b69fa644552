// Dashboard entry point: page state, controls, and the wiring between REST history, the live
// stream and the chart. State is exposed as `window.tickhub.state` for browser tests.
import {Api, resolveUrls} from './api.js';
import {CandleBook, INTERVALS, bucketOf} from './candles.js';
import config from './config.js';
import {
  formatCount,
  formatPercent,
  formatPrice,
  formatSigned,
  formatTime,
  formatVolume,
  localZoneName,
  priceDecimals,
} from './format.js';
import {TickStream, backoffDelay} from './stream.js';

const HISTORY_LIMIT = 500;
// Bars in view after a load; the rest of the 500 are a scroll away.
const BARS_IN_VIEW = 120;
const SYMBOLS_REFRESH_MS = 15_000;
const SYMBOLS_REFRESH_EMPTY_MS = 5_000;
const METRICS_REFRESH_MS = 5_000;
// While ticks flow the minute metrics follow them, at most this often (one small query).
const METRICS_LIVE_MS = 2_000;
// History normally loads once the stream says hello (no gap between the two); this long without a
// stream, it loads anyway and reloads when a fresh stream opens.
const HISTORY_WITHOUT_STREAM_MS = 2_000;
// Live events held while history (or a bucket's minutes) loads. Beyond this the load restarts, which
// is safe: a new load starts buffering afresh and its history covers everything before it.
const PENDING_MAX = 10_000;
// The live stream is conflated: at most one event per symbol per CONFLATE_MS, carrying the latest
// tick and its minute's candle, so the page's cost stays flat however fast a symbol trades.
const CONFLATE_MS = 250;
// An event that stands for several ticks may hide the ones that closed the minute before it (or a
// late tick in an older minute). When the chart symbol's minute rolls over, its last few 1-minute
// candles are read back once they have settled, so every closed bar ends exactly as stored.
const SETTLE_AFTER_MS = 1_500;
const SETTLE_MINUTES = 5;

const $ = (id) => document.getElementById(id);
const urls = resolveUrls(config, window.location);
const api = new Api(urls.api);

const state = {
  symbol: null,
  interval: '1m',
  timeZone: 'local',
  connection: 'reconnecting',
  lastPrice: null,
  change: null,
  bars: [],
  sma: [],
  volume: [],
  lastEventId: null,
  symbols: [],
  metrics: null,
  loading: false,
  error: null,
};
window.tickhub = {state, urls};

let book = new CandleBook(INTERVALS[state.interval]);
// Live ticks of the chart symbol held while history or a bucket's minutes load; null when applying.
let pending = [];
let loadGen = 0;
let loadAttempt = 0;
let historyTimer = null;
let metricsTimer = null;
let metricsAt = 0;
let metricsInFlight = false;
let settleTimer = null;
// The newest minute (bar time) the chart symbol's book has seen, from history or live events.
let liveMinute = -Infinity;
let chart = null;
// Last price per symbol (watchlist and chart symbol): {price, ts, direction}.
const quotes = new Map();

const stream = new TickStream({
  url: urls.realtime,
  conflateMs: CONFLATE_MS,
  onTick,
  onHello: ({resumed}) => {
    // A fresh connection may have missed events since the history was read: reload it. A resumed
    // one replays what it missed, so the bars stay as they are.
    if (!resumed) loadHistory();
  },
  onReset: () => loadHistory(),
  onStatus: (status) => {
    state.connection = status;
    scheduleRender();
  },
});

// ---- preferences -------------------------------------------------------------------------------

function stored(key) {
  try {
    return localStorage.getItem(key);
  } catch {
    return null;
  }
}

function store(key, value) {
  try {
    localStorage.setItem(key, value);
  } catch {
    // Storage disabled (private mode, policy): preferences just do not persist.
  }
}

function syncUrl() {
  const url = new URL(window.location.href);
  if (state.symbol) url.searchParams.set('symbol', state.symbol);
  url.searchParams.set('interval', state.interval);
  if (state.timeZone === 'UTC') url.searchParams.set('tz', 'utc');
  else url.searchParams.delete('tz');
  history.replaceState(null, '', url);
}

// ---- live events -------------------------------------------------------------------------------

function onTick(tick) {
  state.lastEventId = stream.lastEventId;
  updateQuote(tick);
  if (tick.symbol !== state.symbol || !tick.candle1m) return;
  const minute = tick.candle1m.bucket_start;
  if (minute > liveMinute) {
    liveMinute = minute;
    scheduleSettle();
  }
  if (!metricsInFlight) {
    // At most one metrics request per METRICS_LIVE_MS, but always one after the last tick.
    const wait = METRICS_LIVE_MS - (Date.now() - metricsAt);
    clearTimeout(metricsTimer);
    if (wait <= 0) refreshMetrics();
    else metricsTimer = setTimeout(refreshMetrics, wait);
  }
  if (pending) {
    pending.push(tick);
    if (pending.length > PENDING_MAX) loadHistory();
    return;
  }
  applyTick(tick);
}

function applyTick(tick) {
  const minute = tick.candle1m.bucket_start;
  if (book.needsMinutes(minute)) {
    pending = [tick];
    loadMinutes(bucketOf(minute, book.seconds));
    return;
  }
  const change = book.apply(tick.candle1m, tick.sma10);
  if (change) {
    chart?.update(book, change);
    scheduleRender();
  }
}

function scheduleSettle() {
  clearTimeout(settleTimer);
  settleTimer = setTimeout(settleMinutes, SETTLE_AFTER_MS);
}

/** Fold the chart symbol's latest stored minutes in (a minute's tick count only grows, so a
 * stored candle replaces what the page holds only where conflation left it behind). */
async function settleMinutes() {
  const gen = loadGen;
  try {
    const page = await api.candles(state.symbol, '1m', {limit: SETTLE_MINUTES});
    if (gen !== loadGen) return;
    replay(page.items.map((item) => ({candle1m: {...item, bucket_start: item.ts}, sma10: item.sma10})));
  } catch {
    // The next rollover, or a reload, settles them.
  }
}

function replay(ticks) {
  for (const tick of ticks) {
    if (pending) pending.push(tick);
    else applyTick(tick);
  }
}

function updateQuote(tick) {
  const quote = quotes.get(tick.symbol);
  // A late tick (older than the last one seen) changes its candle but is not the last price.
  if (quote && !(tick.ts >= quote.ts)) return;
  const direction = !quote || tick.price === quote.price ? 'flat' : tick.price > quote.price ? 'up' : 'down';
  quotes.set(tick.symbol, {price: tick.price, ts: tick.ts, direction});
  if (!state.symbols.includes(tick.symbol) && tick.symbol !== state.symbol) return;
  scheduleRender();
}

// ---- history -----------------------------------------------------------------------------------

function installBook(next) {
  book = next;
  liveMinute = book.last?.time ?? -Infinity;
  state.bars = book.bars;
  state.sma = book.sma;
  state.volume = book.volume;
  if (chart) {
    chart.setData(book);
    chart.showLatest(BARS_IN_VIEW);
    if (book.last) chart.setPrecision(priceDecimals(book.last.close));
  }
  const last = book.last;
  const quote = quotes.get(state.symbol);
  if (last && (!quote || quote.ts < last.time)) {
    quotes.set(state.symbol, {price: last.close, ts: last.time, direction: 'flat'});
  }
}

/** 1-minute candles of one coarse bucket, to split its REST bar into minutes. */
async function fetchMinutes(symbol, seconds, bucket, newest) {
  const minutes = seconds / 60;
  // The newest bucket may still be open: read the latest candles (with room for minutes that began
  // since) rather than pass a `before` in the future. Older buckets are closed: read up to their end.
  const page = newest
    ? await api.candles(symbol, '1m', {limit: Math.min(2000, minutes + 60)})
    : await api.candles(symbol, '1m', {limit: minutes, before: bucket + seconds});
  return page.items;
}

async function loadHistory() {
  const gen = ++loadGen;
  clearTimeout(historyTimer);
  const {symbol, interval} = state;
  if (!symbol) return;
  pending = [];
  state.loading = true;
  scheduleRender();
  try {
    const page = await api.candles(symbol, interval, {limit: HISTORY_LIMIT});
    if (gen !== loadGen) return;
    const next = new CandleBook(INTERVALS[interval], page.items, {
      complete: page.items.length < HISTORY_LIMIT,
    });
    if (next.seconds > 60 && next.last) {
      const bucket = next.last.time;
      next.setMinutes(bucket, await fetchMinutes(symbol, next.seconds, bucket, true));
      if (gen !== loadGen) return;
    }
    installBook(next);
    loadAttempt = 0;
    state.loading = false;
    state.error = null;
    const queued = pending;
    pending = null;
    replay(queued);
    scheduleRender();
    refreshMetrics();
  } catch (err) {
    if (gen !== loadGen) return;
    const delay = backoffDelay(loadAttempt);
    loadAttempt += 1;
    state.error = `Could not load ${symbol} ${interval} candles (${err.message}). Retrying in ${Math.ceil(delay / 1000)} s.`;
    scheduleRender();
    historyTimer = setTimeout(loadHistory, delay);
  }
}

async function loadMinutes(bucket) {
  const gen = loadGen;
  try {
    const items = await fetchMinutes(state.symbol, book.seconds, bucket, bucket === book.last?.time);
    if (gen !== loadGen) return;
    chart?.update(book, book.setMinutes(bucket, items));
    const queued = pending;
    pending = null;
    replay(queued);
    scheduleRender();
  } catch {
    // Without the minutes the bar cannot be updated exactly: start over from history.
    if (gen === loadGen) loadHistory();
  }
}

/** Load history now, or when the stream's first connection says hello if it is about to. */
function requestHistory() {
  clearTimeout(historyTimer);
  loadGen += 1;
  pending = [];
  if (stream.started && stream.status === 'reconnecting' && !stream.lastEventId) {
    historyTimer = setTimeout(loadHistory, HISTORY_WITHOUT_STREAM_MS);
  } else {
    loadHistory();
  }
}

// ---- symbols and metrics -----------------------------------------------------------------------

async function refreshSymbols() {
  try {
    const list = await api.symbols();
    setSymbols(list.filter((s) => s.active !== false).map((s) => s.symbol));
    for (const symbol of state.symbols) if (!quotes.has(symbol)) seedQuote(symbol);
    if (state.error?.startsWith('Could not load symbols')) state.error = null;
  } catch (err) {
    state.error = `Could not load symbols (${err.message}). Retrying.`;
  }
  scheduleRender();
  setTimeout(refreshSymbols, state.symbols.length ? SYMBOLS_REFRESH_MS : SYMBOLS_REFRESH_EMPTY_MS);
}

/** The last price of a symbol the stream has not mentioned yet: its latest 1m close. */
async function seedQuote(symbol) {
  try {
    const page = await api.candles(symbol, '1m', {limit: 1});
    const last = page.items.at(-1);
    if (last && !quotes.has(symbol)) {
      quotes.set(symbol, {price: last.close, ts: last.ts, direction: 'flat'});
      scheduleRender();
    }
  } catch {
    // The watchlist keeps its dash; the next symbols refresh tries again.
  }
}

function setSymbols(symbols) {
  const sorted = [...new Set(symbols)].sort();
  if (sorted.join(',') !== state.symbols.join(',')) {
    state.symbols = sorted;
    renderSymbolOptions();
    renderWatchlist();
  }
  if (!state.symbol && sorted.length) {
    const remembered = stored('tickhub.symbol');
    selectSymbol(sorted.includes(remembered) ? remembered : sorted[0]);
  }
  followSymbols();
}

/** One stream for every symbol the page shows: the watchlist plus the chart symbol. */
function followSymbols() {
  const symbols = [...state.symbols];
  if (state.symbol && !symbols.includes(state.symbol)) symbols.push(state.symbol);
  if (!symbols.length) return;
  stream.setSymbols(symbols);
  if (!stream.started) stream.start();
}

function selectSymbol(symbol) {
  if (!symbol || symbol === state.symbol) return;
  state.symbol = symbol;
  store('tickhub.symbol', symbol);
  state.metrics = null;
  installBook(new CandleBook(INTERVALS[state.interval]));
  syncUrl();
  renderSymbolOptions();
  renderWatchlist();
  followSymbols();
  requestHistory();
  refreshMetrics();
}

function selectInterval(interval) {
  if (!(interval in INTERVALS) || interval === state.interval) return;
  state.interval = interval;
  store('tickhub.interval', interval);
  chart?.setInterval(interval);
  installBook(new CandleBook(INTERVALS[interval]));
  syncUrl();
  if (state.symbol) requestHistory();
  scheduleRender();
}

async function refreshMetrics() {
  clearTimeout(metricsTimer);
  const symbol = state.symbol;
  // Only ask once the symbol has ticks: before that the answer is a 404, which browsers log.
  if (symbol && (book.bars.length || quotes.has(symbol))) {
    metricsAt = Date.now();
    metricsInFlight = true;
    try {
      const metrics = await api.metrics(symbol, '1m');
      if (symbol === state.symbol) {
        state.metrics = metrics;
        scheduleRender();
      }
    } catch {
      // Keep the last values on screen; the next poll tries again.
    } finally {
      metricsInFlight = false;
    }
  }
  clearTimeout(metricsTimer);
  metricsTimer = setTimeout(refreshMetrics, METRICS_REFRESH_MS);
}

// ---- rendering ---------------------------------------------------------------------------------

let renderQueued = false;

function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(render);
}

function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

function setDataset(el, key, value) {
  if (el.dataset[key] !== value) el.dataset[key] = value;
}

function render() {
  renderQueued = false;
  const status = $('connection-status');
  setDataset(status, 'state', state.connection);
  setText(status, state.connection);

  const quote = quotes.get(state.symbol);
  state.lastPrice = quote ? quote.price : null;
  const bars = book.bars;
  const reference = bars.length >= 2 ? bars[bars.length - 2].close : bars[0]?.open;
  const decimals = priceDecimals(state.lastPrice ?? reference ?? 0);
  let direction = 'flat';
  if (state.lastPrice != null && reference != null) {
    const abs = state.lastPrice - reference;
    state.change = {abs, pct: reference ? abs / reference : null, reference};
    direction = abs > 0 ? 'up' : abs < 0 ? 'down' : 'flat';
  } else {
    state.change = null;
  }
  setText($('quote-symbol'), state.symbol ?? '—');
  const price = $('last-price');
  setText(price, formatPrice(state.lastPrice, decimals));
  setDataset(price, 'direction', direction);
  const change = $('last-change');
  setDataset(change, 'direction', direction);
  const arrow = {up: '▲', down: '▼', flat: ''}[direction];
  setText(change, state.change
    ? `${arrow} ${formatSigned(state.change.abs, decimals)} (${formatPercent(state.change.pct)})`.trim()
    : '');
  change.title = state.change ? `Change since the previous ${state.interval} close` : '';

  const m = state.metrics;
  setText($('metric-count'), formatCount(m?.count));
  setText($('metric-vwap'), formatPrice(m?.vwap, decimals));
  setText($('metric-volume'), formatVolume(m?.volume));
  setText($('metric-window'), m ? `minute from ${formatTime(m.windowStart, state.timeZone, 'minute')}` : '');

  for (const item of $('watchlist').children) {
    const q = quotes.get(item.dataset.symbol);
    const cell = item.querySelector('.watch-price');
    setText(cell, q ? formatPrice(q.price) : '—');
    setDataset(cell, 'direction', q?.direction ?? 'flat');
  }

  const message = $('message');
  const text = state.error ?? (state.loading ? `Loading ${state.symbol} ${state.interval} candles…` : '');
  setText(message, text);
  message.hidden = !text;
  setDataset(message, 'kind', state.error ? 'error' : 'info');

  if (state.symbol && state.lastPrice != null) {
    document.title = `${formatPrice(state.lastPrice, decimals)} ${state.symbol} · tickhub`;
  }
  setText($('chart-caption'), state.symbol
    ? `${state.symbol} ${state.interval} candles with SMA10 and volume, times in ${zoneLabel()}. `
      + `${bars.length} bars; last close ${formatPrice(bars[bars.length - 1]?.close, decimals)}.`
    : 'No symbol selected.');
}

function zoneLabel() {
  return state.timeZone === 'UTC' ? 'UTC' : `local (${localZoneName()})`;
}

function renderSymbolOptions() {
  const select = $('symbol-select');
  const symbols = [...state.symbols];
  if (state.symbol && !symbols.includes(state.symbol)) symbols.unshift(state.symbol);
  const current = [...select.options].map((o) => o.value).join(',');
  if (current !== symbols.join(',')) {
    select.replaceChildren(...symbols.map((s) => new Option(s, s)));
  }
  if (!symbols.length) select.replaceChildren(new Option('Waiting for symbols…', ''));
  select.disabled = !symbols.length;
  select.value = state.symbol ?? '';
}

function renderWatchlist() {
  const list = $('watchlist');
  const items = state.symbols.map((symbol) => {
    const li = document.createElement('li');
    li.dataset.symbol = symbol;
    const button = document.createElement('button');
    button.type = 'button';
    button.setAttribute('aria-pressed', String(symbol === state.symbol));
    const name = document.createElement('span');
    name.className = 'watch-symbol';
    name.textContent = symbol;
    const price = document.createElement('span');
    price.className = 'watch-price';
    price.textContent = '—';
    button.append(name, price);
    button.addEventListener('click', () => selectSymbol(symbol));
    li.append(button);
    return li;
  });
  list.replaceChildren(...items);
  list.closest('nav').hidden = state.symbols.length < 2;
  scheduleRender();
}

function renderZoneToggle() {
  const button = $('tz-toggle');
  button.dataset.zone = state.timeZone === 'UTC' ? 'utc' : 'local';
  setText(button, `Times: ${zoneLabel()}`);
  button.title = `Switch to ${state.timeZone === 'UTC' ? 'your time zone' : 'UTC'}`;
}

// ---- start -------------------------------------------------------------------------------------

function bindControls() {
  $('symbol-select').addEventListener('change', (e) => selectSymbol(e.target.value));
  $('interval-select').addEventListener('change', (e) => selectInterval(e.target.value));
  $('tz-toggle').addEventListener('click', () => {
    state.timeZone = state.timeZone === 'UTC' ? 'local' : 'UTC';
    store('tickhub.tz', state.timeZone);
    chart?.setZone(state.timeZone);
    renderZoneToggle();
    syncUrl();
    scheduleRender();
  });
}

async function loadChart() {
  try {
    const {PriceChart} = await import('./chart.js');
    chart = new PriceChart($('chart'), {zone: state.timeZone, interval: state.interval});
    chart.setData(book);
    if (book.last) {
      chart.setPrecision(priceDecimals(book.last.close));
      chart.showLatest(BARS_IN_VIEW);
    }
  } catch (err) {
    state.error = `The chart could not start (${err.message}); is vendor/ built (make ui)?`;
    scheduleRender();
  }
}

function main() {
  const params = new URLSearchParams(window.location.search);
  const interval = params.get('interval') ?? stored('tickhub.interval');
  if (interval in INTERVALS) state.interval = interval;
  const tz = params.get('tz') ?? stored('tickhub.tz');
  state.timeZone = tz?.toUpperCase() === 'UTC' ? 'UTC' : 'local';
  book = new CandleBook(INTERVALS[state.interval]);
  $('interval-select').value = state.interval;
  renderZoneToggle();
  bindControls();
  loadChart();
  const symbol = params.get('symbol')?.trim().toUpperCase();
  if (symbol) selectSymbol(symbol);
  renderSymbolOptions();
  refreshSymbols();
  refreshMetrics();
  scheduleRender();
}

main();

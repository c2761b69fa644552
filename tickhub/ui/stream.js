// The page's one live connection: an EventSource on /realtime/ticks for the symbols it shows, with
// its own reconnect loop (backoff, resume from the last event id) and a staleness watchdog.

export const STALE_AFTER_MS = 35_000;
// A stream silent for this long is assumed dead (a half-open TCP connection never errors) and is
// replaced by a new connection that resumes from the last event id, so nothing is lost.
export const RECYCLE_AFTER_MS = 70_000;
const BACKOFF_BASE_MS = 1_000;
const BACKOFF_MAX_MS = 30_000;

/** Reconnect delay for the n-th consecutive failure (0-based): exponential, capped, ±20% jitter. */
export function backoffDelay(attempt, random = Math.random) {
  const base = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** attempt);
  return Math.round(base * (0.8 + 0.4 * random()));
}

/**
 * The stream URL for a set of symbols, conflated to `conflateMs` when given (at most one event per
 * symbol per interval, carrying the latest tick and its candle), resuming after `lastEventId` when
 * there is one.
 */
export function streamUrl(realtimeUrl, symbols, lastEventId, conflateMs = 0) {
  const url = new URL(realtimeUrl);
  if (symbols.length) url.searchParams.set('symbols', symbols.join(','));
  if (conflateMs) url.searchParams.set('conflate', String(conflateMs));
  if (lastEventId) url.searchParams.set('lastEventId', lastEventId);
  return url.toString();
}

/**
 * Connection states, as the page shows them:
 * - 'reconnecting': no open stream (connecting for the first time, or after a drop or an error);
 * - 'live': the stream is open and an event arrived within STALE_AFTER_MS;
 * - 'stale': the stream is open but nothing arrived for STALE_AFTER_MS. EventSource hides SSE
 *   comments, so the server's `: ping` keepalive cannot count; any event does (ticks, `hello`,
 *   `reset`, and a named `ping` event if the server sends one). After RECYCLE_AFTER_MS of silence
 *   the connection is replaced.
 *
 * The browser's own EventSource retry is not used: on any error the source is closed and a new
 * one is opened after a backoff, with `lastEventId` in its URL (the query parameter, since the
 * Last-Event-ID header cannot be set from script). One code path covers network drops, non-200
 * answers and wrong content types, and the URL always carries the latest id.
 */
export class TickStream {
  constructor({url, conflateMs = 0, onTick, onHello, onReset, onStatus,
    EventSourceImpl = globalThis.EventSource, now = () => Date.now(), random = Math.random}) {
    this.url = url;
    this.conflateMs = conflateMs;
    this.onTick = onTick;
    this.onHello = onHello;
    this.onReset = onReset;
    this.onStatus = onStatus;
    this.EventSourceImpl = EventSourceImpl;
    this.now = now;
    this.random = random;
    this.symbols = [];
    this.lastEventId = null;
    this.status = 'reconnecting';
    this.source = null;
    this.attempt = 0;
    this.retryTimer = null;
    this.watchdog = null;
    this.lastActivity = 0;
    this.resuming = false;
    this.started = false;
  }

  start() {
    this.started = true;
    this.watchdog = setInterval(() => this.checkIdle(), 1_000);
    this.connect();
  }

  stop() {
    this.started = false;
    clearInterval(this.watchdog);
    clearTimeout(this.retryTimer);
    this.close();
  }

  /** Follow a new symbol set; reconnects (resuming) only if the set changed. */
  setSymbols(symbols) {
    const next = [...new Set(symbols)].sort();
    if (next.join(',') === this.symbols.join(',')) return;
    this.symbols = next;
    if (this.started) {
      clearTimeout(this.retryTimer);
      this.close();
      this.connect();
    }
  }

  connect() {
    this.retryTimer = null;
    this.resuming = Boolean(this.lastEventId);
    this.setStatus('reconnecting');
    const source = new this.EventSourceImpl(
      streamUrl(this.url, this.symbols, this.lastEventId, this.conflateMs),
    );
    this.source = source;
    const mine = (fn) => (event) => {
      if (this.source === source) fn(event);
    };
    source.addEventListener('open', mine(() => this.touch()));
    source.addEventListener('hello', mine((e) => {
      this.attempt = 0;
      this.touch();
      this.onHello?.({resumed: this.resuming, data: parseJson(e.data)});
    }));
    source.addEventListener('message', mine((e) => {
      if (e.lastEventId) this.lastEventId = e.lastEventId;
      this.touch();
      const tick = parseJson(e.data);
      if (tick && typeof tick.symbol === 'string') this.onTick?.(tick);
    }));
    source.addEventListener('reset', mine((e) => {
      if (e.lastEventId) this.lastEventId = e.lastEventId;
      this.touch();
      this.onReset?.(parseJson(e.data));
    }));
    source.addEventListener('ping', mine(() => this.touch()));
    source.addEventListener('error', mine(() => this.retry()));
  }

  close() {
    if (this.source) {
      this.source.close();
      this.source = null;
    }
  }

  retry() {
    this.close();
    this.setStatus('reconnecting');
    const delay = backoffDelay(this.attempt, this.random);
    this.attempt += 1;
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  touch() {
    this.lastActivity = this.now();
    this.setStatus('live');
  }

  checkIdle() {
    if (!this.source || this.status === 'reconnecting') return;
    const idle = this.now() - this.lastActivity;
    if (idle > RECYCLE_AFTER_MS) {
      this.close();
      this.connect();
    } else if (idle > STALE_AFTER_MS) {
      this.setStatus('stale');
    }
  }

  setStatus(status) {
    if (status === this.status) return;
    this.status = status;
    this.onStatus?.(status);
  }
}

function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

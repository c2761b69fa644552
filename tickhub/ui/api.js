// REST client for the dashboard: resolves the configured URLs and wraps the few queries it makes.

const REQUEST_TIMEOUT_MS = 15_000;

/** API and stream URLs from config.js; null means the page's own origin. */
export function resolveUrls(config, location) {
  const api = config.apiBaseUrl
    ? new URL(config.apiBaseUrl, location.href).toString()
    : `${location.origin}/api/v1`;
  const realtime = config.realtimeUrl
    ? new URL(config.realtimeUrl, location.href).toString()
    : `${location.origin}/realtime/ticks`;
  return {api: api.replace(/\/+$/, ''), realtime};
}

export class HttpError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = 'HttpError';
    this.status = status;
    this.code = code;
  }
}

export class Api {
  constructor(baseUrl, fetchImpl = globalThis.fetch.bind(globalThis)) {
    this.baseUrl = baseUrl;
    this.fetch = fetchImpl;
  }

  async get(path, params = {}) {
    const url = new URL(this.baseUrl + path);
    for (const [k, v] of Object.entries(params)) {
      if (v !== undefined && v !== null) url.searchParams.set(k, String(v));
    }
    const response = await this.fetch(url, {
      headers: {accept: 'application/json'},
      signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    });
    if (!response.ok) {
      let code = 'HTTP_ERROR';
      let message = `${response.status} ${response.statusText}`;
      try {
        const body = await response.json();
        code = body?.error?.code ?? code;
        message = body?.error?.message ?? message;
      } catch {
        // Not the JSON error envelope (a proxy page, say): keep the status line.
      }
      throw new HttpError(response.status, code, message);
    }
    return response.json();
  }

  /** Active symbols: [{symbol, base, quote, active}]. */
  symbols() {
    return this.get('/symbols');
  }

  /** Candles oldest first: {items: [{ts, open, high, low, close, volume, count, vwap, sma10}], nextCursor}. */
  candles(symbol, interval, {limit, before} = {}) {
    return this.get(`/ticks/${encodeURIComponent(symbol)}/history`, {view: 'ohlc', interval, limit, before});
  }

  /** Metrics of the latest window with ticks, or null when the symbol has none yet (404). */
  async metrics(symbol, window = '1m') {
    try {
      return await this.get(`/metrics/${encodeURIComponent(symbol)}`, {window});
    } catch (err) {
      if (err instanceof HttpError && err.status === 404) return null;
      throw err;
    }
  }
}

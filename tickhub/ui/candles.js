// Candle book: the bars of one symbol at one interval, built from REST history and kept current
// by folding the live 1-minute candles (`candle1m`) of SSE events into them. Pure logic, no DOM.

export const INTERVALS = Object.freeze({'1m': 60, '5m': 300, '15m': 900, '1h': 3600, '1d': 86400});
export const SMA_LENGTH = 10;
// Bars kept in memory; the oldest are dropped beyond this (a day of 1-minute bars and then some).
export const MAX_BARS = 2000;
// Minute breakdowns kept for coarse bars, least recently used dropped first: the current bucket and
// a few older ones that late ticks touched. A dropped one is fetched again if it is needed.
const MINUTE_BUCKETS_KEPT = 4;

export function bucketOf(ts, seconds) {
  return Math.floor(ts / seconds) * seconds;
}

/** A 1-minute candle from an SSE `candle1m` (bucket_start) or a REST item (ts). */
export function minuteCandle(c) {
  return {
    minute: c.bucket_start ?? c.ts,
    open: c.open, high: c.high, low: c.low, close: c.close,
    volume: c.volume ?? 0, count: c.count ?? 0,
  };
}

/** Fold the 1-minute candles of one bucket into that bucket's bar. */
export function foldMinutes(bucketStart, minutes) {
  const ordered = [...minutes.values()].sort((a, b) => a.minute - b.minute);
  const bar = {
    time: bucketStart,
    open: ordered[0].open, high: -Infinity, low: Infinity, close: ordered[ordered.length - 1].close,
    volume: 0, count: 0,
  };
  for (const m of ordered) {
    bar.high = Math.max(bar.high, m.high);
    bar.low = Math.min(bar.low, m.low);
    bar.volume += m.volume;
    bar.count += m.count;
  }
  return bar;
}

function barFromRest(item) {
  return {
    time: item.ts, open: item.open, high: item.high, low: item.low, close: item.close,
    volume: item.volume ?? 0, count: item.count ?? 0,
  };
}

/**
 * The bars of one (symbol, interval), with the SMA10 and volume series kept in step.
 *
 * Live updates carry the full state of one minute (`candle1m`), never a delta, so applying the same
 * minute twice replaces its contribution instead of adding to it. A minute's tick count only grows,
 * so a candle with a lower count than the one held is an older state (a replayed event after a
 * reload) and is ignored: the book never goes backwards and never double counts volume.
 *
 * Coarse intervals (5m and up) keep the 1-minute candles of their recent buckets. A bar that came
 * from REST cannot be split into minutes, so before the first live minute lands in such a bar the
 * caller fetches that bucket's 1-minute candles (`needsMinutes` / `setMinutes`); a bucket with no
 * bar yet is new and starts empty.
 *
 * SMA10: the server's `sma10` is row based (the mean close of this candle and the 9 candles before
 * it). For 1m the bar takes the event's `sma10`, so the page agrees with REST. For coarser
 * intervals the event's `sma10` is for the minute, not the bar, so the book recomputes the row-based
 * mean from the closes it holds, which is exact once 9 bars precede it; the first 9 bars of the
 * loaded window keep their REST values (their look-back lies before the page). A late update also
 * refreshes the SMA of the 9 bars after it.
 */
export class CandleBook {
  constructor(seconds, items = [], {complete = true, maxBars = MAX_BARS} = {}) {
    this.seconds = seconds;
    this.maxBars = maxBars;
    // Whether the history holds every bar of the symbol (fewer items than the limit): then a bar
    // older than the first one is genuinely new; otherwise it lies outside the loaded window.
    this.complete = complete;
    this.bars = [];
    this.sma = [];
    this.volume = [];
    this.minutes = new Map();
    for (const item of items) {
      const bar = barFromRest(item);
      this.bars.push(bar);
      this.sma.push({time: bar.time, value: item.sma10 ?? null});
      this.volume.push({time: bar.time, value: bar.volume, up: bar.close >= bar.open});
    }
  }

  get last() {
    return this.bars.length ? this.bars[this.bars.length - 1] : null;
  }

  indexOf(time) {
    let lo = 0;
    let hi = this.bars.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const t = this.bars[mid].time;
      if (t === time) return mid;
      if (t < time) lo = mid + 1;
      else hi = mid - 1;
    }
    return -(lo + 1);
  }

  /** Whether a live minute for this bucket needs the bucket's 1-minute candles first. */
  needsMinutes(minuteStart) {
    if (this.seconds === 60) return false;
    const bucket = bucketOf(minuteStart, this.seconds);
    return !this.minutes.has(bucket) && this.indexOf(bucket) >= 0;
  }

  /** Install a bucket's 1-minute candles (REST items) and refold its bar from them. */
  setMinutes(bucket, items) {
    const map = new Map();
    for (const item of items) {
      const m = minuteCandle(item);
      if (bucketOf(m.minute, this.seconds) === bucket) map.set(m.minute, m);
    }
    this.minutes.delete(bucket);
    this.minutes.set(bucket, map);
    this.pruneMinutes();
    if (map.size === 0) return null;
    return this.upsert(foldMinutes(bucket, map), undefined);
  }

  /**
   * Apply one live 1-minute candle and its SMA10. Returns null when nothing changed, else
   * {index, kind}: 'last' (the newest bar changed), 'append' (a new newest bar) or 'history'
   * (an older bar changed, a bar was inserted, or old bars were dropped: redraw everything).
   */
  apply(candle1m, sma10) {
    const m = minuteCandle(candle1m);
    if (!Number.isFinite(m.minute)) return null;
    const bucket = bucketOf(m.minute, this.seconds);
    if (!this.complete && this.bars.length && bucket < this.bars[0].time) return null;
    if (this.seconds === 60) {
      const i = this.indexOf(bucket);
      if (i >= 0 && this.bars[i].count > m.count) return null;
      const {minute, ...rest} = m;
      return this.upsert({time: minute, ...rest}, sma10);
    }
    let map = this.minutes.get(bucket);
    if (!map) {
      if (this.indexOf(bucket) >= 0) throw new Error('needsMinutes() first');
      map = new Map();
    }
    // Re-inserting keeps the Map in least-recently-used order for pruneMinutes().
    this.minutes.delete(bucket);
    this.minutes.set(bucket, map);
    const held = map.get(m.minute);
    if (held && held.count > m.count) return null;
    map.set(m.minute, m);
    const change = this.upsert(foldMinutes(bucket, map), undefined);
    this.pruneMinutes();
    return change;
  }

  upsert(bar, sma10) {
    let i = this.indexOf(bar.time);
    let kind;
    if (i >= 0) {
      this.bars[i] = bar;
      kind = i === this.bars.length - 1 ? 'last' : 'history';
    } else {
      i = -i - 1;
      kind = i === this.bars.length ? 'append' : 'history';
      this.bars.splice(i, 0, bar);
      this.sma.splice(i, 0, {time: bar.time, value: null});
      this.volume.splice(i, 0, null);
    }
    this.volume[i] = {time: bar.time, value: bar.volume, up: bar.close >= bar.open};
    if (this.seconds === 60 && sma10 !== undefined) {
      this.sma[i] = {time: bar.time, value: sma10};
    } else {
      this.sma[i] = {time: bar.time, value: this.localSma(i) ?? this.sma[i].value};
    }
    for (let j = i + 1; j < Math.min(i + SMA_LENGTH, this.bars.length); j += 1) {
      const value = this.localSma(j);
      if (value !== null) this.sma[j] = {time: this.bars[j].time, value};
    }
    if (this.bars.length > this.maxBars) {
      // Drop in chunks so that a long session redraws once per chunk, not once per bar.
      const drop = this.bars.length - this.maxBars + Math.ceil(this.maxBars / 20);
      this.bars.splice(0, drop);
      this.sma.splice(0, drop);
      this.volume.splice(0, drop);
      return {index: i - drop, kind: 'history'};
    }
    return {index: i, kind};
  }

  /** Row-based SMA10 at index i from the closes held, or null without 9 bars before it. */
  localSma(i) {
    if (i < SMA_LENGTH - 1) return null;
    let sum = 0;
    for (let k = i - SMA_LENGTH + 1; k <= i; k += 1) sum += this.bars[k].close;
    return sum / SMA_LENGTH;
  }

  pruneMinutes() {
    for (const bucket of this.minutes.keys()) {
      if (this.minutes.size <= MINUTE_BUCKETS_KEPT) break;
      this.minutes.delete(bucket);
    }
  }
}

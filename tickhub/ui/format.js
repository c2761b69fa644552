// Number and time formatting shared by the chart and the page (one place for locale and zone rules).

const priceFormats = new Map();
const volumeFormat = new Intl.NumberFormat(undefined, {maximumFractionDigits: 4});
const countFormat = new Intl.NumberFormat(undefined, {maximumFractionDigits: 0});

/** Decimals that keep a price readable: cents for large prices, more for sub-unit prices. */
export function priceDecimals(price) {
  const p = Math.abs(price);
  if (!Number.isFinite(p) || p === 0) return 2;
  if (p >= 1000) return 2;
  if (p >= 1) return 4;
  // Sub-unit prices: four significant digits, at most 10 decimals.
  return Math.min(10, Math.max(4, 3 - Math.floor(Math.log10(p)) + 1));
}

export function formatPrice(price, decimals = priceDecimals(price)) {
  if (price == null || !Number.isFinite(price)) return '—';
  let f = priceFormats.get(decimals);
  if (!f) {
    f = new Intl.NumberFormat(undefined, {minimumFractionDigits: decimals, maximumFractionDigits: decimals});
    priceFormats.set(decimals, f);
  }
  return f.format(price);
}

export function formatVolume(volume) {
  return volume == null || !Number.isFinite(volume) ? '—' : volumeFormat.format(volume);
}

export function formatCount(count) {
  return count == null || !Number.isFinite(count) ? '—' : countFormat.format(count);
}

export function formatSigned(value, decimals) {
  if (value == null || !Number.isFinite(value)) return '—';
  const sign = value > 0 ? '+' : value < 0 ? '−' : '±';
  return sign + formatPrice(Math.abs(value), decimals);
}

export function formatPercent(ratio) {
  if (ratio == null || !Number.isFinite(ratio)) return '';
  const sign = ratio > 0 ? '+' : ratio < 0 ? '−' : '±';
  return `${sign}${Math.abs(ratio * 100).toFixed(2)}%`;
}

// Intl formatters per (zone, style); `zone` is 'UTC' or 'local' (the viewer's zone).
const timeFormats = new Map();

function timeFormat(zone, style) {
  const key = `${zone}|${style}`;
  let f = timeFormats.get(key);
  if (!f) {
    const base = zone === 'UTC' ? {timeZone: 'UTC'} : {};
    const styles = {
      year: {year: 'numeric'},
      month: {month: 'short', year: '2-digit'},
      day: {day: 'numeric', month: 'short'},
      date: {day: 'numeric', month: 'short', year: 'numeric'},
      minute: {hour: '2-digit', minute: '2-digit', hourCycle: 'h23'},
      second: {hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23'},
      full: {day: 'numeric', month: 'short', year: 'numeric', hour: '2-digit', minute: '2-digit', hourCycle: 'h23'},
    };
    f = new Intl.DateTimeFormat(undefined, {...base, ...styles[style]});
    timeFormats.set(key, f);
  }
  return f;
}

/** Format epoch seconds in the chosen zone. */
export function formatTime(epochSeconds, zone, style) {
  return timeFormat(zone, style).format(new Date(epochSeconds * 1000));
}

/** The viewer's IANA zone name, for labels. */
export function localZoneName() {
  return Intl.DateTimeFormat().resolvedOptions().timeZone || 'local';
}

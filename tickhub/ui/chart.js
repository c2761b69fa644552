// The price chart: TradingView Lightweight Charts with candles and SMA10 in the main pane and volume
// in a pane of its own. Data stays in UTC epoch seconds; the zone only changes how times are labelled.
import {
  CandlestickSeries,
  CrosshairMode,
  HistogramSeries,
  LineSeries,
  TickMarkType,
  createChart,
} from './vendor/lightweight-charts.standalone.production.mjs';
import {formatTime} from './format.js';

function cssColors() {
  const style = getComputedStyle(document.documentElement);
  const v = (name) => style.getPropertyValue(name).trim();
  return {
    background: v('--chart-bg'), text: v('--chart-text'), grid: v('--chart-grid'),
    up: v('--up'), down: v('--down'), sma: v('--sma'),
    volumeUp: v('--volume-up'), volumeDown: v('--volume-down'),
  };
}

const candle = (b) => ({time: b.time, open: b.open, high: b.high, low: b.low, close: b.close});
const line = (p) => (p.value == null ? {time: p.time} : {time: p.time, value: p.value});

export class PriceChart {
  constructor(container, {zone, interval}) {
    this.zone = zone;
    this.interval = interval;
    this.colors = cssColors();
    this.chart = createChart(container, {
      autoSize: true,
      layout: {
        attributionLogo: true,
        fontFamily: getComputedStyle(document.body).fontFamily,
      },
      crosshair: {mode: CrosshairMode.Normal},
      rightPriceScale: {borderVisible: false},
      timeScale: {borderVisible: false, timeVisible: true, secondsVisible: false, rightOffset: 3},
    });
    this.candles = this.chart.addSeries(CandlestickSeries, {borderVisible: false}, 0);
    this.sma = this.chart.addSeries(LineSeries, {
      lineWidth: 2, title: 'SMA10', priceLineVisible: false, lastValueVisible: false,
      crosshairMarkerVisible: false,
    }, 0);
    this.volume = this.chart.addSeries(HistogramSeries, {
      priceFormat: {type: 'volume'}, priceLineVisible: false, title: 'Vol',
    }, 1);
    const [pricePane, volumePane] = this.chart.panes();
    pricePane.setStretchFactor(3);
    volumePane.setStretchFactor(1);
    this.applyColors();
    this.applyTimeFormat();
    matchMedia('(prefers-color-scheme: dark)').addEventListener('change', () => {
      this.colors = cssColors();
      this.applyColors();
      this.redrawVolume();
    });
  }

  applyColors() {
    const c = this.colors;
    this.chart.applyOptions({
      layout: {background: {color: c.background}, textColor: c.text, panes: {separatorColor: c.grid}},
      grid: {vertLines: {color: c.grid}, horzLines: {color: c.grid}},
    });
    this.candles.applyOptions({
      upColor: c.up, downColor: c.down, wickUpColor: c.up, wickDownColor: c.down,
    });
    this.sma.applyOptions({color: c.sma});
  }

  applyTimeFormat() {
    const daily = this.interval === '1d';
    // A 1d bar is a UTC day (the server buckets in UTC): its date is the UTC date in either mode.
    const zone = daily ? 'UTC' : this.zone;
    const suffix = zone === 'UTC' && !daily ? ' UTC' : '';
    const tickStyles = {
      [TickMarkType.Year]: 'year',
      [TickMarkType.Month]: 'month',
      [TickMarkType.DayOfMonth]: 'day',
      [TickMarkType.Time]: 'minute',
      [TickMarkType.TimeWithSeconds]: 'second',
    };
    // The library places day, month and year marks at UTC boundaries. In the viewer's zone such a
    // mark is not midnight (unless the zone is UTC), so it is labelled with its local time instead.
    const tickMark = (t, type) => {
      const style = tickStyles[type] ?? 'minute';
      if (zone !== 'UTC' && !daily && type <= TickMarkType.DayOfMonth) {
        const time = formatTime(t, zone, 'minute');
        if (time !== formatTime(0, 'UTC', 'minute')) return time;
      }
      return formatTime(t, zone, style);
    };
    this.chart.applyOptions({
      localization: {timeFormatter: (t) => formatTime(t, zone, daily ? 'date' : 'full') + suffix},
      timeScale: {tickMarkFormatter: tickMark},
    });
  }

  setZone(zone) {
    this.zone = zone;
    this.applyTimeFormat();
  }

  setInterval(interval) {
    this.interval = interval;
    this.applyTimeFormat();
  }

  setPrecision(decimals) {
    const priceFormat = {type: 'price', precision: decimals, minMove: 10 ** -decimals};
    this.candles.applyOptions({priceFormat});
    this.sma.applyOptions({priceFormat});
  }

  volumePoint(v) {
    return {time: v.time, value: v.value, color: v.up ? this.colors.volumeUp : this.colors.volumeDown};
  }

  /** Replace all data from a candle book. */
  setData(book) {
    this.book = book;
    this.candles.setData(book.bars.map(candle));
    this.sma.setData(book.sma.map(line));
    this.volume.setData(book.volume.map((v) => this.volumePoint(v)));
  }

  /** Show one change reported by CandleBook.apply / setMinutes. */
  update(book, change) {
    if (!change) return;
    if (change.kind === 'history' || book !== this.book) {
      this.setData(book);
      return;
    }
    const i = change.index;
    this.candles.update(candle(book.bars[i]));
    this.sma.update(line(book.sma[i]));
    this.volume.update(this.volumePoint(book.volume[i]));
  }

  redrawVolume() {
    if (this.book) this.volume.setData(this.book.volume.map((v) => this.volumePoint(v)));
  }

  /** Show the latest `count` bars (all of them when there are fewer). */
  showLatest(count) {
    const n = this.book ? this.book.bars.length : 0;
    if (n === 0) return;
    this.chart.timeScale().setVisibleLogicalRange({from: Math.max(0, n - count), to: n + 2});
  }
}

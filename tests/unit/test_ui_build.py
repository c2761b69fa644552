"""The dashboard's static build (`tickhub ui build`), its page modules, and the rule that
vendors the front-end files (`tickhub.ui.assets`, run by `make ui` and the wheel's build hook).

The build tests run on a copy of tickhub/ui with stand-in vendor files, so they need neither
`make ui` nor the network. The page tests run the real ES modules under Node (skipped without
`node`): they parse, config.js evaluates to the URLs written, and the candle book folds live
1-minute candles the way the chart shows them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tickhub.ui import assets, build
from tickhub.ui.assets import AssetsError
from tickhub.ui.build import UiBuildError, build_static, page_files

UI_DIR = Path(build.__file__).parent
NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="node is not installed")


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A copy of the dashboard sources with stand-in vendor files."""
    src = tmp_path / "ui"
    src.mkdir()
    for path in [UI_DIR / "index.html", UI_DIR / "style.css", *UI_DIR.glob("*.js")]:
        shutil.copyfile(path, src / path.name)
    for name in ("package.json", "package-lock.json", "build.py"):
        shutil.copyfile(UI_DIR / name, src / name)
    (src / "node_modules").mkdir()
    (src / "vendor").mkdir()
    for name in build.VENDOR_FILES:
        (src / name).write_text(f"// stand-in for {name}\n")
    return src


def node_eval(script: str) -> object:
    """Run an ES-module script under Node and return what it printed, as JSON."""
    done = subprocess.run(
        [NODE, "--input-type=module", "-e", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def load_config(path: Path) -> dict[str, object]:
    """What config.js exports, evaluated as the page's module loader does: as an ES module.

    Imported from a data: URL, by its content: Node reads a `.js` file outside a package with
    `"type": "module"` (a built site) as CommonJS, and Node 18, which Debian and Ubuntu LTS
    ship, refuses its `export` there instead of detecting the syntax as Node 22 does."""
    text = path.read_text(encoding="utf-8")
    if NODE:
        module = "data:text/javascript;base64," + base64.b64encode(text.encode()).decode()
        return node_eval(f"import c from {json.dumps(module)}; console.log(JSON.stringify(c));")
    match = re.search(r"^export default (\{.*\});$", text, re.MULTILINE)
    assert match, text
    return json.loads(match.group(1))


def test_build_writes_config_with_the_given_urls(source: Path, tmp_path: Path) -> None:
    out = build_static(
        tmp_path / "site",
        "https://api.example.com/api/v1/",
        "https://rt.example.com/realtime/ticks",
        source_dir=source,
    )

    assert load_config(out / "config.js") == {
        "apiBaseUrl": "https://api.example.com/api/v1",
        "realtimeUrl": "https://rt.example.com/realtime/ticks",
    }


def test_build_without_urls_keeps_the_same_origin_default(source: Path, tmp_path: Path) -> None:
    out = build_static(tmp_path / "site", None, "", source_dir=source)

    same_origin = {"apiBaseUrl": None, "realtimeUrl": None}
    assert load_config(out / "config.js") == same_origin
    assert load_config(UI_DIR / "config.js") == same_origin


def test_config_values_are_escaped(source: Path, tmp_path: Path) -> None:
    awkward = "https://h.example/a'b\"c\\d/</script>/é?q=${x}`"

    out = build_static(tmp_path / "site", awkward, "/realtime/ticks", source_dir=source)

    assert load_config(out / "config.js") == {
        "apiBaseUrl": awkward,
        "realtimeUrl": "/realtime/ticks",
    }


@pytest.mark.parametrize(
    "bad", ["javascript:alert(1)", "ftp://h/x", "localhost:3030/api", "//h/x", "https://h/a b"]
)
def test_build_rejects_urls_a_browser_cannot_use(bad: str, source: Path, tmp_path: Path) -> None:
    with pytest.raises(UiBuildError, match="--api-base-url"):
        build_static(tmp_path / "site", bad, None, source_dir=source)
    assert not (tmp_path / "site").exists()


def test_build_copies_the_page_and_nothing_else(source: Path, tmp_path: Path) -> None:
    out = build_static(tmp_path / "site", None, None, source_dir=source)

    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == sorted(page_files(source))
    for name in page_files(source):
        if name != "config.js":
            assert (out / name).read_bytes() == (source / name).read_bytes(), name


def test_every_file_the_page_references_is_built(source: Path, tmp_path: Path) -> None:
    out = build_static(tmp_path / "site", None, None, source_dir=source)

    html = (out / "index.html").read_text(encoding="utf-8")
    refs = set(re.findall(r'(?:src|href)="([^"#:]+)"', html))
    for module in out.glob("*.js"):
        refs |= set(re.findall(r"""(?:from|import\()\s*'\./([^']+)'""", module.read_text()))
    assert {"app.js", "style.css", "vendor/lightweight-charts.LICENSE"} <= refs
    assert "vendor/lightweight-charts.standalone.production.mjs" in refs
    assert [ref for ref in sorted(refs) if not (out / ref).is_file()] == []


def test_build_without_vendor_says_to_run_make_ui(source: Path, tmp_path: Path) -> None:
    shutil.rmtree(source / "vendor")

    with pytest.raises(UiBuildError, match="make ui"):
        build_static(tmp_path / "site", None, None, source_dir=source)


def test_build_refuses_to_overwrite_the_sources(source: Path) -> None:
    with pytest.raises(UiBuildError, match="--out"):
        build_static(source, "https://api.example.com/api/v1", None, source_dir=source)
    assert "null" in (source / "config.js").read_text()


def test_content_types_let_browsers_run_the_modules() -> None:
    assert build.content_type("app.js").startswith("text/javascript")
    assert build.content_type("vendor/lightweight-charts.standalone.production.mjs").startswith(
        "text/javascript"
    )
    assert build.content_type("index.html") == "text/html; charset=utf-8"
    assert build.content_type("style.css") == "text/css; charset=utf-8"
    assert build.content_type("vendor/lightweight-charts.LICENSE").startswith("text/plain")


def test_package_lock_pins_the_front_end_packages() -> None:
    package = json.loads((UI_DIR / "package.json").read_text())
    lock = json.loads((UI_DIR / "package-lock.json").read_text())

    pins = {"lightweight-charts": "5.2.1", "swagger-ui-dist": "5.35.0"}
    assert package["dependencies"] == pins
    for name, version in pins.items():
        pinned = lock["packages"][f"node_modules/{name}"]
        assert pinned["version"] == version
        assert pinned["integrity"].startswith("sha512-")
    # The versions the pages name in their licence notices.
    assert "Lightweight Charts™ 5.2.1" in (UI_DIR / "index.html").read_text()
    assert "Swagger UI</a> 5.35.0" in (UI_DIR / "docs" / "index.html").read_text()


@pytest.fixture
def no_npm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


@pytest.fixture
def lock_only(tmp_path: Path) -> Path:
    """A dashboard directory as a clean checkout has it: the lock, nothing installed."""
    ui = tmp_path / "checkout-ui"
    ui.mkdir()
    for name in ("package.json", "package-lock.json"):
        shutil.copyfile(UI_DIR / name, ui / name)
    return ui


def test_building_without_npm_says_what_to_install(lock_only: Path, no_npm: None) -> None:
    with pytest.raises(AssetsError, match=r"npm was not found.*Node\.js 18 or newer"):
        assets.build_vendor(lock_only)
    assert assets.missing(lock_only) == list(assets.VENDORED)


def test_vendor_built_for_this_lock_needs_no_npm(lock_only: Path, no_npm: None) -> None:
    """A build after `make ui` (or the image's, whose files are already in place) does not
    need npm; a lock that changed since does."""
    for name in assets.VENDORED:
        (lock_only / name).parent.mkdir(parents=True, exist_ok=True)
        (lock_only / name).write_text("stand-in\n")
    digest = hashlib.sha256((lock_only / "package-lock.json").read_bytes()).hexdigest()
    (lock_only / assets.STAMP).write_text(digest + "\n")

    assert assets.build_vendor(lock_only) is False

    (lock_only / "package-lock.json").write_text("{}\n")
    with pytest.raises(AssetsError, match="npm was not found"):
        assets.build_vendor(lock_only)


@needs_node
@pytest.mark.parametrize("module", sorted(p.name for p in UI_DIR.glob("*.js")))
def test_page_module_parses(module: str) -> None:
    done = subprocess.run(
        [NODE, "--check", str(UI_DIR / module)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


def run_book(body: str) -> object:
    """Run `body` with CandleBook in scope; it must end with `out(value)`."""
    candles = json.dumps((UI_DIR / "candles.js").as_uri())
    return node_eval(
        f"import {{CandleBook, INTERVALS}} from {candles};\n"
        "const out = (v) => console.log(JSON.stringify(v));\n"
        "const c = (bucket_start, open, high, low, close, volume, count) =>\n"
        "  ({bucket_start, open, high, low, close, volume, count});\n"
        "const rest = (ts, open, high, low, close, volume, count, sma10 = null) =>\n"
        "  ({symbol: 'X', ts, open, high, low, close, volume, count, vwap: null, sma10});\n"
        f"{body}\n"
    )


@needs_node
def test_live_minute_updates_replace_rather_than_add() -> None:
    result = run_book("""
        const book = new CandleBook(INTERVALS['1m'], [rest(0, 10, 11, 9, 10, 1, 1)]);
        const a = book.apply(c(60, 10, 12, 10, 12, 2, 2), 11);
        const b = book.apply(c(60, 10, 13, 10, 11, 3, 3), 11.5);
        const replayed = book.apply(c(60, 10, 12, 10, 12, 2, 2), 11);
        out({a, b, replayed, bars: book.bars, sma: book.sma});
    """)

    assert result["a"]["kind"] == "append"
    assert result["b"]["kind"] == "last"
    assert result["replayed"] is None
    assert [bar["volume"] for bar in result["bars"]] == [1, 3]
    assert result["bars"][1]["close"] == 11
    assert result["sma"][1] == {"time": 60, "value": 11.5}


@needs_node
def test_late_minute_updates_its_own_bar_and_the_sma_after_it() -> None:
    result = run_book("""
        const items = Array.from({length: 12}, (_, i) => rest(i * 120, 10, 10, 10, 10, 1, 1));
        const book = new CandleBook(INTERVALS['1m'], items);
        const late = book.apply(c(240, 10, 30, 10, 30, 2, 2), 12);
        const gap = book.apply(c(300, 10, 10, 10, 10, 1, 1), 12);
        out({late, gap, times: book.bars.map((b) => b.time), bars: book.bars, sma: book.sma});
    """)

    assert result["late"] == {"index": 2, "kind": "history"}
    assert result["gap"] == {"index": 3, "kind": "history"}
    times = result["times"]
    assert times == sorted(set(times)) and len(times) == 13
    assert result["bars"][2]["close"] == 30
    # Bar 11 now averages the closes of bars 2..11: one 30 and nine 10s.
    assert result["sma"][11]["value"] == pytest.approx(12)


@needs_node
def test_coarse_bar_folds_minutes_without_double_counting() -> None:
    result = run_book("""
        const book = new CandleBook(INTERVALS['5m'], [
          rest(0, 10, 10, 10, 10, 5, 5), rest(300, 10, 12, 9, 11, 3, 3),
        ]);
        const before = book.needsMinutes(420);
        book.setMinutes(300, [rest(300, 10, 12, 9, 10, 2, 2), rest(360, 10, 11, 10, 11, 1, 1)]);
        const after = book.needsMinutes(420);
        book.apply(c(360, 10, 11, 10, 11, 1, 1), 99);
        book.apply(c(420, 11, 15, 11, 14, 4, 2), 99);
        book.apply(c(420, 11, 15, 11, 13, 6, 3), 99);
        const next = book.apply(c(600, 13, 13, 13, 13, 1, 1), 99);
        out({before, after, next, bars: book.bars, sma: book.sma});
    """)

    assert (result["before"], result["after"]) == (True, False)
    bar = result["bars"][1]
    assert (bar["open"], bar["high"], bar["low"], bar["close"]) == (10, 15, 9, 13)
    assert (bar["volume"], bar["count"]) == (2 + 1 + 6, 2 + 1 + 3)
    assert result["next"] == {"index": 2, "kind": "append"}
    # Fewer than 10 bars: no SMA from the event's 1-minute value.
    assert all(point["value"] is None for point in result["sma"])


def test_page_can_be_listed_without_vendor_for_serving(source: Path) -> None:
    shutil.rmtree(source / "vendor")

    files = page_files(source, require_vendor=False)

    assert "index.html" in files and "config.js" in files
    assert not [name for name in files if name.startswith("vendor/")]


@needs_node
def test_stream_url_asks_for_conflation_and_resumes() -> None:
    stream = json.dumps((UI_DIR / "stream.js").as_uri())
    urls = node_eval(
        f"import {{streamUrl}} from {stream};\n"
        "const base = 'http://h/realtime/ticks';\n"
        "console.log(JSON.stringify([\n"
        "  streamUrl(base, ['ETHUSDT', 'BTCUSDT'], null, 250),\n"
        "  streamUrl(base, ['BTCUSDT'], '17', 250),\n"
        "  streamUrl(base, [], null),\n"
        "]));\n"
    )
    assert urls == [
        "http://h/realtime/ticks?symbols=ETHUSDT%2CBTCUSDT&conflate=250",
        "http://h/realtime/ticks?symbols=BTCUSDT&conflate=250&lastEventId=17",
        "http://h/realtime/ticks",
    ]

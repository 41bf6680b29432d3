//! `ember inspect`: the page it writes, checked in a real browser (Debian's chromium, headless,
//! driven over the DevTools protocol) against activations computed here through `ember-model`,
//! and its errors.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use burn::tensor::{Device, Int, Tensor, TensorData};
use common::*;
use ember_model::LayerState;
use ember_model::ops::host_values;
use ember_train::Run;
use ember_train::inspect::group_digits;
use ember_train::inspect::page::{LEVELS, activation_colour, loss_colour};
use serde_json::{Value, json};

/// A corpus with what a page must show as itself: HTML-special characters, quotes, brackets,
/// non-ASCII letters and symbols, several lines.
fn corpus() -> String {
    let lines = [
        "She said \"a <b> & c\" (twice), then 'no'.",
        "Le café — naïve «déjà vu» (x < y && y > z).",
        "if (a[i] < b) { print(\"<script>\"); }",
        "ÉTÉ: 日本語 ünd ßtraße — ok?",
    ];
    let mut text = String::new();
    for i in 0..60 {
        text.push_str(lines[i % lines.len()]);
        text.push('\n');
    }
    text
}

/// Trains the smoke config, with `overrides`, on [`corpus`] into `dir/run`; returns the run
/// and the corpus path.
fn trained_run_with(dir: &Path, overrides: &[&str]) -> (PathBuf, PathBuf) {
    let corpus_path = dir.join("corpus.txt");
    std::fs::write(&corpus_path, corpus()).unwrap();
    let run_dir = dir.join("run");
    let data = format!("data.path={}", corpus_path.display());
    let mut all = vec![data.as_str(), "train.steps=30"];
    all.extend(overrides);
    run_ok(&mut train(&run_dir, &all));
    (run_dir, corpus_path)
}

fn trained_run(dir: &Path) -> (PathBuf, PathBuf) {
    trained_run_with(dir, &[])
}

/// The data a page's script reads: the JSON of its `application/json` script element.
fn page_data(page: &str) -> Value {
    let start = page.find("type=\"application/json\">").unwrap() + 24;
    let end = start + page[start..].find("</script>").unwrap();
    serde_json::from_str(&page[start..end]).unwrap()
}

/// Every layer's hidden and cell state after each character of a text: `states[k] = (hidden,
/// cell)`, each `[len][d_hidden]`.
type States = Vec<(Vec<Vec<f32>>, Vec<Vec<f32>>)>;

/// What the page should show, computed here through `ember-model` without the page's builder
/// (which steps `CharLm::step`): each layer's states with the layers' own `step`, layer by
/// layer from a zero state, and the logits after every character from `CharLm::forward` over
/// the whole text (`[len][vocab_size]`).
struct Reference {
    states: States,
    logits: Vec<Vec<f32>>,
}

fn reference(run_dir: &Path, text: &str) -> Reference {
    let device = Device::flex();
    let run = Run::open(run_dir, &device).unwrap();
    let model = run.model;
    let ids: Vec<i64> = run
        .vocab
        .encode(text)
        .unwrap()
        .into_iter()
        .map(i64::from)
        .collect();
    let len = ids.len();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, len]), &device);
    let embedded = model
        .embedding
        .as_ref()
        .expect("the smoke config embeds")
        .forward(ids.clone());
    let mut inputs: Vec<Tensor<2>> = (0..len)
        .map(|t| embedded.clone().slice([0..1, t..t + 1]).reshape([1, -1]))
        .collect();
    let mut states = Vec::new();
    for layer in &model.rnn.layers {
        let mut state = LayerState::zeros(layer.cell, 1, layer.d_hidden(), &device);
        let (mut hidden, mut cell) = (Vec::new(), Vec::new());
        for input in &mut inputs {
            state = layer.step(input.clone(), state);
            hidden.push(host_values(state.hidden.clone()));
            cell.push(state.cell.clone().map_or_else(Vec::new, host_values));
            *input = state.hidden.clone();
        }
        states.push((hidden, cell));
    }
    // The same top layer from the whole-sequence forward pass, as a check on this reference.
    let (outputs, _) = model.rnn.forward(embedded, None);
    let outputs = host_values(outputs);
    let top = &states.last().unwrap().0;
    for (t, row) in top.iter().enumerate() {
        for (u, v) in row.iter().enumerate() {
            assert!((v - outputs[t * row.len() + u]).abs() < 1e-5);
        }
    }
    let vocab_size = model.vocab_size();
    let (logits, _) = model.forward(ids, None);
    let logits = host_values(logits)
        .chunks(vocab_size)
        .map(<[f32]>::to_vec)
        .collect();
    Reference { states, logits }
}

/// The loss, in nats, of `next` after `logits`.
fn loss_of(logits: &[f32], next: usize) -> f64 {
    let max = logits.iter().fold(f64::MIN, |m, &l| m.max(l as f64));
    let total: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    total.ln() + max - logits[next] as f64
}

/// The Chromium to drive, or `None` (with a message) where the test may be skipped.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| dirs.iter().map(move |dir| dir.join(name)))
        .find(|path| path.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("EMBER_REQUIRE_CHROMIUM").is_none(),
            "EMBER_REQUIRE_CHROMIUM is set but no chromium is on PATH (apt-get install chromium)"
        );
        eprintln!(
            "SKIPPED: the browser test of `ember inspect` needs Debian's chromium on PATH \
             (apt-get install chromium); set EMBER_REQUIRE_CHROMIUM=1 to make its absence fail"
        );
    }
    found
}

/// A headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`):
/// JSON messages ended by a NUL byte, commands into the browser's descriptor 3, replies and
/// events out of its descriptor 4 (here its standard input and output, moved there by `sh`).
struct Browser {
    child: Child,
    commands: ChildStdin,
    replies: Receiver<Value>,
    next_id: u64,
    /// The DevTools session of the page's tab.
    session: String,
}

impl Browser {
    fn open(binary: &Path, dir: &Path, url: &str) -> Self {
        let log = std::fs::File::create(dir.join("chromium.log")).unwrap();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r##"exec "$0" "$@" 3<&0 4>&1 </dev/null >/dev/null"##)
            .arg(binary)
            // The flags that keep chromium off the network on a closed machine.
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--window-size=1280,900",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", dir.join("profile").display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("chromium starts");
        let commands = child.stdin.take().unwrap();
        let mut output = BufReader::new(child.stdout.take().unwrap());
        let (send, replies) = mpsc::channel();
        std::thread::spawn(move || {
            let mut message = Vec::new();
            while output.read_until(0, &mut message).unwrap_or(0) > 0 {
                message.pop();
                if let Ok(value) = serde_json::from_slice(&message) {
                    if send.send(value).is_err() {
                        return;
                    }
                }
                message.clear();
            }
        });
        let mut browser = Browser {
            child,
            commands,
            replies,
            next_id: 0,
            session: String::new(),
        };
        let target = browser.call(None, "Target.createTarget", json!({ "url": url }));
        let attached = browser.call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        );
        browser.session = attached["sessionId"].as_str().unwrap().to_string();
        browser
    }

    /// Sends `method` (to the page's session, or to the browser) and waits for its result.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let mut command = json!({ "id": self.next_id, "method": method, "params": params });
        if let Some(session) = session {
            command["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&command).unwrap();
        bytes.push(0);
        self.commands.write_all(&bytes).unwrap();
        self.commands.flush().unwrap();
        loop {
            let message = self
                .replies
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("no reply to {method} from chromium: {e}"));
            if message["id"] == json!(self.next_id) {
                assert!(message["error"].is_null(), "{method}: {}", message["error"]);
                return message["result"].clone();
            }
        }
    }

    fn page(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.call(Some(&session), method, params)
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns its value.
    fn evaluate(&mut self, expression: &str) -> Value {
        let result = self.page(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        );
        assert!(
            result["exceptionDetails"].is_null(),
            "{expression}: {}",
            result["exceptionDetails"]
        );
        result["result"]["value"].clone()
    }

    /// The centre of the element `selector`, scrolled into view, in the page's coordinates.
    fn centre(&mut self, selector: &str) -> (f64, f64) {
        let centre = self.evaluate(&format!(
            "(() => {{ const e = document.querySelector({selector:?}); \
             e.scrollIntoView({{ block: 'center' }}); const r = e.getBoundingClientRect(); \
             return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
        ));
        (centre[0].as_f64().unwrap(), centre[1].as_f64().unwrap())
    }

    /// Moves the mouse over `selector` and, with `click`, presses and releases its left button
    /// there: the events a person's mouse sends.
    fn mouse(&mut self, selector: &str, click: bool) {
        let (x, y) = self.centre(selector);
        let mut events = vec![("mouseMoved", "none", 0)];
        if click {
            events.extend([("mousePressed", "left", 1), ("mouseReleased", "left", 1)]);
        }
        for (kind, button, clicks) in events {
            self.page(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": button, "clickCount": clicks }),
            );
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the page shows now: its characters and their background colours, and the unit chosen.
struct Shown {
    text: String,
    spans: usize,
    colours: Vec<[u8; 3]>,
    layer: usize,
    state: String,
    unit: usize,
}

fn shown(browser: &mut Browser) -> Shown {
    let value = browser.evaluate(
        r##"(() => {
            const spans = Array.from(document.querySelectorAll("#text span"));
            return {
                text: spans.map((s) => s.textContent).join(""),
                spans: spans.length,
                colours: spans.map((s) => getComputedStyle(s).backgroundColor),
                layer: document.getElementById("layer").value,
                state: document.getElementById("state").value,
                unit: document.getElementById("unit").value,
            };
        })()"##,
    );
    let colours = value["colours"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let c = c.as_str().unwrap();
            // `rgb(r, g, b)`, or `rgba(0, 0, 0, 0)` for a transparent background.
            let inner = c.trim_start_matches("rgba(").trim_start_matches("rgb(");
            let inner = inner.trim_end_matches(')');
            let parts: Vec<u8> = inner
                .split(',')
                .map(|p| p.trim().parse().unwrap())
                .collect();
            [parts[0], parts[1], parts[2]]
        })
        .collect();
    Shown {
        text: value["text"].as_str().unwrap().to_string(),
        spans: value["spans"].as_u64().unwrap() as usize,
        colours,
        layer: value["layer"].as_str().unwrap().parse().unwrap(),
        state: value["state"].as_str().unwrap().to_string(),
        unit: value["unit"].as_str().unwrap().parse().unwrap(),
    }
}

/// The page's colours follow the chosen unit's activations from [`reference`]: each
/// channel within 5 of the colour of the exact activation (the page holds 64 levels, a step of
/// 2/63 of the range; half a step moves a channel by at most 224/63 = 3.6, plus rounding).
fn assert_colours_follow(shown: &Shown, states: &States) {
    let (hidden, cell) = &states[shown.layer];
    let series: Vec<f32> = match shown.state.as_str() {
        "hidden" => hidden.iter().map(|h| h[shown.unit]).collect(),
        "cell" => cell.iter().map(|c| c[shown.unit]).collect(),
        other => panic!("unknown state {other}"),
    };
    // Hidden states are drawn as they are; a cell state divided by its largest magnitude.
    let scale = match shown.state.as_str() {
        "cell" => series.iter().fold(0f32, |m, v| m.max(v.abs())),
        _ => 1.0,
    };
    let spread = series.iter().fold(f32::MIN, |m, &v| m.max(v))
        - series.iter().fold(f32::MAX, |m, &v| m.min(v));
    assert!(
        spread > 4.0 / LEVELS as f32 * scale,
        "the unit barely moves: nothing to check"
    );
    for (t, (&value, shown_colour)) in series.iter().zip(&shown.colours).enumerate() {
        let expected = activation_colour((value / scale) as f64);
        for channel in 0..3 {
            let gap = (expected[channel] as i32 - shown_colour[channel] as i32).abs();
            assert!(
                gap <= 5,
                "layer {} {} unit {}, character {t}: activation {value} wants {expected:?}, \
                 the page shows {shown_colour:?}",
                shown.layer,
                shown.state,
                shown.unit
            );
        }
    }
}

fn wait_until_ready(browser: &mut Browser) {
    let start = Instant::now();
    while browser
        .evaluate("!!document.documentElement && document.documentElement.dataset.ready === '1'")
        != json!(true)
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the page never got ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The page in a real browser: one element per character, shown as itself; the chosen unit's
/// colours follow activations computed independently; choosing a ranked unit recolours the text
/// by that unit; hovering shows the top 5 and the loss; a screenshot is not blank.
#[test]
fn the_page_shows_the_units_in_a_browser() {
    let Some(chromium) = chromium() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (run_dir, _) = trained_run(dir.path());
    let text: String = corpus().lines().take(8).collect::<Vec<_>>().join("\n");
    let text_path = dir.path().join("text.txt");
    std::fs::write(&text_path, &text).unwrap();
    let page = dir.path().join("page.html");
    run_ok(
        ember()
            .args(["inspect", "--run"])
            .arg(&run_dir)
            .arg("--text")
            .arg(&text_path)
            .arg("--out")
            .arg(&page),
    );
    let reference = reference(&run_dir, &text);
    let states = &reference.states;

    let mut browser = Browser::open(&chromium, dir.path(), &format!("file://{}", page.display()));
    wait_until_ready(&mut browser);

    let first = shown(&mut browser);
    assert_eq!(
        first.spans,
        text.chars().count(),
        "one element per character"
    );
    assert_eq!(first.text, text, "every character shown as itself");
    assert_colours_follow(&first, states);

    // Choose the first ranked entry that is another unit.
    let ranked = browser.evaluate(
        r##"Array.from(document.querySelectorAll("#ranked button.pick")).map((b) => b.textContent)"##,
    );
    let current = format!("layer {} {} {}", first.layer, first.state, first.unit);
    let rank = ranked
        .as_array()
        .unwrap()
        .iter()
        .position(|label| label.as_str() != Some(&current))
        .expect("the ranked list names more than one unit");
    browser.mouse(&format!("#ranked button[data-rank='{rank}']"), true);
    let second = shown(&mut browser);
    assert_eq!(
        format!("layer {} {} {}", second.layer, second.state, second.unit),
        ranked[rank].as_str().unwrap(),
        "the controls show the chosen unit"
    );
    let changed = (first.colours.iter())
        .zip(&second.colours)
        .filter(|(a, b)| a != b)
        .count();
    assert!(
        changed > first.spans / 4,
        "only {changed} characters changed colour"
    );
    assert_colours_follow(&second, states);

    // Hovering a character shows the top 5 next characters and the loss of the one that came.
    browser.mouse("#text span[data-i='5']", false);
    let info = browser.evaluate(
        r##"({ text: document.getElementById("info").textContent,
             rows: document.querySelectorAll("#info table tr").length })"##,
    );
    let info_text = info["text"].as_str().unwrap();
    assert_eq!(info["rows"], 5, "{info_text}");
    assert!(
        info_text.contains("position 5") && info_text.contains("Then came"),
        "{info_text}"
    );
    // The five rows are the five most likely characters after position 5, most likely first,
    // and the loss is the next character's, as the reference logits give them.
    let vocab = ember_data::Vocab::load(&run_dir.join("vocab.json")).unwrap();
    let logits = &reference.logits[5];
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let expected_top: Vec<String> = order[..5]
        .iter()
        .map(|&id| vocab.chars()[id].to_string())
        .collect();
    let shown_top = browser.evaluate(
        r##"Array.from(document.querySelectorAll("#info table tr")).map((r) => r.dataset.char)"##,
    );
    assert_eq!(shown_top, json!(expected_top), "{info_text}");
    let chars: Vec<char> = text.chars().collect();
    let next_loss = loss_of(logits, vocab.id(chars[6]).unwrap() as usize);
    let shown_loss: f64 = info_text
        .rsplit("loss ")
        .next()
        .and_then(|rest| rest.split(' ').next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("no loss in {info_text}"));
    assert!(
        (shown_loss - next_loss).abs() < 1e-3,
        "wants loss {next_loss:.3}: {info_text}"
    );

    // Keyboard: a clicked character takes the focus, the arrow keys move it.
    browser.mouse("#text span[data-i='5']", true);
    browser.page(
        "Input.dispatchKeyEvent",
        json!({ "type": "keyDown", "key": "ArrowRight", "code": "ArrowRight", "windowsVirtualKeyCode": 39 }),
    );
    let focused = browser.evaluate(
        r##"({ i: document.activeElement.dataset.i, info: document.getElementById("info").textContent })"##,
    );
    assert_eq!(focused["i"], "6", "{focused}");
    assert!(
        focused["info"].as_str().unwrap().contains("position 6"),
        "{focused}"
    );

    // The loss view: every character after the first coloured by the loss of predicting it.
    browser.mouse("input[name=view][value=loss]", true);
    let by_loss = shown(&mut browser);
    assert_eq!(
        by_loss.colours[0],
        [0, 0, 0],
        "the first character has no loss: transparent"
    );
    for t in 1..chars.len() {
        let loss = loss_of(
            &reference.logits[t - 1],
            vocab.id(chars[t]).unwrap() as usize,
        );
        let expected = loss_colour(loss);
        for channel in 0..3 {
            let gap = (expected[channel] as i32 - by_loss.colours[t][channel] as i32).abs();
            // The page rounds losses to 3 decimals: at most a unit of rounding per channel.
            assert!(
                gap <= 1,
                "character {t}: loss {loss:.3} wants {expected:?}, the page shows {:?}",
                by_loss.colours[t]
            );
        }
    }

    // A screenshot through DevTools, decoded by the browser's own PNG decoder on a canvas.
    browser.evaluate("window.scrollTo(0, 0)");
    let png = browser.page("Page.captureScreenshot", json!({ "format": "png" }));
    let png = png["data"].as_str().unwrap();
    let pixels = browser.evaluate(&format!(
        r##"(async () => {{
            const image = new Image();
            image.src = "data:image/png;base64,{png}";
            await image.decode();
            const canvas = document.createElement("canvas");
            canvas.width = image.width;
            canvas.height = image.height;
            const context = canvas.getContext("2d");
            context.drawImage(image, 0, 0);
            const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
            const colours = new Set();
            let drawn = 0;
            for (let i = 0; i < data.length; i += 4) {{
                const rgb = (data[i] << 16) | (data[i + 1] << 8) | data[i + 2];
                colours.add(rgb);
                if (rgb !== 0xffffff && rgb !== 0xfafafa) drawn++;
            }}
            return {{ width: canvas.width, height: canvas.height, colours: colours.size, drawn }};
        }})()"##
    ));
    let total = pixels["width"].as_u64().unwrap() * pixels["height"].as_u64().unwrap();
    let drawn = pixels["drawn"].as_u64().unwrap();
    assert!(
        total > 0 && pixels["colours"].as_u64().unwrap() > 50 && drawn * 10 > total,
        "the screenshot looks blank: {pixels}"
    );
}

/// The page without a browser: its header, the cut note of `--chars`, the loss on the text
/// equal to `ember eval`'s, and the output written as a regular file.
#[test]
fn inspect_writes_a_page_with_header_and_cut_note() {
    let dir = tempfile::tempdir().unwrap();
    let (run_dir, corpus_path) = trained_run(dir.path());
    let output = run_ok(
        ember()
            .args(["inspect", "--run"])
            .arg(&run_dir)
            .arg("--text")
            .arg(&corpus_path)
            .args(["--chars", "300"]),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let page_path = run_dir.join("inspect.html");
    assert!(
        stdout.contains("inspect.html")
            && stdout.contains(&format!(
                "300 characters of {}",
                group_digits(corpus().chars().count())
            )),
        "{stdout}"
    );
    let page = std::fs::read_to_string(&page_path).unwrap();
    assert!(std::fs::symlink_metadata(&page_path).unwrap().is_file());
    let data = page_data(&page);
    let total = corpus().chars().count();
    let cut = data["cut"].as_str().unwrap().replace(',', "");
    assert!(
        cut.contains(&format!("holds {total} characters")) && cut.contains("the first 300"),
        "{cut}"
    );
    assert_eq!(data["text"].as_str().unwrap().chars().count(), 300);
    // 2 layers of the smoke LSTM, hidden and cell, 32 units of 300 values each.
    assert_eq!(data["traces"].as_array().unwrap().len(), 4);
    assert_eq!(data["traces"][3]["data"].as_str().unwrap().len(), 32 * 300);
    // Self-contained: nothing to fetch (the one `http://` is the SVG namespace, not an address).
    for fetch in ["https://", " src=", " href=", "<link", "url(", "@import"] {
        assert!(!page.contains(fetch), "the page fetches something: {fetch}");
    }

    // The mean of the page's losses is `ember eval`'s loss on the same 300 characters.
    let cut_path = dir.path().join("cut.txt");
    std::fs::write(&cut_path, corpus().chars().take(300).collect::<String>()).unwrap();
    let eval = run_ok(
        ember()
            .args(["eval", "--run"])
            .arg(&run_dir)
            .arg("--text")
            .arg(&cut_path),
    );
    let eval: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    let losses: Vec<f64> = data["losses"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_f64())
        .collect();
    assert_eq!(losses.len(), 299);
    let mean = losses.iter().sum::<f64>() / losses.len() as f64;
    // The page rounds each loss to 3 decimals: the mean moves by at most 5e-4.
    assert!(
        (mean - eval["loss"].as_f64().unwrap()).abs() < 1e-3,
        "page {mean}, eval {}",
        eval["loss"]
    );
}

/// A GRU has no cell state: the page offers hidden states only, and still ranks its units.
#[test]
fn a_gru_page_has_hidden_states_only() {
    let dir = tempfile::tempdir().unwrap();
    let (run_dir, corpus_path) = trained_run_with(dir.path(), &["model.cell=gru"]);
    let page = dir.path().join("gru.html");
    run_ok(
        ember()
            .args(["inspect", "--run"])
            .arg(&run_dir)
            .arg("--text")
            .arg(&corpus_path)
            .args(["--chars", "400", "--out"])
            .arg(&page),
    );
    let data = page_data(&std::fs::read_to_string(&page).unwrap());
    assert_eq!(data["state_names"], json!(["hidden"]));
    let traces = data["traces"].as_array().unwrap();
    assert_eq!(traces.len(), 2, "one hidden state per layer");
    assert!(traces.iter().all(|t| t["state"] == "hidden"));
    assert!(!data["ranked"].as_array().unwrap().is_empty());
}

/// Bad input: exit statuses of README's table, and messages that name what is wrong.
#[test]
fn inspect_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let (run_dir, corpus_path) = trained_run(dir.path());
    let inspect = |run: &Path, text: &Path, extra: &[&str]| {
        let mut command = ember();
        command
            .args(["inspect", "--run"])
            .arg(run)
            .arg("--text")
            .arg(text)
            .args(extra);
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(!stderr.contains("panicked"), "{stderr}");
        (output.status.code(), stderr)
    };
    let (status, stderr) = inspect(&dir.path().join("nothing"), &corpus_path, &[]);
    assert_eq!(status, Some(4), "{stderr}");
    assert!(stderr.contains("no run"), "{stderr}");
    let (status, stderr) = inspect(&run_dir, &dir.path().join("missing.txt"), &[]);
    assert_eq!(status, Some(3), "{stderr}");
    assert!(stderr.contains("missing.txt"), "{stderr}");
    let foreign = dir.path().join("foreign.txt");
    std::fs::write(&foreign, "She said\nabc \u{1F600} x").unwrap();
    let (status, stderr) = inspect(&run_dir, &foreign, &[]);
    assert_eq!(status, Some(3), "{stderr}");
    assert!(
        stderr.contains("foreign.txt:2") && stderr.contains("column 5"),
        "{stderr}"
    );
    let (status, stderr) = inspect(&run_dir, &corpus_path, &["--chars", "0"]);
    assert_eq!(status, Some(2), "{stderr}");
    let out = dir.path().join("no-such-dir/page.html");
    let (status, stderr) = inspect(&run_dir, &corpus_path, &["--out", out.to_str().unwrap()]);
    assert_eq!(status, Some(5), "{stderr}");
    assert!(stderr.contains("no-such-dir"), "{stderr}");
}

//! `ember bench` prints one well-formed JSON line per case. This checks the report, not the
//! speed: figures are read from `ember bench` itself, never asserted by a timed test.

mod common;

use common::*;

/// The JSON lines of `ember bench` with `args`, by case name, in order.
fn bench_lines(args: &[&str]) -> Vec<(String, serde_json::Value)> {
    let output = run_ok(ember().arg("bench").args(args));
    let stdout = String::from_utf8(output.stdout).unwrap();
    stdout
        .lines()
        .map(|line| {
            let report: serde_json::Value = serde_json::from_str(line).unwrap();
            (report["case"].as_str().unwrap().to_string(), report)
        })
        .collect()
}

/// Asserts that every one of `keys` is a positive number in `report`.
fn assert_positive(report: &serde_json::Value, keys: &[&str]) {
    for key in keys {
        assert!(
            report[key].as_f64().is_some_and(|v| v > 0.0),
            "{key}: {report}"
        );
    }
}

/// Asserts the sizes of a case with 2 layers of 128 units on 32 x 64 characters.
fn assert_sizes_2x128_b32_s64(report: &serde_json::Value) {
    for (key, value) in [
        ("num_layers", 2),
        ("d_hidden", 128),
        ("batch_size", 32),
        ("seq_len", 64),
    ] {
        assert_eq!(report[key].as_u64(), Some(value), "{key}");
    }
}

fn assert_close(actual: f64, expected: f64, tolerance: f64, what: &str) {
    assert!(
        (actual - expected).abs() <= tolerance,
        "{what}: {actual} vs {expected}"
    );
}

#[test]
fn bench_prints_one_json_line_per_case() {
    let lines = bench_lines(&["--filter", "rnn-2x128", "--seconds", "0.2"]);
    let names: Vec<&str> = lines.iter().map(|(name, _)| name.as_str()).collect();
    // The language-model case, then the library case of the same model.
    assert_eq!(names, ["rnn-2x128-b32-s64", "lib-rnn-2x128-b32-s64"]);
    let report = &lines[0].1;
    assert_positive(
        report,
        &[
            "train_chars_per_sec",
            "sample_chars_per_sec",
            "peak_rss_mb",
            "pytorch_train_chars_per_sec",
            "ratio_to_pytorch_train",
            "sample_read_gb_per_sec",
            "sample_bound_chars_per_sec",
        ],
    );
    assert_sizes_2x128_b32_s64(report);
    // W_hh of both layers (128 x 128), the top layer's W_ih, one projected row, and the head
    // (128 x 65 and its bias), in f32.
    let weight_bytes = (2 * 128 * 128 + 128 * 128 + 128 + 129 * 65) * 4;
    assert_eq!(
        report["sample_weight_mb"].as_f64(),
        Some((weight_bytes as f64 / 1e3).round() / 1e3)
    );
    let fraction = report["sample_chars_per_sec"].as_f64().unwrap()
        / report["sample_bound_chars_per_sec"].as_f64().unwrap();
    let reported = report["sample_fraction_of_bound"].as_f64().unwrap();
    assert!(
        (reported - fraction).abs() <= 5e-4,
        "{reported} vs {fraction}"
    );
    // Only LSTM cases have the burn::nn::Lstm baseline.
    assert!(report["baseline_burn_lstm_train_chars_per_sec"].is_null());

    check_library_report(&lines[1].1);

    let stderr = run_err(ember().args(["bench", "--filter", "transformer"]));
    assert!(stderr.contains("transformer"), "{stderr}");
    let stderr = run_err(ember().args(["bench", "--seconds", "0"]));
    assert!(stderr.contains("--seconds"), "{stderr}");
}

/// The library case `lib-rnn-2x128-b32-s64`'s fields.
fn check_library_report(report: &serde_json::Value) {
    assert_eq!(report["model"], "stacked");
    assert_eq!(report["cell"], "rnn");
    assert_sizes_2x128_b32_s64(report);
    assert_eq!(report["dropout"].as_f64(), Some(0.0));
    assert!(
        report["threads"].as_u64().is_some_and(|t| t >= 1),
        "{report}"
    );
    assert_positive(
        report,
        &[
            "train_steps_per_sec",
            "train_chars_per_sec",
            "train_gflop_per_sec",
            "peak_gflop_per_sec",
            "fraction_of_peak",
            "peak_rss_mb",
        ],
    );
    assert!(report["train_examples_per_sec"].is_null(), "{report}");
    // Forward products of 32 x 64 = 2048 characters: layer 0 reads 64 inputs and 128 hidden
    // into 128 units, layer 1 reads 128 + 128, the head 128 into 65 characters; backward twice
    // the forward, so 3 * 2048 * 2 * (192 * 128 + 256 * 128 + 128 * 65) FLOPs.
    let gflop = 3.0 * 2048.0 * 2.0 * (192.0 * 128.0 + 256.0 * 128.0 + 128.0 * 65.0) / 1e9;
    assert_close(
        report["gflop_per_step"].as_f64().unwrap(),
        gflop,
        1e-12,
        "gflop_per_step",
    );
    let steps = report["train_steps_per_sec"].as_f64().unwrap();
    // The steps are rounded to 3 decimals, the derived figures computed before rounding.
    let chars = report["train_chars_per_sec"].as_f64().unwrap();
    assert_close(
        chars,
        steps * 2048.0,
        2048.0 * 5e-4 + 0.5,
        "train_chars_per_sec",
    );
    let achieved = report["train_gflop_per_sec"].as_f64().unwrap();
    assert_close(
        achieved,
        steps * gflop,
        gflop * 5e-4 + 5e-4,
        "train_gflop_per_sec",
    );
    let peak = report["peak_gflop_per_sec"].as_f64().unwrap();
    let fraction = report["fraction_of_peak"].as_f64().unwrap();
    assert_close(fraction, achieved / peak, 1e-3, "fraction_of_peak");
}

/// The classifier and seq2seq cases train (their models, batches and losses fit together) and
/// count their FLOPs over real steps only.
#[test]
fn bench_task_cases_report_examples_per_second() {
    for (filter, name, model) in [
        (
            "lib-classifier",
            "lib-classifier-gru-1x96-b64-s24",
            "classifier",
        ),
        ("lib-seq2seq", "lib-seq2seq-gru-1x96-b64-s10", "seq2seq"),
    ] {
        let lines = bench_lines(&["--filter", filter, "--seconds", "0.2"]);
        assert_eq!(lines.len(), 1, "{lines:?}");
        let (case, report) = &lines[0];
        assert_eq!(case, name);
        assert_eq!(report["model"], model);
        assert_eq!(report["batch_size"].as_u64(), Some(64));
        assert!(report["train_chars_per_sec"].is_null(), "{report}");
        let steps = report["train_steps_per_sec"].as_f64().unwrap();
        let examples = report["train_examples_per_sec"].as_f64().unwrap();
        assert!(steps > 0.0, "{report}");
        assert_close(
            examples,
            steps * 64.0,
            64.0 * 5e-4 + 0.5,
            "train_examples_per_sec",
        );
    }
}

/// Writes an executable stand-in for a Python interpreter: a shell script that swallows the
/// baseline script on its input, checks the case's arguments, and answers `body`.
fn stand_in(dir: &std::path::Path, name: &str, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\ncat > /dev/null\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// `--pytorch` runs the baseline on the same case and appends its figures and Ember's ratios to
/// the case's line; a failing interpreter is an error naming it and the case.
#[test]
fn bench_appends_pytorch_measured_in_the_same_run() {
    let dir = tempfile::tempdir().unwrap();
    // The library case asks for training alone, on the threads Ember's pool has; the stand-in
    // answers with those threads and 0.5 steps per second.
    let python = stand_in(
        dir.path(),
        "python",
        r#"case "$*" in *"--cell rnn --layers 2 --hidden 128 --batch 32 --seq 64"*) ;; *) exit 3 ;; esac
case "$*" in
*"--model char "*"--dropout 0 --threads "*" --no-sample"*)
  threads=$(echo "$*" | sed 's/.*--threads \([0-9]*\).*/\1/')
  echo "{\"torch\": \"stand-in\", \"threads\": $threads, \"train_steps_per_sec\": 0.5, \"train_chars_per_sec\": 1024, \"peak_rss_mb\": 400.0}" ;;
*"--model"*) exit 4 ;;
*) echo '{"torch": "stand-in", "threads": 2, "train_chars_per_sec": 1000, "sample_chars_per_sec": 10, "peak_rss_mb": 500.0}' ;;
esac"#,
    );
    let output = run_ok(
        ember()
            .args(["bench", "--filter", "rnn-2x128", "--seconds", "0.2"])
            .arg("--pytorch")
            .arg(&python),
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let report: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(report["case"], "rnn-2x128-b32-s64");
    assert_eq!(report["pytorch_measured_version"], "stand-in");
    assert_eq!(report["pytorch_measured_train_chars_per_sec"], 1000.0);
    let ours = report["train_chars_per_sec"].as_f64().unwrap();
    let ratio = report["ratio_to_pytorch_measured_train"].as_f64().unwrap();
    assert!((ratio - ours / 1000.0).abs() < 1e-3, "{report}");
    let rss = report["peak_rss_mb"].as_f64().unwrap();
    let rss_ratio = report["ratio_to_pytorch_measured_rss"].as_f64().unwrap();
    assert!((rss_ratio - rss / 500.0).abs() < 1e-3, "{report}");

    let report: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(report["case"], "lib-rnn-2x128-b32-s64");
    assert_eq!(report["pytorch_measured_version"], "stand-in");
    assert_eq!(report["pytorch_measured_threads"], report["threads"]);
    assert_eq!(report["pytorch_measured_train_steps_per_sec"], 0.5);
    assert_eq!(report["pytorch_measured_train_chars_per_sec"], 1024.0);
    assert!(report["pytorch_measured_train_examples_per_sec"].is_null());
    let gflop = report["gflop_per_step"].as_f64().unwrap();
    let torch_gflop = report["pytorch_measured_train_gflop_per_sec"]
        .as_f64()
        .unwrap();
    assert_close(torch_gflop, gflop * 0.5, 5e-4, "pytorch GFLOP/s");
    let steps = report["train_steps_per_sec"].as_f64().unwrap();
    let ratio = report["ratio_to_pytorch_measured_train"].as_f64().unwrap();
    assert_close(ratio, steps / 0.5, 1e-3, "ratio to PyTorch");
    let rss = report["peak_rss_mb"].as_f64().unwrap();
    let rss_ratio = report["ratio_to_pytorch_measured_rss"].as_f64().unwrap();
    assert_close(rss_ratio, rss / 400.0, 1e-3, "memory ratio to PyTorch");

    let broken = stand_in(
        dir.path(),
        "no-torch",
        "echo 'No module named torch' >&2; exit 1",
    );
    let stderr = run_err(
        ember()
            .args(["bench", "--filter", "rnn-2x128", "--seconds", "0.2"])
            .arg("--pytorch")
            .arg(&broken),
    );
    assert!(
        stderr.contains("no-torch") && stderr.contains("rnn-2x128-b32-s64"),
        "{stderr}"
    );
    assert!(stderr.contains("No module named torch"), "{stderr}");
}

/// `--rounds` measures each case and its baseline that many times in turn and reports the round
/// of the median ratio, with every round's ratio; it needs `--pytorch` and at least one round.
#[test]
fn bench_rounds_report_the_median_round() {
    let dir = tempfile::tempdir().unwrap();
    let counter = dir.path().join("calls");
    // The language-model case's three baselines answer 1000, 100,000 and 10,000 chars/s in
    // turn, so the median ratio is the third round's unless Ember's own rate moves tenfold
    // between rounds (0.2 s rounds beside other tests moved it threefold).
    let python = stand_in(
        dir.path(),
        "python",
        &format!(
            r#"n=$(cat {counter} 2>/dev/null || echo 0); n=$((n + 1)); echo $n > {counter}
case "$*" in
*"--no-sample"*)
  threads=$(echo "$*" | sed 's/.*--threads \([0-9]*\).*/\1/')
  echo "{{\"torch\": \"stand-in\", \"threads\": $threads, \"train_steps_per_sec\": 0.5, \"train_chars_per_sec\": 1024, \"peak_rss_mb\": 400.0}}" ;;
*)
  case $n in 2) rate=100000 ;; 3) rate=10000 ;; *) rate=1000 ;; esac
  echo "{{\"torch\": \"stand-in\", \"threads\": 2, \"train_chars_per_sec\": $rate, \"sample_chars_per_sec\": 10, \"peak_rss_mb\": 500.0}}" ;;
esac"#,
            counter = counter.display()
        ),
    );
    let output = run_ok(
        ember()
            .args(["bench", "--filter", "rnn-2x128-b32", "--seconds", "0.2"])
            .args(["--rounds", "3", "--pytorch"])
            .arg(&python),
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "one line per case: {stdout}");
    let report: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(report["case"], "rnn-2x128-b32-s64");
    assert_eq!(report["rounds"], 3);
    let ratios: Vec<f64> = report["ratio_to_pytorch_measured_train_rounds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_f64().unwrap())
        .collect();
    assert_eq!(ratios.len(), 3, "{report}");
    assert!(ratios[1] < ratios[2] && ratios[2] < ratios[0], "{report}");
    assert_eq!(report["pytorch_measured_train_chars_per_sec"], 10000.0);
    assert_eq!(report["ratio_to_pytorch_measured_train"], ratios[2]);
    let library: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(library["case"], "lib-rnn-2x128-b32-s64");
    assert_eq!(library["rounds"], 3);

    for args in [
        &["--rounds", "2"][..],
        &["--rounds", "0", "--pytorch", "python3"][..],
    ] {
        let stderr = run_err(ember().args(["bench", "--filter", "rnn-2x128"]).args(args));
        assert!(
            stderr.contains("--rounds") || stderr.contains("--pytorch"),
            "{stderr}"
        );
    }
}

//! `ember bench` prints one well-formed JSON line per case. This checks the report, not the
//! speed: figures are read from `ember bench` itself, never asserted by a timed test.

mod common;

use common::*;

#[test]
fn bench_prints_one_json_line_per_case() {
    let output = run_ok(ember().args(["bench", "--filter", "rnn-2x128", "--seconds", "0.2"]));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let report: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(report["case"], "rnn-2x128-b32-s64");
    for key in [
        "train_chars_per_sec",
        "sample_chars_per_sec",
        "peak_rss_mb",
        "pytorch_train_chars_per_sec",
        "ratio_to_pytorch_train",
        "sample_read_gb_per_sec",
        "sample_bound_chars_per_sec",
    ] {
        assert!(
            report[key].as_f64().is_some_and(|v| v > 0.0),
            "{key}: {report}"
        );
    }
    for (key, value) in [
        ("num_layers", 2),
        ("d_hidden", 128),
        ("batch_size", 32),
        ("seq_len", 64),
    ] {
        assert_eq!(report[key].as_u64(), Some(value), "{key}");
    }
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

    let stderr = run_err(ember().args(["bench", "--filter", "transformer"]));
    assert!(stderr.contains("transformer"), "{stderr}");
    let stderr = run_err(ember().args(["bench", "--seconds", "0"]));
    assert!(stderr.contains("--seconds"), "{stderr}");
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
    let python = stand_in(
        dir.path(),
        "python",
        r#"case "$*" in *"--cell rnn --layers 2 --hidden 128 --batch 32 --seq 64"*) ;; *) exit 3 ;; esac
echo '{"torch": "stand-in", "threads": 2, "train_chars_per_sec": 1000, "sample_chars_per_sec": 10, "peak_rss_mb": 500.0}'"#,
    );
    let output = run_ok(
        ember()
            .args(["bench", "--filter", "rnn-2x128", "--seconds", "0.2"])
            .arg("--pytorch")
            .arg(&python),
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["case"], "rnn-2x128-b32-s64");
    assert_eq!(report["pytorch_measured_version"], "stand-in");
    assert_eq!(report["pytorch_measured_train_chars_per_sec"], 1000.0);
    let ours = report["train_chars_per_sec"].as_f64().unwrap();
    let ratio = report["ratio_to_pytorch_measured_train"].as_f64().unwrap();
    assert!((ratio - ours / 1000.0).abs() < 1e-3, "{report}");
    let rss = report["peak_rss_mb"].as_f64().unwrap();
    let rss_ratio = report["ratio_to_pytorch_measured_rss"].as_f64().unwrap();
    assert!((rss_ratio - rss / 500.0).abs() < 1e-3, "{report}");

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

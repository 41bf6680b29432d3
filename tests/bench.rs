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
    // Only LSTM cases have the burn::nn::Lstm baseline.
    assert!(report["baseline_burn_lstm_train_chars_per_sec"].is_null());

    let stderr = run_err(ember().args(["bench", "--filter", "transformer"]));
    assert!(stderr.contains("transformer"), "{stderr}");
    let stderr = run_err(ember().args(["bench", "--seconds", "0"]));
    assert!(stderr.contains("--seconds"), "{stderr}");
}

//! `ember import-torch` and `ember export-torch` on the PyTorch fixtures: an imported model
//! evaluates to the loss PyTorch's own logits give, and a round trip changes no weight.

mod common;

use std::path::Path;

use common::*;
use safetensors::SafeTensors;

fn f32s(tensors: &SafeTensors, key: &str) -> Vec<f32> {
    let view = tensors.tensor(key).unwrap();
    view.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn i64s(tensors: &SafeTensors, key: &str) -> Vec<i64> {
    let view = tensors.tensor(key).unwrap();
    view.data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// The mean cross-entropy of the fixture's PyTorch logits over the 20 positions of batch row 0,
/// in f64 from the f32 logits.
fn pytorch_row0_loss(name: &str) -> f64 {
    let bytes = std::fs::read(fixtures().join(format!("{name}.expected.safetensors"))).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let logits = f32s(&tensors, "logits");
    let targets = i64s(&tensors, "target");
    let (steps, vocab) = (20, 65);
    let mut total = 0.0;
    for t in 0..steps {
        let row = &logits[t * vocab..(t + 1) * vocab];
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let lse = max
            + row
                .iter()
                .map(|&v| (v as f64 - max).exp())
                .sum::<f64>()
                .ln();
        total += lse - row[targets[t] as usize] as f64;
    }
    total / steps as f64
}

fn import(state_dict: &Path, cell: &str, out: &Path) -> std::process::Output {
    ember()
        .args(["import-torch", "--state-dict"])
        .arg(state_dict)
        .args(["--cell", cell, "--vocab-from"])
        .arg(repo("data/tinyshakespeare.txt"))
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

#[test]
fn imported_fixtures_evaluate_to_pytorchs_loss_and_export_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    // Batch row 0 of the fixtures: its 20 inputs and the character after them (fixtures README).
    let text = dir.path().join("row0.txt");
    std::fs::write(&text, "?\n\nGREMIO:\nGood morro").unwrap();
    for (name, extension) in [("rnn", "pt"), ("lstm", "safetensors"), ("gru", "pt")] {
        let run = dir.path().join(name);
        let output = import(&fixtures().join(format!("{name}.{extension}")), name, &run);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );

        let output = run_ok(
            ember()
                .args(["eval", "--run"])
                .arg(&run)
                .arg("--text")
                .arg(&text),
        );
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let loss = report["loss"].as_f64().unwrap();
        let expected = pytorch_row0_loss(name);
        // f32 arithmetic in both; the fixtures README allows 1e-4 on logits, less on a mean.
        assert!(
            (loss - expected).abs() < 1e-4,
            "{name}: ember {loss}, PyTorch {expected}"
        );
        assert_eq!(report["chars"].as_u64(), Some(20));

        let exported = dir.path().join(format!("{name}.safetensors"));
        run_ok(
            ember()
                .args(["export-torch", "--run"])
                .arg(&run)
                .arg("--out")
                .arg(&exported),
        );
        let original_bytes = std::fs::read(fixtures().join(format!("{name}.safetensors"))).unwrap();
        let exported_bytes = std::fs::read(&exported).unwrap();
        let original = SafeTensors::deserialize(&original_bytes).unwrap();
        let round_trip = SafeTensors::deserialize(&exported_bytes).unwrap();
        let mut keys: Vec<String> = original.names().into_iter().map(str::to_string).collect();
        let mut exported_keys: Vec<String> =
            round_trip.names().into_iter().map(str::to_string).collect();
        keys.sort();
        exported_keys.sort();
        // The same keys, so PyTorch's strict load_state_dict takes the file.
        assert_eq!(keys, exported_keys, "{name}");
        for key in &keys {
            assert_eq!(
                original.tensor(key).unwrap().shape(),
                round_trip.tensor(key).unwrap().shape(),
                "{name}: {key}"
            );
            assert_eq!(
                f32s(&original, key),
                f32s(&round_trip, key),
                "{name}: {key}"
            );
        }
    }
}

#[test]
fn import_errors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let lstm = fixtures().join("lstm.safetensors");
    // The wrong cell: the fused gate rows do not fit.
    let output = import(&lstm, "gru", &dir.path().join("wrong"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("rnn.weight_ih_l0"),
        "{stderr}"
    );
    assert!(!dir.path().join("wrong/config.toml").exists());

    // A vocabulary of another size.
    let small = dir.path().join("small.txt");
    std::fs::write(&small, "abc abc").unwrap();
    let stderr = run_err(
        ember()
            .args(["import-torch", "--state-dict"])
            .arg(&lstm)
            .args(["--cell", "lstm", "--vocab-from"])
            .arg(&small)
            .arg("--out")
            .arg(dir.path().join("small")),
    );
    assert!(
        stderr.contains("65") && stderr.contains("small.txt"),
        "{stderr}"
    );

    // Never over an existing run.
    let run = dir.path().join("run");
    assert!(import(&lstm, "lstm", &run).status.success());
    let output = import(&lstm, "lstm", &run);
    assert!(!output.status.success());
    let stderr = run_err(
        ember()
            .args(["import-torch", "--state-dict"])
            .arg(dir.path().join("missing.pt"))
            .args(["--cell", "lstm", "--vocab-from"])
            .arg(&small)
            .arg("--out")
            .arg(dir.path().join("m")),
    );
    assert!(stderr.contains("missing.pt"), "{stderr}");
}

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
    // The wrong cell: the tensors say which it is.
    let output = import(&lstm, "gru", &dir.path().join("wrong"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.code() == Some(3)
            && stderr.contains("rnn.weight_hh_l0")
            && stderr.contains("holds a lstm")
            && stderr.contains("gru was asked for"),
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

/// The layout fixture: `encoder` / `rnn` / `decoder` as pytorch/examples' `word_language_model`
/// names them (tests/fixtures/torch-layouts/README.md).
fn wlm(extension: &str) -> std::path::PathBuf {
    layout_fixtures().join(format!("wlm-lstm.{extension}"))
}

fn import_with(state_dict: &Path, out: &Path, flags: &[&str]) -> std::process::Command {
    let mut command = ember();
    command
        .args(["import-torch", "--state-dict"])
        .arg(state_dict)
        .args(flags)
        .arg("--vocab-from")
        .arg(repo("data/tinyshakespeare.txt"))
        .arg("--out")
        .arg(out);
    command
}

fn greedy(run: &Path, prime: &str, length: usize) -> String {
    let output = run_ok(ember().args(["sample", "--run"]).arg(run).args([
        "--prime",
        prime,
        "--length",
        &length.to_string(),
        "--argmax",
    ]));
    String::from_utf8(output.stdout).unwrap()
}

/// The `word_language_model` layout imports with no flag (cell, sizes and layout from the
/// tensors), and its greedy continuation of the prime is PyTorch's, character for character.
#[test]
fn the_word_language_model_layout_imports_and_samples_as_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(layout_fixtures().join("wlm-lstm.json")).unwrap(),
    )
    .unwrap();
    let expected = reference["greedy"].as_str().unwrap();
    let prime = reference["prime"].as_str().unwrap();
    for extension in ["pt", "safetensors"] {
        let run = dir.path().join(extension);
        let output = run_ok(&mut import_with(&wlm(extension), &run, &[]));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            stdout.contains("2-layer lstm of hidden size 96")
                && stdout.contains("word-language-model layout"),
            "{stdout}"
        );
        let length = expected.chars().count() - prime.chars().count();
        let sample = greedy(&run, prime, length);
        assert_eq!(sample.trim_end_matches('\n'), expected, "{extension}");
    }
    // Given, the cell must be the tensors' one.
    run_ok(&mut import_with(
        &wlm("pt"),
        &dir.path().join("cell"),
        &["--cell", "lstm"],
    ));
}

/// A layout nobody named: the missing-key error lists the keys and the renames that fit, and
/// those renames import it.
#[test]
fn a_missing_key_error_suggests_the_rename_that_fits() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(wlm("safetensors")).unwrap();
    let original = SafeTensors::deserialize(&bytes).unwrap();
    // The names of a hand-written char-rnn port: `embed`, `lstm`, `fc`, under DataParallel's
    // `module.` prefix.
    let renamed: Vec<(String, Vec<u8>, Vec<usize>)> = original
        .names()
        .into_iter()
        .map(|key| {
            let new = key
                .replace("encoder.", "embed.")
                .replace("rnn.", "lstm.")
                .replace("decoder.", "fc.");
            let bytes = f32s(&original, key)
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            let shape = original.tensor(key).unwrap().shape().to_vec();
            (format!("module.{new}"), bytes, shape)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = renamed
        .iter()
        .map(|(key, bytes, shape)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .unwrap();
            (key.clone(), view)
        })
        .collect();
    let port = dir.path().join("port.safetensors");
    std::fs::write(&port, safetensors::serialize(views, None).unwrap()).unwrap();

    let out = dir.path().join("port");
    let stderr = run_err(&mut import_with(&port, &out, &[]));
    for expected in [
        "missing key `rnn.weight_hh_l0`",
        "module.fc.weight",
        "module.lstm.weight_ih_l0",
        "--rename module.lstm=rnn --rename module.fc=head --rename module.embed=embedding",
    ] {
        assert!(stderr.contains(expected), "{expected:?} not in {stderr}");
    }
    assert!(!out.exists());
    // Dropping the prefix leaves the word_language_model's own names less two.
    let stderr = run_err(&mut import_with(&port, &out, &["--rename", "module="]));
    assert!(
        stderr.contains("--rename lstm=rnn --rename fc=head --rename embed=embedding"),
        "{stderr}"
    );
    run_ok(&mut import_with(
        &port,
        &out,
        &[
            "--rename",
            "module.lstm=rnn",
            "--rename",
            "module.fc=head",
            "--rename",
            "module.embed=embedding",
        ],
    ));
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(layout_fixtures().join("wlm-lstm.json")).unwrap(),
    )
    .unwrap();
    let expected = reference["greedy"].as_str().unwrap();
    assert_eq!(greedy(&out, "ROMEO:", 20), format!("{}\n", &expected[..26]));
}

/// `export-torch --layout` writes either layout: the word_language_model one holds exactly the
/// fixture's keys and tensors, and a one-hot model gets the identity as its `encoder`.
#[test]
fn export_writes_either_layout() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("wlm");
    run_ok(&mut import_with(&wlm("safetensors"), &run, &[]));
    let original_bytes = std::fs::read(wlm("safetensors")).unwrap();
    let original = SafeTensors::deserialize(&original_bytes).unwrap();
    for (layout, head) in [("word-language-model", "decoder"), ("reference", "head")] {
        let out = dir.path().join(format!("{layout}.safetensors"));
        let output = run_ok(
            ember()
                .args(["export-torch", "--run"])
                .arg(&run)
                .args(["--layout", layout, "--out"])
                .arg(&out),
        );
        assert!(String::from_utf8_lossy(&output.stdout).contains(layout));
        let bytes = std::fs::read(&out).unwrap();
        let exported = SafeTensors::deserialize(&bytes).unwrap();
        let mut keys: Vec<&str> = exported.names();
        keys.sort_unstable();
        assert!(
            keys.contains(&format!("{head}.weight").as_str()),
            "{keys:?}"
        );
        if layout == "word-language-model" {
            let mut expected: Vec<&str> = original.names();
            expected.sort_unstable();
            assert_eq!(keys, expected);
            for key in keys {
                assert_eq!(f32s(&original, key), f32s(&exported, key), "{key}");
            }
        }
    }

    // One-hot: the identity embedding reads row x as the one-hot vector of x.
    let one_hot = dir.path().join("one-hot");
    run_ok(&mut train(&one_hot, &["model.d_embed=0", "train.steps=2"]));
    let out = dir.path().join("one-hot.safetensors");
    run_ok(
        ember()
            .args(["export-torch", "--run"])
            .arg(&one_hot)
            .args(["--layout", "word-language-model", "--out"])
            .arg(&out),
    );
    let bytes = std::fs::read(&out).unwrap();
    let exported = SafeTensors::deserialize(&bytes).unwrap();
    let encoder = exported.tensor("encoder.weight").unwrap();
    assert_eq!(encoder.shape(), [65, 65]);
    let values = f32s(&exported, "encoder.weight");
    for (i, value) in values.iter().enumerate() {
        assert_eq!(*value, f32::from(u8::from(i / 65 == i % 65)), "{i}");
    }
    assert_eq!(
        exported.tensor("rnn.weight_ih_l0").unwrap().shape(),
        [128, 65]
    );
}

//! End-to-end runs of the sequence tasks (`[task] kind = classify | tag | seq2seq`) through the
//! real `ember` binary: train from the shipped configs, resume exactly, answer with `predict`,
//! and name bad input.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

fn train_task(config: &str, run_dir: &Path, overrides: &[&str]) -> Command {
    let mut command = ember();
    command
        .args(["train", "--config"])
        .arg(repo(config))
        .arg("--run-dir")
        .arg(run_dir);
    for set in overrides {
        command.args(["--set", set]);
    }
    command
}

fn predict(run_dir: &Path, input: &str) -> std::process::Output {
    let mut child = ember()
        .args(["predict", "--run"])
        .arg(run_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn last_val_accuracy(run_dir: &Path) -> f64 {
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    text.lines()
        .filter_map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            value["val_accuracy"].as_f64()
        })
        .last()
        .expect("a validation accuracy was logged")
}

const SHORT: [&str; 3] = [
    "train.steps=300",
    "train.eval_every=150",
    "train.checkpoint_every=150",
];

#[test]
fn classify_trains_from_its_config_and_predicts() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    run_ok(&mut train_task(
        "configs/classify-languages.toml",
        &run_dir,
        &SHORT,
    ));
    assert!(run_dir.join("labels.json").exists());
    // Four balanced classes (chance 0.25); 1500 steps reach 0.99, 300 well above chance.
    let accuracy = last_val_accuracy(&run_dir);
    assert!(accuracy > 0.6, "validation accuracy {accuracy}");

    let output = predict(&run_dir, "abcdefghabcdefgh\nadgbehcfadgbehcf\n");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answers: Vec<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    // Steps of 1 and of 3 letters, written out without noise.
    assert_eq!(answers, ["by-1", "by-3"]);
}

#[test]
fn tag_and_seq2seq_train_and_answer_every_line() {
    let dir = tempfile::tempdir().unwrap();
    let tag_run = dir.path().join("tag");
    run_ok(&mut train_task(
        "configs/tag-seen-letters.toml",
        &tag_run,
        &SHORT,
    ));
    // Per-step accuracy; always answering "seen" scores about 0.6.
    let accuracy = last_val_accuracy(&tag_run);
    assert!(accuracy > 0.8, "tagging accuracy {accuracy}");
    let output = predict(&tag_run, "abcabc\nhhh\n");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8(output.stdout).unwrap(), "nnnsss\nnss\n");

    let seq_run = dir.path().join("seq2seq");
    run_ok(&mut train_task(
        "configs/sort-letters.toml",
        &seq_run,
        &SHORT
            .iter()
            .copied()
            .chain(["task.beam_width=3"])
            .collect::<Vec<_>>(),
    ));
    let output = predict(&seq_run, "cba\njihgfedcba\nab\n");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answers = String::from_utf8(output.stdout).unwrap();
    assert_eq!(answers.lines().count(), 3, "{answers}");
    assert!(
        answers
            .lines()
            .all(|l| l.chars().all(|c| ('a'..='j').contains(&c))),
        "{answers}"
    );
}

/// A sequence run stopped half way and resumed logs the same losses, step for step, as one that
/// never stopped: the batches of every epoch are drawn in a seeded order from the step alone.
#[test]
fn resumed_sequence_run_matches_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole");
    let split = dir.path().join("split");
    let settings = [
        "train.steps=120",
        "train.log_every=10",
        "train.checkpoint_every=60",
    ];
    run_ok(&mut train_task(
        "configs/sort-letters.toml",
        &whole,
        &settings,
    ));
    let mut half: Vec<&str> = settings.to_vec();
    half[0] = "train.steps=60";
    run_ok(&mut train_task("configs/sort-letters.toml", &split, &half));
    run_ok(
        ember()
            .args(["train", "--resume"])
            .arg(&split)
            .args(["--set", "train.steps=120"]),
    );
    assert_eq!(losses(&whole), losses(&split));
}

#[test]
fn bad_sequence_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pairs.tsv");
    std::fs::write(&data, "abc\tabc\nno tab on this line\n").unwrap();
    let set_path = format!("data.path={}", data.display());
    let stderr = run_err(&mut train_task(
        "configs/sort-letters.toml",
        &dir.path().join("r"),
        &[&set_path],
    ));
    assert!(stderr.contains("pairs.tsv:2"), "{stderr}");
    assert!(
        !dir.path().join("r").exists(),
        "no run directory is left behind"
    );

    std::fs::write(&data, "ab\tnn\nabc\tnns s\n").unwrap();
    let stderr = run_err(&mut train_task(
        "configs/tag-seen-letters.toml",
        &dir.path().join("r"),
        &[&set_path],
    ));
    assert!(
        stderr.contains("pairs.tsv:2") && stderr.contains("5 tags for 3"),
        "{stderr}"
    );

    let run_dir = dir.path().join("run");
    run_ok(&mut train_task(
        "configs/classify-languages.toml",
        &run_dir,
        &["train.steps=2", "train.eval_every=0"],
    ));
    let output = predict(&run_dir, "abc\nabz\n");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("<stdin>:2") && stderr.contains("'z'") && stderr.contains("column 3"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "no partial answers");

    let stderr = run_err(ember().args(["sample", "--run"]).arg(&run_dir));
    assert!(stderr.contains("ember predict"), "{stderr}");
    let stderr = run_err(
        ember()
            .args(["predict", "--run"])
            .arg(dir.path().join("missing"))
            .args(["--input", "/dev/null"]),
    );
    assert!(stderr.contains("missing"), "{stderr}");
    let stderr = run_err(&mut train_task(
        "configs/shakespeare-rnn.toml",
        &dir.path().join("lm"),
        &["model.bidirectional=true"],
    ));
    assert!(stderr.contains("model.bidirectional"), "{stderr}");
}

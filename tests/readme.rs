//! Every command of README.md, run in order in a scratch copy of the repository's `configs/` and
//! `data/`, as a reader would type them. Training is cut to a few steps, benchmarks to a fraction
//! of a second and evaluation to a short text; nothing else is changed. A command this test does not run must be
//! listed in `RUN_ELSEWHERE` with the test that runs it, so a new README command cannot go
//! untested.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

/// README commands that other tests run, and which.
const RUN_ELSEWHERE: [(&str, &str); 10] = [
    (
        "apt-get install -y openmpi-bin libopenmpi-dev libclang-dev",
        "no test: it installs system packages; .ci/run runs it before the tests",
    ),
    (
        "cargo build --release --features mpi",
        "tests/mpi.rs, which runs the binary `--features mpi` builds (CI)",
    ),
    (
        "mpirun -n 2 target/release/ember train --config configs/shakespeare-lstm.toml",
        "tests/mpi.rs trains this config on 2 ranks against one process (CI, `--features mpi`)",
    ),
    (
        "mpirun --hostfile hosts -n 8 --map-by node target/release/ember train --config configs/shakespeare-lstm.toml",
        "no test: it needs several machines; tests/mpi.rs runs the same command on one",
    ),
    (
        "ember bench --ranks 2 --seconds 8",
        "tests/mpi.rs, with a shorter budget (CI, `--features mpi`)",
    ),
    (
        "cargo build --release",
        "every end-to-end test: it runs the binary this command builds",
    ),
    (
        "cargo install --path .",
        "no test: it writes into ~/.cargo/bin and builds Burn again with other features; it \
         builds the binary every end-to-end test runs",
    ),
    (
        "cargo test --release --workspace --features ndarray",
        "the test command itself",
    ),
    (
        "ember bench --filter b32 --pytorch /tmp/torch/bin/python",
        "tests/bench.rs, with a stand-in interpreter: CI installs no PyTorch",
    ),
    (
        "cargo run --release -p use-as-library",
        "examples/use-as-library/tests/runs.rs",
    ),
];

/// The command lines of README.md's `sh` blocks, without their trailing comments.
fn readme_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let mut commands = Vec::new();
    let mut in_sh = false;
    for line in readme.lines() {
        match line.trim() {
            "```sh" => in_sh = true,
            "```" => in_sh = false,
            command if in_sh && !command.is_empty() => {
                let command = command.split("  #").next().unwrap().trim_end();
                commands.push(command.to_string());
            }
            _ => {}
        }
    }
    commands
}

/// Splits a command line into words, keeping double-quoted strings whole.
fn words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// The `ember` arguments of a README command, shortened to run in seconds.
fn ember_args(words: &[String]) -> Vec<String> {
    let args: Vec<String> = match words {
        [ember, rest @ ..] if ember == "ember" => rest.to_vec(),
        [cargo, run, release, rest @ ..]
            if cargo == "cargo" && run == "run" && release == "--release" =>
        {
            // `--features F --` selects what the binary is built with: the test build has them.
            let start = rest
                .iter()
                .position(|w| w == "--")
                .expect("cargo run ... -- ARGS")
                + 1;
            rest[start..].to_vec()
        }
        _ => panic!("not an ember command: {words:?}"),
    };
    let mut shortened = Vec::new();
    let mut steps_set = false;
    for (i, arg) in args.iter().enumerate() {
        let previous = i.checked_sub(1).map(|p| args[p].as_str());
        if let Some(steps) = arg.strip_prefix("train.steps=") {
            let steps: u64 = steps.parse().unwrap();
            shortened.push(format!(
                "train.steps={}",
                steps.min(if args.contains(&"--resume".to_string()) {
                    30
                } else {
                    20
                })
            ));
            steps_set = true;
        } else if previous == Some("--seconds") {
            shortened.push("0.2".into());
        } else if previous == Some("--text") {
            shortened.push("data/sonnet-18.txt".into());
        } else {
            shortened.push(arg.clone());
        }
    }
    if args.iter().any(|a| a == "train") && !steps_set {
        shortened.extend(["--set".into(), "train.steps=20".into()]);
    }
    shortened
}

fn run(scratch: &Path, line: &str) -> String {
    let (stdin, command) = match line.split_once(" | ") {
        Some((echo, command)) => {
            let text = words(echo).last().unwrap().clone();
            (Some(text + "\n"), command)
        }
        None => (None, line),
    };
    let args = ember_args(&words(command));
    let mut ember = ember();
    ember
        .current_dir(scratch)
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if stdin.is_some() {
        ember.stdin(Stdio::piped());
    }
    let mut child = ember.spawn().unwrap();
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "README command {line:?} (run as ember {args:?}) failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn eval_loss(scratch: &Path, device: &str, run: &str) -> f64 {
    let output = Command::new(env!("CARGO_BIN_EXE_ember"))
        .current_dir(scratch)
        .args([
            "--device",
            device,
            "eval",
            "--run",
            run,
            "--text",
            "data/sonnet-18.txt",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    report["loss"].as_f64().unwrap()
}

#[test]
fn every_readme_command_runs() {
    let scratch = tempfile::tempdir().unwrap();
    copy_dir(&repo("configs"), &scratch.path().join("configs"));
    copy_dir(&repo("data"), &scratch.path().join("data"));
    // The PyTorch section's `model.pt`: a state dict saved by PyTorch.
    std::fs::copy(fixtures().join("lstm.pt"), scratch.path().join("model.pt")).unwrap();

    let mut ran = 0;
    for line in readme_commands() {
        if let Some((_, by)) = RUN_ELSEWHERE.iter().find(|(command, _)| *command == line) {
            eprintln!("{line}: run by {by}");
            continue;
        }
        let stdout = run(scratch.path(), &line);
        if line.contains(" sample ") {
            assert!(stdout.starts_with("ROMEO:"), "{line}: {stdout}");
        }
        ran += 1;
    }
    assert!(ran >= 15, "only {ran} README commands ran");
    for expected in [
        "runs/shakespeare-lstm/loss.svg",
        "runs/from-torch/config.toml",
        "model.safetensors",
        "runs/smoke/config.toml",
        "inspect.html",
    ] {
        assert!(scratch.path().join(expected).exists(), "{expected} missing");
    }

    // Checkpoints are portable: the run trained on flex and the one trained on ndarray evaluate
    // to the same loss on either backend.
    for run_dir in ["runs/shakespeare-lstm", "runs/smoke"] {
        let flex = eval_loss(scratch.path(), "flex", run_dir);
        let ndarray = eval_loss(scratch.path(), "ndarray", run_dir);
        assert!(
            (flex - ndarray).abs() < 1e-4,
            "{run_dir}: flex {flex} ndarray {ndarray}"
        );
    }
}

//! Running the real `ember` binary, shared by the end-to-end tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn ember() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ember"));
    command.current_dir(env!("CARGO_MANIFEST_DIR"));
    command.env_remove("BURN_DEVICE").env("RUST_LOG", "warn");
    command
}

pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

pub fn run_ok(command: &mut Command) -> Output {
    let output = command.output().expect("ember runs");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

pub fn run_err(command: &mut Command) -> String {
    let output = command.output().expect("ember runs");
    assert!(!output.status.success(), "{command:?} should fail");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !stderr.contains("panicked"),
        "{command:?} panicked: {stderr}"
    );
    stderr
}

/// `(step, loss)` of every metrics line, losses as the exact strings written.
pub fn losses(run_dir: &Path) -> Vec<(u64, String)> {
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            (value["step"].as_u64().unwrap(), value["loss"].to_string())
        })
        .collect()
}

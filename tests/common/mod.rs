//! Running the real `ember` binary, shared by the end-to-end tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

pub fn ember() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ember"));
    command.current_dir(env!("CARGO_MANIFEST_DIR"));
    command.env_remove("BURN_DEVICE").env("RUST_LOG", "warn");
    command
}

pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The PyTorch reference fixtures: `EMBER_FIXTURES`, else `tests/fixtures/torch`.
pub fn fixtures() -> PathBuf {
    match std::env::var_os("EMBER_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => repo("tests/fixtures/torch"),
    }
}

/// Character models in the layouts PyTorch users save: `tests/fixtures/torch-layouts`.
pub fn layout_fixtures() -> PathBuf {
    repo("tests/fixtures/torch-layouts")
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

/// `ember train` of a new run from `config` into `run_dir`, with `--set` overrides.
pub fn train_with(config: &Path, run_dir: &Path, overrides: &[&str]) -> Command {
    let mut command = ember();
    command.args(["train", "--config"]).arg(config);
    command.arg("--run-dir").arg(run_dir);
    for set in overrides {
        command.args(["--set", set]);
    }
    command
}

/// `ember train` of a new run from the smoke config, which trains in seconds.
pub fn train(run_dir: &Path, overrides: &[&str]) -> Command {
    train_with(&repo("configs/smoke.toml"), run_dir, overrides)
}

/// `ember train --resume run_dir`, with `--set` overrides.
pub fn resume(run_dir: &Path, overrides: &[&str]) -> Command {
    let mut command = ember();
    command.args(["train", "--resume"]).arg(run_dir);
    for set in overrides {
        command.args(["--set", set]);
    }
    command
}

/// Waits until `path` exists, failing if `child` ends first or `limit` passes.
pub fn wait_for(path: &Path, child: &mut Child, limit: Duration) {
    wait_until(
        || path.exists(),
        child,
        limit,
        &format!("{} did not appear", path.display()),
    );
}

/// Waits until `done` holds, polling every 5 ms, failing with `what` if `limit` passes or if
/// `child` ends first.
pub fn wait_until(mut done: impl FnMut() -> bool, child: &mut Child, limit: Duration, what: &str) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}");
        assert!(child.try_wait().unwrap().is_none(), "training ended early");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends the signal `name` (`INT`, `KILL`) to `child`.
pub fn send_signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Copies the directory `from` to `to`, recursively.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// `ember <command> --run run_dir`, for more arguments to follow.
pub fn on_run(command: &str, run_dir: &Path) -> Command {
    let mut command_line = ember();
    command_line.args([command, "--run"]).arg(run_dir);
    command_line
}

//! End-to-end runs of the real `ember` binary on the smoke config: train, resume, kill, sample,
//! evaluate, plot, and bad input.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;

#[test]
fn train_writes_a_complete_run_directory() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    run_ok(&mut train(&run_dir, &[]));
    for file in [
        "config.toml",
        "vocab.json",
        "metrics.jsonl",
        "checkpoints/step-00000040/model.bpk",
    ] {
        assert!(run_dir.join(file).exists(), "{file} missing");
    }
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for record in &records {
        for key in ["step", "loss", "lr", "grad_norm", "chars_per_sec"] {
            assert!(record[key].is_number(), "{key} missing in {record}");
        }
    }
    assert!(
        records.iter().any(|r| r["val_loss"].is_number()),
        "no validation loss logged"
    );
    // The resolved config is itself a valid config.
    let again = dir.path().join("again");
    let mut command = ember();
    command
        .args(["train", "--config"])
        .arg(run_dir.join("config.toml"))
        .arg("--run-dir")
        .arg(&again);
    run_ok(command.args(["--set", "train.steps=2"]));

    // Plot.
    let output = run_ok(ember().args(["plot", "--run"]).arg(&run_dir));
    let svg = std::fs::read_to_string(run_dir.join("loss.svg")).unwrap();
    assert!(
        svg.contains("<svg") && svg.contains("polyline"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// A run stopped half way and resumed logs the same losses, step for step, as one that never
/// stopped (dropout on, so the dropout masks must resume too).
#[test]
fn resumed_run_matches_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let straight = dir.path().join("straight");
    let halves = dir.path().join("halves");
    let dropout = "model.dropout=0.3";
    run_ok(&mut train(&straight, &[dropout]));
    run_ok(&mut train(&halves, &[dropout, "train.steps=20"]));
    run_ok(&mut resume(&halves, &["train.steps=40"]));
    let expected = losses(&straight);
    assert_eq!(expected.last().unwrap().0, 40);
    assert_eq!(losses(&halves), expected);
}

/// SIGKILL in the middle of training (possibly mid-checkpoint): the newest complete checkpoint
/// loads, the run resumes and ends with the losses of an uninterrupted run.
#[test]
fn killed_run_resumes_from_its_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let straight = dir.path().join("straight");
    let killed = dir.path().join("killed");
    let settings = [
        "train.steps=300",
        "train.checkpoint_every=7",
        "train.eval_every=0",
    ];
    run_ok(&mut train(&straight, &settings));

    let mut child = train(&killed, &settings)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(
        &killed.join("checkpoints/step-00000070"),
        &mut child,
        Duration::from_secs(120),
    );
    child.kill().unwrap();
    child.wait().unwrap();
    run_ok(&mut resume(&killed, &[]));
    assert_eq!(losses(&killed), losses(&straight));
}

/// SIGKILL again and again at pseudo-random moments, with a checkpoint written after every step,
/// so many kills land inside a checkpoint write: after every kill the run resumes, and once
/// left to finish it logs the losses of a run that was never killed.
#[test]
fn repeated_random_kills_never_lose_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let straight = dir.path().join("straight");
    let killed = dir.path().join("killed");
    let settings = [
        "train.steps=2000",
        "train.checkpoint_every=1",
        "train.keep_checkpoints=2",
        "train.eval_every=0",
    ];
    run_ok(&mut train(&straight, &settings));

    // A fixed linear congruential sequence of delays: the same kill points on every run.
    let mut state: u64 = 2026;
    let mut delay = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        Duration::from_millis(20 + (state >> 33) % 400)
    };
    let (mut before_first_checkpoint, mut mid_run, mut already_done) = (0, 0, 0);
    for attempt in 0..15 {
        let mut command = if killed.join("config.toml").exists() {
            resume(&killed, &[])
        } else {
            train(&killed, &settings)
        };
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(delay());
        if let Some(status) = child.try_wait().unwrap() {
            let stderr = child.wait_with_output().unwrap().stderr;
            assert!(
                status.success(),
                "attempt {attempt}: {}",
                String::from_utf8_lossy(&stderr)
            );
            already_done += 1;
            continue;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let checkpoints = std::fs::read_dir(killed.join("checkpoints"))
            .map(|entries| {
                entries
                    .filter(|e| {
                        let name = e.as_ref().unwrap().file_name();
                        name.to_string_lossy().starts_with("step-")
                    })
                    .count()
            })
            .unwrap_or(0);
        if checkpoints == 0 {
            before_first_checkpoint += 1;
        } else {
            mid_run += 1;
        }
    }
    eprintln!(
        "kills before the first checkpoint {before_first_checkpoint}, during training \
         {mid_run}; runs already finished {already_done}"
    );
    assert!(
        mid_run >= 5,
        "too few kills landed mid-run to mean anything"
    );
    run_ok(&mut resume(&killed, &[]));
    assert_eq!(losses(&killed), losses(&straight));
    let leftovers: Vec<String> = std::fs::read_dir(killed.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with("step-"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "writes cut off by a kill are cleaned up: {leftovers:?}"
    );

    // Checkpoints lost while the metrics say the run went on: resuming refuses to start over
    // (and to cut the metrics).
    std::fs::remove_dir_all(killed.join("checkpoints")).unwrap();
    let metrics = std::fs::read(killed.join("metrics.jsonl")).unwrap();
    let stderr = run_err(&mut resume(&killed, &[]));
    assert!(stderr.contains("no checkpoint"), "{stderr}");
    assert_eq!(
        std::fs::read(killed.join("metrics.jsonl")).unwrap(),
        metrics
    );
    // Killed before its first checkpoint: the directory holds a config and neither a checkpoint
    // nor metrics past it, and resuming starts the run again from its seed.
    std::fs::remove_file(killed.join("metrics.jsonl")).unwrap();
    run_ok(&mut resume(&killed, &[]));
    assert_eq!(losses(&killed), losses(&straight));
}

#[cfg(unix)]
#[test]
fn ctrl_c_saves_a_checkpoint_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let mut child = train(
        &run_dir,
        &[
            "train.steps=100000",
            "train.checkpoint_every=1000",
            "train.eval_every=0",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    wait_for(
        &run_dir.join("metrics.jsonl"),
        &mut child,
        Duration::from_secs(120),
    );
    std::thread::sleep(Duration::from_millis(300));
    send_signal(&child, "INT");
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "exit {:?}", output.status);
    assert!(String::from_utf8_lossy(&output.stdout).contains("stopped at step"));
    let steps: Vec<String> = std::fs::read_dir(run_dir.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(steps.iter().any(|s| s.starts_with("step-")), "{steps:?}");
    run_ok(&mut resume(&run_dir, &["train.steps=1"]));
}

/// SIGTERM (how SLURM, Kubernetes, Docker and systemd stop a job) and SIGHUP (a closed
/// terminal) stop training as Ctrl-C does: a checkpoint of the current step, status 0, and the
/// resumed run logs the same losses, step for step, as one that never stopped.
#[cfg(unix)]
#[test]
fn sigterm_and_sighup_checkpoint_and_resume_to_the_same_losses() {
    let dir = tempfile::tempdir().unwrap();
    // No checkpoint but the stop's own and the last: the resume can only start from the stop.
    let settings = [
        "train.steps=400",
        "train.checkpoint_every=100000",
        "train.eval_every=0",
    ];
    let straight = dir.path().join("straight");
    run_ok(&mut train(&straight, &settings));
    for signal in ["TERM", "HUP"] {
        let run_dir = dir.path().join(signal);
        let mut child = train(&run_dir, &settings)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for(
            &run_dir.join("metrics.jsonl"),
            &mut child,
            Duration::from_secs(120),
        );
        send_signal(&child, signal);
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "SIG{signal}: {:?} {stderr}",
            output.status
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains("stopped at step"), "SIG{signal}: {stdout}");
        assert!(stderr.contains(&format!("SIG{signal}")), "{stderr}");
        let steps: Vec<String> = std::fs::read_dir(run_dir.join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(steps.len(), 1, "SIG{signal}: {steps:?}");
        assert_ne!(
            steps[0], "step-00000400",
            "SIG{signal} came after the run ended"
        );
        run_ok(&mut resume(&run_dir, &[]));
        assert_eq!(losses(&run_dir), losses(&straight), "SIG{signal}");
    }
}

/// `ember info` describes a run without loading it: 18,033 parameters is the smoke model's
/// count (LSTM 2x32, embedding 16, 65 characters: the PyTorch `lstm` fixture's size), the best
/// validation loss is the lowest `val_loss` of `metrics.jsonl`, and the backend is the one that
/// trained the newest checkpoint.
#[test]
fn info_describes_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    run_ok(&mut train(&run_dir, &[]));
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    let best = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|r| Some((r["val_loss"].as_f64()?, r["step"].as_u64()?)))
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .unwrap();
    let info = |device: &str| {
        let output = run_ok(
            ember()
                .args(["--device", device, "info", "--run"])
                .arg(&run_dir),
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let stdout = info("flex");
    for expected in [
        "task         language-model".to_string(),
        "2 lstm layers of 32 (embedding 16, dropout 0): 18,033 parameters".into(),
        "step         40 (newest checkpoint) of train.steps = 40".into(),
        format!("best val     loss {:.4} at step {}", best.0, best.1),
        "trained on   flex".into(),
        "checkpoints  3: step 20 ".into(),
        "d_hidden = 32".into(),
    ] {
        assert!(stdout.contains(&expected), "{expected:?} not in {stdout}");
    }
    // Resumed on the other backend, the newest checkpoint says so.
    let mut command = resume(&run_dir, &["train.steps=50"]);
    run_ok(command.args(["--device", "ndarray"]));
    assert!(info("flex").contains("trained on   ndarray"));
}

#[test]
fn sampling_with_one_seed_gives_one_text() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    run_ok(&mut train(&run_dir, &[]));
    let sample = |seed: &str| {
        let output = run_ok(ember().args(["sample", "--run"]).arg(&run_dir).args([
            "--prime",
            "ROMEO:",
            "--length",
            "200",
            "--seed",
            seed,
            "--temperature",
            "0.8",
        ]));
        String::from_utf8(output.stdout).unwrap()
    };
    let first = sample("11");
    assert!(
        first.starts_with("ROMEO:") && first.chars().count() >= 206,
        "{first:?}"
    );
    assert_eq!(first, sample("11"));
    assert_ne!(first, sample("12"));

    let stderr = run_err(
        ember()
            .args(["sample", "--run"])
            .arg(&run_dir)
            .args(["--prime", "ROMEO§¶"]),
    );
    assert!(stderr.contains("'§'") && stderr.contains("'¶'"), "{stderr}");
    let stderr = run_err(
        ember()
            .args(["sample", "--run"])
            .arg(&run_dir)
            .args(["--temperature", "0"]),
    );
    assert!(stderr.contains("temperature"), "{stderr}");
    let stderr = run_err(
        ember()
            .args(["sample", "--run"])
            .arg(&run_dir)
            .args(["--top-k", "0"]),
    );
    assert!(stderr.contains("top-k"), "{stderr}");
}

#[test]
fn eval_prints_the_loss_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    run_ok(&mut train(&run_dir, &[]));
    let text = dir.path().join("text.txt");
    std::fs::write(
        &text,
        "First Citizen:\nBefore we proceed any further, hear me speak.\n",
    )
    .unwrap();
    let output = run_ok(
        ember()
            .args(["eval", "--run"])
            .arg(&run_dir)
            .arg("--text")
            .arg(&text),
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let loss = report["loss"].as_f64().unwrap();
    assert!(loss > 0.0 && loss < 10.0, "{report}");
    assert!(
        (report["bits_per_char"].as_f64().unwrap() - loss / std::f64::consts::LN_2).abs() < 1e-9
    );
    assert!((report["perplexity"].as_f64().unwrap() - loss.exp()).abs() < 1e-6);
    // 61 characters make 60 next-character predictions.
    assert_eq!(report["chars"].as_u64().unwrap(), 60);
}

#[test]
fn bad_input_is_named_and_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[model]\ncell = \"lstm\"\nhiden = 3\n").unwrap();
    let stderr = run_err(
        ember()
            .args(["train", "--config"])
            .arg(&config)
            .arg("--run-dir")
            .arg(dir.path().join("r")),
    );
    assert!(
        stderr.contains("bad.toml") && stderr.contains("hiden") && stderr.contains("line 3"),
        "{stderr}"
    );

    let stderr = run_err(&mut train(&dir.path().join("r"), &["train.stepz=3"]));
    assert!(stderr.contains("stepz"), "{stderr}");
    let stderr = run_err(&mut train(
        &dir.path().join("r"),
        &["data.path=/no/such/corpus.txt"],
    ));
    assert!(stderr.contains("/no/such/corpus.txt"), "{stderr}");
    let stderr = run_err(
        ember()
            .args(["train", "--resume"])
            .arg(dir.path().join("missing")),
    );
    assert!(stderr.contains("missing"), "{stderr}");
    let stderr = run_err(
        ember()
            .args(["sample", "--run"])
            .arg(dir.path().join("missing")),
    );
    assert!(stderr.contains("missing"), "{stderr}");
    let stderr = run_err(ember().args(["--device", "tpu", "devices"]).arg("x"));
    assert!(!stderr.is_empty());
    let stderr =
        run_err(ember().args(["--device", "quantum", "eval", "--run", "x", "--text", "y"]));
    assert!(
        stderr.contains("quantum") && stderr.contains("flex"),
        "{stderr}"
    );
}

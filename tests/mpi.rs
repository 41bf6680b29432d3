//! Data-parallel training over MPI: `mpirun -n 2 ember train` against one process on the same
//! global batch, resuming across rank counts, a killed rank, and bad input on every rank.
//! Built only with the `mpi` feature (Open MPI and libclang installed: see the README).
#![cfg(feature = "mpi")]

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{ember, repo, run_ok};
use ember_train::{MetricsRecord, read_metrics};

/// One job at a time: two ranks already fill this machine's cores, and the kill test times the
/// job's end.
static MACHINE: Mutex<()> = Mutex::new(());

/// How far a loss of the 2-rank run may be from the single process's, relative to the loss.
///
/// The two runs differ only in the order of floating-point sums: each rank sums the gradients
/// of its own streams and MPI adds the two sums, where one process sums all streams at once. In
/// f32 that reassociation changes a gradient by a few units in the last place (about 1e-7
/// relative), and Adam carries such a difference into the weights at that scale; it grows only
/// where the loss itself is small. Measured over 40 steps: about 1e-7 for the character models
/// and 1.6e-5 for the classifier, whose loss falls from 1.4 to 0.2. The bound is six times the
/// largest of those, and a hundred times smaller than what one step of training changes.
const LOSS_TOLERANCE: f64 = 1e-4;

fn mpirun(ranks: usize) -> Command {
    let mut command = Command::new("mpirun");
    command
        .args(["--allow-run-as-root", "--oversubscribe", "-n"])
        .arg(ranks.to_string())
        .arg(env!("CARGO_BIN_EXE_ember"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("BURN_DEVICE")
        .env("RUST_LOG", "warn");
    command
}

fn train_args(config: &str, run_dir: &Path, steps: u64, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "train".to_string(),
        "--config".into(),
        repo(config).display().to_string(),
        "--run-dir".into(),
        run_dir.display().to_string(),
        "--set".into(),
        format!("train.steps={steps}"),
        "--set".into(),
        "train.log_every=1".into(),
    ];
    for setting in extra {
        args.push("--set".into());
        args.push((*setting).into());
    }
    args
}

fn resume_args(run_dir: &Path, steps: u64) -> Vec<String> {
    vec![
        "train".into(),
        "--resume".into(),
        run_dir.display().to_string(),
        "--set".into(),
        format!("train.steps={steps}"),
    ]
}

fn metrics(run_dir: &Path) -> Vec<MetricsRecord> {
    read_metrics(&run_dir.join("metrics.jsonl"))
        .expect("metrics")
        .into_iter()
        .map(|(_, record)| record)
        .collect()
}

/// Asserts that two runs logged the same steps with losses (and validation losses) within
/// [`LOSS_TOLERANCE`]; returns the largest relative difference.
fn assert_same_losses(label: &str, single: &[MetricsRecord], ranks: &[MetricsRecord]) -> f64 {
    assert_eq!(single.len(), ranks.len(), "{label}: steps logged");
    let mut worst: f64 = 0.0;
    for (a, b) in single.iter().zip(ranks) {
        assert_eq!(a.step, b.step, "{label}");
        let pairs = [(Some(a.loss), Some(b.loss)), (a.val_loss, b.val_loss)];
        for (x, y) in pairs {
            assert_eq!(x.is_some(), y.is_some(), "{label} step {}", a.step);
            if let (Some(x), Some(y)) = (x, y) {
                let difference = (x - y).abs() / x.abs().max(1e-12);
                worst = worst.max(difference);
                assert!(
                    difference <= LOSS_TOLERANCE,
                    "{label} step {}: one process {x}, two ranks {y} (relative {difference:.2e})",
                    a.step
                );
            }
        }
    }
    eprintln!("{label}: largest relative loss difference {worst:.2e}");
    worst
}

fn same_as_one_process(label: &str, config: &str, steps: u64, extra: &[&str]) {
    let _machine = MACHINE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (single, distributed) = (dir.path().join("single"), dir.path().join("ranks"));
    run_ok(ember().args(train_args(config, &single, steps, extra)));
    let output = run_ok(mpirun(2).args(train_args(config, &distributed, steps, extra)));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        stdout.matches("trained ").count(),
        1,
        "rank 0 alone reports: {stdout}"
    );
    let ranks = metrics(&distributed);
    assert!(ranks.iter().all(|r| r.allreduce_ms.is_some()));
    assert_same_losses(label, &metrics(&single), &ranks);
}

#[test]
fn two_ranks_train_the_smoke_config_as_one_process() {
    same_as_one_process("smoke", "configs/smoke.toml", 40, &[]);
}

#[test]
fn two_ranks_train_the_2x128_character_model_as_one_process() {
    same_as_one_process(
        "LSTM 2x128",
        "configs/shakespeare-lstm.toml",
        40,
        &["train.eval_every=20", "train.eval_chunks=8"],
    );
}

#[test]
fn two_ranks_train_a_sequence_task_as_one_process() {
    // 64-line batches: 32 lines per rank, the classifier's loss a mean over lines.
    same_as_one_process(
        "classify",
        "configs/classify-languages.toml",
        40,
        &["train.eval_every=20", "train.checkpoint_every=20"],
    );
}

#[test]
fn a_run_resumes_on_another_number_of_ranks() {
    let _machine = MACHINE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole");
    run_ok(ember().args(train_args("configs/smoke.toml", &whole, 40, &[])));
    let reference = metrics(&whole);

    // 2 ranks for 20 steps, then 1 process to 40.
    let two_then_one = dir.path().join("two-then-one");
    run_ok(mpirun(2).args(train_args("configs/smoke.toml", &two_then_one, 20, &[])));
    run_ok(ember().args(resume_args(&two_then_one, 40)));
    assert_same_losses("2 ranks, then 1", &reference, &metrics(&two_then_one));

    // 1 process for 20 steps, then 2 ranks to 40.
    let one_then_two = dir.path().join("one-then-two");
    run_ok(ember().args(train_args("configs/smoke.toml", &one_then_two, 20, &[])));
    run_ok(mpirun(2).args(resume_args(&one_then_two, 40)));
    assert_same_losses(
        "1 process, then 2 ranks",
        &reference,
        &metrics(&one_then_two),
    );
}

/// The pid of rank `rank` among the children of `mpirun`'s process `launcher`.
fn rank_pid(launcher: u32, rank: usize) -> Option<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{launcher}/task/{launcher}/children")).ok()?;
    children
        .split_whitespace()
        .filter_map(|pid| pid.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
                environ
                    .split(|&b| b == 0)
                    .any(|v| v == format!("OMPI_COMM_WORLD_RANK={rank}").as_bytes())
            })
        })
}

#[test]
fn a_killed_rank_ends_the_job_and_the_run_resumes() {
    let _machine = MACHINE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let mut job = mpirun(2)
        .args(train_args(
            "configs/smoke.toml",
            &run_dir,
            1_000_000,
            &["train.checkpoint_every=5", "train.eval_every=0"],
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun starts");
    let checkpoints = ember_train::CheckpointDir::new(&run_dir);
    let started = Instant::now();
    while !checkpoints.steps().is_ok_and(|steps| steps.len() >= 2) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint in 2 minutes"
        );
        assert!(job.try_wait().unwrap().is_none(), "the job ended early");
        std::thread::sleep(Duration::from_millis(50));
    }
    let victim = rank_pid(job.id(), 1).expect("rank 1 is a child of mpirun");
    let killed = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-9", &victim.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = loop {
        if let Some(status) = job.try_wait().unwrap() {
            break status;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "the job still runs 10 s after rank 1 was killed"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = job.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("rank 1"), "which rank died: {stderr}");
    assert!(
        stderr.contains("resumes from its last checkpoint"),
        "how to go on: {stderr}"
    );

    let last = *checkpoints.steps().unwrap().last().unwrap();
    run_ok(mpirun(2).args(resume_args(&run_dir, last + 5)));
    assert_eq!(metrics(&run_dir).last().unwrap().step, last + 5);
}

fn failed(output: &Output) -> (Option<i32>, String) {
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_input_stops_every_rank_as_it_stops_one_process() {
    let _machine = MACHINE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str]); 3] = [
        ("a bad value", &["optimizer.lr=-1"]),
        ("a missing corpus", &["data.path=\"no/such/corpus.txt\""]),
        ("one stream for two ranks", &["data.batch_size=1"]),
    ];
    for (i, (label, settings)) in cases.iter().enumerate() {
        let single = ember()
            .args(train_args(
                "configs/smoke.toml",
                &dir.path().join(format!("single-{i}")),
                10,
                settings,
            ))
            .output()
            .unwrap();
        let ranks = mpirun(2)
            .args(train_args(
                "configs/smoke.toml",
                &dir.path().join(format!("ranks-{i}")),
                10,
                settings,
            ))
            .output()
            .unwrap();
        let ((single_status, single_err), (ranks_status, ranks_err)) =
            (failed(&single), failed(&ranks));
        if *label == "one stream for two ranks" {
            // One process trains one stream; two ranks cannot share it.
            assert!(single.status.success(), "{single_err}");
            assert_eq!(ranks_status, Some(2), "{ranks_err}");
            assert!(
                ranks_err.contains("2 ranks cannot share 1 streams"),
                "{ranks_err}"
            );
            continue;
        }
        assert_ne!(single_status, Some(0), "{label}: {single_err}");
        assert_eq!(ranks_status, single_status, "{label}: {ranks_err}");
        let error_line = single_err
            .lines()
            .find(|l| l.starts_with("error: "))
            .expect("an error line");
        assert_eq!(
            ranks_err.matches(error_line).count(),
            1,
            "{label}: the single process's error, once: {ranks_err}"
        );
        assert!(
            !dir.path()
                .join(format!("ranks-{i}"))
                .join("config.toml")
                .exists()
        );
    }
}

#[test]
fn bench_ranks_prints_the_scaling_of_both_layouts() {
    let _machine = MACHINE.lock().unwrap_or_else(|e| e.into_inner());
    let output = run_ok(ember().args([
        "bench",
        "--ranks",
        "2",
        "--seconds",
        "0.5",
        "--train-config",
        "configs/smoke.toml",
    ]));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(
        (lines[0]["ranks"].as_u64(), lines[1]["ranks"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(lines[0]["threads_per_rank"].as_u64(), Some(2));
    for line in &lines {
        assert!(line["chars_per_sec"].as_f64().unwrap() > 0.0, "{line}");
    }
    let share = lines[1]["allreduce_share"]
        .as_f64()
        .expect("the all-reduce's share");
    assert!((0.0..1.0).contains(&share), "{share}");
    assert!(lines[0].get("allreduce_ms").is_none());
}

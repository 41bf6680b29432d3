//! Concurrency and files that change underneath, against the real `ember` binary: readers beside
//! a trainer that prunes its checkpoints, two new runs racing for one directory, a corpus cut
//! short while it loads (issue 18, defects 1, 4 and 5).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use burn::tensor::Device;
use common::*;

/// A child process killed if the test ends before it does.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The newest checkpoint step of `run_dir`, 0 if none can be listed now.
fn newest_step(run_dir: &Path) -> u64 {
    std::fs::read_dir(run_dir.join("checkpoints"))
        .map(|entries| {
            entries
                .filter_map(|e| {
                    e.ok()?
                        .file_name()
                        .to_str()?
                        .strip_prefix("step-")?
                        .parse()
                        .ok()
                })
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Defect 1: `sample` beside a trainer that checkpoints every step and keeps one checkpoint
/// failed 20 times in 4,127 (weights read lazily from a file pruned meanwhile). Here two
/// threads open the run in this process as `ember sample` does (`Run::open`, the same code),
/// thousands of times, and a third runs the real binary; not one may fail, and the trainer
/// must have pruned many checkpoints meanwhile for the test to mean anything.
#[test]
fn readers_beside_a_trainer_pruning_every_step_never_fail() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let mut trainer = Killed(
        train(
            &run_dir,
            &[
                "train.steps=100000000",
                "train.checkpoint_every=1",
                "train.keep_checkpoints=1",
                "train.eval_every=0",
                "train.log_every=1000",
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    // Any checkpoint past the first: with one kept, each lives only until the next step's, which
    // can be well under a millisecond, so no one name is sure to be seen.
    wait_until(
        || newest_step(&run_dir) >= 2,
        &mut trainer.0,
        Duration::from_secs(120),
        "no second checkpoint appeared",
    );
    let first_step = newest_step(&run_dir);

    // Readers go on until the trainer has written and pruned this many checkpoints.
    const PRUNED: u64 = 150;
    let failures = Arc::new(AtomicUsize::new(0));
    let opens = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (run_dir, failures, opens, done) = (
                run_dir.clone(),
                failures.clone(),
                opens.clone(),
                done.clone(),
            );
            std::thread::spawn(move || {
                let device = Device::flex();
                while !done.load(Ordering::SeqCst) {
                    if let Err(e) = ember_train::Run::open(&run_dir, &device) {
                        eprintln!("Run::open failed: {e}");
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                    opens.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    let sampler = {
        let (run_dir, failures, done) = (run_dir.clone(), failures.clone(), done.clone());
        std::thread::spawn(move || {
            let mut samples = 0;
            while !done.load(Ordering::SeqCst) {
                let output = ember()
                    .args(["sample", "--length", "5", "--run"])
                    .arg(&run_dir)
                    .output()
                    .unwrap();
                if !output.status.success() || output.stdout.len() < 5 {
                    eprintln!(
                        "sample failed ({:?}): {}",
                        output.status,
                        String::from_utf8_lossy(&output.stderr)
                    );
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                samples += 1;
            }
            samples
        })
    };
    let start = std::time::Instant::now();
    while newest_step(&run_dir) < first_step + PRUNED && start.elapsed() < Duration::from_secs(300)
    {
        assert!(
            trainer.0.try_wait().unwrap().is_none(),
            "the trainer ended early"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    done.store(true, Ordering::SeqCst);
    for reader in readers {
        reader.join().unwrap();
    }
    let samples = sampler.join().unwrap();
    let pruned = newest_step(&run_dir) - first_step;
    let opens = opens.load(Ordering::SeqCst);
    eprintln!("{opens} opens and {samples} samples beside {pruned} checkpoints written and pruned");
    assert_eq!(failures.load(Ordering::SeqCst), 0);
    assert!(
        pruned >= PRUNED,
        "the trainer pruned only {pruned} checkpoints"
    );
    assert!(opens >= 2000, "only {opens} opens");
    assert!(samples >= 20, "only {samples} samples");
}

/// `text` repeated into a file of at least `bytes` bytes at `path`.
fn big_corpus(path: &Path, bytes: usize) -> PathBuf {
    let text = std::fs::read(repo("data/tinyshakespeare.txt")).unwrap();
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for _ in 0..bytes.div_ceil(text.len()) {
        std::io::Write::write_all(&mut file, &text).unwrap();
    }
    path.to_path_buf()
}

fn data_path(path: &Path) -> String {
    format!("data.path={:?}", path.display().to_string())
}

/// Defect 4: two new runs started 0.2 s apart into one directory, the first on a corpus slow
/// to load, both exited 0 and mixed their files. Exactly one may win; the other is refused
/// with status 4, and the directory holds the winner's run, whole.
#[test]
fn two_new_runs_never_share_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let big = big_corpus(&dir.path().join("big.txt"), 40 << 20);
    for delay in [50, 200, 600] {
        let run_dir = dir.path().join(format!("run-{delay}"));
        let first = train(&run_dir, &[&data_path(&big), "train.steps=3"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let first = Killed(first);
        std::thread::sleep(Duration::from_millis(delay));
        let second = train(&run_dir, &["train.steps=3"]).output().unwrap();
        let mut first = first;
        let status = first.0.wait().unwrap();
        let statuses = [status.code(), second.status.code()];
        assert!(
            statuses == [Some(0), Some(4)] || statuses == [Some(4), Some(0)],
            "delay {delay} ms: {statuses:?}: {}",
            String::from_utf8_lossy(&second.stderr)
        );
        let config = std::fs::read_to_string(run_dir.join("config.toml")).unwrap();
        let winner_big = statuses[0] == Some(0);
        assert_eq!(config.contains("big.txt"), winner_big, "{config}");
        // The winner's run is whole: it samples and resumes.
        run_ok(
            ember()
                .args(["sample", "--length", "5", "--run"])
                .arg(&run_dir),
        );
        run_ok(&mut resume(&run_dir, &["train.steps=4"]));
        eprintln!(
            "delay {delay} ms: the {} run won",
            if winner_big { "first" } else { "second" }
        );
    }
}

/// Defect 5: a corpus truncated while `ember train` loads it killed the process with SIGBUS
/// (the text was mapped). Here the file is cut to 5,000 bytes and grown back (sparse: NUL
/// characters) again and again while it loads: read into memory, the cut is either not seen
/// or an error, never a signal, never a panic.
#[test]
fn a_corpus_cut_short_while_it_loads_is_never_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let size = 60 << 20;
    for attempt in 0..4 {
        let corpus = big_corpus(&dir.path().join("shrinking.txt"), size);
        let run_dir = dir.path().join(format!("run-{attempt}"));
        let mut child = train(&run_dir, &[&data_path(&corpus), "train.steps=1"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&corpus)
            .unwrap();
        let mut cuts = 0;
        while child.try_wait().unwrap().is_none() {
            file.set_len(5000).unwrap();
            std::thread::sleep(Duration::from_millis(attempt));
            file.set_len(size as u64).unwrap();
            cuts += 1;
        }
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            matches!(output.status.code(), Some(0 | 3)),
            "attempt {attempt}: {:?}: {stderr}",
            output.status
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        eprintln!(
            "attempt {attempt}: {cuts} cuts, status {:?}",
            output.status.code()
        );
    }
}

//! Bad input and machine faults against the real `ember` binary. Every bad input gets an error
//! that names it, the exit status of its kind (README, "Exit status"), no panic and no file
//! written or changed; no fault loses a step that a checkpoint holds.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const USAGE: i32 = 2;
const DATA: i32 = 3;
const RUN: i32 = 4;
const FILE_SYSTEM: i32 = 5;
const DIVERGED: i32 = 6;

/// Every file under `dir` with its bytes (the lock file's too: it holds nothing).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

/// Runs `command`, which must fail with `status`, name every one of `names` on stderr, print
/// nothing on stdout and not panic.
fn fails(what: &str, command: &mut Command, status: i32, names: &[&str]) {
    let output = command.output().expect("ember runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(status),
        "{what}: exit status {:?}, stderr: {stderr}",
        output.status
    );
    assert!(!stderr.contains("panicked"), "{what} panicked: {stderr}");
    assert!(output.stdout.is_empty(), "{what} printed to stdout");
    for name in names {
        assert!(
            stderr.contains(name),
            "{what}: {name:?} not named in {stderr}"
        );
    }
}

fn is_root() -> bool {
    let output = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&output.stdout).trim() == "0"
}

/// `ember train` of the smoke config into `run_dir` with `overrides`, as an unprivileged user
/// when this is root (root reads any file whatever its mode). The binary and the config are
/// copied into `scratch` first, since the repository may lie where that user cannot reach.
fn unprivileged_train(scratch: &Path, run_dir: &Path, overrides: &[&str]) -> Command {
    let config = scratch.join("smoke.toml");
    std::fs::copy(repo("configs/smoke.toml"), &config).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut command = unprivileged_ember(scratch);
    command
        .args(["train", "--config"])
        .arg(&config)
        .arg("--run-dir")
        .arg(run_dir);
    for set in overrides {
        command.args(["--set", set]);
    }
    command
}

/// The `ember` binary, copied into `scratch`, run there as an unprivileged user when this is
/// root.
fn unprivileged_ember(scratch: &Path) -> Command {
    let binary = scratch.join("ember");
    std::fs::copy(env!("CARGO_BIN_EXE_ember"), &binary).unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut command = if is_root() {
        let mut wrapped = Command::new("setpriv");
        wrapped.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
        wrapped.arg(&binary);
        wrapped
    } else {
        Command::new(&binary)
    };
    command.current_dir(scratch).env("RUST_LOG", "warn");
    command
}

#[test]
fn bad_corpora_and_configs_are_named_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let run_dir = root.join("run");
    let mut tried = 0;
    let mut new_run_fails = |what: &str, command: &mut Command, status: i32, names: &[&str]| {
        fails(what, command, status, names);
        assert!(!run_dir.exists(), "{what} left {}", run_dir.display());
        tried += 1;
    };
    let file = |name: &str, bytes: &[u8]| {
        let path = root.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let data = |path: &Path| format!("data.path={:?}", path.display().to_string());

    // Corpora.
    let missing = root.join("absent.txt");
    new_run_fails(
        "missing corpus",
        &mut train(&run_dir, &[&data(&missing)]),
        DATA,
        &["absent.txt"],
    );
    new_run_fails(
        "corpus is a directory",
        &mut train(&run_dir, &[&data(root)]),
        DATA,
        &["directory"],
    );
    let empty = file("empty.txt", b"");
    new_run_fails(
        "empty corpus",
        &mut train(&run_dir, &[&data(&empty)]),
        DATA,
        &["empty.txt", "empty"],
    );
    let latin1 = file("latin1.txt", b"hello\xe9world");
    new_run_fails(
        "invalid UTF-8",
        &mut train(&run_dir, &[&data(&latin1)]),
        DATA,
        &["latin1.txt", "UTF-8", "byte offset 5"],
    );
    let short = file("short.txt", b"To be, or not to be");
    new_run_fails(
        "corpus shorter than a batch",
        &mut train(&run_dir, &[&data(&short)]),
        DATA,
        &["fewer than one batch"],
    );
    // A sparse gigabyte: refused from its size, before a byte of it is read.
    let huge = root.join("huge.txt");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(1_000_000_000)
        .unwrap();
    let start = Instant::now();
    new_run_fails(
        "1 GB corpus",
        &mut train(&run_dir, &[&data(&huge)]),
        DATA,
        &["huge.txt", "1000000000 bytes", "data.max_bytes"],
    );
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "the size check read the file"
    );
    // Unreadable: the directory stays listable, the file has no read permission.
    let locked_dir = root.join("locked");
    std::fs::create_dir(&locked_dir).unwrap();
    let unreadable = locked_dir.join("secret.txt");
    std::fs::write(&unreadable, "some text\n").unwrap();
    for (path, mode) in [
        (root, 0o755),
        (locked_dir.as_path(), 0o755),
        (&unreadable, 0o000),
    ] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    new_run_fails(
        "unreadable corpus",
        &mut unprivileged_train(root, &run_dir, &[&data(&unreadable)]),
        DATA,
        &["secret.txt", "ermission denied"],
    );

    // Config files.
    let config_cases: [(&str, &str, &[&str]); 7] = [
        (
            "unknown key",
            "[model]\ncell = \"lstm\"\nhiden = 3\n",
            &["hiden", "line 3"],
        ),
        (
            "wrong type",
            "[model]\nd_hidden = \"big\"\n",
            &["d_hidden", "line 2"],
        ),
        ("missing value", "[train]\nsteps =\n", &["line 2"]),
        (
            "unknown cell",
            "[model]\ncell = \"transformer\"\n",
            &["transformer", "lstm"],
        ),
        ("unknown section", "[modle]\ncell = \"gru\"\n", &["modle"]),
        (
            "negative size",
            "[model]\nnum_layers = -2\n",
            &["num_layers"],
        ),
        ("not TOML", "[model\ncell = \"gru\"\n", &["line 1"]),
    ];
    for (what, text, names) in config_cases {
        let config = file("bad.toml", text.as_bytes());
        let mut names = names.to_vec();
        names.push("bad.toml");
        new_run_fails(what, &mut train_with(&config, &run_dir, &[]), USAGE, &names);
    }
    new_run_fails(
        "missing config file",
        &mut train_with(&root.join("nowhere.toml"), &run_dir, &[]),
        USAGE,
        &["nowhere.toml"],
    );

    // Values, through --set.
    let set_cases: [(&[&str], &[&str]); 16] = [
        // The issue's aborts (640 GB and 25.6 GB in one allocation): refused from the estimate
        // before a tensor is allocated or a file written.
        (
            &["model.d_hidden=200000"],
            &["memory", "GB", "is available", "model.d_hidden"],
        ),
        (
            &["model.d_hidden=40000"],
            &["memory", "GB", "is available", "model.d_hidden"],
        ),
        (&["model.d_hidden=0"], &["model.d_hidden"]),
        (&["model.num_layers=0"], &["model.num_layers"]),
        (&["data.batch_size=0"], &["data.batch_size"]),
        (&["data.seq_len=0"], &["data.seq_len"]),
        (&["optimizer.lr=0"], &["optimizer.lr"]),
        (&["optimizer.lr=-0.1"], &["optimizer.lr"]),
        (&["model.dropout=1.0"], &["model.dropout"]),
        (&["model.dropout=-0.5"], &["model.dropout"]),
        (
            &["data.val_fraction=0.7", "data.test_fraction=0.4"],
            &["val_fraction", "test_fraction"],
        ),
        (&["model.cell=\"transformer\""], &["transformer"]),
        (&["train.stepz=3"], &["stepz"]),
        (&["modle.cell=\"gru\""], &["modle"]),
        (&["train.steps"], &["train.steps"]),
        (&["train.steps=\"many\""], &["train.steps"]),
    ];
    for (assignments, names) in set_cases {
        new_run_fails(
            &assignments.join(" "),
            &mut train(&run_dir, assignments),
            USAGE,
            names,
        );
    }
    new_run_fails(
        "neither --config nor --resume",
        ember().arg("train"),
        USAGE,
        &["--config"],
    );
    eprintln!("bad corpora and configs tried: {tried}");
    assert_eq!(tried, 32);
}

/// A model too large for the memory here is refused with status 2 before anything is created
/// (train, sample, eval, import-torch), and the corrected command then works; a run that fails
/// before its first checkpoint removes what it created.
#[test]
fn too_large_models_are_refused_and_failed_runs_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("runs/big");
    let output = train(&run_dir, &["model.d_hidden=200000"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(USAGE), "{stderr}");
    // Worked out from the smoke model: its two LSTM layers of 200000 units hold
    // 4 * 200000 * (16 + 200000) + 4 * 200000 * (200000 + 200000) floats, 1.92 TB, before
    // gradients and Adam's moments.
    assert!(stderr.contains("TB of memory"), "{stderr}");
    assert!(
        stderr.contains("lower `model.d_hidden` to at most"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("runs").exists(),
        "a refused run created its directory"
    );
    run_ok(&mut train(&run_dir, &["train.steps=10"]));

    // A run that needs more than this machine has: sampling and evaluating it are refused
    // before its weights are read (here its config claims the size, as a run trained on a
    // larger machine would hold it).
    let config_path = run_dir.join("config.toml");
    let config = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(
        &config_path,
        config.replace("d_hidden = 32", "d_hidden = 200000"),
    )
    .unwrap();
    let before = snapshot(&run_dir);
    for (command, extra) in [("sample", None), ("eval", Some("data/sonnet-18.txt"))] {
        let mut cmd = ember();
        cmd.args([command, "--run"]).arg(&run_dir);
        if let Some(text) = extra {
            cmd.arg("--text").arg(repo(text));
        }
        fails(command, &mut cmd, USAGE, &["memory", "is available"]);
    }
    assert!(snapshot(&run_dir) == before);

    // A state dict larger than the memory here (a sparse file: refused from its size).
    let huge = dir.path().join("huge.safetensors");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(1 << 42)
        .unwrap();
    let out = dir.path().join("imported");
    fails(
        "importing a 4.4 TB state dict",
        ember()
            .args(["import-torch", "--state-dict"])
            .arg(&huge)
            .arg("--vocab-from")
            .arg(repo("data/tinyshakespeare.txt"))
            .arg("--out")
            .arg(&out),
        USAGE,
        &["importing this state dict", "4.4 TB", "is available"],
    );
    assert!(!out.exists());

    // Divergence at step 2, before the first checkpoint: the run and the parents it made go;
    // an empty directory that was there before is left empty.
    let diverging = ["optimizer.lr=3e38", "train.checkpoint_every=10"];
    let fresh = dir.path().join("new/parent/run");
    fails(
        "divergence",
        &mut train(&fresh, &diverging),
        DIVERGED,
        &["removed"],
    );
    assert!(!dir.path().join("new").exists());
    let existing = dir.path().join("existing");
    std::fs::create_dir(&existing).unwrap();
    fails(
        "divergence",
        &mut train(&existing, &diverging),
        DIVERGED,
        &["removed"],
    );
    assert_eq!(std::fs::read_dir(&existing).unwrap().count(), 0);
    // The same command, corrected, then works there.
    run_ok(&mut train(&existing, &["train.steps=10"]));
}

/// A crash mid-write leaves the last line of `metrics.jsonl` cut short: plot, info and resume
/// skip it with a warning; a damaged line before the last is an error naming it.
#[test]
fn a_damaged_last_metrics_line_is_skipped_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let straight = dir.path().join("straight");
    run_ok(&mut train(&straight, &["train.steps=30"]));
    run_ok(&mut train(&run_dir, &["train.steps=20"]));
    let metrics = run_dir.join("metrics.jsonl");
    let intact = std::fs::read_to_string(&metrics).unwrap();
    std::fs::write(&metrics, format!("{intact}{{\"step\":25,\"loss\":3.")).unwrap();
    let last_line = intact.lines().count() + 1;
    for command in ["plot", "info"] {
        let output = run_ok(ember().args([command, "--run"]).arg(&run_dir));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("damaged last line") && stderr.contains(&format!("line {last_line}")),
            "{command}: {stderr}"
        );
    }
    let output = run_ok(&mut resume(&run_dir, &["train.steps=30"]));
    assert!(String::from_utf8_lossy(&output.stderr).contains("damaged last line"));
    assert_eq!(losses(&run_dir), losses(&straight));

    let lines: Vec<&str> = intact.lines().collect();
    std::fs::write(
        &metrics,
        format!("{}\n{{\"step\n{}\n", lines[0], lines[1..].join("\n")),
    )
    .unwrap();
    for command in ["plot", "info"] {
        fails(
            command,
            ember().args([command, "--run"]).arg(&run_dir),
            RUN,
            &["metrics.jsonl", "line 2 is damaged"],
        );
    }
}

#[test]
fn bad_sampling_and_run_requests_are_named_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    run_ok(&mut train(&run_dir, &["train.steps=10"]));
    let before = snapshot(&run_dir);
    let mut tried = 0;
    let mut run_fails = |what: &str, command: &mut Command, status: i32, names: &[&str]| {
        fails(what, command, status, names);
        assert!(
            snapshot(&run_dir) == before,
            "{what} changed the run directory"
        );
        tried += 1;
    };
    let sample = |args: &[&str]| {
        let mut command = ember();
        command.args(["sample", "--run"]).arg(&run_dir).args(args);
        command
    };
    run_fails(
        "prime outside the vocabulary",
        &mut sample(&["--prime", "ROMEO§¶"]),
        USAGE,
        &["'§'", "'¶'", "vocabulary"],
    );
    for (args, names) in [
        (&["--temperature", "0"][..], &["temperature"][..]),
        (&["--temperature=-1"], &["temperature"]),
        (&["--top-k", "0"], &["top-k"]),
        (&["--top-k", "66"], &["top-k", "65"]),
        (&["--length", "0"], &["--length"]),
        (&["--length", "ten"], &["--length"]),
    ] {
        run_fails(&args.join(" "), &mut sample(args), USAGE, names);
    }

    let absent = dir.path().join("absent");
    let not_a_run = dir.path().join("empty");
    std::fs::create_dir(&not_a_run).unwrap();
    for target in [&absent, &not_a_run] {
        let name = target.file_name().unwrap().to_str().unwrap();
        for command in ["sample", "eval", "predict", "plot", "export-torch"] {
            let mut cmd = ember();
            cmd.args([command, "--run"]).arg(target);
            if command == "eval" {
                cmd.arg("--text").arg(repo("data/sonnet-18.txt"));
            }
            if command == "export-torch" {
                cmd.arg("--out").arg(dir.path().join("out.safetensors"));
            }
            run_fails(&format!("{command} on {name}"), &mut cmd, RUN, &[name]);
        }
        run_fails(
            &format!("resume {name}"),
            &mut resume(target, &[]),
            RUN,
            &[name],
        );
    }
    assert!(!absent.exists());
    assert_eq!(std::fs::read_dir(&not_a_run).unwrap().count(), 0);
    assert!(!dir.path().join("out.safetensors").exists());

    run_fails(
        "a new run over an existing one",
        &mut train(&run_dir, &[]),
        RUN,
        &["already holds a run"],
    );
    run_fails(
        "resume changing the model",
        &mut resume(&run_dir, &["model.d_hidden=64"]),
        USAGE,
        &["[model]"],
    );
    let text = dir.path().join("greek.txt");
    std::fs::write(&text, "αβγ").unwrap();
    run_fails(
        "eval text outside the vocabulary",
        ember()
            .args(["eval", "--run"])
            .arg(&run_dir)
            .arg("--text")
            .arg(&text),
        DATA,
        &["'α'"],
    );
    eprintln!("bad sampling and run requests tried: {tried}");
    assert_eq!(tried, 22);
}

/// Cuts `path` to half its length, or flips 64 bytes in its middle.
fn damage(path: &Path, truncate: bool) {
    let mut bytes = std::fs::read(path).unwrap();
    if truncate {
        bytes.truncate(bytes.len() / 2);
    } else {
        let (middle, len) = (bytes.len() / 2, bytes.len());
        for byte in &mut bytes[middle..(middle + 64).min(len)] {
            *byte ^= 0xA5;
        }
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn damaged_or_foreign_checkpoints_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    run_ok(&mut train(&run_dir, &["train.steps=20"]));
    let checkpoints = run_dir.join("checkpoints");
    let newest = checkpoints.join("step-00000020");
    let older = checkpoints.join("step-00000010");
    let sample = |run: &Path| {
        let mut command = ember();
        command
            .args(["sample", "--run"])
            .arg(run)
            .args(["--length", "20"]);
        command
    };

    // A damaged newest checkpoint: the older one is used, with a warning naming the damage.
    for (file, truncate) in [
        ("model.bpk", true),
        ("model.bpk", false),
        ("optimizer.bpk", true),
        ("progress.json", false),
    ] {
        let copy = dir.path().join("copy");
        let _ = std::fs::remove_dir_all(&copy);
        copy_dir(&run_dir, &copy);
        damage(&copy.join("checkpoints/step-00000020").join(file), truncate);
        let output = run_ok(resume(&copy, &["train.steps=25"]).env("RUST_LOG", "warn"));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("step 20") && stderr.contains(file),
            "{file}: {stderr}"
        );
        assert!(losses(&copy).iter().any(|(step, _)| *step == 25));
    }

    // Every checkpoint damaged: an error naming the file; nothing is rewritten.
    damage(&older.join("model.bpk"), true);
    damage(&newest.join("model.bpk"), false);
    let before = snapshot(&run_dir);
    fails(
        "resume with all checkpoints damaged",
        &mut resume(&run_dir, &[]),
        RUN,
        &["model.bpk"],
    );
    fails(
        "sample with all checkpoints damaged",
        &mut sample(&run_dir),
        RUN,
        &["model.bpk"],
    );
    assert!(snapshot(&run_dir) == before);

    // A checkpoint of another architecture, and a vocabulary of another size.
    let small = dir.path().join("small");
    run_ok(&mut train(&small, &["train.steps=10", "model.d_hidden=16"]));
    let other = dir.path().join("other");
    run_ok(&mut train(&other, &["train.steps=10"]));
    std::fs::remove_dir_all(other.join("checkpoints/step-00000010")).unwrap();
    copy_dir(
        &small.join("checkpoints/step-00000010"),
        &other.join("checkpoints/step-00000010"),
    );
    let before = snapshot(&other);
    fails(
        "foreign architecture",
        &mut resume(&other, &[]),
        RUN,
        &["does not fit"],
    );
    assert!(snapshot(&other) == before);

    let foreign_vocab = dir.path().join("vocab-run");
    run_ok(&mut train(&foreign_vocab, &["train.steps=10"]));
    let text = dir.path().join("digits.txt");
    std::fs::write(&text, "0123456789 ".repeat(2000)).unwrap();
    let digits = dir.path().join("digits");
    run_ok(&mut train(
        &digits,
        &[
            "train.steps=1",
            &format!("data.path={:?}", text.display().to_string()),
        ],
    ));
    std::fs::copy(digits.join("vocab.json"), foreign_vocab.join("vocab.json")).unwrap();
    fails(
        "foreign vocabulary",
        &mut sample(&foreign_vocab),
        RUN,
        &["does not fit"],
    );
}

/// A training process that is killed if the test ends before it does.
struct Training(Option<Child>);

impl Training {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().unwrap()
    }

    fn wait_with_output(mut self) -> std::process::Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for Training {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn long_run(run_dir: &Path, overrides: &[&str]) -> Training {
    let mut settings = vec![
        "train.steps=1000000",
        "train.checkpoint_every=20",
        "train.keep_checkpoints=100000",
        "train.eval_every=0",
    ];
    settings.extend_from_slice(overrides);
    Training(Some(
        train(run_dir, &settings)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ))
}

fn signal(training: &mut Training, name: &str) {
    send_signal(training.child(), name);
}

#[test]
fn a_second_trainer_on_one_run_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let mut first = long_run(&run_dir, &[]);
    wait_for(
        &run_dir.join("checkpoints/step-00000020"),
        first.child(),
        Duration::from_secs(120),
    );
    fails(
        "a second trainer",
        &mut resume(&run_dir, &[]),
        RUN,
        &["lock", "run"],
    );
    fails(
        "a new run in a directory being trained",
        &mut train(&run_dir, &[]),
        RUN,
        &["already holds a run"],
    );
    signal(&mut first, "INT");
    let output = first.wait_with_output();
    assert!(output.status.success(), "{:?}", output.status);
    // The first run's metrics were never interleaved with another's.
    let steps: Vec<u64> = losses(&run_dir).iter().map(|(step, _)| *step).collect();
    assert!(steps.windows(2).all(|w| w[1] == w[0] + 5), "{steps:?}");
}

/// A second signal quits at once, with 128 + its number, for each of Ctrl-C, SIGTERM and
/// SIGHUP.
#[test]
fn a_second_signal_quits_at_once_and_damages_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for (name, status) in [("INT", 130), ("TERM", 143), ("HUP", 129)] {
        let run_dir = dir.path().join(name);
        // Steps of a few tenths of a second, so that the second signal lands before the first
        // one's step and checkpoint are done.
        let mut child = long_run(
            &run_dir,
            &[
                "model.d_hidden=1024",
                "data.batch_size=16",
                "data.seq_len=64",
                "train.checkpoint_every=5",
            ],
        );
        wait_for(
            &run_dir.join("checkpoints/step-00000005"),
            child.child(),
            Duration::from_secs(120),
        );
        // The second is sent once the first has been taken (the binary says so): two of one
        // signal still pending together are one signal to the kernel.
        let stderr = child.child().stderr.take().unwrap();
        signal(&mut child, name);
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
        let said = lines.find(|line| line.as_ref().unwrap().contains("stopping on"));
        assert!(
            said.is_some(),
            "{name}: the first signal was not taken: {:?}",
            child.wait_with_output()
        );
        signal(&mut child, name);
        let output = child.wait_with_output();
        assert_eq!(
            output.status.code(),
            Some(status),
            "{name}: {:?}",
            output.status
        );
        // Whatever the first signal began, the newest checkpoint loads and training goes on
        // from it.
        let last = *checkpoint_steps(&run_dir).last().unwrap();
        run_ok(&mut resume(
            &run_dir,
            &[&format!("train.steps={}", last + 1)],
        ));
        assert_eq!(losses(&run_dir).last().unwrap().0, last + 1);
    }
}

fn mount(args: &[&str], path: &Path) {
    let status = Command::new("mount").args(args).arg(path).status().unwrap();
    assert!(status.success(), "mount {args:?} {}", path.display());
}

/// Unmounts its path when dropped, whatever the test did meanwhile.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_or_read_only_run_directory_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    // A full disk and a read-only directory are made by mounts, which need root (or a machine
    // that allows this process to mount).
    let probe = dir.path().join("probe");
    std::fs::create_dir(&probe).unwrap();
    let mountable = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&probe)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !mountable {
        eprintln!("SKIPPED: this machine does not let the test mount a tmpfs");
        return;
    }
    drop(Unmount(probe));
    for fault in ["full", "read-only"] {
        let disk = dir.path().join(fault);
        std::fs::create_dir(&disk).unwrap();
        mount(&["-t", "tmpfs", "-o", "size=64m", "tmpfs"], &disk);
        let _disk = Unmount(disk.clone());
        let run_dir = disk.join("run");
        let mut child = long_run(&run_dir, &[]);
        wait_for(
            &run_dir.join("checkpoints/step-00000020"),
            child.child(),
            Duration::from_secs(120),
        );
        let good = snapshot(&run_dir.join("checkpoints/step-00000020"));
        let read_only = if fault == "full" {
            let filler = disk.join("filler");
            let mut file = std::fs::File::create(&filler).unwrap();
            let block = vec![0u8; 1 << 16];
            while std::io::Write::write_all(&mut file, &block).is_ok() {}
            None
        } else {
            // The run directory seen read-only through a bind mount over itself: the files the
            // run holds open stay writable, every new one is refused.
            mount(&["--bind", &run_dir.to_string_lossy()], &run_dir);
            mount(&["-o", "remount,bind,ro"], &run_dir);
            Some(Unmount(run_dir.clone()))
        };
        let output = child.wait_with_output();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let expected = if fault == "full" {
            "No space left"
        } else {
            "Read-only"
        };
        assert_eq!(output.status.code(), Some(FILE_SYSTEM), "{fault}: {stderr}");
        assert!(
            stderr.contains(expected) && stderr.contains(&*run_dir.to_string_lossy()),
            "{fault}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");

        // Once there is room again, the checkpoint before the fault is intact, no partial write
        // is left and the run goes on from its newest checkpoint.
        drop(read_only);
        let _ = std::fs::remove_file(disk.join("filler"));
        assert!(snapshot(&run_dir.join("checkpoints/step-00000020")) == good);
        let partials: Vec<_> = std::fs::read_dir(run_dir.join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with('.'))
            .collect();
        assert!(partials.is_empty(), "{fault}: {partials:?}");
        let last = *checkpoint_steps(&run_dir).last().unwrap();
        run_ok(&mut resume(
            &run_dir,
            &[&format!("train.steps={}", last + 5)],
        ));
        assert_eq!(losses(&run_dir).last().unwrap().0, last + 5);
        eprintln!("{fault}: stopped cleanly, resumed from step {last}");
    }
}

/// The steps of the complete checkpoints of `run_dir`, oldest first.
fn checkpoint_steps(run_dir: &Path) -> Vec<u64> {
    let mut steps: Vec<u64> = std::fs::read_dir(run_dir.join("checkpoints"))
        .unwrap()
        .filter_map(|e| {
            e.unwrap()
                .file_name()
                .to_str()?
                .strip_prefix("step-")?
                .parse()
                .ok()
        })
        .collect();
    steps.sort_unstable();
    steps
}

#[test]
fn divergence_stops_at_the_last_good_checkpoint_or_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    run_ok(&mut train(&run_dir, &["train.steps=10"]));
    let good = snapshot(&run_dir.join("checkpoints/step-00000010"));
    // Adam moves every weight by about lr: at 3e38 the logits overflow f32 after one step.
    let explode = ["train.steps=20", "optimizer.lr=3e38"];
    fails(
        "divergence",
        &mut resume(&run_dir, &explode),
        DIVERGED,
        &["loss became NaN at step 12", "optimizer.lr"],
    );
    assert_eq!(checkpoint_steps(&run_dir), [10]);
    assert!(snapshot(&run_dir.join("checkpoints/step-00000010")) == good);
    assert_eq!(losses(&run_dir).last().unwrap().0, 10);

    let output = run_ok(&mut resume(
        &run_dir,
        &[
            "train.steps=20",
            "optimizer.lr=3e38",
            "train.on_divergence=\"rollback\"",
            "train.rollback_lr_factor=1e-41",
        ],
    ));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("rollback 1 of 3"), "{stderr}");
    let config = std::fs::read_to_string(run_dir.join("config.toml")).unwrap();
    let lr: f64 = config
        .lines()
        .find_map(|line| line.strip_prefix("lr = "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(lr < 1e-2, "{config}");
    assert_eq!(losses(&run_dir).last().unwrap().0, 20);
    assert!(
        losses(&run_dir)
            .iter()
            .all(|(_, loss)| loss.parse::<f64>().unwrap().is_finite())
    );

    // Without a way back, the rollbacks run out and the run stops as before.
    let stubborn = dir.path().join("stubborn");
    fails(
        "rollbacks that cannot help",
        &mut train(
            &stubborn,
            &[
                "optimizer.lr=3e38",
                "train.on_divergence=\"rollback\"",
                "train.rollback_lr_factor=0.99",
                "train.max_rollbacks=2",
            ],
        ),
        DIVERGED,
        &["rollback 2 of 2", "at step 2"],
    );
}

/// Issue 18, defect 2: a damaged newest checkpoint was never replaced (the resumed run found
/// its step's directory and did not save). Now the resumed run saves over it, and every later
/// command loads it without a warning.
#[test]
fn a_damaged_newest_checkpoint_is_saved_over() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    run_ok(&mut train(&run_dir, &["train.steps=20"]));
    damage(&run_dir.join("checkpoints/step-00000020/model.bpk"), false);
    let output = run_ok(resume(&run_dir, &["train.steps=20"]).env("RUST_LOG", "warn"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("replacing a damaged checkpoint"),
        "{stderr}"
    );
    assert_eq!(checkpoint_steps(&run_dir), [10, 20]);
    let output = run_ok(
        ember()
            .args(["sample", "--length", "20", "--run"])
            .arg(&run_dir)
            .env("RUST_LOG", "warn"),
    );
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let leftovers: Vec<_> = std::fs::read_dir(run_dir.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Issue 18, defects 3 and 7: a resume that changes what the checkpoints mean, or that cannot
/// list them, is refused before anything is written: no restart from step 0, no metrics cut.
#[test]
fn a_resume_that_changes_meaning_or_cannot_list_checkpoints_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    run_ok(&mut train(&run_dir, &["train.steps=20"]));
    let before = snapshot(&run_dir);
    for (set, names) in [
        ("task.kind=\"classify\"", &["task.kind", "classify"][..]),
        ("model.cell=\"gru\"", &["model.cell"]),
        ("data.seq_len=8", &["data.seq_len"]),
    ] {
        fails(set, &mut resume(&run_dir, &[set]), USAGE, names);
        assert!(snapshot(&run_dir) == before, "{set} changed the run");
    }
    run_ok(
        ember()
            .args(["sample", "--length", "5", "--run"])
            .arg(&run_dir),
    );

    // `checkpoints` replaced by a file: an error naming it, the metrics untouched; then
    // `checkpoints` gone while the metrics reach step 20: refused, not started over.
    let copy = dir.path().join("file");
    copy_dir(&run_dir, &copy);
    std::fs::remove_dir_all(copy.join("checkpoints")).unwrap();
    std::fs::write(copy.join("checkpoints"), "not a directory").unwrap();
    for (what, status, names) in [
        (
            "checkpoints is a file",
            FILE_SYSTEM,
            ["checkpoints", "Not a directory"],
        ),
        ("checkpoints lost", RUN, ["no checkpoint", "step 20"]),
    ] {
        let before = snapshot(&copy);
        fails(what, &mut resume(&copy, &[]), status, &names);
        assert!(snapshot(&copy) == before, "{what} changed the run");
        let _ = std::fs::remove_file(copy.join("checkpoints"));
    }

    // Unreadable `checkpoints` (as an unprivileged user: root reads anything).
    let scratch = tempfile::tempdir().unwrap();
    let locked = scratch.path().join("run");
    copy_dir(&run_dir, &locked);
    for entry in [scratch.path(), locked.as_path()] {
        std::fs::set_permissions(entry, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    if is_root() {
        let chown = Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(&locked)
            .status()
            .unwrap();
        assert!(chown.success());
    }
    std::fs::set_permissions(
        locked.join("checkpoints"),
        std::fs::Permissions::from_mode(0o000),
    )
    .unwrap();
    let corpus = scratch.path().join("corpus.txt");
    std::fs::copy(repo("data/tinyshakespeare.txt"), &corpus).unwrap();
    let before = snapshot(&locked);
    fails(
        "unreadable checkpoints",
        unprivileged_ember(scratch.path())
            .args(["train", "--resume"])
            .arg(&locked)
            .arg("--set")
            .arg(format!("data.path={:?}", corpus.display().to_string())),
        FILE_SYSTEM,
        &["checkpoints", "ermission denied"],
    );
    std::fs::set_permissions(
        locked.join("checkpoints"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    assert!(snapshot(&locked) == before);
}

/// Issue 18, defect 6: `export-torch --out` replaced whatever was at the path. Only an absent
/// path or a regular file outside every run is written; a symlink, FIFO, device, directory or
/// a run's own file is refused by name and left as it was.
#[test]
fn outputs_are_only_regular_files_outside_runs() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    run_ok(&mut train(&run_dir, &["train.steps=10"]));
    let export = |out: &Path| {
        let mut command = on_run("export-torch", &run_dir);
        command.arg("--out").arg(out);
        command
    };
    let target = dir.path().join("target.txt");
    std::fs::write(&target, "keep me").unwrap();
    let link = dir.path().join("link.safetensors");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let fifo = dir.path().join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let before = snapshot(&run_dir);
    for (what, out, names) in [
        (
            "a symlink",
            link.clone(),
            &["link.safetensors", "symbolic link"][..],
        ),
        ("a FIFO", fifo.clone(), &["fifo", "not a regular file"]),
        (
            "a device",
            PathBuf::from("/dev/null"),
            &["/dev/null", "not a regular file"],
        ),
        (
            "a directory",
            dir.path().to_path_buf(),
            &["not a regular file"],
        ),
        (
            "the run's config",
            run_dir.join("config.toml"),
            &["config.toml", "inside the run"],
        ),
        (
            "a new file in a checkpoint",
            run_dir.join("checkpoints/step-00000010/x.safetensors"),
            &["inside the run"],
        ),
    ] {
        fails(what, &mut export(&out), USAGE, names);
    }
    // Nor does a new run or an import go inside a run.
    let nested = run_dir.join("checkpoints/nested");
    fails(
        "a run inside a run",
        &mut train(&nested, &[]),
        USAGE,
        &["nested", "inside the run"],
    );
    run_ok(&mut export(&dir.path().join("model.safetensors")));
    fails(
        "an import inside a run",
        ember()
            .args(["import-torch", "--cell", "lstm", "--state-dict"])
            .arg(dir.path().join("model.safetensors"))
            .arg("--vocab-from")
            .arg(repo("data/tinyshakespeare.txt"))
            .arg("--out")
            .arg(&nested),
        USAGE,
        &["nested", "inside the run"],
    );
    assert!(snapshot(&run_dir) == before);
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(!dir.path().join("x.safetensors").exists());
    // A regular file is replaced whole.
    run_ok(&mut export(&target));
    assert!(std::fs::read(&target).unwrap().len() > 1000);

    // `plot` writes the run's own loss.svg, but not through a symlink.
    std::fs::remove_file(&link).unwrap();
    std::fs::write(&link, "keep me too").unwrap();
    std::os::unix::fs::symlink(&link, run_dir.join("loss.svg")).unwrap();
    fails(
        "plot through a symlink",
        ember().args(["plot", "--run"]).arg(&run_dir),
        USAGE,
        &["loss.svg", "symbolic link"],
    );
    assert_eq!(std::fs::read_to_string(&link).unwrap(), "keep me too");
}

/// Issue 18's smaller defects of commands and statuses, each named with its case.
#[test]
fn statuses_pipes_and_messages_of_issue_18() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let run_dir = root.join("run");
    run_ok(&mut train(&run_dir, &["train.steps=10"]));

    // Exit statuses off the table: each is now the status of its kind.
    fails(
        "bench --filter that matches nothing",
        ember().args(["bench", "--filter", "nomatch"]),
        USAGE,
        &["nomatch"],
    );
    fails(
        "unknown --device",
        ember()
            .args(["--device", "abacus", "sample", "--run"])
            .arg(&run_dir),
        USAGE,
        &["abacus"],
    );
    let seq2seq = root.join("seq2seq");
    run_ok(&mut train_with(
        &repo("configs/sort-letters.toml"),
        &seq2seq,
        &["train.steps=2"],
    ));
    let predict = |input: &Path| {
        let mut command = on_run("predict", &seq2seq);
        command.arg("--input").arg(input);
        command
    };
    let latin1 = root.join("latin1.txt");
    std::fs::write(&latin1, b"abc\xe9\n").unwrap();
    fails(
        "non-UTF-8 predict input",
        &mut predict(&latin1),
        DATA,
        &["latin1.txt", "UTF-8"],
    );
    // Defect 8: a long line grew memory by 2 KB per character; past the bound it is refused
    // before the model reads it.
    let long = root.join("long.txt");
    std::fs::write(&long, format!("ab\n{}\n", "a".repeat(100_001))).unwrap();
    fails(
        "a line longer than --max-line-chars",
        &mut predict(&long),
        DATA,
        &["long.txt:2", "100001 characters", "--max-line-chars"],
    );

    // `sample | head`: the text streams, and a closed pipe ends it quietly with status 0.
    let mut child = on_run("sample", &run_dir)
        .args(["--length", "100000000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = [0u8; 100];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut head).unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // `eval` on a terminal (made by script(1)) shows its progress.
    let script = Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "{} eval --run {} --text {}",
            env!("CARGO_BIN_EXE_ember"),
            run_dir.display(),
            repo("data/tinyshakespeare.txt").display()
        ))
        .arg("/dev/null")
        .env("RUST_LOG", "warn")
        .output();
    match script {
        Ok(output) if output.status.success() => {
            let terminal = String::from_utf8_lossy(&output.stdout);
            assert!(terminal.contains("characters"), "{terminal}");
        }
        _ => eprintln!("SKIPPED: no script(1) to give eval a terminal"),
    }

    // A FIFO as `--text`, and standard input through /dev/stdin: read, not "empty".
    let text = "First Citizen:\nBefore we proceed any further, hear me speak.\n";
    let fifo = root.join("text.fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::write(fifo, text).unwrap())
    };
    let eval = |text: &Path| {
        let mut command = on_run("eval", &run_dir);
        command.arg("--text").arg(text);
        command
    };
    let from_fifo = run_ok(&mut eval(&fifo));
    writer.join().unwrap();
    let file = root.join("text.txt");
    std::fs::write(&file, text).unwrap();
    let from_file = run_ok(&mut eval(&file));
    assert_eq!(from_fifo.stdout, from_file.stdout);
    let mut child = eval(Path::new("/dev/stdin"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    drop(child.stdin.take());
    let from_stdin = child.wait_with_output().unwrap();
    assert_eq!(from_stdin.stdout, from_file.stdout);
    fails(
        "a device as corpus",
        &mut train(&root.join("zero"), &["data.path=\"/dev/zero\""]),
        DATA,
        &["/dev/zero", "not a regular file"],
    );

    // Out-of-vocabulary text names the file, line and column.
    let greek = root.join("greek.txt");
    std::fs::write(&greek, "ab\ncαβ").unwrap();
    fails(
        "eval text outside the vocabulary",
        &mut eval(&greek),
        DATA,
        &["greek.txt:2:2", "'α'"],
    );

    // `sample` without --prime on a vocabulary without a newline.
    let digits_text = root.join("digits.txt");
    std::fs::write(&digits_text, "0123456789 ".repeat(2000)).unwrap();
    let digits = root.join("digits");
    run_ok(&mut train(
        &digits,
        &[
            "train.steps=2",
            &format!("data.path={:?}", digits_text.display().to_string()),
        ],
    ));
    let output = run_ok(
        ember()
            .args(["sample", "--length", "10", "--run"])
            .arg(&digits),
    );
    let sampled = String::from_utf8_lossy(&output.stdout);
    // The vocabulary's first character as the prime, ten drawn, and the final newline.
    assert_eq!(
        sampled.strip_suffix('\n').unwrap().chars().count(),
        11,
        "{sampled:?}"
    );

    // A checkpoint stripped of its checksums is reported as unverified.
    let stripped = root.join("stripped");
    copy_dir(&run_dir, &stripped);
    std::fs::remove_file(stripped.join("checkpoints/step-00000010/checksums.json")).unwrap();
    let output = run_ok(
        ember()
            .args(["sample", "--length", "5", "--run"])
            .arg(&stripped)
            .env("RUST_LOG", "warn"),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unverified") && stderr.contains("step-00000010"),
        "{stderr}"
    );

    // An exploding loss is divergence (char-rnn's rule: past three times its first value).
    fails(
        "exploding loss",
        &mut train(
            &root.join("explode"),
            &["optimizer.lr=1e30", "optimizer.grad_clip_norm=0"],
        ),
        DIVERGED,
        &["three times its first value"],
    );

    // A beam too wide to be useful or affordable.
    fails(
        "beam_width=1000000",
        &mut train_with(
            &repo("configs/sort-letters.toml"),
            &root.join("beam"),
            &["task.beam_width=1000000"],
        ),
        USAGE,
        &["task.beam_width", "at most"],
    );
}

/// Issue 18: `import-torch` that fails leaves no `--out`, names `--out` when it holds a run,
/// and reads a safetensors file whatever its name; a run resumes from another directory.
#[test]
fn imports_fail_cleanly_and_runs_resume_from_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let run_dir = root.join("run");
    run_ok(&mut train(&run_dir, &["train.steps=10"]));
    let exported = root.join("model.safetensors");
    run_ok(
        ember()
            .args(["export-torch", "--run"])
            .arg(&run_dir)
            .arg("--out")
            .arg(&exported),
    );
    let import = |state_dict: &Path, out: &Path| {
        let mut command = ember();
        command
            .args(["import-torch", "--cell", "lstm", "--state-dict"])
            .arg(state_dict)
            .arg("--vocab-from")
            .arg(repo("data/tinyshakespeare.txt"))
            .arg("--out")
            .arg(out);
        command
    };
    // Named without its extension, the file is still read as safetensors.
    let unnamed = root.join("weights.bin");
    std::fs::copy(&exported, &unnamed).unwrap();
    let imported = root.join("imported");
    run_ok(&mut import(&unnamed, &imported));
    fails(
        "import over a run",
        &mut import(&unnamed, &imported),
        RUN,
        &["already holds a run", "--out"],
    );

    // NaN weights: refused, and no --out left behind.
    let mut bytes = std::fs::read(&exported).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let first_value = 8 + header_len;
    bytes[first_value..first_value + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    let poisoned = root.join("nan.safetensors");
    std::fs::write(&poisoned, bytes).unwrap();
    let out = root.join("nan-run");
    fails("NaN weights", &mut import(&poisoned, &out), DATA, &["NaN"]);
    assert!(!out.exists(), "a failed import left {}", out.display());

    // A model whose loss is finite but whose perplexity overflows: `eval` says why it is null.
    // A head bias of 1e4 on the first character (a newline) and a text without newlines make
    // the loss about 1e4 nats, and exp(1e4) is past the largest f64 (about exp(709.8)).
    let bytes = std::fs::read(&exported).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .map(|(key, view)| (key, view.shape().to_vec(), view.data().to_vec()))
        .collect();
    let (_, _, bias) = tensors
        .iter_mut()
        .find(|(key, ..)| key == "head.bias")
        .unwrap();
    bias[..4].copy_from_slice(&1e4f32.to_le_bytes());
    let views: Vec<_> = tensors
        .iter()
        .map(|(key, shape, data)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data);
            (key.clone(), view.unwrap())
        })
        .collect();
    let biased = root.join("biased.safetensors");
    std::fs::write(&biased, safetensors::serialize(views, None).unwrap()).unwrap();
    let overflowing = root.join("overflowing");
    run_ok(&mut import(&biased, &overflowing));
    let text = root.join("line.txt");
    std::fs::write(&text, "Before we proceed any further, hear me speak.").unwrap();
    let output = run_ok(on_run("eval", &overflowing).arg("--text").arg(&text));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(report["loss"].as_f64().unwrap() > 1000.0, "{report}");
    assert!(report["perplexity"].is_null(), "{report}");
    assert!(
        report["perplexity_note"]
            .as_str()
            .unwrap()
            .contains("exp(loss)"),
        "{report}"
    );

    // Resumed from another working directory: data.path was recorded absolute.
    let elsewhere = tempfile::tempdir().unwrap();
    run_ok(resume(&run_dir, &["train.steps=12"]).current_dir(elsewhere.path()));
    // A run recorded with a relative data.path (before paths were made absolute): the error
    // says what the path is relative to.
    let config_path = run_dir.join("config.toml");
    let config = std::fs::read_to_string(&config_path).unwrap();
    let absolute = repo("data/tinyshakespeare.txt").display().to_string();
    assert!(config.contains(&absolute), "{config}");
    std::fs::write(
        &config_path,
        config.replace(&absolute, "data/tinyshakespeare.txt"),
    )
    .unwrap();
    fails(
        "relative data.path from elsewhere",
        resume(&run_dir, &["train.steps=14"]).current_dir(elsewhere.path()),
        USAGE,
        &[
            "data.path",
            "relative to the directory the run was started in",
        ],
    );
    run_ok(
        resume(
            &run_dir,
            &["train.steps=14", &format!("data.path={absolute:?}")],
        )
        .current_dir(elsewhere.path()),
    );
}

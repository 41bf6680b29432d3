//! `ember bench --ranks N`: data-parallel scaling on this machine. One `ember train` process with
//! N threads against `mpirun -n N` ranks of one thread each, on the same config and global
//! batch, with the gradient all-reduce's time per step and its share of the step.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use ember_train::{MetricsRecord, RunConfig, read_metrics};
use serde::Serialize;

/// One layout's measurement: a JSON line of `ember bench --ranks`.
#[derive(Debug, Serialize)]
struct ScalingReport {
    case: &'static str,
    config: String,
    ranks: usize,
    threads_per_rank: usize,
    steps_timed: usize,
    chars_per_sec: f64,
    step_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    allreduce_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    allreduce_share: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    speedup: Option<f64>,
}

/// Trains `config` for about `seconds` in each layout and prints one JSON line per layout.
pub fn run(ranks: usize, config: &Path, seconds: f64) -> Result<()> {
    if ranks < 2 {
        return Err(crate::usage(format!(
            "--ranks must be 2 or more, got {ranks}"
        )));
    }
    let parsed = RunConfig::load(config, &[])?;
    let chars_per_step = (parsed.data.batch_size * parsed.data.seq_len) as f64;
    let exe = std::env::current_exe().context("finding the ember binary")?;
    let work = tempfile_dir()?;
    // A first timing decides the steps: the runs then last about `seconds` each.
    let probe = train(&exe, None, config, &work.join("probe"), 1, 12, 4)?;
    let probe_rate = timed(&probe).map_or(chars_per_step, |(rate, _, _)| rate);
    let steps = ((seconds * probe_rate / chars_per_step).ceil() as u64).max(20);
    let log_every = (steps / 10).max(1);

    let alone = train(
        &exe,
        None,
        config,
        &work.join("one"),
        ranks,
        steps,
        log_every,
    )?;
    let together = train(
        &exe,
        Some(ranks),
        config,
        &work.join("ranks"),
        1,
        steps,
        log_every,
    )?;
    let _ = std::fs::remove_dir_all(&work);

    let report = |records: &[MetricsRecord], layout_ranks, threads, baseline: Option<f64>| {
        let (rate, reduce, count) = timed(records).context("no timed steps were logged")?;
        let step_ms = chars_per_step / rate * 1e3;
        Ok::<_, anyhow::Error>(ScalingReport {
            case: "mpi-scaling",
            config: config.display().to_string(),
            ranks: layout_ranks,
            threads_per_rank: threads,
            steps_timed: count,
            chars_per_sec: rate.round(),
            step_ms: (step_ms * 1e3).round() / 1e3,
            allreduce_ms: reduce.map(|ms| (ms * 1e3).round() / 1e3),
            allreduce_share: reduce.map(|ms| (ms / step_ms * 1e3).round() / 1e3),
            speedup: baseline.map(|b| (rate / b * 1e3).round() / 1e3),
        })
    };
    let alone = report(&alone, 1, ranks, None)?;
    let baseline = alone.chars_per_sec;
    let together = report(&together, ranks, 1, Some(baseline))?;
    for line in [alone, together] {
        println!("{}", serde_json::to_string(&line)?);
    }
    Ok(())
}

/// The mean chars/s and all-reduce time of the records after the first (compilation, first
/// allocations and the pool's start are in that one), and how many steps they cover.
fn timed(records: &[MetricsRecord]) -> Option<(f64, Option<f64>, usize)> {
    let timed = records.get(1..).filter(|r| !r.is_empty())?;
    let steps = (timed.last()?.step - records[0].step) as usize;
    let rate = timed.iter().map(|r| r.chars_per_sec).sum::<f64>() / timed.len() as f64;
    let reduce: Vec<f64> = timed.iter().filter_map(|r| r.allreduce_ms).collect();
    let reduce = (!reduce.is_empty()).then(|| reduce.iter().sum::<f64>() / reduce.len() as f64);
    Some((rate, reduce, steps))
}

/// Trains `config` in `run_dir`: one process with `threads` threads, or `ranks` ranks under
/// `mpirun` bound one to a core; returns its metrics.
fn train(
    exe: &Path,
    ranks: Option<usize>,
    config: &Path,
    run_dir: &Path,
    threads: usize,
    steps: u64,
    log_every: u64,
) -> Result<Vec<MetricsRecord>> {
    let mut command = match ranks {
        None => Command::new(exe),
        Some(ranks) => {
            let mut command = Command::new("mpirun");
            if running_as_root() {
                command.arg("--allow-run-as-root");
            }
            command
                .args(["--bind-to", "core", "-n", &ranks.to_string()])
                .arg(exe);
            command
        }
    };
    command
        .arg("train")
        .arg("--config")
        .arg(config)
        .arg("--run-dir")
        .arg(run_dir);
    for setting in [
        format!("train.steps={steps}"),
        format!("train.log_every={log_every}"),
        format!("train.checkpoint_every={steps}"),
        format!("train.threads={threads}"),
        "train.eval_every=0".into(),
    ] {
        command.args(["--set", &setting]);
    }
    let output = command
        .env("RUST_LOG", "warn")
        .output()
        .with_context(|| format!("running {command:?} (is Open MPI installed?)"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(read_metrics(&run_dir.join(ember_train::METRICS_FILE))?
        .into_iter()
        .map(|(_, record)| record)
        .collect())
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// A fresh directory for the runs, under the system's temporary directory.
fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("ember-scaling-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

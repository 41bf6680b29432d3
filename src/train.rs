//! `ember train`: a new run from a config, or a run resumed, in one process or as one rank of a
//! data-parallel run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use burn::tensor::Device;
use ember_model::{Seq2Seq, SequenceClassifier, SequenceTagger};
use ember_train::{
    CONFIG_FILE, DivergencePolicy, MetricsRecord, Ranks, RunConfig, RunOutcome, TaskKind,
    TaskTrainer, TrainError, Trainer, Training,
};
use indicatif::{ProgressBar, ProgressStyle};

use crate::{TrainArgs, usage};

/// The task of the run in `run_dir`, as its saved config says (a language model when it cannot
/// be read: resuming then reports what is wrong with the directory).
pub(crate) fn run_task(run_dir: &Path) -> TaskKind {
    RunConfig::load(&run_dir.join(CONFIG_FILE), &[])
        .map_or(TaskKind::LanguageModel, |c| c.task.kind)
}

fn new_trainer(
    config: RunConfig,
    run_dir: &Path,
    device: &Device,
    ranks: &Ranks,
) -> Result<Box<dyn Training>> {
    let ranks = ranks.clone();
    Ok(match config.task.kind {
        TaskKind::LanguageModel => Box::new(Trainer::create_on(config, run_dir, device, ranks)?),
        TaskKind::Classify => Box::new(TaskTrainer::<SequenceClassifier>::create_on(
            config, run_dir, device, ranks,
        )?),
        TaskKind::Tag => Box::new(TaskTrainer::<SequenceTagger>::create_on(
            config, run_dir, device, ranks,
        )?),
        TaskKind::Seq2seq => Box::new(TaskTrainer::<Seq2Seq>::create_on(
            config, run_dir, device, ranks,
        )?),
    })
}

fn resumed_trainer(
    run_dir: &Path,
    overrides: &[String],
    device: &Device,
    ranks: &Ranks,
) -> Result<Box<dyn Training>> {
    let ranks = ranks.clone();
    Ok(match run_task(run_dir) {
        TaskKind::LanguageModel => Box::new(Trainer::resume_on(run_dir, overrides, device, ranks)?),
        TaskKind::Classify => Box::new(TaskTrainer::<SequenceClassifier>::resume_on(
            run_dir, overrides, device, ranks,
        )?),
        TaskKind::Tag => Box::new(TaskTrainer::<SequenceTagger>::resume_on(
            run_dir, overrides, device, ranks,
        )?),
        TaskKind::Seq2seq => Box::new(TaskTrainer::<Seq2Seq>::resume_on(
            run_dir, overrides, device, ranks,
        )?),
    })
}

/// `ember train`: one process, or, under `mpirun` in a build with the `mpi` feature, one rank of
/// a data-parallel run.
pub(crate) fn train(args: TrainArgs, device: &Device, interactive: bool) -> Result<()> {
    #[cfg(feature = "mpi")]
    if let Some(world) = crate::mpi::World::launched(&args)? {
        return crate::mpi::train(args, device, interactive, world);
    }
    let ranks = Ranks::single();
    let started = start(&args, device, &ranks)?;
    run(device, interactive, &ranks, started)
}

/// A run being trained: its directory, its trainer, and for a new run what the directory held
/// before.
pub(crate) type Started = (PathBuf, Box<dyn Training>, Option<NewRunDir>);

/// Creates or reopens the run `args` names, as this rank of `ranks`.
pub(crate) fn start(args: &TrainArgs, device: &Device, ranks: &Ranks) -> Result<Started> {
    Ok(match (&args.config, &args.resume) {
        (_, Some(run_dir)) => (
            run_dir.clone(),
            resumed_trainer(run_dir, &args.overrides, device, ranks)?,
            None,
        ),
        (Some(config_path), None) => {
            // A config file that cannot be read is a command-line error, like a bad key in it.
            let config = RunConfig::load(config_path, &args.overrides).map_err(|e| match e {
                TrainError::Io { path, source } => usage(format!("{}: {source}", path.display())),
                e => e.into(),
            })?;
            let run_dir = args
                .run_dir
                .clone()
                .unwrap_or_else(|| default_run_dir(config_path));
            let before = ranks.is_primary().then(|| NewRunDir::before(&run_dir));
            let trainer = new_trainer(config, &run_dir, device, ranks)?;
            (run_dir, trainer, before)
        }
        (None, None) => return Err(usage("give --config FILE for a new run or --resume DIR")),
    })
}

/// Trains a started run to its end or to a stop signal; only rank 0 shows progress and says
/// how it ended.
pub(crate) fn run(
    device: &Device,
    interactive: bool,
    ranks: &Ranks,
    (run_dir, mut trainer, new_run): Started,
) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let announcer = stop_on_signals(stop.clone(), ranks, &run_dir)?;
    let interactive = interactive && ranks.is_primary();

    let total = trainer.config().train.steps;
    let bar = if interactive {
        ProgressBar::new(total)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  eta {eta}")
            .expect("a valid template"),
    );
    bar.set_position(trainer.progress().step);
    let mut last_val: Option<f64> = None;
    let mut on_record = |record: &MetricsRecord| {
        last_val = record.val_loss.or(last_val);
        bar.set_position(record.step);
        bar.set_message(format!(
            "loss {:.4}  val {}  {:.0} chars/s",
            record.loss,
            last_val.map_or("-".into(), |v| format!("{v:.4}")),
            record.chars_per_sec
        ));
    };
    let mut rollbacks = 0;
    let outcome = loop {
        let error = match trainer.run(&stop, &mut on_record) {
            Ok(outcome) => break outcome,
            Err(error) => error,
        };
        let train_config = trainer.config().train.clone();
        let diverged = matches!(error, TrainError::Diverged { .. });
        if !diverged
            || train_config.on_divergence != DivergencePolicy::Rollback
            || rollbacks >= train_config.max_rollbacks
        {
            // The trainer still holds the run's lock: nothing else can be in the directory.
            if let Some(new_run) = &new_run {
                new_run.remove_unless_checkpointed();
            }
            return Err(error.into());
        }
        rollbacks += 1;
        let lr = trainer.config().optimizer.lr * train_config.rollback_lr_factor;
        if ranks.is_primary() {
            eprintln!(
                "{error}\nrollback {rollbacks} of {}: back to the last checkpoint with optimizer.lr = {lr:e}",
                train_config.max_rollbacks
            );
        }
        // The resumed trainer takes the run directory's lock, so this one must let it go first.
        drop(trainer);
        // In exponent form: TOML reads a huge f64 printed in full as an overflowing integer.
        trainer = resumed_trainer(&run_dir, &[format!("optimizer.lr={lr:e}")], device, ranks)?;
    };
    bar.finish_and_clear();
    if !ranks.is_primary() {
        return Ok(());
    }
    match outcome {
        RunOutcome::Finished => {
            let next = match trainer.config().task.kind {
                TaskKind::LanguageModel => "sample it: ember sample",
                _ => "use it: ember predict",
            };
            println!(
                "trained {} steps; run in {} ({next} --run {})",
                trainer.progress().step,
                run_dir.display(),
                run_dir.display()
            )
        }
        RunOutcome::Interrupted => {
            // The stop is announced before it is reported done.
            let _ = announcer.join();
            // A write error is ignored: after SIGHUP the terminal may be gone.
            let _ = writeln!(
                std::io::stdout(),
                "stopped at step {}; checkpoint saved (resume: ember train --resume {})",
                trainer.progress().step,
                run_dir.display()
            );
        }
    }
    Ok(())
}

/// Raises `stop` on the first SIGINT (Ctrl-C), SIGTERM (schedulers, containers, service
/// managers) or SIGHUP (a closed terminal), so that training saves a checkpoint of the current
/// step and exits; a second one of any of them ends the process at once with 128 + its number,
/// leaving the last checkpoint on disk intact.
///
/// Under `mpirun` a rank may also be stopped because another rank failed; it says so, and that
/// the run resumes from its last checkpoint.
fn stop_on_signals(
    stop: Arc<AtomicBool>,
    ranks: &Ranks,
    run_dir: &Path,
) -> Result<std::thread::JoinHandle<()>> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    use std::sync::atomic::{AtomicI32, AtomicUsize};
    static RECEIVED: AtomicUsize = AtomicUsize::new(0);
    static FIRST: AtomicI32 = AtomicI32::new(0);
    for signal in [SIGINT, SIGTERM, SIGHUP] {
        let stop = stop.clone();
        // In the handler itself, with one atomic count: a queue read by a thread merges two of
        // the same signal sent close together, and two handlers that interrupt each other must
        // still tell first from second.
        let action = move || {
            if RECEIVED.fetch_add(1, Ordering::SeqCst) > 0 {
                signal_hook::low_level::exit(128 + signal);
            }
            FIRST.store(signal, Ordering::SeqCst);
            stop.store(true, Ordering::SeqCst);
        };
        // SAFETY: the action only touches atomics and calls `_exit`, all async-signal-safe.
        unsafe { signal_hook::low_level::register(signal, action) }
            .context("installing the signal handlers")?;
    }
    let distributed = ranks.is_distributed().then(|| {
        (
            ranks.rank(),
            format!("mpirun ... ember train --resume {}", run_dir.display()),
        )
    });
    // Saying so is not async-signal-safe: a thread watches for the flag and says it.
    Ok(std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let name = match FIRST.load(Ordering::SeqCst) {
            SIGINT => "Ctrl-C",
            SIGTERM => "SIGTERM",
            SIGHUP => "SIGHUP",
            _ => "a signal",
        };
        // Not eprintln!: after SIGHUP the terminal may be gone, and writing must not panic.
        let _ = match &distributed {
            None => writeln!(
                std::io::stderr(),
                "\nstopping on {name}: saving a checkpoint (a second signal quits at once)"
            ),
            Some((rank, resume)) => writeln!(
                std::io::stderr(),
                "\nrank {rank}: stopping on {name}: saving a checkpoint if every rank can; if \
                 another rank has failed, mpirun ends this one too, and the run resumes from \
                 its last checkpoint ({resume})"
            ),
        };
    }))
}

/// What a new run's directory held before `ember train` created the run in it, so that a run
/// that fails before its first checkpoint (which could neither resume to anything nor be
/// created again under the same name) leaves nothing behind.
pub(crate) struct NewRunDir {
    dir: PathBuf,
    /// The topmost of `dir` and its ancestors that did not exist yet.
    created_from: Option<PathBuf>,
    /// The names in `dir` already there.
    existing: std::collections::BTreeSet<std::ffi::OsString>,
}

impl NewRunDir {
    fn before(dir: &Path) -> Self {
        let created_from = dir
            .ancestors()
            .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
            .last()
            .map(Path::to_path_buf);
        let existing = std::fs::read_dir(dir)
            .map(|entries| entries.filter_map(|e| Some(e.ok()?.file_name())).collect())
            .unwrap_or_default();
        NewRunDir {
            dir: dir.to_path_buf(),
            created_from,
            existing,
        }
    }

    /// Removes what this command created, unless a checkpoint was saved (the run then resumes).
    fn remove_unless_checkpointed(&self) {
        // A checkpoints directory that cannot be listed may hold one: nothing is removed then.
        if !ember_train::CheckpointDir::new(&self.dir)
            .steps()
            .is_ok_and(|steps| steps.is_empty())
        {
            return;
        }
        let removed = match &self.created_from {
            Some(top) => std::fs::remove_dir_all(&self.dir).map(|()| {
                // The parents this command made, as far as they are empty.
                for parent in self.dir.ancestors().skip(1) {
                    if parent.as_os_str().is_empty()
                        || !parent.starts_with(top)
                        || std::fs::remove_dir(parent).is_err()
                    {
                        break;
                    }
                }
            }),
            None => std::fs::read_dir(&self.dir).and_then(|entries| {
                for entry in entries {
                    let entry = entry?;
                    if self.existing.contains(&entry.file_name()) {
                        continue;
                    }
                    match entry.file_type()?.is_dir() {
                        true => std::fs::remove_dir_all(entry.path())?,
                        false => std::fs::remove_file(entry.path())?,
                    }
                }
                Ok(())
            }),
        };
        match removed {
            Ok(()) => eprintln!(
                "no checkpoint was saved: removed the run from {}",
                self.dir.display()
            ),
            Err(error) => eprintln!(
                "no checkpoint was saved, and removing the run from {} failed: {error}",
                self.dir.display()
            ),
        }
    }
}

fn default_run_dir(config_path: &Path) -> PathBuf {
    let stem = config_path
        .file_stem()
        .map_or("run".into(), |s| s.to_string_lossy().into_owned());
    PathBuf::from("runs").join(stem)
}

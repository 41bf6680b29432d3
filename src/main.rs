//! `ember`: train, sample, evaluate and plot character-level recurrent networks.

mod bench;
mod device;
#[cfg(feature = "mpi")]
mod mpi;
mod train;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::module::Module;
use burn::tensor::Device;
use clap::{Args, Parser, Subcommand};
use ember_data::DataError;
use ember_model::torch::{TorchError, TorchLayout};
use ember_model::{SampleConfig, SampleError, Seq2Seq, SequenceClassifier, SequenceTagger};
use ember_train::inspect::group_digits;
use ember_train::{
    CONFIG_FILE, Inspection, Run, RunInfo, TaskKind, TaskRun, TrainError, human_bytes, plot_losses,
};
use indicatif::{ProgressBar, ProgressStyle};

// Training frees and takes back megabytes every step; glibc's malloc hands such blocks back to
// the kernel and faults them in again each time, which costs two cores half their time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Has mimalloc keep the memory a step frees for the next step. By default it hands freed pages
/// back to the kernel after a delay, and training faulted them in again, zeroed, two megabytes
/// at a time (three seconds of `lib-lstm-2x128`: 10,869 page faults before, 3,689 to 7,541
/// with this; 447 with `MIMALLOC_PURGE_DELAY=-1` set before the process starts).
fn keep_freed_memory() {
    // `mi_option_purge_delay` in mimalloc 3, which `mimalloc =0.1.52` builds; `-1` never purges.
    // Its default, 1000 (ms), confirms that the index names it; any other value set through
    // `MIMALLOC_PURGE_DELAY` stays as it is.
    const PURGE_DELAY: std::ffi::c_int = 16;
    unsafe extern "C" {
        fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
        fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    }
    // SAFETY: both are plain functions of the allocator linked in above, on an option index in
    // range; setting an option is thread-safe.
    unsafe {
        if mi_option_get(PURGE_DELAY) == 1000 {
            mi_option_set(PURGE_DELAY, -1);
        }
    }
}

#[derive(Parser)]
#[command(
    name = "ember",
    version,
    about = "Recurrent neural networks on Burn: train, sample, evaluate"
)]
struct Cli {
    /// The backend device: one of the backends compiled in (see `ember devices`); defaults to
    /// BURN_DEVICE, else the fastest CPU backend.
    #[arg(long, global = true)]
    device: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model from a config file, or resume a run.
    Train(TrainArgs),
    /// Print text sampled from a run's newest checkpoint.
    Sample(SampleArgs),
    /// Print the loss of a run's model on a text file, as JSON.
    Eval(EvalArgs),
    /// Answer every input line with a sequence run's model (class, tags or output sequence).
    Predict(PredictArgs),
    /// Draw a run's training and validation loss curves as an SVG image in the run directory.
    Plot(PlotArgs),
    /// Write an HTML page that colours a text by each hidden unit's activation.
    Inspect(InspectArgs),
    /// Turn a PyTorch character model's state dict into a run directory.
    ImportTorch(ImportTorchArgs),
    /// Write a run's newest weights as a PyTorch state dict (.safetensors).
    ExportTorch(ExportTorchArgs),
    /// Describe a run: its config, step, best validation loss, size, checkpoints and backend.
    Info(InfoArgs),
    /// Measure training and sampling throughput and peak memory, one JSON line per case.
    Bench(BenchArgs),
    /// List the backends compiled into this binary.
    Devices,
}

#[derive(Args)]
pub(crate) struct TrainArgs {
    /// The TOML config of a new run.
    #[arg(long, conflicts_with = "resume", required_unless_present = "resume")]
    pub(crate) config: Option<PathBuf>,
    /// Resume the run in this directory from its newest checkpoint.
    #[arg(long)]
    pub(crate) resume: Option<PathBuf>,
    /// Override a config value, `section.key=value` (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub(crate) overrides: Vec<String>,
    /// Where the new run's checkpoints, config and metrics go (default: `runs/<config name>`).
    #[arg(long)]
    pub(crate) run_dir: Option<PathBuf>,
}

#[derive(Args)]
struct SampleArgs {
    /// The run directory.
    #[arg(long)]
    run: PathBuf,
    /// Text the model reads before it starts writing (default: a newline, or the vocabulary's
    /// first character if it has no newline).
    #[arg(long)]
    prime: Option<String>,
    /// How many characters to write.
    #[arg(long, default_value_t = 500)]
    length: usize,
    /// Below 1 is more conservative, above 1 more varied.
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Draw only among the k most likely characters.
    #[arg(long)]
    top_k: Option<usize>,
    /// Always take the most likely character.
    #[arg(long)]
    argmax: bool,
    /// The random seed: the same seed gives the same text.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
struct EvalArgs {
    /// The run directory.
    #[arg(long)]
    run: PathBuf,
    /// The text to evaluate on, read as one stream.
    #[arg(long)]
    text: PathBuf,
}

#[derive(Args)]
struct InspectArgs {
    /// The run directory.
    #[arg(long)]
    run: PathBuf,
    /// The text to read through the model, as one stream from a zero state (as `eval` reads it).
    #[arg(long)]
    text: PathBuf,
    /// Read at most this many characters; a longer text is cut, with a note on the page.
    #[arg(long, default_value_t = ember_train::inspect::DEFAULT_CHARS)]
    chars: usize,
    /// The page to write (default: `inspect.html` in the run directory).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct PredictArgs {
    /// The run directory of a `classify`, `tag` or `seq2seq` run.
    #[arg(long)]
    run: PathBuf,
    /// The lines to answer, one input per line (default: standard input).
    #[arg(long)]
    input: Option<PathBuf>,
    /// The longest line to answer, in characters (the model reads a line whole: about 2 KB of
    /// memory per character).
    #[arg(long, default_value_t = ember_train::MAX_LINE_CHARS)]
    max_line_chars: usize,
}

#[derive(Args)]
struct ImportTorchArgs {
    /// `torch.save(model.state_dict())` (.pt) or the same as .safetensors, of a character model
    /// named `embedding` (nn.Embedding, optional), `rnn` (nn.RNN/LSTM/GRU, batch_first) and
    /// `head` (nn.Linear), or `encoder` / `rnn` / `decoder` as pytorch/examples'
    /// word_language_model names them.
    #[arg(long)]
    state_dict: PathBuf,
    /// The recurrence of the `rnn` module: rnn, lstm or gru (default: read from the tensors;
    /// given, it must match them).
    #[arg(long)]
    cell: Option<ember_model::CellKind>,
    /// Rename the keys under prefix OLD to NEW before reading them (repeatable; whole dotted
    /// components: `--rename fc=head` renames `fc.weight`, not `fc2.weight`; `--rename module=`
    /// drops a prefix).
    #[arg(long = "rename", value_name = "OLD=NEW", value_parser = parse_rename)]
    renames: Vec<(String, String)>,
    /// The text whose sorted distinct characters are the model's vocabulary.
    #[arg(long)]
    vocab_from: PathBuf,
    /// The run directory to create.
    #[arg(long)]
    out: PathBuf,
}

/// `OLD=NEW` of `--rename`.
fn parse_rename(text: &str) -> Result<(String, String), String> {
    let (old, new) = text
        .split_once('=')
        .ok_or_else(|| format!("expected OLD=NEW, got `{text}`"))?;
    let valid = |prefix: &str| !prefix.starts_with('.') && !prefix.ends_with('.');
    if old.is_empty() || !valid(old) || !valid(new) {
        return Err(format!(
            "expected OLD=NEW with OLD a key prefix such as `fc` (no leading or trailing dot), got `{text}`"
        ));
    }
    Ok((old.to_string(), new.to_string()))
}

#[derive(Args)]
struct ExportTorchArgs {
    /// The run directory.
    #[arg(long)]
    run: PathBuf,
    /// The .safetensors file to write.
    #[arg(long)]
    out: PathBuf,
    /// The module names to write: `reference` (embedding / rnn / head) or
    /// `word-language-model` (encoder / rnn / decoder, as pytorch/examples names them).
    #[arg(long, default_value = "reference")]
    layout: TorchLayout,
}

#[derive(Args)]
struct InfoArgs {
    /// The run directory.
    #[arg(long)]
    run: PathBuf,
}

#[derive(Args)]
struct BenchArgs {
    /// Only the cases whose name contains this (e.g. `lstm-2x128`); default: all.
    #[arg(long)]
    filter: Option<String>,
    /// Measure exactly this case in this process (what `ember bench` runs per child).
    #[arg(long, conflicts_with = "filter")]
    case: Option<String>,
    /// Seconds of training to time per model (sampling gets half).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Also measure PyTorch on each case, in the same run, with this Python interpreter (one
    /// with `torch` installed): `bench/pytorch_baseline.py`, on 2 threads for the
    /// language-model cases and on as many as Burn's pool has for the library cases.
    #[arg(long, conflicts_with = "case")]
    pytorch: Option<PathBuf>,
    /// Measure each case and its PyTorch baseline this many times in turn, and report the round
    /// whose ratio to PyTorch is the median, with every round's ratio
    /// (`ratio_to_pytorch_measured_train_rounds`).
    #[arg(long, default_value_t = 1, requires = "pytorch", value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Instead of the cases: data-parallel scaling, one process on N threads against
    /// `mpirun -n N` ranks of one thread (a build with the `mpi` feature).
    #[arg(long, value_name = "N", conflicts_with_all = ["case", "filter", "pytorch"])]
    ranks: Option<usize>,
    /// The config `--ranks` trains.
    #[arg(
        long,
        default_value = "configs/shakespeare-lstm.toml",
        requires = "ranks"
    )]
    train_config: PathBuf,
}

#[derive(Args)]
struct PlotArgs {
    /// The run directory.
    #[arg(long)]
    run: PathBuf,
}

fn main() {
    keep_freed_memory();
    let cli = Cli::parse();
    if let Err(error) = run(cli) {
        if closed_pipe(&error) {
            // The reader (`head`, a pager) has all it wants: not a failure.
            std::process::exit(0);
        }
        if let Some(Reported(status)) = error.downcast_ref::<Reported>() {
            std::process::exit(*status);
        }
        eprintln!("error: {}", message(&error));
        std::process::exit(exit_status(&error));
    }
}

/// An error's message with the causes it does not already say (library errors name theirs).
pub(crate) fn message(error: &anyhow::Error) -> String {
    let mut message = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !message.contains(&cause) {
            message = format!("{message}: {cause}");
        }
    }
    message
}

/// An error already reported (by rank 0 of a data-parallel run): exit with its status alone.
#[derive(Debug, thiserror::Error)]
#[error("exit status {0}")]
pub(crate) struct Reported(pub(crate) i32);

/// A command line that asks for something impossible; exit status 2, as clap's own errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

pub(crate) fn usage(message: impl Into<String>) -> anyhow::Error {
    UsageError(message.into()).into()
}

/// Whether `error` is a write to a pipe whose reader has gone.
fn closed_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The exit status of a failed command, by what went wrong (README, "Exit status"): 2 the
/// command line or a config, 3 the input data, 4 a run directory or checkpoint, 5 the file
/// system, 6 training diverged, 1 anything else.
pub(crate) fn exit_status(error: &anyhow::Error) -> i32 {
    for cause in error.chain() {
        if cause.is::<UsageError>() || cause.is::<SampleError>() {
            return 2;
        }
        if cause.is::<DataError>() || cause.is::<TorchError>() {
            return 3;
        }
        if let Some(error) = cause.downcast_ref::<TrainError>() {
            return match error {
                TrainError::Config { .. }
                | TrainError::Output { .. }
                | TrainError::TooLarge { .. } => 2,
                TrainError::Data(_) | TrainError::Torch(_) => 3,
                TrainError::NoRun(_)
                | TrainError::NoCheckpoint(_)
                | TrainError::Checkpoint { .. }
                | TrainError::Mismatch { .. }
                | TrainError::Locked(_)
                | TrainError::Metrics { .. }
                | TrainError::RunExists { .. }
                | TrainError::NotEmpty { .. } => 4,
                TrainError::Io { .. } | TrainError::Plot { .. } => 5,
                TrainError::Diverged { .. } | TrainError::RanksDiverged { .. } => 6,
            };
        }
    }
    1
}

fn run(cli: Cli) -> Result<()> {
    let interactive = std::io::stderr().is_terminal();
    let level = if interactive { "warn" } else { "info" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp_secs()
        .init();
    if let Command::Devices = cli.command {
        println!("{}", device::available().join("\n"));
        return Ok(());
    }
    let device = device::select(cli.device.as_deref())?;
    let cli_device = cli.device.clone();
    match cli.command {
        Command::Train(args) => train::train(args, &device, interactive),
        Command::Sample(args) => sample(args, &device),
        Command::Eval(args) => eval(args, &device),
        Command::Predict(args) => predict(args, &device),
        Command::Plot(args) => plot(args),
        Command::Inspect(args) => inspect(args, &device),
        Command::Bench(args) => {
            if !(args.seconds.is_finite() && args.seconds > 0.0) {
                return Err(usage(format!(
                    "--seconds must be positive, got {}",
                    args.seconds
                )));
            }
            if let Some(ranks) = args.ranks {
                #[cfg(feature = "mpi")]
                return bench::scaling::run(ranks, &args.train_config, args.seconds);
                #[cfg(not(feature = "mpi"))]
                return Err(usage(format!(
                    "--ranks {ranks}: this ember was built without the `mpi` feature \
                     (cargo build --release --features mpi)"
                )));
            }
            match &args.case {
                Some(case) => bench::run_case(case, &device, args.seconds),
                None => bench::run_all(
                    args.filter.as_deref(),
                    &device,
                    cli_device.as_deref(),
                    args.seconds,
                    args.pytorch.as_deref(),
                    args.rounds as usize,
                ),
            }
        }
        Command::ImportTorch(args) => {
            let imported = ember_train::import_torch(
                &args.state_dict,
                args.cell,
                &args.renames,
                &args.vocab_from,
                &args.out,
                &device,
            )?;
            let model = &imported.model;
            println!(
                "imported a {}-layer {} of hidden size {} over {} characters ({} layout) into {} \
                 (sample it: ember sample --run {})",
                model.rnn.num_layers(),
                imported.cell,
                model.rnn.d_hidden(),
                model.vocab_size(),
                imported.layout,
                args.out.display(),
                args.out.display()
            );
            Ok(())
        }
        Command::ExportTorch(args) => {
            expect_language_model(&args.run, "export-torch")?;
            let tensors = ember_train::export_torch(&args.run, &args.out, args.layout, &device)?;
            println!(
                "{} ({tensors} tensors, {} layout)",
                args.out.display(),
                args.layout
            );
            Ok(())
        }
        Command::Info(args) => info(args, &device),
        Command::Devices => unreachable!("handled above"),
    }
}

fn sample(args: SampleArgs, device: &Device) -> Result<()> {
    if args.length == 0 {
        return Err(usage("--length must be at least 1"));
    }
    expect_language_model(&args.run, "sample")?;
    let run = Run::open(&args.run, device)?;
    let prime = match args.prime {
        Some(prime) => prime,
        None if run.vocab.id('\n').is_some() => "\n".into(),
        None => run.vocab.chars()[0].to_string(),
    };
    let unknown = run.vocab.unknown_chars(&prime);
    if !unknown.is_empty() {
        return Err(usage(format!(
            "--prime has characters outside the run's vocabulary: {}",
            unknown
                .iter()
                .map(|c| format!("{c:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let prime_ids: Vec<usize> = run
        .vocab
        .encode(&prime)?
        .into_iter()
        .map(usize::from)
        .collect();
    let config = SampleConfig::new()
        .with_temperature(args.temperature)
        .with_top_k(args.top_k)
        .with_argmax(args.argmax)
        .with_seed(args.seed);
    let model = run.model.valid();
    let sampler = model.sampler(&prime_ids, config, device)?;
    // Written as drawn: a reader sees the text grow, and one that stops reading (`| head`)
    // ends the sampling at the next write.
    let stdout = std::io::stdout();
    let terminal = stdout.is_terminal();
    let mut out = std::io::BufWriter::new(stdout.lock());
    out.write_all(prime.as_bytes())?;
    let chars = run.vocab.chars();
    let mut buffer = [0u8; 4];
    for id in sampler.take(args.length) {
        let ch = chars[id];
        out.write_all(ch.encode_utf8(&mut buffer).as_bytes())?;
        if terminal && ch == '\n' {
            out.flush()?;
        }
    }
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

fn eval(args: EvalArgs, device: &Device) -> Result<()> {
    expect_language_model(&args.run, "eval")?;
    let run = Run::open(&args.run, device)?;
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} characters  eta {eta}")
            .expect("a valid template"),
    );
    let report = run.evaluate_file(
        &args.text,
        ember_train::EVAL_CHUNK,
        device,
        &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )?;
    bar.finish_and_clear();
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Refuses to treat a sequence run as a language model.
fn expect_language_model(run_dir: &Path, command: &str) -> Result<()> {
    let kind = train::run_task(run_dir);
    if kind != TaskKind::LanguageModel {
        return Err(usage(format!(
            "{} is a {} run, not a language model: `ember {command}` reads language models; \
             use `ember predict --run {}`",
            run_dir.display(),
            serde_json::to_value(kind)?.as_str().unwrap_or("sequence"),
            run_dir.display()
        )));
    }
    Ok(())
}

fn predict(args: PredictArgs, device: &Device) -> Result<()> {
    // The run is checked before the input is read: standard input may be slow or endless.
    let kind = train::run_task(&args.run);
    if kind == TaskKind::LanguageModel {
        if !args.run.join(CONFIG_FILE).is_file() {
            return Err(TrainError::NoRun(args.run.clone()).into());
        }
        return Err(usage(format!(
            "{} is a language model: use `ember sample` or `ember eval`",
            args.run.display()
        )));
    }
    let (bytes, origin) = match &args.input {
        Some(path) => match ember_data::read_text_file(path, u64::MAX) {
            Err(DataError::Empty { .. }) => (Vec::new(), path.clone()),
            bytes => (bytes?, path.clone()),
        },
        None => {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
                .context("reading standard input")?;
            (bytes, PathBuf::from("<stdin>"))
        }
    };
    let text = String::from_utf8(bytes).map_err(|e| DataError::InvalidUtf8 {
        path: origin.clone(),
        offset: e.utf8_error().valid_up_to(),
    })?;
    fn answer<M: ember_train::SequenceTask>(
        args: &PredictArgs,
        text: &str,
        origin: &Path,
        device: &Device,
    ) -> Result<Vec<String>> {
        let mut run = TaskRun::<M>::open(&args.run, device)?;
        run.max_line_chars = args.max_line_chars;
        Ok(run.answer(text, origin, device)?)
    }
    let answers = match kind {
        TaskKind::Classify => answer::<SequenceClassifier>(&args, &text, &origin, device)?,
        TaskKind::Tag => answer::<SequenceTagger>(&args, &text, &origin, device)?,
        TaskKind::Seq2seq => answer::<Seq2Seq>(&args, &text, &origin, device)?,
        TaskKind::LanguageModel => unreachable!("refused above"),
    };
    let mut out = std::io::stdout().lock();
    for answer in answers {
        writeln!(out, "{answer}")?;
    }
    Ok(())
}

fn info(args: InfoArgs, device: &Device) -> Result<()> {
    let info = RunInfo::read(&args.run, device)?;
    let config = &info.config;
    let model = &config.model;
    let task = serde_json::to_value(config.task.kind)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "run          {}", info.dir.display())?;
    writeln!(out, "task         {}", task.as_str().unwrap_or("?"))?;
    writeln!(
        out,
        "model        {} {} layers of {} (embedding {}, dropout {}): {} parameters, {} as f32",
        model.num_layers,
        model.cell,
        model.d_hidden,
        model.d_embed,
        model.dropout,
        group_digits(info.parameters),
        human_bytes(info.parameters as f64 * 4.0)
    )?;
    let newest = info.checkpoints.last().map(|&(step, _)| step);
    writeln!(
        out,
        "step         {} of train.steps = {}",
        newest.map_or("none (no checkpoint yet)".into(), |s| format!(
            "{s} (newest checkpoint)"
        )),
        config.train.steps
    )?;
    if let Some((step, loss)) = info.last_logged {
        writeln!(out, "last logged  step {step}, training loss {loss:.4}")?;
    }
    let best = |best: Option<(u64, f64)>| {
        best.map_or("none logged".into(), |(step, value)| {
            format!("{value:.4} at step {step}")
        })
    };
    writeln!(out, "best val     loss {}", best(info.best_val_loss))?;
    if config.task.kind != TaskKind::LanguageModel {
        writeln!(
            out,
            "best val     accuracy {}",
            best(info.best_val_accuracy)
        )?;
    }
    writeln!(
        out,
        "trained on   {}",
        info.backend
            .as_deref()
            .unwrap_or("not recorded (imported, or an older checkpoint)")
    )?;
    let sizes: Vec<String> = info
        .checkpoints
        .iter()
        .map(|&(step, bytes)| format!("step {step} {}", human_bytes(bytes as f64)))
        .collect();
    let total: u64 = info.checkpoints.iter().map(|&(_, bytes)| bytes).sum();
    writeln!(
        out,
        "checkpoints  {}: {} ({} together)",
        sizes.len(),
        sizes.join(", "),
        human_bytes(total as f64)
    )?;
    writeln!(
        out,
        "config       {}:",
        args.run.join(CONFIG_FILE).display()
    )?;
    writeln!(out, "{}", info.config_text.trim_end())?;
    Ok(())
}

fn plot(args: PlotArgs) -> Result<()> {
    let out = args.run.join("loss.svg");
    let points = plot_losses(&args.run, &out)?;
    println!("{} ({points} points)", out.display());
    Ok(())
}

fn inspect(args: InspectArgs, device: &Device) -> Result<()> {
    if args.chars == 0 {
        return Err(usage("--chars must be at least 1"));
    }
    expect_language_model(&args.run, "inspect")?;
    // The run's own page may go inside it; any other path only outside every run.
    let own_page = args.run.join("inspect.html");
    let out = args.out.unwrap_or_else(|| own_page.clone());
    ember_train::check_output(&out, out == own_page)?;
    let start = std::time::Instant::now();
    let run = Run::open(&args.run, device)?;
    let inspection = Inspection::new(&run, &args.text, args.chars, device)?;
    let html = inspection.to_html();
    ember_train::write_output(&out, html.as_bytes(), out == own_page)?;
    let cut = if inspection.is_cut() {
        format!(" of {}", group_digits(inspection.total_chars))
    } else {
        String::new()
    };
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "{} ({:.2} MB, {} characters{cut}, {:.1} s)",
        out.display(),
        html.len() as f64 / 1e6,
        group_digits(inspection.text.len()),
        start.elapsed().as_secs_f64()
    )?;
    if !inspection.ranked.is_empty() {
        writeln!(stdout, "the units that best track the text:")?;
    }
    for correlation in inspection.ranked.iter().take(3) {
        writeln!(stdout, "  {}", inspection.describe(correlation))?;
    }
    Ok(())
}

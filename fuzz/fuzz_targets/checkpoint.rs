//! `CheckpointDir::load` on damaged checkpoints: a real checkpoint of a small character model,
//! with the input's edits applied to its files, must load or give an error, never panic.
//!
//! Input: byte 0 picks a truncation (bits 0-1: which file, bit 2: whether) and whether the
//! checksums stay (bit 3: without them the damage reaches the decoders); then 4-byte edits of
//! (file, offset high, offset low, new byte).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use burn::tensor::Device;
use ember_model::{CellKind, CharLm, CharLmConfig};
use ember_train::{CheckpointDir, GradientStep, OptimizerConfig, Progress, char_lm_carried};
use libfuzzer_sys::fuzz_target;

const FILES: [&str; 4] = [
    "model.bpk",
    "optimizer.bpk",
    "carried_state.safetensors",
    "progress.json",
];

fn model(device: &Device) -> CharLm {
    CharLmConfig::new(7, CellKind::Lstm, 4)
        .with_num_layers(2)
        .with_d_embed(3)
        .init(device)
}

/// The files of one intact checkpoint and its checksums.
fn valid() -> &'static (Vec<Vec<u8>>, Vec<u8>) {
    static VALID: OnceLock<(Vec<Vec<u8>>, Vec<u8>)> = OnceLock::new();
    VALID.get_or_init(|| {
        let device = Device::flex().autodiff();
        let dir = tempfile::tempdir().unwrap();
        let lm = model(&device);
        let state = lm.zero_state(2, &device);
        let step = GradientStep::new(&OptimizerConfig::default());
        let mut progress = Progress::start();
        progress.step = 1;
        let saved: PathBuf = CheckpointDir::new(dir.path())
            .save(&lm, step.optimizer(), Some(&state), &progress)
            .unwrap();
        let files = FILES
            .iter()
            .map(|f| std::fs::read(saved.join(f)).unwrap())
            .collect();
        (files, std::fs::read(saved.join("checksums.json")).unwrap())
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, edits)) = data.split_first() else {
        return;
    };
    let (files, checksums) = valid();
    let mut files = files.clone();
    for edit in edits.chunks_exact(4) {
        let file = &mut files[edit[0] as usize % FILES.len()];
        if !file.is_empty() {
            let offset = u16::from_be_bytes([edit[1], edit[2]]) as usize % file.len();
            file[offset] = edit[3];
        }
    }
    if control & 4 != 0 {
        let file = &mut files[control as usize % FILES.len()];
        let keep = edits.len() % (file.len() + 1);
        file.truncate(keep);
    }

    let dir = tempfile::tempdir().unwrap();
    let step_dir = dir.path().join("checkpoints/step-00000001");
    std::fs::create_dir_all(&step_dir).unwrap();
    for (name, bytes) in FILES.iter().zip(&files) {
        std::fs::write(step_dir.join(name), bytes).unwrap();
    }
    if control & 8 == 0 {
        std::fs::write(step_dir.join("checksums.json"), checksums).unwrap();
    }
    let device = Device::flex().autodiff();
    let optimizer = GradientStep::new(&OptimizerConfig::default())
        .optimizer()
        .clone();
    let _ = CheckpointDir::new(dir.path()).load(1, model(&device), optimizer, &device, char_lm_carried);
});

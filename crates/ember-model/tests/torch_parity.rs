//! The cells against PyTorch: the fixtures in `tests/fixtures/torch` hold a 2-layer model of each
//! cell kind (computed with PyTorch 2.15 on CPU, see their README) with its logits, final states,
//! loss and every parameter's gradient on one `[4, 20]` batch of tinyshakespeare. Tolerances are
//! the README's: logits and states abs 1e-5, loss abs 1e-5 against the float64 loss, gradient
//! tensors abs 1e-5.

mod common;

use burn::tensor::Device;
use common::*;
use ember_model::torch::{StateDict, TorchError, TorchLayout};
use ember_model::{CellKind, CharLm};

const TOLERANCE: f64 = 1e-5;

fn check_fixture(name: &str, cell: CellKind, device: &Device, backend: &str) {
    let state_dict = StateDict::read(&fixtures_dir().join(format!("{name}.safetensors"))).unwrap();
    let device = device.clone().autodiff();
    let model = CharLm::from_state_dict(&state_dict, cell, &device).unwrap();
    let expected = Expected::read(name);
    let input = expected.ids("input", &device);
    let target = expected.ids("target", &device);

    let (logits, state) = model.forward(input, None);
    let what = |part: &str| format!("{name} on {backend}: {part}");
    assert_eq!(logits.dims(), [4, 20, 65]);
    assert_close(
        &what("logits"),
        &values(logits.clone()),
        &expected.get("logits").1,
        TOLERANCE,
    );
    assert_close(
        &what("h_n"),
        &values(state.hidden()),
        &expected.get("h_n").1,
        TOLERANCE,
    );
    if cell == CellKind::Lstm {
        let cell_state = state.cell().expect("an LSTM has a cell state");
        assert_close(
            &what("c_n"),
            &values(cell_state),
            &expected.get("c_n").1,
            TOLERANCE,
        );
    }

    let loss = CharLm::loss(logits, target);
    assert_close(
        &what("loss"),
        &values(loss.clone()),
        &expected.get("loss_f64").1,
        TOLERANCE,
    );

    let grads = loss.backward();
    let gradients = gradients_as_state_dict(&model, &grads);
    assert_eq!(gradients.tensors.len(), state_dict.tensors.len());
    for (key, gradient) in &gradients.tensors {
        let (shape, reference) = expected.get(&format!("grad.{key}"));
        assert_eq!(&gradient.shape, shape, "{}", what(key));
        assert_close(
            &what(&format!("grad.{key}")),
            &host_values(gradient),
            reference,
            TOLERANCE,
        );
    }
}

#[test]
fn rnn_matches_pytorch() {
    for (backend, device) in devices() {
        check_fixture("rnn", CellKind::Rnn, &device, backend);
    }
}

#[test]
fn lstm_matches_pytorch() {
    for (backend, device) in devices() {
        check_fixture("lstm", CellKind::Lstm, &device, backend);
    }
}

#[test]
fn gru_matches_pytorch() {
    for (backend, device) in devices() {
        check_fixture("gru", CellKind::Gru, &device, backend);
    }
}

#[test]
fn pickle_and_safetensors_hold_the_same_weights() {
    for name in ["rnn", "lstm", "gru"] {
        let pickle = StateDict::read(&fixtures_dir().join(format!("{name}.pt"))).unwrap();
        let safetensors =
            StateDict::read(&fixtures_dir().join(format!("{name}.safetensors"))).unwrap();
        assert_eq!(pickle, safetensors, "{name}");
    }
}

#[test]
fn state_dict_round_trip_changes_no_weight() {
    let dir = std::env::temp_dir().join(format!("ember-roundtrip-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, cell) in [
        ("rnn", CellKind::Rnn),
        ("lstm", CellKind::Lstm),
        ("gru", CellKind::Gru),
    ] {
        let original = StateDict::read(&fixtures_dir().join(format!("{name}.pt"))).unwrap();
        let model = CharLm::from_state_dict(&original, cell, &Device::flex()).unwrap();
        let path = dir.join(format!("{name}.safetensors"));
        model.to_state_dict().write_safetensors(&path).unwrap();
        assert_eq!(StateDict::read(&path).unwrap(), original, "{name}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn import_errors_name_the_key() {
    let original = StateDict::read(&fixtures_dir().join("lstm.safetensors")).unwrap();
    let device = Device::flex();

    let mut missing = original.clone();
    missing.tensors.remove("rnn.bias_hh_l1");
    let err = CharLm::from_state_dict(&missing, CellKind::Lstm, &device).unwrap_err();
    assert!(
        matches!(&err, TorchError::MissingKey(k) if k == "rnn.bias_hh_l1"),
        "{err}"
    );

    let mut extra = original.clone();
    extra.tensors.insert(
        "rnn.weight_hr_l0".into(),
        original.tensors["head.bias"].clone(),
    );
    let err = CharLm::from_state_dict(&extra, CellKind::Lstm, &device).unwrap_err();
    assert!(err.to_string().contains("rnn.weight_hr_l0"), "{err}");

    // An LSTM state dict read as a GRU: `weight_hh_l0` has 4 gate blocks of 32 rows.
    assert_eq!(original.cell_kind().unwrap(), CellKind::Lstm);
    let err = CharLm::from_state_dict(&original, CellKind::Gru, &device).unwrap_err();
    assert!(
        matches!(
            &err,
            TorchError::Cell {
                expected: CellKind::Gru,
                found: CellKind::Lstm,
                rows: 128,
                gates: 4,
                d_hidden: 32,
                ..
            }
        ),
        "{err}"
    );

    // The word_language_model's names: the error lists the keys and the renames that fit.
    let mut wlm = original.clone();
    wlm.rename_prefixes(&[
        ("embedding".into(), "encoder".into()),
        ("head".into(), "decoder".into()),
    ]);
    let err = CharLm::from_state_dict(&wlm, CellKind::Lstm, &device).unwrap_err();
    assert!(
        matches!(&err, TorchError::Layout { missing, rename, .. }
            if missing == "head.weight"
                && rename == &[("decoder".to_string(), "head".to_string()),
                               ("encoder".to_string(), "embedding".to_string())]),
        "{err}"
    );
    assert_eq!(TorchLayout::detect(&wlm), TorchLayout::WordLanguageModel);
    let back = wlm.into_reference(TorchLayout::WordLanguageModel);
    assert_eq!(back, original);
    assert!(CharLm::from_state_dict(&back, CellKind::Lstm, &device).is_ok());

    let err = StateDict::read(&fixtures_dir().join("batch.json")).unwrap_err();
    assert!(err.to_string().contains("batch.json"), "{err}");
}

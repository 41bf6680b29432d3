//! The project builds and learns: its binary, run as a user would, beats the mean guess.

#[test]
fn the_project_runs_and_learns() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_use-as-library"))
        .arg("600")
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let figures: Vec<f64> = stdout
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|word| word.trim_end_matches('.').parse().ok())
        .collect();
    // "... error E on sums of 5-15 digits (always guessing the mean: B)".
    let (error, baseline) = (figures[0], figures[figures.len() - 1]);
    // Sums of 5 to 15 digits spread by about 14 around their mean; a model that reads the digits
    // must do far better than guessing it.
    assert!(baseline > 8.0, "{stdout}");
    assert!(error < baseline / 2.0, "{stdout}");
}

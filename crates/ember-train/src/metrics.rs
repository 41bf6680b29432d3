//! Reading `metrics.jsonl` back: one record per line, where a crash mid-write may have left the
//! last line cut short.

use std::path::Path;

use crate::TrainError;
use crate::error::io_error;
use crate::trainer::MetricsRecord;

/// The records of the metrics file at `path`, each with its line as written. A damaged last line
/// (a write cut off by a crash) is skipped with a warning; a damaged line before it is an error
/// naming the line.
pub fn read_metrics(path: &Path) -> Result<Vec<(String, MetricsRecord)>, TrainError> {
    let text = std::fs::read_to_string(path).map_err(io_error(path))?;
    parse_metrics(&text, path)
}

fn parse_metrics(text: &str, path: &Path) -> Result<Vec<(String, MetricsRecord)>, TrainError> {
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .collect();
    let mut records = Vec::with_capacity(lines.len());
    for (index, &(number, line)) in lines.iter().enumerate() {
        match serde_json::from_str::<MetricsRecord>(line) {
            Ok(record) => records.push((line.to_string(), record)),
            Err(error) if index + 1 == lines.len() => log::warn!(
                "{}: skipping its damaged last line {} ({error})",
                path.display(),
                number + 1
            ),
            Err(error) => {
                return Err(TrainError::Metrics {
                    path: path.to_path_buf(),
                    line: number + 1,
                    message: error.to_string(),
                });
            }
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str =
        r#"{"step":5,"loss":4.1,"lr":0.003,"grad_norm":1.0,"chars_per_sec":10.0,"epoch":0}"#;

    #[test]
    fn a_cut_last_line_is_skipped_and_a_cut_middle_line_named() {
        let path = Path::new("metrics.jsonl");
        let cut = &GOOD[..30];
        let records = parse_metrics(&format!("{GOOD}\n{GOOD}\n{cut}"), path).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].1.step, 5);
        let error = parse_metrics(&format!("{GOOD}\n{cut}\n{GOOD}\n"), path).unwrap_err();
        assert!(
            matches!(error, TrainError::Metrics { line: 2, .. }),
            "{error}"
        );
        assert!(parse_metrics("", path).unwrap().is_empty());
    }
}

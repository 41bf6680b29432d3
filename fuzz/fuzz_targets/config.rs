//! `RunConfig::parse` on any text and `--set` assignments: an error or a valid config, never a
//! panic. The input is the file's text, then a NUL, then one assignment per line.
#![no_main]

use ember_train::RunConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (file, assignments) = text.split_once('\0').unwrap_or((text, ""));
    let overrides: Vec<String> = assignments.lines().map(String::from).collect();
    if let Ok(config) = RunConfig::parse(file, "fuzz.toml", &overrides) {
        assert!(config.validate().is_ok());
        let written = config.to_toml();
        assert_eq!(RunConfig::parse(&written, "written.toml", &[]).unwrap(), config);
    }
});

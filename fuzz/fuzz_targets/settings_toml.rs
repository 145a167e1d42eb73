//! Threat: a settings file shipped in an image or a volume crashes start-up parsing.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| krouter_config::fuzzing::settings_toml(data));

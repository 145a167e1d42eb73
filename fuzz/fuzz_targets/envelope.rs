//! Threat: a tampered store field crashes the envelope decoder instead of failing cleanly.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| krouter_config::fuzzing::envelope(data));

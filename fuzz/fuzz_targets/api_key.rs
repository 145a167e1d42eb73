//! Threat: a crafted `Authorization` or `x-api-key` value crashes the key parser, which runs
//! on every request before any lookup.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| krouter_config::fuzzing::api_key(data));

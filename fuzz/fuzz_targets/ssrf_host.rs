//! Threat: a host spelling that panics the SSRF classifier or the base-URL parser, which
//! guard every upstream connection.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| krouter_policy::fuzzing::ssrf_host(data));

//! Threat: an upstream response body (SSE or JSON) crashes or hangs the usage scanner.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| krouter_proxy::fuzzing::sse_usage(data));

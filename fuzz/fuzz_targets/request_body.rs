//! Threat: a client body crashes the request inspector, or the body krouter rebuilds for
//! the upstream says a different model than the one it routed on.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| krouter_proxy::fuzzing::request_body(data));

//! Threat: a crafted `.sig` file crashes the signature parser or verifier, which runs on
//! every start and reload before anything is trusted.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| krouter_policy::fuzzing::policy_sig(data));

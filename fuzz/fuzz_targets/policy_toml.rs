//! Threat: a policy file from Git or a compromised CI job crashes or hangs the parser or
//! the validator before its signature is even relevant (check runs on unsigned files).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| krouter_policy::fuzzing::policy_toml(data));

//! Entry points for the `fuzz/` targets and for the corpus replay test. Each takes arbitrary
//! bytes and must return without panicking, whatever they hold.

use crate::load::{PolicyFiles, SkipCredentialCheck, check, load};
use crate::signature::{PolicySignature, TrustedKeys};
use crate::ssrf;

/// Policy TOML from an untrusted source, through parse and validation.
pub fn policy_toml(data: &[u8]) {
    let _outcome = check("fuzz.toml", data, &SkipCredentialCheck);
}

/// A `.sig` file, parsed and then verified against an empty and a one-key trust set.
pub fn policy_sig(data: &[u8]) {
    let _parsed = PolicySignature::parse("fuzz.sig", data);
    let files = PolicyFiles {
        name: "fuzz.toml",
        bytes: b"serial = 1\n",
        sig_name: "fuzz.sig",
        sig: data,
    };
    let _outcome = load(files, &TrustedKeys::new(), None, &SkipCredentialCheck);
}

/// A host string as it might appear in a URL authority, and the URL around it.
pub fn ssrf_host(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _verdict = ssrf::classify_host(text);
        let _url = ssrf::parse_base_url(&format!("http://{text}/v1"));
        let _raw = ssrf::parse_base_url(text);
    }
}

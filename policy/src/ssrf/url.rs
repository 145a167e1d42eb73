//! URL splitting helpers for the SSRF guard: the explanation of a URL the parser rejected,
//! the port and the path of a base URL.

use crate::ssrf::host::analyse;
use crate::ssrf::{Scheme, UrlProblem};

// === functions ===

/// The best explanation for a URL that `http::Uri` rejected.
pub(super) fn diagnose(text: &str) -> UrlProblem {
    let Some((scheme, rest)) = text.split_once("://") else {
        return UrlProblem::NotAUrl;
    };
    if scheme.is_empty() {
        return UrlProblem::NotAUrl;
    }
    if Scheme::from_name(scheme).is_none() {
        return UrlProblem::Scheme;
    }
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    if authority.is_empty() {
        return UrlProblem::MissingHost;
    }
    if authority.contains('@') {
        return UrlProblem::UserInfo;
    }
    let host = if authority.starts_with('[') {
        authority
            .find(']')
            .and_then(|end| authority.get(..=end))
            .unwrap_or(authority)
    } else {
        authority.split(':').next().unwrap_or_default()
    };
    match analyse(host, 0) {
        Err(refusal) => UrlProblem::Host(refusal),
        Ok(_) => UrlProblem::Malformed,
    }
}

/// The port after the host in the authority: empty or `:` and plain digits.
pub(super) fn parse_port(rest: &str, scheme: Scheme) -> Result<u16, UrlProblem> {
    if rest.is_empty() {
        return Ok(scheme.default_port());
    }
    let digits = rest.strip_prefix(':').ok_or(UrlProblem::Malformed)?;
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(UrlProblem::Port);
    }
    digits.parse::<u16>().map_err(|_| UrlProblem::Port)
}

/// Refuses non-ASCII text and dot segments; strips trailing slashes.
pub(super) fn normalise_path(path: &str) -> Result<String, UrlProblem> {
    if !path.is_ascii() {
        return Err(UrlProblem::Character);
    }
    let dot_segment = |segment: &str| {
        let segment = segment.to_ascii_lowercase().replace("%2e", ".");
        segment == "." || segment == ".."
    };
    if path.split('/').any(dot_segment) {
        return Err(UrlProblem::Path);
    }
    Ok(path.trim_end_matches('/').to_owned())
}

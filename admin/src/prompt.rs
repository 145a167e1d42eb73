//! Secrets typed by the operator: from standard input when it is a pipe or file, else from a
//! no-echo prompt on the terminal. Never from the command line.

use std::io::{IsTerminal as _, Read as _};

use zeroize::Zeroizing;

use crate::error::Error;

/// Largest secret read.
const MAX_SECRET: usize = 16 * 1024;

/// Reads one secret: the whole of stdin (one trailing newline removed), or a no-echo line
/// from the terminal after `prompt`. An empty value is refused.
pub(crate) fn read_secret(prompt: &str) -> Result<Zeroizing<Vec<u8>>, Error> {
    let stdin = std::io::stdin();
    let mut bytes = Zeroizing::new(Vec::with_capacity(MAX_SECRET + 1));
    if stdin.is_terminal() {
        let line = Zeroizing::new(rpassword::prompt_password(prompt).map_err(Error::Prompt)?);
        bytes.extend_from_slice(line.as_bytes());
    } else {
        let limit = u64::try_from(MAX_SECRET + 1).unwrap_or(u64::MAX);
        stdin
            .lock()
            .take(limit)
            .read_to_end(&mut bytes)
            .map_err(Error::Prompt)?;
        if bytes.len() > MAX_SECRET {
            return Err(Error::Secret("the value on stdin is larger than 16 KiB"));
        }
        bytes = krouter_config::secret::load::trimmed(bytes);
    }
    if bytes.is_empty() {
        return Err(Error::Secret(
            "no value given: pipe it on stdin or type it at the prompt",
        ));
    }
    Ok(bytes)
}

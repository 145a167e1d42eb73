//! Secret scanner for test output: asserts that no secret a test made appears in what the
//! binaries printed or wrote.

use std::path::Path;

/// Panics if any of `secrets` occurs in `haystack`, naming where it was found.
pub fn assert_absent(haystack: &str, secrets: &[&str], place: &str) {
    for secret in secrets {
        assert!(!secret.is_empty(), "empty secret given to the leak scanner");
        assert!(!haystack.contains(secret), "a secret leaked into {place}");
    }
}

/// Panics if any of `secrets` occurs in any file under `dir`, except the files in `allowed`
/// (the files that are meant to hold them, such as a 0600 key file).
pub fn assert_absent_from_files(dir: &Path, secrets: &[&str], allowed: &[&Path]) {
    let mut stack = vec![dir.to_owned()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).expect("readable test dir") {
                stack.push(entry.expect("readable entry").path());
            }
        } else if !allowed.iter().any(|a| *a == path) {
            let bytes = std::fs::read(&path).expect("readable test file");
            let text = String::from_utf8_lossy(&bytes);
            assert_absent(&text, secrets, &path.display().to_string());
        }
    }
}

/// A secret-shaped string made at run time (`prefix` + `len` random base62 characters), so
/// that no real-looking secret is ever committed.
pub fn fake_secret(prefix: &str, len: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0x9e37_79b9, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()).rotate_left(32);
    let mut x = seed | 1;
    let mut out = prefix.to_owned();
    for _ in 0..len {
        // xorshift64*: plenty for test data, not for keys.
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
        out.push(char::from(ALPHABET[(v >> 58) as usize % ALPHABET.len()]));
    }
    out
}

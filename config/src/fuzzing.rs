//! Entry points for the `fuzz/` targets over this crate's parsers of untrusted bytes, and the
//! replay of their corpus on stable. Each must return without panicking, whatever it is fed.

/// An API key, key id or digest as a client or a store file might present it.
pub fn api_key(data: &[u8]) {
    crate::apikey::fuzz_parse(data);
}

/// A sealed field as it might be found in a (tampered) store.
pub fn envelope(data: &[u8]) {
    crate::store::envelope::fuzz_open(data);
}

/// A settings file, as an operator or an image might ship it.
pub fn settings_toml(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let vars = crate::secret::load::Vars::default();
        let _outcome = crate::settings::Settings::from_parts(
            std::path::Path::new("krouter.toml"),
            Some(text),
            &vars,
        );
    }
}

#[cfg(test)]
mod tests {
    /// Replays every file of `fuzz/corpus/<target>/` through the entry points on stable.
    #[test]
    fn fuzz_corpus_replays_without_panics() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        for (name, target) in [
            ("api_key", super::api_key as fn(&[u8])),
            ("envelope", super::envelope),
            ("settings_toml", super::settings_toml),
        ] {
            let dir = root.join(name);
            let mut count = 0;
            for entry in std::fs::read_dir(&dir).unwrap() {
                target(&std::fs::read(entry.unwrap().path()).unwrap());
                count += 1;
            }
            assert!(count > 0, "{} has no corpus files", dir.display());
        }
    }
}

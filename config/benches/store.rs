//! Benchmark: the store's hot and heavy paths, printed as figures (`cargo bench -p
//! krouter-config --bench store`). Targets: open + key check under 5 ms; API key digest and
//! lookup under 2 µs per request; rekey of 10,000 credentials in one transaction. Never
//! asserts a time.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "benchmark: fail loudly"
)]

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use krouter_config::apikey::{ApiKey, DigestKey, KeyDigest};
use krouter_config::secret::load::{self, Vars};
use krouter_config::secret::{self, SecretName};
use krouter_config::store::{AuditEntry, CredentialKind, StoreReader, StoreWriter};

const CREDENTIALS: usize = 10_000;
const KEYS: usize = 10_000;

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn entry(action: &str) -> AuditEntry {
    AuditEntry {
        action: action.to_owned(),
        target: "bench".to_owned(),
        outcome: "ok".to_owned(),
    }
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.sqlite");
    let text = secret::generate(SecretName::StorageKey).unwrap();
    let vars = Vars::from_pairs([("STORAGE_ENCRYPTION_KEY", text.as_str())]);
    let key = load::storage_key(&vars, dir.path()).unwrap();
    let mut writer = StoreWriter::create(&path, &key, "bench").unwrap();

    let start = Instant::now();
    writer
        .transaction(&entry("bench.fill"), |tx| {
            for i in 0..CREDENTIALS {
                tx.set_credential(
                    &format!("cred-{i}"),
                    CredentialKind::Generic,
                    format!("upstream-value-{i:08}").as_bytes(),
                )?;
            }
            Ok(())
        })
        .unwrap();
    let fill = start.elapsed();

    let opens: Vec<Duration> = (0..50)
        .map(|_| {
            let start = Instant::now();
            black_box(StoreReader::open(&path, &key).unwrap());
            start.elapsed()
        })
        .collect();

    // The proxy's per-request work: parse the presented key, digest it, look it up.
    let api_secret_text = secret::generate(SecretName::ApiKeySecret).unwrap();
    let api_vars = Vars::from_pairs([("API_KEY_SECRET", api_secret_text.as_str())]);
    let api_secret = load::api_key_secret(&api_vars, dir.path()).unwrap();
    let keys: Vec<ApiKey> = (0..KEYS).map(|_| ApiKey::generate().unwrap()).collect();
    // As the proxy keeps it: the HMAC key prepared once, keys by digest bytes.
    let digest_key = DigestKey::new(&api_secret);
    let table: HashMap<[u8; 32], KeyDigest> = keys
        .iter()
        .map(|k| {
            let digest = digest_key.digest(k);
            (*digest.as_bytes(), digest)
        })
        .collect();
    let texts: Vec<String> = keys.iter().map(|k| k.expose_secret().to_owned()).collect();
    let rounds = 200_000;
    let start = Instant::now();
    for i in 0..rounds {
        let parsed = ApiKey::parse(black_box(&texts[i % KEYS])).unwrap();
        let digest = digest_key.digest(&parsed);
        black_box(
            table
                .get(digest.as_bytes())
                .filter(|stored| stored.ct_eq(&digest)),
        );
    }
    let per_lookup = start.elapsed() / rounds as u32;

    let new_text = secret::generate(SecretName::StorageKey).unwrap();
    let new_vars = Vars::from_pairs([("STORAGE_ENCRYPTION_KEY", new_text.as_str())]);
    let new_key = load::storage_key(&new_vars, dir.path()).unwrap();
    let start = Instant::now();
    let n = writer.rekey(&new_key, &entry("bench.rekey")).unwrap();
    let rekey = start.elapsed();
    assert_eq!(n, CREDENTIALS);

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("store benchmarks ({CREDENTIALS} credentials, {KEYS} API keys):");
    println!(
        "  fill {CREDENTIALS} credentials in one transaction  {:.1} ms",
        ms(fill)
    );
    println!(
        "  open read-only + schema + key check      median {:.3} ms   (target < 5 ms)",
        ms(median(opens))
    );
    println!(
        "  parse + digest + lookup per request      {:.2} µs          (target < 2 µs)",
        per_lookup.as_secs_f64() * 1e6
    );
    println!(
        "  rekey {CREDENTIALS} credentials (one transaction)   {:.1} ms",
        ms(rekey)
    );
}

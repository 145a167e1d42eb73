//! Benchmark: verify + parse + validate a signed policy with 1,000 routes and 100 providers,
//! the size of a large team's gateway. Prints figures; the target is under 20 ms in release
//! (`cargo bench -p krouter-policy`). Never asserts a time: shared machines make timed
//! assertions flaky.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "benchmark: fail loudly"
)]

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

use krouter_policy::{PolicyFiles, SigningKey, SkipCredentialCheck, TrustedKeys, load};

const PROVIDERS: usize = 100;
const ROUTES: usize = 1_000;
const RUNS: usize = 50;

fn policy_text() -> String {
    let mut s = String::from("serial = 7\n\n[access]\nrequire_api_keys = true\n");
    s.push_str("ip_deny = [\"203.0.113.0/24\"]\ntrusted_proxies = [\"10.0.0.0/8\"]\n");
    for g in 0..10 {
        let _ = write!(
            s,
            "\n[[access.groups]]\nname = \"team-{g}\"\nmodels = [\"model-{g}\", \"model-{}\"]\nrequests_per_minute = 600\ntokens_per_day = 5000000\n",
            g + 10
        );
    }
    for p in 0..PROVIDERS {
        let _ = write!(
            s,
            "\n[[providers]]\nname = \"provider-{p}\"\nkind = \"openai-compatible\"\nbase_url = \"http://10.1.{}.{}:11434/v1\"\ncredential = \"cred-{p}\"\nconnect_timeout_ms = 5000\n",
            p / 200,
            p % 200 + 1
        );
    }
    for r in 0..ROUTES {
        let _ = write!(
            s,
            "\n[[routes]]\nmodel = \"model-{r}\"\ntargets = [\"provider-{}:llama3.1:8b\", \"provider-{}:qwen2.5:7b\", \"provider-{}:mistral\"]\n",
            r % PROVIDERS,
            (r + 1) % PROVIDERS,
            (r + 2) % PROVIDERS
        );
    }
    s
}

fn main() {
    let text = policy_text();
    let (key, _file) = SigningKey::generate().expect("key");
    let mut trusted = TrustedKeys::new();
    trusted
        .insert("bench.pub", key.trusted_key())
        .expect("trust");
    let sig = key.sign(text.as_bytes()).to_file_text();
    let files = PolicyFiles {
        name: "policy.toml",
        bytes: text.as_bytes(),
        sig_name: "policy.toml.sig",
        sig: sig.as_bytes(),
    };

    // Warm up once, and prove the policy is valid so the figures measure the success path.
    let policy = load(files, &trusted, None, &SkipCredentialCheck).expect("valid policy");
    assert_eq!(policy.routes().len(), ROUTES);
    assert_eq!(policy.providers().len(), PROVIDERS);

    let mut times: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            black_box(load(black_box(files), &trusted, None, &SkipCredentialCheck).unwrap());
            start.elapsed()
        })
        .collect();
    times.sort();
    let mean = times.iter().sum::<Duration>() / u32::try_from(RUNS).unwrap();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "policy load (verify + parse + validate), {PROVIDERS} providers, {ROUTES} routes, {} KiB, {RUNS} runs:",
        text.len() / 1024
    );
    println!(
        "  min {:.2} ms   median {:.2} ms   mean {:.2} ms   max {:.2} ms   (target: < 20 ms)",
        ms(times[0]),
        ms(times[RUNS / 2]),
        ms(mean),
        ms(times[RUNS - 1])
    );
}

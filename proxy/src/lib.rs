//! krouter's network-facing proxy: start-up ([`startup`]), the landlock sandbox it serves in
//! ([`sandbox`]), `krouter check` ([`check`]), and serving ([`serve`]): the listener, the
//! eight-stage request pipeline ([`pipeline`]), the upstream client with its SSRF-checked
//! resolver ([`upstream`]), the one place that turns rejections into responses
//! ([`respond`]), live reload of policy and store ([`reload`]), and the request metadata
//! writer ([`recorder`]).
//!
//! It must never write the store, hold the policy signing key, or see a plaintext
//! dashboard password; it writes only its state database, and once the sandbox is applied
//! the kernel holds it to that.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use krouter_config::apikey::DigestKey;
use krouter_config::secret::load::Vars;
use krouter_config::state::StateDb;
use krouter_policy::AcceptedPolicy;
use tokio::net::TcpListener;

pub mod address;
pub mod body;
pub mod budget;
pub mod check;
pub mod cors;
pub mod ctx;
pub mod dialect;
mod error;
pub mod health;
pub mod joined;
pub mod limits;
pub mod lockout;
pub mod logging;
pub mod metrics;
pub mod pipeline;
pub mod recorder;
pub mod reload;
pub mod respond;
pub mod sandbox;
pub mod serve;
pub mod snapshot;
pub mod startup;
pub mod upstream;

#[doc(hidden)]
pub mod fuzzing;

pub use error::{Error, Origin, Reject, UpstreamFailure};

use budget::{Budgets, Calendar};
use health::Health;
use limits::Limits;
use lockout::Lockouts;
use pipeline::Shared;
use recorder::Recorder;
use reload::Watcher;
use snapshot::{KeyTable, Live, Snapshot};

/// The version printed by `krouter --version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Serves what start-up loaded until `shutdown` completes: binds the listener, records the
/// policy as accepted, starts the metadata writer and the reload watcher, then drains.
///
/// `sandbox_connect` is the set of TCP ports the sandbox lets krouter connect to, when the
/// kernel enforces it; the reload watcher then refuses a policy that needs another port.
pub async fn run(
    loaded: startup::Loaded,
    vars: Vars,
    sandbox_connect: Option<sandbox::ConnectPorts>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let startup::Loaded {
        home,
        settings,
        store,
        store_version,
        api_keys,
        vault,
        policy,
        api_key_secret,
        upstream,
        ..
    } = loaded;
    let listen = settings.listen();

    let state_file = home.state_file();
    let state = StateDb::open(&state_file)?;
    state.record_accepted(&AcceptedPolicy::new(policy.serial(), policy.digest()))?;
    let (recorder, recorder_thread) =
        Recorder::start(StateDb::open(&state_file)?).map_err(|source| Error::Start {
            what: "the metadata writer",
            source,
        })?;

    // Failures within the policy's lockout window, and the locks still in force.
    let now = ctx::now_ms();
    let window = policy.access().lockout().window().as_millis();
    let lockouts = state
        .lockout_state(
            now.saturating_sub(i64::try_from(window).unwrap_or(i64::MAX)),
            now,
        )
        .map(Lockouts::restore)?;

    // Breakers open (or half-open) and targets resting, as the last run left them.
    let health = Arc::new(Health::restore(state.target_health(now)?, now));
    // Tokens each group has spent today and this month (UTC).
    let when = Calendar::at(now);
    let budgets = Budgets::restore(
        state.group_tokens(when.day_start_ms, when.month_start_ms)?,
        now,
    );

    let keys = KeyTable::new(api_keys);
    let serial = policy.serial().get();
    let shared = Arc::new(Shared {
        live: Live::new(Snapshot::new(policy, keys, vault)),
        upstream,
        recorder,
        api_key_digest: DigestKey::new(&api_key_secret),
        lockouts,
        limits: Limits::default(),
        health,
        budgets,
        metrics: metrics::Metrics::new(),
    });

    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| Error::Bind { listen, source })?;
    let bound: SocketAddr = listener
        .local_addr()
        .map_err(|source| Error::Bind { listen, source })?;
    let metrics_listener = match settings.metrics_listen() {
        None => None,
        Some(at) => Some(
            TcpListener::bind(at)
                .await
                .map_err(|source| Error::Bind { listen: at, source })?,
        ),
    };
    let metrics_bound = match &metrics_listener {
        None => None,
        Some(listener) => Some(listener.local_addr().map_err(|source| Error::Bind {
            listen: settings.metrics_listen().unwrap_or(bound),
            source,
        })?),
    };
    let watcher = Watcher::new(home, &vars, listen, store, state, store_version)
        .with_sandbox_connect(sandbox_connect)
        .spawn(Arc::clone(&shared))
        .map_err(|source| Error::Start {
            what: "the reload watcher",
            source,
        })?;
    let tidy = tokio::spawn(tidy(Arc::clone(&shared)));
    let scrapes = metrics_listener
        .map(|listener| tokio::spawn(metrics::serve(listener, Arc::clone(&shared))));
    tracing::info!(
        addr = %bound,
        metrics_addr = metrics_bound.map(|a| a.to_string()),
        policy_serial = serial,
        version = VERSION,
        "listening"
    );

    serve::run(listener, Arc::clone(&shared), shutdown).await;

    tidy.abort();
    let _aborted = tidy.await;
    if let Some(scrapes) = scrapes {
        scrapes.abort();
        let _aborted = scrapes.await;
    }
    watcher.stop();
    let dropped = shared.recorder.dropped();
    drop(shared);
    let _joined =
        tokio::task::spawn_blocking(move || recorder_thread.finish(Duration::from_secs(3))).await;
    tracing::info!(metadata_rows_dropped = dropped, "stopped");
    Ok(())
}

/// How often rate-limit buckets and lockout entries that no longer matter are dropped.
const TIDY_EVERY: Duration = Duration::from_secs(30);

/// Keeps the lockout table, the rate limiters, the budget counters and the target health
/// table small: every
/// [`TIDY_EVERY`], drops what no longer matters under the policy in force.
async fn tidy(shared: Arc<Shared>) {
    let mut every = tokio::time::interval(TIDY_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let snapshot = shared.live.load();
        let access = snapshot.policy().access();
        shared.limits.tidy(access.groups().iter().map(|g| g.name()));
        shared.budgets.retain(|group| access.group(group).is_some());
        shared
            .lockouts
            .prune(ctx::now_ms(), access.lockout().window());
        let policy = snapshot.policy();
        shared.health.retain(|provider, model| {
            policy.routes().iter().any(|route| {
                route
                    .targets()
                    .iter()
                    .any(|t| t.provider() == provider && t.model() == model)
            })
        });
    }
}

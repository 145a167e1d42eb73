//! Start-up: everything the proxy needs, loaded and checked in one place, in an order that
//! fails early and clearly: home and settings, secrets, the store (read-only, key checked),
//! the signed policy (verified against the trusted keys, validated against the store's
//! credential names, refused if it rolls back the last accepted serial), and the rule that a
//! public listener needs API keys. `krouter check` runs exactly this and prints the result.

use krouter_config::home::KrouterHome;
use krouter_config::policy_files::{read_signed, read_trusted_dir};
use krouter_config::secret::load::{self, Origin, Vars};
use krouter_config::secret::{ApiKeySecret, SecretName};
use krouter_config::settings::Settings;
use krouter_config::state::StateDb;
use krouter_config::store::{ApiKeyRecord, CredentialVault, StoreReader};
use krouter_policy::{AcceptedPolicy, Policy};

use crate::error::Error;
use crate::upstream::Upstream;

/// Everything start-up loaded.
pub struct Loaded {
    /// The home directory.
    pub home: KrouterHome,
    /// Validated settings.
    pub settings: Settings,
    /// Where each secret came from (never the values).
    pub secrets: Vec<(SecretName, Origin)>,
    /// The store, read-only.
    pub store: StoreReader,
    /// The store's data version when `api_keys` and `vault` were read.
    pub store_version: Option<i64>,
    /// The API key records, every row's MAC checked.
    pub api_keys: Vec<ApiKeyRecord>,
    /// The credentials, sealed.
    pub vault: CredentialVault,
    /// The verified policy.
    pub policy: Policy,
    /// The policy accepted before this start, if any.
    pub previously_accepted: Option<AcceptedPolicy>,
    /// `API_KEY_SECRET`, which turns a presented key into its digest.
    pub api_key_secret: ApiKeySecret,
    /// The upstream client (its TLS roots, including `upstream_ca_file`, already loaded).
    pub upstream: Upstream,
}

/// Loads and checks everything, writing nothing.
pub fn load(vars: &Vars) -> Result<Loaded, Error> {
    let home = KrouterHome::resolve(vars)?;
    let settings = Settings::load(&home, vars)?;
    if home.secrets_dir().exists() {
        home.check_private()?;
    }
    let secrets_dir = home.secrets_dir();
    let storage_key = load::storage_key(vars, &secrets_dir)?;
    let api_key_secret = load::api_key_secret(vars, &secrets_dir)?;
    let secrets = [SecretName::StorageKey, SecretName::ApiKeySecret]
        .map(|name| (name, load::origin(name, vars, &secrets_dir)))
        .to_vec();

    let store = StoreReader::open(&home.store_file(), &storage_key)?;
    // Taken before the keys are read, so the reload watcher re-reads anything committed
    // after this point.
    let store_version = store.data_version().ok();
    // Every key row is checked against its MAC now, not at the first request.
    let api_keys = store.api_keys()?;
    let vault = store.vault()?;

    let trusted = read_trusted_dir(&home.trusted_dir()).map_err(Error::Trust)?;
    let files = read_signed(&home.policy_file(), None)?;
    let previously_accepted = StateDb::read_accepted(&home.state_file())?;
    let policy = krouter_policy::load(
        files.as_files(),
        &trusted,
        previously_accepted.as_ref(),
        &vault,
    )?;

    let upstream = Upstream::new(settings.upstream_ca_file())?;

    let listen = settings.listen();
    if !listen.ip().is_loopback() && !policy.access().require_api_keys() {
        return Err(Error::PublicWithoutKeys { listen });
    }
    Ok(Loaded {
        home,
        settings,
        secrets,
        store,
        store_version,
        api_keys,
        vault,
        policy,
        previously_accepted,
        api_key_secret,
        upstream,
    })
}

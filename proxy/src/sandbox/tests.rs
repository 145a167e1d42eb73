//! The sandbox's pure parts: the plan, the rights, the status, the `--require-sandbox`
//! decision, the reload port rule and the `nsswitch.conf` reader. [`apply`] itself restricts
//! the calling process for good, so it runs only in the end-to-end tests, in `krouter`.

use std::path::Path;

use krouter_config::secret::load::Vars;
use krouter_policy::{PolicyFiles, SigningKey, SkipCredentialCheck, TrustedKeys};
use landlock::{LandlockStatus, RulesetStatus, make_bitflags};

use super::*;

fn settings(text: &str) -> Settings {
    Settings::from_parts(
        Path::new("/srv/k/krouter.toml"),
        Some(text),
        &Vars::default(),
    )
    .unwrap()
}

fn rule(plan: &Plan, path: &str) -> Option<Access> {
    plan.paths()
        .iter()
        .find(|r| r.path() == Path::new(path))
        .map(PathRule::access)
}

/// A signed, verified policy with one provider per base URL.
fn policy_with(base_urls: &[&str]) -> Policy {
    let mut text = String::from(
        "serial = 1\n\n[access]\nrequire_api_keys = true\n\n[[access.groups]]\nname = \"default\"\nmodels = [\"*\"]\n\n",
    );
    for (i, url) in base_urls.iter().enumerate() {
        text.push_str(&format!(
            "[[providers]]\nname = \"p{i}\"\nkind = \"openai-compatible\"\nbase_url = \"{url}\"\n\n[[routes]]\nmodel = \"m{i}\"\ntargets = [\"p{i}:x\"]\n\n"
        ));
    }
    let (key, _) = SigningKey::generate().unwrap();
    let mut trusted = TrustedKeys::new();
    trusted.insert("k.pub", key.trusted_key()).unwrap();
    let sig = key.sign(text.as_bytes()).to_file_text();
    krouter_policy::load(
        PolicyFiles {
            name: "policy.toml",
            bytes: text.as_bytes(),
            sig_name: "policy.toml.sig",
            sig: sig.as_bytes(),
        },
        &trusted,
        None,
        &SkipCredentialCheck,
    )
    .unwrap()
}

#[test]
fn the_plan_reads_the_configuration_and_writes_only_the_state_directory() {
    let home = KrouterHome::at("/srv/k");
    let settings =
        settings("listen = \"0.0.0.0:8443\"\nupstream_ca_file = \"certs/private-ca.pem\"\n");
    let plan = Plan::new(
        &home,
        &settings,
        Some(Path::new("/run/secrets/storage_key")),
        &[443, 11434],
        vec![PathRule::read("/etc/hosts".into(), "name resolution")],
    );
    for read in [
        "/srv/k/krouter.toml",
        "/srv/k/policy",
        "/srv/k/db",
        "/srv/k/secrets",
        "/srv/k/certs",
        "/srv/k/certs/private-ca.pem",
        "/run/secrets",
        "/etc/hosts",
    ] {
        assert_eq!(rule(&plan, read), Some(Access::Read), "{read}");
    }
    assert_eq!(rule(&plan, "/srv/k/state"), Some(Access::ReadWrite));
    let writable: Vec<&Path> = plan.writable().collect();
    assert_eq!(writable, [Path::new("/srv/k/state")]);
    // Nothing else: not the home itself, not the temp directory.
    assert_eq!(plan.paths().len(), 9, "{:#?}", plan.paths());
    assert_eq!(rule(&plan, "/srv/k"), None);
    // The client port and the metrics port (the default, 20129).
    assert_eq!(
        plan.bind_ports().iter().copied().collect::<Vec<_>>(),
        [8443, 20129]
    );
    assert_eq!(
        plan.connect_ports().iter().collect::<Vec<_>>(),
        [DNS_PORT, 443, 11434]
    );
    assert_eq!(
        plan.to_string(),
        "9 path rule(s), bind TCP 8443, 20129, connect TCP 53, 443, 11434"
    );
}

#[test]
fn a_minimal_plan_still_allows_dns_and_nothing_more() {
    let plan = Plan::new(&KrouterHome::at("/h"), &settings(""), None, &[], Vec::new());
    assert_eq!(plan.connect_ports().iter().collect::<Vec<_>>(), [DNS_PORT]);
    assert_eq!(
        plan.bind_ports().iter().copied().collect::<Vec<_>>(),
        [20128, 20129]
    );
    let off = settings("metrics_listen = \"off\"\n");
    let plan = Plan::new(&KrouterHome::at("/h"), &off, None, &[], Vec::new());
    assert_eq!(
        plan.bind_ports().iter().copied().collect::<Vec<_>>(),
        [20128]
    );
    assert_eq!(rule(&plan, "/run/secrets"), None);
    assert!(plan.paths().iter().all(|r| r.path().starts_with("/h")));
}

#[test]
fn a_path_named_twice_keeps_the_wider_access_once() {
    let plan = Plan::from_parts(
        vec![
            PathRule::read("/b".into(), "x"),
            PathRule {
                path: "/a".into(),
                access: Access::ReadWrite,
                why: "y",
            },
            PathRule::read("/a".into(), "z"),
            PathRule::read("/b".into(), "x again"),
        ],
        [0],
        [443, 443],
    );
    let paths: Vec<(&Path, Access)> = plan
        .paths()
        .iter()
        .map(|r| (r.path(), r.access()))
        .collect();
    assert_eq!(
        paths,
        [
            (Path::new("/a"), Access::ReadWrite),
            (Path::new("/b"), Access::Read)
        ]
    );
    assert_eq!(plan.connect_ports().iter().collect::<Vec<_>>(), [53, 443]);
}

#[test]
fn no_rule_grants_execute_and_only_read_write_directories_may_create_files() {
    for access in [Access::Read, Access::ReadWrite] {
        for dir in [true, false] {
            let rights = access.rights(dir);
            assert!(!rights.contains(AccessFs::Execute), "{access} {dir}");
            for never in [
                AccessFs::MakeDir,
                AccessFs::RemoveDir,
                AccessFs::MakeSym,
                AccessFs::MakeSock,
                AccessFs::MakeFifo,
                AccessFs::MakeChar,
                AccessFs::MakeBlock,
                AccessFs::Refer,
                AccessFs::IoctlDev,
            ] {
                assert!(!rights.contains(never), "{access} {dir} {never:?}");
            }
            // A file rule carries file rights only (a directory right would make the kernel
            // refuse it and the ruleset only partly enforced).
            if !dir {
                assert!(
                    (rights & !AccessFs::from_file(TARGET_ABI)).is_empty(),
                    "{rights:?}"
                );
            }
        }
    }
    assert_eq!(
        Access::Read.rights(true),
        make_bitflags!(AccessFs::{ReadFile | ReadDir})
    );
    assert_eq!(Access::Read.rights(false), AccessFs::ReadFile);
    assert_eq!(
        Access::ReadWrite.rights(true),
        make_bitflags!(AccessFs::{ReadFile | ReadDir | WriteFile | Truncate | MakeReg | RemoveFile})
    );
}

#[test]
fn what_an_older_kernel_cannot_enforce() {
    assert_eq!(missing_for(ABI::V7), []);
    assert_eq!(missing_for(ABI::V6), []);
    assert_eq!(missing_for(ABI::V5), [Missing::Scopes]);
    assert_eq!(missing_for(ABI::V4), [Missing::IoctlDev, Missing::Scopes]);
    assert_eq!(
        missing_for(ABI::V3),
        [Missing::Network, Missing::IoctlDev, Missing::Scopes]
    );
    assert_eq!(
        missing_for(ABI::V1),
        [
            Missing::Refer,
            Missing::Truncate,
            Missing::Network,
            Missing::IoctlDev,
            Missing::Scopes
        ]
    );
}

#[test]
fn the_status_says_what_is_missing_and_whether_connect_rules_hold() {
    let available = |abi| LandlockStatus::Available {
        effective_abi: abi,
        kernel_abi: None,
    };
    let full = Status::from_kernel(&RulesetStatus::FullyEnforced, available(ABI::V7));
    assert_eq!(full, Status::FullyEnforced);
    assert!(full.enforces_network());
    assert_eq!(full.to_string(), "fully enforced");

    let v4 = Status::from_kernel(&RulesetStatus::PartiallyEnforced, available(ABI::V4));
    assert_eq!(
        v4,
        Status::PartiallyEnforced {
            missing: vec![Missing::IoctlDev, Missing::Scopes]
        }
    );
    assert!(v4.enforces_network());
    assert!(v4.to_string().contains("ioctl on devices"), "{v4}");

    let v3 = Status::from_kernel(&RulesetStatus::PartiallyEnforced, available(ABI::V3));
    assert!(!v3.enforces_network());
    assert!(v3.to_string().contains("TCP bind and connect"), "{v3}");

    // The crate's word wins: partial on a kernel that has everything is still partial.
    let odd = Status::from_kernel(&RulesetStatus::PartiallyEnforced, available(ABI::V7));
    assert_eq!(
        odd,
        Status::PartiallyEnforced {
            missing: vec![Missing::Other]
        }
    );

    for (ruleset, landlock, says) in [
        (
            RulesetStatus::NotEnforced,
            LandlockStatus::NotImplemented,
            "has no Landlock",
        ),
        (
            RulesetStatus::NotEnforced,
            LandlockStatus::NotEnabled,
            "not enabled",
        ),
        (
            RulesetStatus::NotEnforced,
            available(ABI::V7),
            "enforces none",
        ),
    ] {
        let status = Status::from_kernel(&ruleset, landlock);
        assert!(matches!(status, Status::NotEnforced { .. }), "{status:?}");
        assert!(!status.enforces_network());
        assert!(status.to_string().contains(says), "{status}");
    }
}

#[test]
fn require_refuses_anything_but_full_enforcement_with_exit_4() {
    assert!(require(&Status::FullyEnforced).is_ok());
    let partial = Status::PartiallyEnforced {
        missing: vec![Missing::Scopes],
    };
    let none = Status::NotEnforced {
        reason: "this kernel has no Landlock",
    };
    for (status, says) in [(partial, "scoping"), (none, "has no Landlock")] {
        let err = require(&status).unwrap_err();
        assert_eq!(err.code(), 4);
        let text = err.to_string();
        assert!(text.contains("the sandbox is required"), "{text}");
        assert!(text.contains(says), "{text}");
    }
}

#[test]
fn a_policy_needing_a_port_outside_the_start_up_set_is_refused_with_the_restart_message() {
    let allowed = Plan::from_parts(Vec::new(), [0], [443, 11434])
        .connect_ports()
        .clone();
    let same = policy_with(&["https://api.example.com/v1", "http://127.0.0.1:11434/v1"]);
    assert_eq!(check_upstream_ports(&allowed, &same), Ok(()));

    // http's default port 80 and an explicit 8080 are both new.
    let wider = policy_with(&[
        "https://api.example.com/v1",
        "http://10.0.0.5/v1",
        "http://127.0.0.1:8080/v1",
    ]);
    let reason = check_upstream_ports(&allowed, &wider).unwrap_err();
    assert_eq!(
        reason,
        "provider p1 uses port 80, which the sandbox applied at start-up does not allow; \
         provider p2 uses port 8080, which the sandbox applied at start-up does not allow; \
         restart krouter to use this policy"
    );
}

#[test]
fn nss_modules_are_the_loadable_services_of_the_hosts_line() {
    let cases: [(&str, &[&str]); 6] = [
        ("hosts:          files dns\n", &[]),
        (
            "passwd: files systemd\nhosts: files mdns4_minimal [NOTFOUND=return] dns myhostname\n",
            &["mdns4_minimal", "myhostname"],
        ),
        (
            "hosts: files [ NOTFOUND = return ] resolve [!UNAVAIL=return] dns # a comment wins\n",
            &["resolve"],
        ),
        ("# hosts: files wins\nhosts:\tfiles wins wins\n", &["wins"]),
        ("passwd: files\n", &[]),
        ("hosts: files ../../evil dns\n", &[]),
    ];
    for (text, want) in cases {
        assert_eq!(nss_modules(text), want, "{text:?}");
    }
}

#[test]
fn apply_refuses_a_process_that_already_has_other_threads() {
    // A second thread that lives until the end of the test, whatever the harness does.
    let (stop, parked) = std::sync::mpsc::channel::<()>();
    let helper = std::thread::spawn(move || parked.recv());
    let threads = thread_count().expect("/proc/self/task is readable here");
    // Had the count been 1, `apply` would sandbox this test process: never call it then.
    assert!(threads >= 2, "{threads}");
    let plan = Plan::from_parts(Vec::new(), [0], []);
    let err = apply(&plan).unwrap_err();
    assert!(
        matches!(err, Error::Threads { threads } if threads >= 2),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("the others would escape it"),
        "{err}"
    );
    drop(stop);
    let _ = helper.join();
}

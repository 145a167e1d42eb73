//! The landlock sandbox through the real binaries: `krouter check --sandbox` proves each rule
//! (and fails when one does not hold); the serving proxy logs the sandbox status and serves
//! inside it (requests, the state database, a live storage-key rekey); on a kernel without
//! Landlock (simulated with a seccomp filter) it warns, and `--require-sandbox` refuses to
//! start with exit 4; a later policy that needs a new upstream port is refused until a
//! restart; and the proxy runs unchanged on a read-only root with only its state directory
//! writable (a private mount namespace, `unshare -rm`).
//!
//! The whole sandbox needs Landlock ABI 6 (Linux 6.12). On an older kernel, or one booted
//! without Landlock, the tests that need all of it check instead what krouter must do there
//! (say what it cannot enforce, refuse `--require-sandbox` with exit 4) and print a NOTE
//! saying the full checks did not run; that is judged from the kernel, not from krouter, so a
//! krouter that misjudges a capable kernel still fails here.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use krouter_tests::bins::{Run, proxy_path};
use krouter_tests::client::{Reply, post, send};
use krouter_tests::eventually;
use krouter_tests::home::TempHome;
use krouter_tests::krouter::{Krouter, policy};
use krouter_tests::upstream::MockUpstream;

use super::proxy_serve::request_id;
use rusqlite::{Connection, OpenFlags};

/// How long a live change or a log line may take to show.
const DEADLINE: Duration = Duration::from_secs(5);
/// The script that remounts everything read-only but one directory.
const READ_ONLY_ROOT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/fixtures/sandbox/read_only_root.sh"
);
/// The script that runs a program as on a kernel without Landlock.
const WITHOUT_LANDLOCK: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/fixtures/sandbox/without_landlock.py"
);

// === helpers ===

/// A `[[providers]]` table for `upstream` and a route `name` to it.
fn provider_and_route(name: &str, upstream: &MockUpstream) -> String {
    format!(
        "[[providers]]\nname = \"{name}\"\nkind = \"openai-compatible\"\nbase_url = \"{}\"\n\n\
         [[routes]]\nmodel = \"{name}\"\ntargets = [\"{name}:real-model\"]\n\n",
        upstream.base_url()
    )
}

/// A home whose policy (serial 2) routes model `a` to `upstream`, and a key for it.
fn home_routing_to(upstream: &MockUpstream) -> (TempHome, String) {
    let home = TempHome::init();
    home.write_policy(&policy(2, &provider_and_route("a", upstream)));
    let (_, key) = home.create_key("app");
    (home, key)
}

fn chat(krouter: &Krouter, key: &str, model: &str) -> Reply {
    post(
        &krouter.url("/v1/chat/completions"),
        Some(key),
        &format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#),
    )
}

/// Whether this kernel can enforce the whole sandbox: Linux 6.12 or later (Landlock ABI 6),
/// with Landlock among the active security modules when the system lets that be read. When
/// it cannot, checks that krouter says so and refuses `--require-sandbox`, and prints why
/// the test `name` did not run its full checks.
fn whole_sandbox_here(name: &str) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    // securityfs is often not mounted in containers: then only the version can tell.
    let landlock_off = std::fs::read_to_string("/sys/kernel/security/lsm")
        .is_ok_and(|modules| !modules.split(',').any(|m| m.trim() == "landlock"));
    if version >= (6, 12) && !landlock_off {
        return true;
    }
    eprintln!(
        "NOTE {name}: Linux {} {}cannot enforce the whole sandbox, so its full checks did not run; checked instead that krouter says so and refuses --require-sandbox",
        release.trim(),
        if landlock_off {
            "without Landlock "
        } else {
            ""
        }
    );
    let home = TempHome::init();
    let check = run(Krouter::command(&home, &["check", "--sandbox"], &[]));
    assert!(
        check
            .stdout
            .contains("sandbox: partially enforced; this kernel cannot enforce: ")
            || check.stdout.contains("sandbox: not enforced: "),
        "{check:?}"
    );
    let serve = run(Krouter::command(
        &home,
        &["serve", "--require-sandbox"],
        &[("KROUTER_LISTEN", "127.0.0.1:0")],
    ));
    assert_eq!(serve.code, 4, "{serve:?}");
    assert!(
        serve.stderr.starts_with(
            "error: the sandbox is required (--require-sandbox or require_sandbox = true) but is "
        ),
        "{serve:?}"
    );
    false
}

/// `cmd` wrapped to run as on a kernel without Landlock; `None` (after saying SKIPPED) when
/// that cannot be done here (no python3, not x86_64, no seccomp).
fn without_landlock(cmd: &Command) -> Option<Command> {
    let probe = Command::new("python3")
        .args([WITHOUT_LANDLOCK, "/bin/true"])
        .output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!(
            "SKIPPED the kernel-without-Landlock check: the seccomp wrapper does not run here ({probe:?})"
        );
        return None;
    }
    let mut wrapped = Command::new("python3");
    wrapped.arg(WITHOUT_LANDLOCK).arg(cmd.get_program());
    wrapped.args(cmd.get_args());
    if let Some(dir) = cmd.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped.env_clear();
    for (name, value) in cmd.get_envs() {
        if let Some(value) = value {
            wrapped.env(name, value);
        }
    }
    Some(wrapped)
}

/// `unshare -rm sh read_only_root.sh HOME/state krouter ARGS`: krouter on a read-only root
/// whose only writable place is the home's state directory; `None` (after saying SKIPPED)
/// when user and mount namespaces are not available here.
fn on_read_only_root(home: &TempHome, args: &[&str]) -> Option<Command> {
    let probe = Command::new("unshare").args(["-rm", "true"]).output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!(
            "SKIPPED the read-only root check: `unshare -rm true` failed here ({probe:?}), so krouter cannot get its own read-only mounts"
        );
        return None;
    }
    let mut command = Command::new("unshare");
    command
        .args(["-rm", "sh", READ_ONLY_ROOT])
        .arg(home.root.join("state"))
        .arg(proxy_path())
        .args(args)
        .current_dir(home.parent())
        .env_clear()
        .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
        .envs(home.env())
        .env("KROUTER_LISTEN", "127.0.0.1:0");
    Some(command)
}

fn run(mut command: Command) -> Run {
    let output: Output = command.output().expect("the command starts");
    Run::from_output(output)
}

/// What [`snapshot`] records of one path: size, modification time, mode, content.
type Seen = (u64, i64, i64, u32, Vec<u8>);

/// Every file and directory under `dir` but `except` (and what is under it), with its size,
/// modification time, mode and content.
fn snapshot(dir: &Path, except: &Path) -> BTreeMap<PathBuf, Seen> {
    let mut all = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("a readable directory") {
            let path = entry.expect("an entry").path();
            if path == except {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).expect("metadata");
            let content = if meta.is_file() {
                std::fs::read(&path).expect("a readable file")
            } else {
                Vec::new()
            };
            if meta.is_dir() {
                pending.push(path.clone());
            }
            all.insert(
                path,
                (
                    meta.len(),
                    meta.mtime(),
                    meta.mtime_nsec(),
                    meta.mode(),
                    content,
                ),
            );
        }
    }
    all
}

/// Fails naming every path that appeared, went away or changed between two snapshots.
fn assert_unchanged(before: &BTreeMap<PathBuf, Seen>, after: &BTreeMap<PathBuf, Seen>) {
    let changed: Vec<String> = before
        .keys()
        .chain(after.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|path| before.get(*path) != after.get(*path))
        .map(|path| {
            let state = |seen: Option<&Seen>| {
                seen.map_or("absent".to_owned(), |(len, secs, nanos, mode, _)| {
                    format!("{len} bytes, mtime {secs}.{nanos:09}, mode {mode:o}")
                })
            };
            format!(
                "{}: {} -> {}",
                path.display(),
                state(before.get(path)),
                state(after.get(path))
            )
        })
        .collect();
    assert!(changed.is_empty(), "changed:\n{}", changed.join("\n"));
}

/// The request ids in the state database's `requests` table.
fn recorded_requests(home: &TempHome) -> Vec<String> {
    let db = Connection::open_with_flags(
        home.root.join("state/state.sqlite"),
        OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("the state database opens");
    let mut statement = db
        .prepare("SELECT request_id FROM requests ORDER BY request_id")
        .expect("the requests table");
    statement
        .query_map([], |r| r.get(0))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("readable rows")
}

// === krouter check --sandbox ===

#[test]
fn check_sandbox_applies_the_serving_sandbox_and_proves_each_rule() {
    if !whole_sandbox_here("check_sandbox_applies_the_serving_sandbox_and_proves_each_rule") {
        return;
    }
    let home = TempHome::init();
    let state = home.root.join("state");
    let before = snapshot(&home.root, &state);
    let run = run(Krouter::command(
        &home,
        &["check", "--sandbox"],
        &[
            ("KROUTER_LISTEN", "127.0.0.1:20199"),
            ("KROUTER_METRICS_LISTEN", "127.0.0.1:20198"),
        ],
    ));
    assert_eq!(run.code, 0, "{run:?}");
    let root = home.root.display().to_string();
    for want in [
        "krouter configuration OK".to_owned(),
        "sandbox: fully enforced".to_owned(),
        format!("  read-write  {root}/state (the state database)"),
        format!("  read        {root}/db (the store)"),
        "  bind TCP    20198, 20199".to_owned(),
        "  connect TCP 53, 11434, 20130".to_owned(),
        format!("  ok    create a file in {root}/policy: refused (permission denied)"),
        format!("  ok    create a file in {root}: refused (permission denied)"),
        "  ok    create a file in /tmp: refused (permission denied)".to_owned(),
        format!("  ok    create a directory in {root}/state: refused (permission denied)"),
        "  ok    run a program: refused (permission denied)".to_owned(),
        "a port the sandbox does not allow: refused (permission denied)".to_owned(),
        "  ok    bind a TCP port other than the listen and metrics ports: refused (permission denied)"
            .to_owned(),
        format!("  ok    write and remove a file in {root}/state: written and removed"),
        "  ok    read the policy and list the trusted keys: read".to_owned(),
        "sandbox proven".to_owned(),
    ] {
        assert!(run.stdout.contains(&want), "{want:?} in {run:?}");
    }
    assert!(!run.stdout.contains("FAIL"), "{run:?}");
    // It wrote and removed its probe in state/, and changed nothing else but the store's
    // shared-memory index, where every SQLite reader of a WAL database notes what it reads
    // (opened before the sandbox; on a read-only root it is opened read-only, see below).
    let shm = home.root.join("db/store.sqlite-shm");
    let without_shm = |mut all: BTreeMap<PathBuf, Seen>| {
        all.remove(&shm);
        all
    };
    assert_unchanged(
        &without_shm(before),
        &without_shm(snapshot(&home.root, &state)),
    );
    assert_eq!(
        std::fs::read_dir(&state).unwrap().count(),
        0,
        "state/ is not empty"
    );
}

#[test]
fn check_sandbox_fails_with_exit_1_naming_the_check_that_did_not_hold() {
    let home = TempHome::init();
    // Without a state directory the positive control (a file written there) cannot pass.
    std::fs::remove_dir(home.root.join("state")).unwrap();
    let run = run(Krouter::command(&home, &["check", "--sandbox"], &[]));
    assert_eq!(run.code, 1, "{run:?}");
    let state = home.root.join("state");
    assert!(
        run.stdout.contains(&format!(
            "  FAIL  write and remove a file in {}",
            state.display()
        )),
        "{run:?}"
    );
    assert!(
        run.stderr.contains(&format!(
            "error: the sandbox is not proven: write and remove a file in {}",
            state.display()
        )),
        "{run:?}"
    );
}

// === serving ===

#[test]
fn the_proxy_logs_that_the_sandbox_is_fully_enforced_and_serves_inside_it() {
    if !whole_sandbox_here("the_proxy_logs_that_the_sandbox_is_fully_enforced_and_serves_inside_it")
    {
        return;
    }
    let upstream = MockUpstream::start();
    let (home, key) = home_routing_to(&upstream);
    // Both ways of requiring it: the flag and the setting.
    let krouter = Krouter::spawn_command(Krouter::command(
        &home,
        &["serve", "--require-sandbox"],
        &[("KROUTER_REQUIRE_SANDBOX", "true")],
    ));
    krouter.wait_for_log("\"message\":\"listening\"", DEADLINE);
    let log = krouter.log();
    let status = log
        .lines()
        .find(|l| l.contains("\"message\":\"sandbox: fully enforced\""))
        .unwrap_or_else(|| panic!("no sandbox status line:\n{log}"));
    assert!(status.contains("\"level\":\"INFO\""), "{status}");
    assert!(
        status.contains(&format!("bind TCP 0, connect TCP 53, {}", upstream.port())),
        "{status}"
    );
    // The status comes before the listener, i.e. before any request is served.
    assert!(
        log.find("sandbox: fully enforced") < log.find("\"message\":\"listening\""),
        "{log}"
    );

    let reply = chat(&krouter, &key, "a");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(upstream.requests().len(), 1);
    let id = request_id(&reply);
    let (status, log) = krouter.stop();
    assert!(status.success(), "{log}");
    assert_eq!(recorded_requests(&home), [id]);
}

#[test]
fn without_landlock_the_proxy_warns_and_require_sandbox_refuses_to_start_with_exit_4() {
    let upstream = MockUpstream::start();
    let (home, key) = home_routing_to(&upstream);
    let Some(plain) = without_landlock(&Krouter::command(&home, &[], &[])) else {
        return;
    };
    let krouter = Krouter::spawn_command(plain);
    let line = krouter
        .log()
        .lines()
        .find(|l| l.contains("\"message\":\"sandbox: not enforced\""))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no warning:\n{}", krouter.log()));
    assert!(line.contains("\"level\":\"WARN\""), "{line}");
    assert!(line.contains("this kernel has no Landlock"), "{line}");
    assert_eq!(chat(&krouter, &key, "a").status, 200);
    drop(krouter);

    for (args, extra) in [
        (&["--require-sandbox"][..], &[][..]),
        (&["serve", "--require-sandbox"][..], &[][..]),
        (&[][..], &[("KROUTER_REQUIRE_SANDBOX", "true")][..]),
    ] {
        let command = without_landlock(&Krouter::command(&home, args, extra)).unwrap();
        let run = run(command);
        assert_eq!(run.code, 4, "{args:?} {extra:?}: {run:?}");
        assert!(
            run.stderr.starts_with(
                "error: the sandbox is required (--require-sandbox or require_sandbox = true) but is not enforced: this kernel has no Landlock"
            ),
            "{run:?}"
        );
        assert!(!run.stderr.contains("listening"), "{run:?}");
    }

    // And `check --sandbox` cannot prove anything there.
    let command = without_landlock(&Krouter::command(&home, &["check", "--sandbox"], &[])).unwrap();
    let run = run(command);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("sandbox: not enforced"), "{run:?}");
    assert!(run.stdout.contains("  FAIL  run a program:"), "{run:?}");
    assert!(
        run.stderr.contains("error: the sandbox is not proven:"),
        "{run:?}"
    );
}

#[test]
fn require_sandbox_is_a_usage_error_before_check_and_must_be_true_or_false() {
    let home = TempHome::init();
    let run = run(Krouter::command(
        &home,
        &["--require-sandbox", "check"],
        &[],
    ));
    assert_eq!(run.code, 2, "{run:?}");
    let run = self::run(Krouter::command(
        &home,
        &[],
        &[("KROUTER_REQUIRE_SANDBOX", "sometimes")],
    ));
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains(
            "the KROUTER_REQUIRE_SANDBOX variable: require_sandbox: expected true or false"
        ),
        "{run:?}"
    );
}

#[test]
fn a_later_policy_needing_a_new_upstream_port_is_refused_until_a_restart() {
    if !whole_sandbox_here("a_later_policy_needing_a_new_upstream_port_is_refused_until_a_restart")
    {
        return;
    }
    let first = MockUpstream::start();
    let second = MockUpstream::start();
    let (home, key) = home_routing_to(&first);
    let krouter = Krouter::spawn(&home, &[]);
    assert_eq!(chat(&krouter, &key, "a").status, 200);

    let both = policy(
        3,
        &format!(
            "{}{}",
            provider_and_route("a", &first),
            provider_and_route("b", &second)
        ),
    );
    home.write_policy(&both);
    let reason = format!(
        "provider b uses port {}, which the sandbox applied at start-up does not allow; restart krouter to use this policy",
        second.port()
    );
    krouter.wait_for_log(&reason, DEADLINE);
    let line = krouter
        .log()
        .lines()
        .find(|l| l.contains(&reason))
        .map(str::to_owned)
        .unwrap();
    assert!(line.contains("new policy refused"), "{line}");
    assert!(line.contains("\"serial_in_force\":2"), "{line}");
    // The last good policy keeps serving; the new route is not in.
    assert_eq!(chat(&krouter, &key, "a").status, 200);
    assert_eq!(chat(&krouter, &key, "b").status, 404);
    let health = send("GET", &krouter.url("/healthz"), &[], "");
    assert_eq!(health.json()["policy_serial"], 2, "{health:?}");
    assert!(second.requests().is_empty());
    let (status, log) = krouter.stop();
    assert!(status.success(), "{log}");

    // A restart applies the policy, with the new port in the sandbox.
    let krouter = Krouter::spawn(&home, &[]);
    assert!(
        krouter.log().contains(&format!(
            "connect TCP 53, {}, {}",
            first.port().min(second.port()),
            first.port().max(second.port())
        )),
        "{}",
        krouter.log()
    );
    let reply = eventually(
        DEADLINE,
        "route b served after the restart",
        || chat(&krouter, &key, "b"),
        |r| r.status == 200,
    );
    assert_eq!(reply.status, 200);
    assert_eq!(second.requests().len(), 1);
}

#[test]
fn a_storage_key_rekey_while_serving_is_picked_up_inside_the_sandbox() {
    let upstream = MockUpstream::start();
    let (home, key) = home_routing_to(&upstream);
    let krouter = Krouter::spawn(&home, &[]);
    assert_eq!(chat(&krouter, &key, "a").status, 200);

    let rekey = home.admin(&["store", "rekey", "--generate"]);
    assert_eq!(rekey.code, 0, "{rekey:?}");
    // A key created under the new storage key works only once the proxy has read the new
    // key from secrets/ (renamed into place, so the sandbox's rule is on the directory).
    let (_, fresh) = home.create_key("after-rekey");
    krouter.wait_for_log("store reopened", DEADLINE);
    let reply = eventually(
        DEADLINE,
        "the key created after the rekey",
        || chat(&krouter, &fresh, "a"),
        |r| r.status == 200,
    );
    assert_eq!(reply.status, 200);
    assert_eq!(chat(&krouter, &key, "a").status, 200);
    let (status, log) = krouter.stop();
    assert!(status.success(), "{log}");
    assert!(!log.contains("cannot read the store"), "{log}");
}

// === read-only root ===

#[test]
fn the_proxy_runs_unchanged_on_a_read_only_root_with_only_the_state_directory_writable() {
    if !whole_sandbox_here(
        "the_proxy_runs_unchanged_on_a_read_only_root_with_only_the_state_directory_writable",
    ) {
        return;
    }
    let upstream = MockUpstream::start();
    let (home, key) = home_routing_to(&upstream);
    let state = home.root.join("state");
    let before = snapshot(&home.root, &state);

    let Some(check) = on_read_only_root(&home, &["check", "--sandbox"]) else {
        return;
    };
    let run = run(check);
    assert_eq!(run.code, 0, "{run:?}");
    for want in [
        "sandbox: fully enforced".to_owned(),
        format!(
            "  ok    create a file in {}/policy: refused by the read-only file system",
            home.root.display()
        ),
        format!(
            "  ok    create a directory in {}: refused (permission denied)",
            state.display()
        ),
        "sandbox proven".to_owned(),
    ] {
        assert!(run.stdout.contains(&want), "{want:?} in {run:?}");
    }

    let serve = on_read_only_root(&home, &[]).unwrap();
    let krouter = Krouter::spawn_command(serve);
    assert!(
        krouter
            .log()
            .contains("\"message\":\"sandbox: fully enforced\""),
        "{}",
        krouter.log()
    );
    let reply = chat(&krouter, &key, "a");
    assert_eq!(reply.status, 200, "{reply:?}");
    let id = request_id(&reply);
    let (status, log) = krouter.stop();
    assert!(status.success(), "{log}");
    assert!(!log.contains("\"level\":\"ERROR\""), "{log}");
    assert_eq!(upstream.requests().len(), 1);

    // The state database got the request's metadata row; nothing else in the home changed.
    assert_eq!(recorded_requests(&home), [id]);
    assert_unchanged(&before, &snapshot(&home.root, &state));
}

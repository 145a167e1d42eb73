//! The real `krouter` and `krouter-admin` binaries, built once per test run with the same
//! profile and target directory as the tests themselves, so a test never runs a stale binary.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The directory holding the binaries (`target/debug` or `target/release`).
fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test binary knows its path");
        // target/<profile>/deps/e2e-<hash>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binaries live in target/<profile>/deps");
        let target_dir = profile_dir.parent().expect("target/<profile>");
        let release = profile_dir.file_name() == Some(OsStr::new("release"));
        let mut build = Command::new(env!("CARGO"));
        // The variables `cargo test` sets for this package would make build scripts that
        // watch them (ring's) rebuild for the nested build and again for the next test run.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("CARGO_")
                && !matches!(
                    &*name,
                    "CARGO_HOME" | "CARGO_TARGET_DIR" | "CARGO_TERM_COLOR"
                )
            {
                build.env_remove(&*name);
            }
        }
        build
            .args(["build", "--quiet", "--locked", "--bins"])
            .args(["-p", "krouter-admin", "-p", "krouter-proxy"])
            .arg("--target-dir")
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if release {
            build.arg("--release");
        }
        let status = build.status().expect("cargo runs");
        assert!(status.success(), "building the krouter binaries failed");
        profile_dir.to_owned()
    })
}

/// Path of the `krouter-admin` binary, built if needed.
pub fn admin_path() -> PathBuf {
    bin_dir().join("krouter-admin")
}

/// Path of the `krouter` binary, built if needed.
pub fn proxy_path() -> PathBuf {
    bin_dir().join("krouter")
}

/// A finished command: exit code and both streams as text.
#[derive(Debug)]
pub struct Run {
    /// The exit code (-1 if killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// A finished process's output.
    pub fn from_output(output: Output) -> Self {
        Self {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Both streams, for leak scans and failure messages.
    pub fn all_output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `krouter-admin` with `args` in `dir`, with a clean environment and no stdin.
pub fn admin(dir: &Path, args: &[&str]) -> Run {
    run(&admin_path(), dir, args)
}

/// Runs `krouter-admin` with `args` in `dir`, the variables `env` (nothing else but `PATH`)
/// and `stdin` piped in (or none).
pub fn admin_with(dir: &Path, args: &[&str], env: &[(&str, &str)], stdin: Option<&[u8]>) -> Run {
    let mut cmd = admin_command(dir, args, env);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("krouter-admin starts");
    if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write as _;
        pipe.write_all(bytes).expect("stdin accepts the value");
    }
    Run::from_output(child.wait_with_output().expect("krouter-admin finishes"))
}

/// A `krouter-admin` command ready to spawn: clean environment plus `env`, in `dir`.
pub fn admin_command(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(admin_path());
    cmd.args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .envs(env.iter().copied());
    cmd
}

/// Runs `krouter` with `args` in `dir`, with a clean environment and no stdin.
pub fn proxy(dir: &Path, args: &[&str]) -> Run {
    run(&proxy_path(), dir, args)
}

fn run(bin: &Path, dir: &Path, args: &[&str]) -> Run {
    let output = Command::new(bin)
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::null())
        .output()
        .expect("the binary starts");
    Run::from_output(output)
}

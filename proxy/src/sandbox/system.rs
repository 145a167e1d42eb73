//! The system files name resolution reads once krouter serves: found on this machine at
//! start-up, so they are the only part of a [`super::Plan`] that does not come from the home,
//! the settings and the policy.

use std::path::{Path, PathBuf};

use super::PathRule;

/// Files name resolution (glibc's `getaddrinfo`) reads while krouter serves.
const RESOLVER_FILES: [&str; 5] = [
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
];

/// Where glibc looks for NSS modules (`libnss_<name>.so.2`), besides the multiarch
/// subdirectories of `/lib` and `/usr/lib`.
const LIBRARY_DIRS: [&str; 4] = ["/lib64", "/usr/lib64", "/lib", "/usr/lib"];

/// NSS `hosts` services built into glibc 2.34 and later: no module file to load.
const BUILT_IN_NSS: [&str; 2] = ["files", "dns"];

/// The system files name resolution reads while krouter serves: the resolver's files in
/// `/etc`; for one that is a symbolic link, the directory of its target too (systemd-resolved
/// and similar replace the target by renaming a new file into place); the NSS modules the
/// `hosts` line of `/etc/nsswitch.conf` names, with the loader cache that finds them; and
/// `/dev/urandom`, which SQLite seeds its random numbers from.
pub fn resolver_files() -> Vec<PathRule> {
    let mut rules = Vec::new();
    for file in RESOLVER_FILES {
        let path = Path::new(file);
        rules.push(PathRule::read(path.to_path_buf(), "name resolution"));
        let is_link = path.symlink_metadata().is_ok_and(|m| m.is_symlink());
        if let (true, Ok(target)) = (is_link, path.canonicalize())
            && let Some(dir) = target.parent()
            && Some(dir) != path.parent()
            && dir != Path::new("/")
        {
            rules.push(PathRule::read(
                dir.to_path_buf(),
                "name resolution (the directory a resolver file links to)",
            ));
        }
    }
    let nsswitch = std::fs::read_to_string("/etc/nsswitch.conf").unwrap_or_default();
    let modules = nss_modules(&nsswitch);
    if !modules.is_empty() {
        let mut dirs: Vec<PathBuf> = LIBRARY_DIRS.iter().map(PathBuf::from).collect();
        for base in ["/lib", "/usr/lib"] {
            if let Ok(entries) = std::fs::read_dir(base) {
                dirs.extend(
                    entries
                        .flatten()
                        .map(|e| e.path())
                        .filter(|p| p.to_string_lossy().contains("-linux-") && p.is_dir()),
                );
            }
        }
        for module in &modules {
            let name = format!("libnss_{module}.so.2");
            for dir in &dirs {
                let file = dir.join(&name);
                if file.is_file() {
                    rules.push(PathRule::read(file, "NSS module for name resolution"));
                }
            }
        }
        rules.push(PathRule::read(
            PathBuf::from("/etc/ld.so.cache"),
            "finding NSS modules",
        ));
    }
    rules.push(PathRule::read(
        PathBuf::from("/dev/urandom"),
        "SQLite seeds its random numbers from it",
    ));
    rules
}

/// The NSS services the `hosts:` line of an `nsswitch.conf` names that glibc loads from a
/// module file (not the built-in `files` and `dns`), in order.
pub fn nss_modules(nsswitch: &str) -> Vec<String> {
    let Some(line) = nsswitch.lines().find_map(|l| {
        l.split('#')
            .next()
            .and_then(|l| l.trim_start().strip_prefix("hosts:"))
    }) else {
        return Vec::new();
    };
    let mut modules: Vec<String> = Vec::new();
    let mut in_action = false;
    for word in line.split_whitespace() {
        // `[NOTFOUND=return]` may be split over words: skip until its closing bracket.
        if in_action || word.starts_with('[') {
            in_action = !word.ends_with(']');
            continue;
        }
        let valid = !word.is_empty()
            && word
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if valid && !BUILT_IN_NSS.contains(&word) && !modules.iter().any(|m| m == word) {
            modules.push(word.to_owned());
        }
    }
    modules
}

//! House rules a machine can check, so they stay true: crate roots say what they own, every
//! member inherits the workspace lints, the proxy never names the store writer, and every
//! ignored test says why.

use std::fs;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

const MEMBERS: [&str; 5] = ["admin", "config", "policy", "proxy", "tests"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() && name != "target" && !name.starts_with('.') {
            rust_files(&path, out);
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_crate_root_opens_with_a_module_doc() {
    for member in MEMBERS {
        for root in ["src/lib.rs", "src/main.rs"] {
            let path = repo().join(member).join(root);
            if let Ok(text) = fs::read_to_string(&path) {
                assert!(
                    text.starts_with("//!"),
                    "{} must open with a //! saying what it owns",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn every_member_inherits_the_workspace_rules() {
    for member in MEMBERS {
        let text = fs::read_to_string(repo().join(member).join("Cargo.toml")).unwrap();
        assert!(
            text.contains("[lints]\nworkspace = true"),
            "{member}/Cargo.toml must say `[lints] workspace = true`"
        );
        assert!(
            text.contains("edition.workspace = true"),
            "{member}/Cargo.toml must inherit the edition"
        );
    }
}

#[test]
fn the_proxy_never_names_the_store_writer() {
    let mut files = Vec::new();
    rust_files(&repo().join("proxy"), &mut files);
    for file in files {
        let text = fs::read_to_string(&file).unwrap();
        assert!(
            !text.contains("StoreWriter"),
            "{} names StoreWriter: only krouter-admin may write the store",
            file.display()
        );
    }
}

#[test]
fn every_ignored_test_says_why() {
    let mut files = Vec::new();
    for dir in MEMBERS {
        rust_files(&repo().join(dir), &mut files);
    }
    // Built at run time so this file does not match itself.
    let word = "ignore";
    let bare = [format!("#[{word}]"), format!("#[{word} ]")];
    for file in files {
        let text = fs::read_to_string(&file).unwrap();
        for pattern in &bare {
            assert!(
                !text.contains(pattern.as_str()),
                "{}: use #[ignore = \"reason\"]",
                file.display()
            );
        }
    }
}

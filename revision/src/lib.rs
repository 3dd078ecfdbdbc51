//! What `--version` says: the package version and the git revision the binary was built from,
//! computed by the binaries' build scripts (`build.rs` calls [`stamp`]) so that an installed
//! binary can be traced back to its commit.
//!
//! The revision comes from `TAPWIRE_REVISION` when set (image builds, where `.git` is not
//! copied in), else from `git` in the source tree, else it is `unknown`. The build script is
//! re-run only when the checked-out commit changes (HEAD, the branch it points to, packed
//! refs), never for edits, so a rebuild after a commit touches only the two binary crates.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The environment variable the binaries read with `env!`: `0.1.0 (revision 1a2b3c4d5e6f)`.
pub const VERSION_VARIABLE: &str = "TAPWIRE_VERSION";
/// Overrides the revision (for builds without `.git`).
pub const REVISION_OVERRIDE: &str = "TAPWIRE_REVISION";

/// Emits the build-script directives that set [`VERSION_VARIABLE`] for the crate being built.
pub fn stamp() {
    println!("cargo::rerun-if-env-changed={REVISION_OVERRIDE}");
    println!("cargo::rerun-if-changed=build.rs");
    let revision = match std::env::var(REVISION_OVERRIDE) {
        Ok(revision) if !revision.trim().is_empty() => revision.trim().to_owned(),
        _ => git_revision().unwrap_or_else(|| "unknown".to_owned()),
    };
    let package_version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    println!("cargo::rustc-env={VERSION_VARIABLE}={package_version} (revision {revision})");
}

/// The short commit hash of the source tree's HEAD, registering the files that change with it.
fn git_revision() -> Option<String> {
    let revision = git(&["rev-parse", "--short=12", "HEAD"])?;
    // HEAD names the branch (or a commit); the branch's ref file or packed-refs its commit.
    // Relative paths are relative to the crate's directory, as git prints them from there.
    let git_dir = PathBuf::from(git(&["rev-parse", "--git-dir"])?);
    let common_dir = PathBuf::from(git(&["rev-parse", "--git-common-dir"])?);
    watch(&git_dir.join("HEAD"));
    watch(&common_dir.join("packed-refs"));
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch(&common_dir.join(branch));
    }
    Some(revision)
}

/// Re-runs the build script when `path` changes; a missing file is not watched (cargo would
/// re-run the script on every build).
fn watch(path: &Path) {
    if path.exists() {
        println!("cargo::rerun-if-changed={}", path.display());
    }
}

/// `git ARGS` run in the crate's directory, its trimmed output if it succeeded.
fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    (output.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}

//! `--generate`: each binary prints its own man page and shell completions (the packages install
//! them). They come from the same flag definitions as `--help`, so every flag `--help` shows
//! must be in each of them; and `--generate` runs alone. `--version` names the commit the
//! binary was built from.

use std::process::{Command, Output};

use tapwire_testkit::process::binary_path;

const BINARIES: [&str; 2] = ["tapwire-listener", "tapwire-replayer"];

fn run(binary: &str, args: &[&str]) -> Output {
    Command::new(binary_path(binary).unwrap())
        .args(args)
        .output()
        .unwrap()
}

fn stdout_of(binary: &str, args: &[&str]) -> String {
    let output = run(binary, args);
    assert!(
        output.status.success(),
        "{binary} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The long flags `--help` lists (`--port`, `--config`...).
fn long_flags(binary: &str) -> Vec<String> {
    let help = stdout_of(binary, &["--help"]);
    let mut flags: Vec<String> = help
        .lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let flag = line
                .strip_prefix("-h, ")
                .or_else(|| line.strip_prefix("-V, "))
                .unwrap_or(line)
                .strip_prefix("--")?;
            let name: String = flag
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            Some(name)
        })
        .collect();
    flags.dedup();
    assert!(flags.len() > 20, "{binary}: only {flags:?} in --help");
    flags
}

#[test]
fn man_pages_and_completions_document_every_flag() {
    for binary in BINARIES {
        let flags = long_flags(binary);
        let man = stdout_of(binary, &["--generate", "man"]);
        assert!(man.starts_with(".ie"), "{binary}: not roff: {}", &man[..40]);
        assert!(
            man.contains(&format!(".TH {binary} 1")),
            "{binary}: no title"
        );
        for shell in ["bash", "zsh", "fish"] {
            let script = stdout_of(binary, &["--generate", shell]);
            for flag in &flags {
                assert!(
                    script.contains(&format!("--{flag}")) || script.contains(&format!("-l {flag}")),
                    "{binary} --generate {shell}: no --{flag}"
                );
            }
        }
        for flag in &flags {
            // roff escapes each hyphen.
            let escaped = format!("\\-\\-{}", flag.replace('-', "\\-"));
            assert!(man.contains(&escaped), "{binary} man page: no --{flag}");
        }
    }
}

#[test]
fn generate_runs_alone() {
    for binary in BINARIES {
        let output = run(
            binary,
            &["--generate", "bash", "--metrics-listen", "127.0.0.1:0"],
        );
        assert_eq!(output.status.code(), Some(2), "{binary}");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("cannot be used with"),
            "{binary}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let unknown = run(binary, &["--generate", "powershell-9"]);
        assert_eq!(unknown.status.code(), Some(2), "{binary}");
    }
}

#[test]
fn version_names_the_package_version_and_the_commit_built() {
    let git = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("git runs");
    assert!(git.status.success(), "the tests run in a git checkout");
    let revision = String::from_utf8(git.stdout).unwrap().trim().to_owned();
    for binary in BINARIES {
        assert_eq!(
            stdout_of(binary, &["--version"]),
            format!(
                "{binary} {} (revision {revision})\n",
                env!("CARGO_PKG_VERSION")
            )
        );
    }
}

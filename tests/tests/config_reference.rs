//! The README's complete configuration files are the programs' own: run through the real binary's
//! `--check-config`, each prints back exactly what the README says (every key, every default),
//! and with every commented-out key enabled it leaves no key unset, so a key added to the code and
//! not to the README fails here by name. Per-target flags give the same configuration as the same
//! TOML, and deployment flags override a file while engine flags are refused.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use tapwire_testkit::certs::TestCa;
use tapwire_testkit::process::binary_path;

/// The TOML block that follows `<!-- config-reference: BINARY -->` in README.md.
fn readme_reference(binary: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md is readable");
    let marker = format!("<!-- config-reference: {binary} -->");
    let after = readme
        .split_once(&marker)
        .unwrap_or_else(|| panic!("README.md has no {marker}"))
        .1;
    let block = after
        .trim_start()
        .strip_prefix("```toml\n")
        .unwrap_or_else(|| panic!("{marker} is not followed by a ```toml block"));
    block
        .split_once("\n```")
        .unwrap_or_else(|| panic!("the block after {marker} does not end"))
        .0
        .to_owned()
}

/// `text` with every commented-out key (`# key = value`) enabled.
fn uncommented(text: &str) -> String {
    text.lines()
        .map(|line| match line.strip_prefix('#').map(str::trim_start) {
            Some(rest) if is_key_line(rest) => rest.to_owned(),
            _ => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_key_line(line: &str) -> bool {
    line.split_once('=').is_some_and(|(key, _)| {
        let key = key.trim();
        !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

fn parse(text: &str, what: &str) -> toml::Table {
    toml::from_str(text).unwrap_or_else(|error| panic!("{what} is not TOML: {error}\n{text}"))
}

/// Runs `binary` with `args`; its output.
fn run(binary: &str, args: &[&str]) -> Output {
    Command::new(binary_path(binary).unwrap())
        .args(args)
        .output()
        .unwrap()
}

/// What `--check-config` prints for `config` (a file written under `dir`) and `flags`: the
/// effective configuration, and the keys its first comment names as unset.
fn check_config(
    binary: &str,
    dir: &Path,
    config: &str,
    flags: &[&str],
) -> (toml::Table, Vec<String>) {
    let path = dir.join(format!("{binary}.toml"));
    std::fs::write(&path, config).unwrap();
    let mut args = vec!["--config", path.to_str().unwrap(), "--check-config"];
    args.extend(flags);
    let output = run(binary, &args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{binary} --check-config refused\n{config}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut lines = stdout.lines();
    let mut unset = Vec::new();
    if stdout.starts_with("# Not set") {
        lines.next();
        for line in lines.by_ref().take_while(|line| line.starts_with('#')) {
            unset.extend(
                line.trim_start_matches('#')
                    .split_whitespace()
                    .map(str::to_owned),
            );
        }
    }
    (parse(&stdout, "--check-config's output"), unset)
}

/// Every value of `table` by its dotted path (`target[0].url`).
fn leaves(table: &toml::Table) -> BTreeMap<String, toml::Value> {
    fn walk(prefix: &str, value: &toml::Value, into: &mut BTreeMap<String, toml::Value>) {
        match value {
            toml::Value::Table(table) => {
                for (key, value) in table {
                    walk(&format!("{prefix}.{key}"), value, into);
                }
            }
            toml::Value::Array(items) if items.iter().all(toml::Value::is_table) => {
                for (index, item) in items.iter().enumerate() {
                    walk(&format!("{prefix}[{index}]"), item, into);
                }
            }
            value => {
                into.insert(prefix.trim_start_matches('.').to_owned(), value.clone());
            }
        }
    }
    let mut into = BTreeMap::new();
    walk("", &toml::Value::Table(table.clone()), &mut into);
    into
}

/// Fails naming every key that the README and `--check-config` disagree on.
fn assert_prints_back(readme: &toml::Table, printed: &toml::Table, what: &str) {
    let (readme, printed) = (leaves(readme), leaves(printed));
    let mut differences = Vec::new();
    for key in readme.keys().chain(printed.keys()) {
        match (readme.get(key), printed.get(key)) {
            (Some(a), Some(b)) if a == b => {}
            (Some(_), None) if !differences.iter().any(|d: &String| d.starts_with(key)) => {
                differences.push(format!(
                    "{key}: in the README, not printed by --check-config"
                ));
            }
            (None, Some(b)) if !differences.iter().any(|d: &String| d.starts_with(key)) => {
                differences.push(format!(
                    "{key} = {b}: printed by --check-config, not in the README"
                ));
            }
            (Some(a), Some(b)) if !differences.iter().any(|d: &String| d.starts_with(key)) => {
                differences.push(format!("{key}: README says {a}, --check-config prints {b}"));
            }
            _ => {}
        }
    }
    assert!(
        differences.is_empty(),
        "{what}:\n{}",
        differences.join("\n")
    );
}

/// Files the test makes because the programs read them while checking: a CA, a certificate
/// and key it signed, a token and an (empty) .gor file.
struct RealFiles {
    dir: tempfile::TempDir,
    ca: String,
    cert: String,
    key: String,
    token: String,
    gor: String,
}

impl RealFiles {
    fn new() -> RealFiles {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new(dir.path(), "reference").unwrap();
        let server = ca.server().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "a-token-for-the-reference-test\n").unwrap();
        let gor = dir.path().join("requests.gor");
        std::fs::write(&gor, "").unwrap();
        let text = |path: &Path| path.to_str().unwrap().to_owned();
        RealFiles {
            ca: text(&ca.cert),
            cert: text(&server.cert),
            key: text(&server.key),
            token: text(&token),
            gor: text(&gor),
            dir,
        }
    }
}

fn set(table: &mut toml::Table, key: &str, value: impl Into<toml::Value>) {
    let (table, key) = match key.split_once('.') {
        Some((outer, inner)) => (table[outer].as_table_mut().unwrap(), inner),
        None => (table, key),
    };
    assert!(table.contains_key(key), "the README's file has no {key}");
    table.insert(key.to_owned(), value.into());
}

#[test]
fn listener_reference_file_names_every_key_with_its_default() {
    let files = RealFiles::new();
    let text = readme_reference("tapwire-listener");
    let readme = parse(&text, "the README's listener file");
    let (printed, _) = check_config("tapwire-listener", files.dir.path(), &text, &[]);
    assert_prints_back(&readme, &printed, "the README's listener file, as written");
    // Its values are the defaults: what a file giving only the required keys gets.
    let required = "port = [8081]\nreplayer = [\"http://replayer.internal:7070\"]\n";
    let (defaults, _) = check_config("tapwire-listener", files.dir.path(), required, &[]);
    assert_prints_back(
        &readme,
        &defaults,
        "the README's listener file against the defaults",
    );

    let mut every_key = parse(
        &uncommented(&text),
        "the README's listener file, uncommented",
    );
    set(&mut every_key, "token_file", files.token.as_str());
    set(&mut every_key, "tls_ca", files.ca.as_str());
    set(&mut every_key, "tls_cert", files.cert.as_str());
    set(&mut every_key, "tls_key", files.key.as_str());
    // With tls_ca the replayers are https://.
    set(
        &mut every_key,
        "replayer",
        toml::Value::Array(vec!["https://replayer.internal:7070".into()]),
    );
    let written = toml::to_string(&every_key).unwrap();
    let (printed, unset) = check_config("tapwire-listener", files.dir.path(), &written, &[]);
    assert!(
        unset.is_empty(),
        "keys the listener has and the README's file does not: {unset:?}"
    );
    assert_prints_back(
        &every_key,
        &printed,
        "the README's listener file, uncommented",
    );
}

#[test]
fn replayer_reference_file_names_every_key_with_its_default() {
    let files = RealFiles::new();
    let text = readme_reference("tapwire-replayer");
    let readme = parse(&text, "the README's replayer file");
    let (printed, _) = check_config("tapwire-replayer", files.dir.path(), &text, &[]);
    assert_prints_back(&readme, &printed, "the README's replayer file, as written");
    // Its values are the defaults: what a file giving only the required keys gets.
    let required = "[[target]]\nurl = \"http://staging-a:8080\"\n";
    let (defaults, _) = check_config("tapwire-replayer", files.dir.path(), required, &[]);
    assert_prints_back(
        &readme,
        &defaults,
        "the README's replayer file against the defaults",
    );

    let mut every_key = parse(
        &uncommented(&text),
        "the README's replayer file, uncommented",
    );
    set(&mut every_key, "token_file", files.token.as_str());
    set(&mut every_key, "tls.cert", files.cert.as_str());
    set(&mut every_key, "tls.key", files.key.as_str());
    set(&mut every_key, "tls.client_ca", files.ca.as_str());
    set(
        &mut every_key,
        "input_file",
        toml::Value::Array(vec![files.gor.as_str().into()]),
    );
    // A CA applies to an https:// target only.
    let target = every_key["target"][0].as_table_mut().unwrap();
    set(target, "url", "https://staging-a:8443");
    set(target, "target_ca", files.ca.as_str());
    let written = toml::to_string(&every_key).unwrap();
    let (printed, unset) = check_config("tapwire-replayer", files.dir.path(), &written, &[]);
    assert!(
        unset.is_empty(),
        "keys the replayer has and the README's file does not: {unset:?}"
    );
    assert_prints_back(
        &every_key,
        &printed,
        "the README's replayer file, uncommented",
    );
}

#[test]
fn per_target_flags_give_the_same_configuration_as_the_same_toml() {
    let from_flags = run(
        "tapwire-replayer",
        &[
            "--target",
            "http://staging-a:8080;rate=10;sample=5%;timeout=2s",
            "--rate",
            "50",
            "--target",
            "http://staging-b:8080",
            "--check-config",
        ],
    );
    assert_eq!(
        from_flags.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&from_flags.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("targets.toml");
    std::fs::write(
        &file,
        "[[target]]\nurl = \"http://staging-a:8080\"\nrate = 10\nsample = \"5%\"\n\
         timeout = \"2s\"\n\n[[target]]\nurl = \"http://staging-b:8080\"\nrate = 50\n",
    )
    .unwrap();
    let from_file = run(
        "tapwire-replayer",
        &["--config", file.to_str().unwrap(), "--check-config"],
    );
    let printed = String::from_utf8_lossy(&from_flags.stdout);
    assert_eq!(printed, String::from_utf8_lossy(&from_file.stdout));
    assert!(printed.contains("rate = 10\n"), "{printed}");
    assert!(printed.contains("rate = 50\n"), "{printed}");

    let unknown = run("tapwire-replayer", &["--target", "http://a:80;rat=10"]);
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert_eq!(unknown.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("\"rat\"") && stderr.contains("rate, burst, sample"),
        "names the key and the valid ones: {stderr}"
    );
}

/// A file, deployment flags that override some of its keys, and an engine flag.
struct OverrideCase {
    binary: &'static str,
    file: &'static str,
    deployment: &'static [&'static str],
    /// The keys the deployment flags set, as TOML.
    overridden: &'static str,
    engine: &'static [&'static str],
}

#[test]
fn deployment_flags_override_the_file_and_engine_flags_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        OverrideCase {
            binary: "tapwire-replayer",
            file: "metrics_listen = \"127.0.0.1:9000\"\n[[target]]\nurl = \"http://a:80\"\n",
            deployment: &["--metrics-listen", "127.0.0.1:9100"],
            overridden: "metrics_listen = \"127.0.0.1:9100\"\n",
            engine: &["--rate", "5"],
        },
        OverrideCase {
            binary: "tapwire-listener",
            file: "port = [8081]\nreplayer = [\"http://a:7070\"]\nmetrics_listen = \"127.0.0.1:9000\"\n",
            deployment: &[
                "--metrics-listen",
                "127.0.0.1:9100",
                "--replayer",
                "http://b:7070",
            ],
            overridden: "metrics_listen = \"127.0.0.1:9100\"\nreplayer = [\"http://b:7070\"]\n",
            engine: &["--max-flows", "5"],
        },
    ];
    for case in cases {
        let OverrideCase {
            binary,
            file,
            deployment,
            overridden,
            engine,
        } = case;
        let (alone, _) = check_config(binary, dir.path(), file, &[]);
        let (merged, _) = check_config(binary, dir.path(), file, deployment);
        let overridden = parse(overridden, "the expected override");
        for (key, value) in &alone {
            let expected = overridden.get(key).unwrap_or(value);
            assert_eq!(merged.get(key), Some(expected), "{binary}: {key}");
        }

        let path = dir.path().join("engine.toml");
        std::fs::write(&path, file).unwrap();
        let mut args = vec!["--config", path.to_str().unwrap()];
        args.extend(engine);
        let refused = run(binary, &args);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(2), "{binary}: {stderr}");
        assert!(
            stderr.contains(&format!("{}: cannot be combined with --config", engine[0]))
                && stderr.contains("set it in the file"),
            "{binary} names the refused flag: {stderr}"
        );
    }
}

//! Every ```toml block of README.md and docs/*.md is a config `switchyard check` accepts.
//!
//! The files a block names (certificates, keys, CAs) are generated in a temp dir and the
//! block's paths pointed at them; the environment variables it reads (`env:NAME`) are set.
//! A block that is deliberately not a whole config says so in an HTML comment on the line
//! before its fence: `<!-- check: skip, because … -->`. Anything else must load.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::binary;
use support::certs::TestCa;

/// The mark a Markdown author puts before a block that is not a whole config.
const SKIP_MARK: &str = "<!-- check: skip";

/// One ```toml block: where it is and what it says.
struct Block {
    file: String,
    line: usize,
    text: String,
    skipped: bool,
}

/// The ```toml blocks of `markdown`, dedented (blocks inside list items are indented).
fn toml_blocks(file: &str, markdown: &str) -> Vec<Block> {
    let lines: Vec<&str> = markdown.lines().collect();
    let mut blocks = Vec::new();
    let mut index = 0;
    while index < lines.len() {
        let fence = lines[index];
        let indent = fence.len() - fence.trim_start().len();
        if fence.trim_start() != "```toml" {
            index += 1;
            continue;
        }
        let skipped = lines[..index]
            .iter()
            .rev()
            .find(|line| !line.trim().is_empty())
            .is_some_and(|line| line.trim_start().starts_with(SKIP_MARK));
        let start = index + 1;
        let mut end = start;
        while end < lines.len() && lines[end].trim_start() != "```" {
            end += 1;
        }
        let text = lines[start..end]
            .iter()
            .map(|line| line.get(indent..).unwrap_or(line.trim_start()))
            .collect::<Vec<_>>()
            .join("\n");
        blocks.push(Block {
            file: file.to_string(),
            line: index + 1,
            text,
            skipped,
        });
        index = end + 1;
    }
    blocks
}

/// Every Markdown file whose examples users copy: README.md and docs/*.md.
fn documentation() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs directory")
        .map(|entry| entry.expect("docs entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("read markdown");
            let name = path
                .strip_prefix(&root)
                .unwrap_or(&path)
                .display()
                .to_string();
            (name, text)
        })
        .collect()
}

/// The quoted strings of `text` that name a PEM file (certificate, key or CA).
fn pem_paths(text: &str) -> Vec<String> {
    let mut paths: Vec<String> = text
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|value| {
            [".pem", ".key", ".crt"]
                .iter()
                .any(|ext| value.ends_with(ext))
        })
        .map(str::to_string)
        .collect();
    paths.sort();
    paths.dedup();
    paths
}

/// The names of the environment variables `text` reads with `env:NAME`.
fn env_names(text: &str) -> Vec<String> {
    text.match_indices("env:")
        .map(|(at, _)| {
            text[at + 4..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|name| !name.is_empty())
        .collect()
}

/// Whether an example's PEM file name says it holds CAs (`ca.pem`, `db-ca.pem`, `ca-bundle.crt`).
fn is_ca_name(file: &str) -> bool {
    let stem = file.rsplit_once('.').map_or(file, |(stem, _)| stem);
    stem == "ca"
        || stem.starts_with("ca-")
        || stem.starts_with("ca_")
        || stem.ends_with("-ca")
        || stem.ends_with("_ca")
        || stem.contains("-ca-")
}

/// The block written as a config in `dir`, its PEM files generated there and its paths
/// rewritten to them (absolute example paths such as /etc/… included).
fn materialise(block: &Block, dir: &Path, ca: &TestCa) -> PathBuf {
    let (leaf_cert, leaf_key) = ca.issue(&["localhost"], "localhost", dir, "leaf");
    let ca_cert = ca.write(dir, "ca.pem");
    let mut text = block.text.clone();
    for (number, path) in pem_paths(&block.text).into_iter().enumerate() {
        let file = Path::new(&path)
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let source = if file.ends_with(".key") {
            &leaf_key
        } else if is_ca_name(&file) {
            &ca_cert
        } else {
            &leaf_cert
        };
        let target = dir.join(format!("{number}-{file}"));
        std::fs::copy(source, &target).expect("copy PEM file");
        text = text.replace(&format!("\"{path}\""), &format!("\"{}\"", target.display()));
    }
    let config = dir.join("switchyard.toml");
    std::fs::write(&config, text).expect("write config");
    config
}

#[test]
fn every_toml_example_in_the_docs_is_a_config_check_accepts() {
    let ca = TestCa::new("docs CA");
    let mut checked = 0;
    let mut failures = Vec::new();
    for (file, markdown) in documentation() {
        for block in toml_blocks(&file, &markdown) {
            if block.skipped {
                continue;
            }
            let dir = tempfile::tempdir().expect("temp dir");
            let config = materialise(&block, dir.path(), &ca);
            let mut command = Command::new(binary());
            command.args(["check", "-c"]).arg(&config);
            for name in env_names(&block.text) {
                command.env(name, "example-secret");
            }
            let output = command.output().expect("run switchyard check");
            checked += 1;
            if !output.status.success() {
                failures.push(format!(
                    "{}:{}: {}",
                    block.file,
                    block.line,
                    String::from_utf8_lossy(&output.stderr).trim()
                ));
            }
        }
    }
    assert!(checked >= 10, "only {checked} examples found");
    assert!(
        failures.is_empty(),
        "examples `switchyard check` refuses:\n{}",
        failures.join("\n\n")
    );
}

#[test]
fn blocks_are_found_dedented_and_skip_marks_honoured() {
    let markdown = "intro\n\n```toml\na = 1\n```\n\n<!-- check: skip, a fragment -->\n\
                    ```toml\nb = 2\n```\n\n- item\n\n  ```toml\n  c = 3\n  ```\n";
    let blocks = toml_blocks("x.md", markdown);
    let seen: Vec<(&str, usize, bool)> = blocks
        .iter()
        .map(|b| (b.text.as_str(), b.line, b.skipped))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("a = 1", 3, false),
            ("b = 2", 8, true),
            ("c = 3", 14, false)
        ]
    );
}

#[test]
fn pem_paths_and_env_names_are_read_from_the_text() {
    let text = r#"tls = { certs = [{ cert = "/etc/x/web.pem", key = "web.key" }] }
password = "env:PG_PASSWORD"  # or "env:OTHER_ONE"
name = "api""#;
    assert_eq!(pem_paths(text), vec!["/etc/x/web.pem", "web.key"]);
    assert_eq!(env_names(text), vec!["PG_PASSWORD", "OTHER_ONE"]);
    assert!(is_ca_name("internal-ca.pem") && is_ca_name("ca.pem") && is_ca_name("ca-bundle.crt"));
    assert!(!is_ca_name("wildcard.pem") && !is_ca_name("cacti.pem"));
}

/// `switchyard check` on a config file in the repository; its stderr on failure.
fn check_repository_file(relative: &str) -> Result<(), String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    match support::check(&path) {
        (0, _) => Ok(()),
        (_, stderr) => Err(stderr),
    }
}

#[test]
fn every_example_config_file_loads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut examples: Vec<String> = std::fs::read_dir(root.join("examples"))
        .expect("examples directory")
        .map(|entry| entry.expect("examples entry").file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".toml"))
        .map(|name| format!("examples/{name}"))
        .collect();
    examples.push("packaging/switchyard.toml".to_string());
    for example in examples {
        if let Err(error) = check_repository_file(&example) {
            panic!("{example}: {error}");
        }
    }
}

#[test]
fn the_shipped_unit_runs_the_installed_binary_on_the_shipped_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let unit = std::fs::read_to_string(root.join("packaging/switchyard.service")).expect("unit");
    let value = |key: &str| {
        unit.lines()
            .find_map(|line| line.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("the unit has no {key}="))
            .to_string()
    };
    // The paths the install steps in docs/operations.md put the binary and config at.
    let (binary_path, config_path) = (
        "/usr/local/bin/switchyard",
        "/etc/switchyard/switchyard.toml",
    );
    assert_eq!(
        value("ExecStart"),
        format!("{binary_path} run -c {config_path}")
    );
    assert_eq!(
        value("ExecStartPre"),
        format!("{binary_path} check -c {config_path}")
    );
    assert_eq!(value("Type"), "notify");
    assert_eq!(value("ExecReload"), "/bin/kill -USR2 $MAINPID");
    let operations = std::fs::read_to_string(root.join("docs/operations.md")).expect("docs");
    assert!(operations.contains("cargo install --locked --path switchyard --root /usr/local"));
    assert!(operations.contains(&format!("packaging/switchyard.toml {config_path}")));
    // The binary upgrade's socket must be in the directory systemd creates for the service.
    let config = std::fs::read_to_string(root.join("packaging/switchyard.toml")).expect("config");
    let runtime = format!("/run/{}/", value("RuntimeDirectory"));
    assert!(
        config.contains(&format!("upgrade_socket = \"{runtime}")),
        "upgrade_socket under {runtime}"
    );
}

//! `switchyard check` and config loading: every mistake reported with file, line and key.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{binary, check, free_port};

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

/// 1-based line of the only occurrence of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> usize {
    assert_eq!(
        text.matches(needle).count(),
        1,
        "`{needle}` must occur once in the test config"
    );
    let offset = text.find(needle).expect("needle");
    text[..offset].matches('\n').count() + 1
}

const VALID: &str = r#"
shutdown_timeout = "5s"

[admin]
listen = "127.0.0.1:9900"

[log]
access = "off"

[[listener]]
name = "web"
listen = "127.0.0.1:8080"
protocol = "tcp"
pool = "app"
timeouts = { client = "30s", proxy_header = "1s" }
proxy_protocol = "accept"

[[pool]]
name = "app"
balance = "least_conn"
health = { check = "http", path = "/health", interval = "2s", fall = 3, rise = 2 }
timeouts = { connect = "3s", server = "30s", queue = "5s" }
send_proxy_protocol = "v2"
servers = [
  { name = "app1", address = "127.0.0.1:9001", weight = 2, max_connections = 100 },
  { name = "app2", address = "localhost:9002" },
  { name = "spare", address = "[::1]:9003", backup = true },
]
"#;

#[test]
fn check_accepts_a_valid_config() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write(&dir, "valid.toml", VALID);
    let (code, stderr) = check(&path);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

/// Thirteen independent mistakes; `(text that marks the line, key reported)`.
const BROKEN: &str = r#"# thirteen mistakes, each on its own
bogus_top = 1

[admin]
listen = "127.0.0.1:9900"
allowed_hosts = ["user@admin.example"]

[[listener]]
name = "typo"
listen = "127.0.0.1:7001"
protocol = "tcp"
pool = "good"
max_conections = 10

[[listener]]
name = "orphan"
listen = "127.0.0.1:7002"
protocol = "tcp"
pool = "missing"

[[listener]]
name = "badaddr"
listen = "localhost-7003"
protocol = "tcp"
pool = "good"

[[pool]]
name = "good"
servers = [ { address = "127.0.0.1:9001" } ]

[[pool]]
name = "slow"
timeouts = { connect = "3 parsecs" }
servers = [ { address = "127.0.0.1:9002" } ]

[[pool]]
name = "twin"
servers = [ { address = "127.0.0.1:9003" } ]

[[pool]]
name = "twin" 
servers = [ { address = "127.0.0.1:9004" } ]

[[pool]]
name = "portless"
servers = [ { address = "127.0.0.1" } ]

[[pool]]
name = "db"
health = { check = "imap" }
servers = [ { address = "127.0.0.1:5432" } ]

[[listener]]
name = "tcprole"
listen = "127.0.0.1:7004"
protocol = "tcp"
pool = "good"
role = "primary"

[[listener]]
name = "unchecked"
listen = "127.0.0.1:7005"
protocol = "postgres"
pool = "good"
role = "replica"
client_tls = { mode = "required" }

[[listener]]
name = "idna"
listen = "127.0.0.1:7006"
protocol = "http"
pool = "good"
workers = 0
  [[listener.routes]]
  host = "\u0308x.example"
  pool = "good"
"#;

const MISTAKES: [(&str, &str); 14] = [
    ("bogus_top = 1", "bogus_top"),
    ("max_conections = 10", "listener[0].max_conections"),
    ("pool = \"missing\"", "listener[1].pool"),
    ("listen = \"localhost-7003\"", "listener[2].listen"),
    ("\"3 parsecs\"", "pool[1].timeouts.connect"),
    // The second `twin` (note the trailing space that makes the line unique).
    ("name = \"twin\" ", "pool[3].name"),
    ("address = \"127.0.0.1\" ", "pool[4].servers[0].address"),
    ("check = \"imap\"", "pool[5].health.check"),
    ("role = \"primary\"", "listener[3].role"),
    // A role needs servers whose role a postgres check reports.
    ("role = \"replica\"", "listener[4].role"),
    // TLS demanded without certificates.
    (
        "client_tls = { mode = \"required\" }",
        "listener[4].client_tls",
    ),
    ("user@admin.example", "admin.allowed_hosts"),
    // A route host IDNA cannot convert (a label starting with a combining mark).
    ("host = \"\\u0308x.example\"", "listener[5].routes[0].host"),
    ("workers = 0", "listener[5].workers"),
];

#[test]
fn check_reports_every_mistake_with_its_line_and_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write(&dir, "broken.toml", BROKEN);
    let (code, stderr) = check(&path);
    assert_eq!(code, 2, "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    for (needle, key) in MISTAKES {
        let prefix = format!("{}:{}: {key}: ", path.display(), line_of(BROKEN, needle));
        let line = lines
            .iter()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no error starting with `{prefix}` in:\n{stderr}"));
        assert!(
            line.len() > prefix.len() + 3,
            "the error has a message: {line}"
        );
    }
    assert_eq!(
        lines.len(),
        MISTAKES.len(),
        "one line per mistake, nothing else:\n{stderr}"
    );
    // Messages say what is wrong.
    let find = |key: &str| {
        lines
            .iter()
            .find(|l| l.contains(&format!(": {key}: ")))
            .copied()
            .unwrap_or_default()
    };
    assert!(find("bogus_top").contains("unknown"), "{stderr}");
    assert!(
        find("listener[0].max_conections").contains("unknown key"),
        "{stderr}"
    );
    assert!(find("listener[1].pool").contains("missing"), "{stderr}");
    assert!(
        find("pool[1].timeouts.connect").contains("3 parsecs"),
        "{stderr}"
    );
    assert!(find("pool[3].name").contains("twin"), "{stderr}");
    assert!(
        find("pool[4].servers[0].address").contains("port"),
        "{stderr}"
    );
    assert!(find("pool[5].health.check").contains("tcp"), "{stderr}");
    assert!(find("admin.allowed_hosts").contains("userinfo"), "{stderr}");
    assert!(
        find("listener[5].routes[0].host").contains("internationalized"),
        "{stderr}"
    );
}

#[test]
fn check_reports_a_syntax_error_with_its_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = "[admin]\nlisten = \"127.0.0.1:9900\"\n\n[[listener]\nname = \"web\"\n";
    let path = write(&dir, "syntax.toml", text);
    let (code, stderr) = check(&path);
    assert_eq!(code, 2, "{stderr}");
    let expected = format!("{}:{}: ", path.display(), line_of(text, "[[listener]"));
    assert!(
        stderr.starts_with(&expected),
        "expected `{expected}...`, got:\n{stderr}"
    );
}

#[test]
fn check_reports_a_missing_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("nowhere.toml");
    let (code, stderr) = check(&path);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    assert!(stderr.contains("cannot read"), "{stderr}");
}

#[test]
fn run_refuses_a_bad_config_without_binding_anything() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (admin_port, listen_port) = (free_port(), free_port());
    let text = format!(
        r#"
[admin]
listen = "127.0.0.1:{admin_port}"

[[listener]]
name = "web"
listen = "127.0.0.1:{listen_port}"
protocol = "tcp"
pool = "app"
colour = "blue"

[[pool]]
name = "app"
servers = [ {{ address = "127.0.0.1:9001" }} ]
"#
    );
    let path = write(&dir, "bad.toml", &text);
    let output = Command::new(binary())
        .args(["run", "-c"])
        .arg(&path)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let expected = format!(
        "{}:{}: listener[0].colour: ",
        path.display(),
        line_of(&text, "colour")
    );
    assert!(
        stderr.starts_with(&expected),
        "expected `{expected}...`, got:\n{stderr}"
    );
    assert!(
        !stderr.contains("listening"),
        "nothing was bound:\n{stderr}"
    );
    assert!(
        output.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[test]
fn the_quickstart_example_loads() {
    let text = include_str!("../../examples/quickstart.toml");
    let config = switchyard::config::load_str(Path::new("examples/quickstart.toml"), text)
        .unwrap_or_else(|e| panic!("quickstart.toml:\n{e}"));
    let names: Vec<&str> = config.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["web", "tcp"]);
    assert_eq!(config.pools.len(), 2);
    assert_eq!(config.pools[0].servers.len(), 2);
    assert!(config.admin.is_some());
    // The script appends the PostgreSQL, MySQL and SMTP parts when it can start their
    // servers: the files together are one config.
    let postgres = include_str!("../../examples/quickstart-postgres.toml");
    let mysql = include_str!("../../examples/quickstart-mysql.toml");
    let smtp = include_str!("../../examples/quickstart-smtp.toml");
    let all = format!("{text}\n{postgres}\n{mysql}\n{smtp}");
    let config = switchyard::config::load_str(Path::new("quickstart.toml"), &all)
        .unwrap_or_else(|e| panic!("quickstart.toml + its postgres, mysql and smtp parts:\n{e}"));
    let names: Vec<&str> = config.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["web", "tcp", "pg", "mysql", "smtp"]);
    // The script finds MariaDB a free port and writes it over this address in its copy.
    assert!(mysql.contains("address = \"127.0.0.1:33069\""), "{mysql}");
    assert!(
        include_str!("../../scripts/quickstart.sh").contains("127\\.0\\.0\\.1:33069"),
        "quickstart.sh rewrites the MariaDB address of quickstart-mysql.toml"
    );
}

#[test]
fn run_without_a_config_path_says_where_it_looked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = Command::new(binary())
        .arg("run")
        .current_dir(dir.path())
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    for looked in [
        "./switchyard.toml",
        "/etc/switchyard/switchyard.toml",
        "-c FILE",
    ] {
        assert!(stderr.contains(looked), "{looked} in {stderr}");
    }
}

#[test]
fn run_without_a_config_path_uses_the_one_in_the_working_dir_and_reports_its_ports() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = r#"
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "web"
listen = "127.0.0.1:0"
protocol = "tcp"
pool = "app"

[[pool]]
name = "app"
servers = [ { address = "127.0.0.1:9" } ]
"#;
    write(&dir, "switchyard.toml", text);
    let ready = dir.path().join("ready.json");
    let mut child = Command::new(binary())
        .arg("run")
        .arg("--ready-file")
        .arg(&ready)
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run");
    let start = std::time::Instant::now();
    let reported = loop {
        let parsed = std::fs::read_to_string(&ready)
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok());
        if let Some(parsed) = parsed {
            break parsed;
        }
        assert!(
            child.try_wait().ok().flatten().is_none(),
            "switchyard exited before it was ready"
        );
        assert!(start.elapsed() < support::DEADLINE, "no ready file");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    for address in [&reported["admin"], &reported["listeners"]["web"]] {
        let address: std::net::SocketAddr = address
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("an address in {reported}"));
        assert_ne!(address.port(), 0, "{reported}");
    }
    assert_eq!(reported["pid"].as_u64(), Some(u64::from(child.id())));
}

/// Runs `check` on `text` and returns its errors, asserting the one at `needle`'s line
/// names `key` and says `message`.
fn refused_at(text: &str, needle: &str, key: &str, message: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write(&dir, "protocols.toml", text);
    let (code, stderr) = check(&path);
    assert_eq!(code, 2, "{stderr}");
    let expected = format!("{}:{}: {key}: ", path.display(), line_of(text, needle));
    let line = stderr
        .lines()
        .find(|line| line.starts_with(&expected))
        .unwrap_or_else(|| panic!("`{expected}` in:\n{stderr}"));
    assert!(line.contains(message), "{line}");
}

/// A config with one listener of `protocol` (extra keys `listener`) over a pool (extra
/// keys `pool`).
fn one_listener(protocol: &str, listener: &str, pool: &str) -> String {
    format!(
        "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"{protocol}\"\npool = \"p\"\n{listener}\n\n\
         [[pool]]\nname = \"p\"\nservers = [ {{ address = \"127.0.0.1:5432\" }} ]\n{pool}\n"
    )
}

#[test]
fn a_key_the_listeners_protocol_does_not_read_is_an_error_with_its_line() {
    // A `host` route on a postgres listener.
    let text = one_listener(
        "postgres",
        "  [[listener.routes]]\n  host = \"a.example\"\n  pool = \"p\"",
        "",
    );
    refused_at(
        &text,
        "host = ",
        "listener[0].routes[0].host",
        "unknown field `host`",
    );
    // A `database` route on an http listener.
    let text = one_listener(
        "http",
        "  [[listener.routes]]\n  database = \"app\"\n  pool = \"p\"",
        "",
    );
    refused_at(
        &text,
        "database = ",
        "listener[0].routes[0].database",
        "unknown field `database`",
    );
    // `domain` on any listener of this build.
    for protocol in ["tcp", "http", "postgres"] {
        let text = one_listener(
            protocol,
            "  [[listener.routes]]\n  domain = \"example.org\"\n  pool = \"p\"",
            "",
        );
        refused_at(
            &text,
            "domain = ",
            "listener[0].routes[0].domain",
            "unknown field `domain`",
        );
    }
    // `[listener.http]` on a tcp listener.
    let text = one_listener("tcp", "[listener.http]\nforwarded = true", "");
    refused_at(
        &text,
        "[listener.http]",
        "listener[0].http",
        "not a key of tcp listeners; it belongs to http listeners",
    );
    // A postgres key on an http listener.
    let text = one_listener("http", "role = \"primary\"", "");
    refused_at(
        &text,
        "role = ",
        "listener[0].role",
        "not a key of http listeners; it belongs to postgres listeners",
    );
    // An HTTP timeout on a postgres listener.
    let text = one_listener("postgres", "timeouts = { keep_alive = \"5s\" }", "");
    refused_at(
        &text,
        "keep_alive",
        "listener[0].timeouts.keep_alive",
        "applies to http listeners only",
    );
    // A login deadline, and the cap on logins in flight, on listeners without a login.
    let text = one_listener("http", "timeouts = { login = \"5s\" }", "");
    refused_at(
        &text,
        "login",
        "listener[0].timeouts.login",
        "applies to postgres, mysql and smtp listeners only",
    );
    let text = one_listener("tcp", "max_logins_per_address = 10", "");
    refused_at(
        &text,
        "max_logins_per_address",
        "listener[0].max_logins_per_address",
        "applies to postgres, mysql and smtp listeners only",
    );
}

#[test]
fn a_pool_key_no_listener_of_the_pool_reads_is_an_error_with_its_line() {
    // `preserve_host` on a pool behind a postgres listener.
    let text = one_listener("postgres", "", "preserve_host = false");
    refused_at(
        &text,
        "preserve_host",
        "pool[0].preserve_host",
        "read by http listeners only, and pool `p` serves none (it serves postgres)",
    );
    // Transaction pooling behind an http listener.
    let text = one_listener("http", "", "pool_mode = \"transaction\"");
    refused_at(
        &text,
        "pool_mode",
        "pool[0].pool_mode",
        "read by database listeners only",
    );
    // SMTP's upstream STARTTLS on a pool of tcp listeners, which speak TLS from the first
    // byte: the key and the pool named.
    let text = one_listener("tcp", "", "upstream_tls = { starttls = true }");
    refused_at(
        &text,
        "starttls",
        "pool[0].upstream_tls.starttls",
        "read by smtp listeners only, and pool `p` serves none (it serves tcp)",
    );
    // A key no pool has.
    let text = one_listener("tcp", "", "colour = \"blue\"");
    refused_at(&text, "colour", "pool[0].colour", "unknown key for pools");
}

#[test]
fn a_key_the_health_checks_kind_does_not_read_is_an_error_with_its_line() {
    // `path` on a tcp check.
    let text = one_listener(
        "tcp",
        "",
        "health = { check = \"tcp\", path = \"/health\" }",
    );
    refused_at(
        &text,
        "path = ",
        "pool[0].health.path",
        "not a key of `tcp` checks; it belongs to `http` checks",
    );
    // `user` on an http check.
    let text = one_listener(
        "http",
        "",
        "health = { check = \"http\", user = \"monitor\" }",
    );
    refused_at(
        &text,
        "user = ",
        "pool[0].health.user",
        "not a key of `http` checks; it belongs to `postgres` checks, `mysql` checks",
    );
}

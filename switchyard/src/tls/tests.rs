//! Config checks for the TLS keys, run through the real loader so that each error carries
//! the file, line and key an operator sees; and the parts of the module that need no socket.

use std::path::Path;

use rcgen::{CertificateParams, DnType, KeyPair, date_time_ymd};

use super::{ClientIdentity, TlsInfo, cert_facts, proxy_v2_tlvs};
use crate::config::ConfigError;

/// Loads config text as the proxy does, with the TLS resource checks.
fn load_str(path: &Path, text: &str) -> Result<crate::config::Config, crate::config::ConfigErrors> {
    crate::config::load_str_with(path, text, &crate::runtime::RESOURCE_CHECKS)
}

/// Writes a self-signed certificate for `names` as `stem.pem`/`stem.key` in `dir`.
fn write_cert(dir: &Path, stem: &str, names: &[&str], expired: bool) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("params");
    params.distinguished_name.push(DnType::CommonName, stem);
    if expired {
        params.not_before = date_time_ymd(2019, 1, 1);
        params.not_after = date_time_ymd(2020, 1, 1);
    }
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("cert");
    std::fs::write(dir.join(format!("{stem}.pem")), cert.pem()).expect("write");
    std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).expect("write");
}

/// Loads a config whose only listener/pool carry `listener_tls` / `pool_tls` lines;
/// returns the errors (empty when it loads).
fn errors(dir: &Path, listener_tls: &str, pool_tls: &str) -> Vec<ConfigError> {
    let text = format!(
        "[[listener]]\nname = \"front\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"tcp\"\npool = \"app\"\n{listener_tls}\n\n[[pool]]\nname = \"app\"\nservers = [{{ address = \"127.0.0.1:1\" }}]\n{pool_tls}\n"
    );
    match load_str(&dir.join("switchyard.toml"), &text) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.0,
    }
}

fn one(errors: &[ConfigError]) -> &ConfigError {
    assert_eq!(errors.len(), 1, "{errors:?}");
    &errors[0]
}

#[test]
fn relative_paths_load_from_the_config_directory() {
    let dir = tempfile::tempdir().expect("dir");
    write_cert(dir.path(), "a", &["a.test"], false);
    write_cert(dir.path(), "ca", &[], false);
    let tls = "tls = { certs = [{ cert = \"a.pem\", key = \"a.key\" }], client_ca = \"ca.pem\", client_auth = \"required\" }";
    let upstream = "upstream_tls = { sslmode = \"verify-full\", root_cert = \"ca.pem\", client_cert = \"a.pem\", client_key = \"a.key\" }";
    assert!(errors(dir.path(), tls, upstream).is_empty());
}

#[test]
fn missing_files_and_mismatched_keys_name_file_line_and_key() {
    let dir = tempfile::tempdir().expect("dir");
    write_cert(dir.path(), "a", &["a.test"], false);
    write_cert(dir.path(), "b", &["b.test"], false);

    let missing = errors(
        dir.path(),
        "tls = { certs = [{ cert = \"nope.pem\", key = \"a.key\" }] }",
        "",
    );
    let error = one(&missing);
    assert_eq!(
        (error.line, error.key.as_str()),
        (Some(6), "listener[0].tls.certs[0].cert")
    );
    assert!(error.message.contains("nope.pem"), "{}", error.message);

    let mismatch = errors(
        dir.path(),
        "tls = { certs = [{ cert = \"a.pem\", key = \"b.key\" }] }",
        "",
    );
    let error = one(&mismatch);
    assert_eq!(error.key, "listener[0].tls.certs[0].key");
    assert!(error.message.contains("does not fit"), "{}", error.message);

    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "hello").expect("write");
    let bad = errors(
        dir.path(),
        "tls = { certs = [{ cert = \"garbage.pem\", key = \"a.key\" }] }",
        "",
    );
    assert!(one(&bad).message.contains("no certificate"), "{bad:?}");

    let no_ca = errors(
        dir.path(),
        "tls = { certs = [{ cert = \"a.pem\", key = \"a.key\" }], client_auth = \"optional\" }",
        "",
    );
    assert_eq!(one(&no_ca).key, "listener[0].tls.client_auth");

    let empty = errors(dir.path(), "tls = { certs = [] }", "");
    assert_eq!(one(&empty).key, "listener[0].tls.certs");
}

#[test]
fn upstream_tls_errors() {
    let dir = tempfile::tempdir().expect("dir");
    write_cert(dir.path(), "a", &["a.test"], false);
    let bad_mode = errors(dir.path(), "", "upstream_tls = { sslmode = \"sometimes\" }");
    let error = one(&bad_mode);
    assert_eq!(error.line, Some(11));
    assert!(error.key.starts_with("pool[0].upstream_tls"), "{error}");
    assert!(error.message.contains("verify-full"), "{}", error.message);

    let half = errors(dir.path(), "", "upstream_tls = { client_cert = \"a.pem\" }");
    assert!(one(&half).message.contains("go together"));

    let missing_root = errors(
        dir.path(),
        "",
        "upstream_tls = { sslmode = \"verify-ca\", root_cert = \"none.pem\" }",
    );
    assert_eq!(one(&missing_root).key, "pool[0].upstream_tls.root_cert");

    let passthrough_routes =
        "tls_passthrough = true\nroutes = [{ sni = \"a.test\", pool = \"app\" }]";
    assert!(errors(dir.path(), passthrough_routes, "").is_empty());
    let plain_routes = "routes = [{ sni = \"a.test\", pool = \"app\" }]";
    assert!(
        one(&errors(dir.path(), plain_routes, ""))
            .message
            .contains("tls_passthrough")
    );
}

#[test]
fn certificate_facts_and_expiry() {
    let dir = tempfile::tempdir().expect("dir");
    write_cert(dir.path(), "old", &["old.test", "10.0.0.1"], true);
    let der = super::pem::read_certs(&dir.path().join("old.pem")).expect("read");
    let facts = cert_facts(&der[0]).expect("facts");
    assert!(facts.expired);
    assert_eq!(facts.common_name.as_deref(), Some("old"));
    assert_eq!(facts.sans, ["DNS:old.test", "IP:10.0.0.1"]);
    assert_eq!(facts.dns_names, ["old.test"]);
    assert!(cert_facts(b"\x30\x03\x02\x01\x00").is_err());
    // An expired certificate loads (the warning is logged), it is not an error.
    assert!(
        errors(
            dir.path(),
            "tls = { certs = [{ cert = \"old.pem\", key = \"old.key\" }] }",
            ""
        )
        .is_empty()
    );
}

#[test]
fn proxy_v2_tlvs_layout() {
    let info = TlsInfo {
        sni: Some("a.test".into()),
        alpn: None,
        client_cert: Some(ClientIdentity {
            subject: "CN=alice".into(),
            common_name: Some("alice".into()),
            sans: Vec::new(),
        }),
        version: Some("TLSv1.3".into()),
        cipher: None,
    };
    let tlvs = proxy_v2_tlvs(&info);
    assert_eq!(tlvs[0], (0x02, b"a.test".to_vec()));
    let mut ssl = vec![0x07, 0, 0, 0, 0, 0x21, 0, 7];
    ssl.extend_from_slice(b"TLSv1.3");
    ssl.extend_from_slice(&[0x22, 0, 5]);
    ssl.extend_from_slice(b"alice");
    assert_eq!(tlvs[1], (0x20, ssl));
}

//! What keeps web pages away from the admin API.
//!
//! A browser lets any page send a "simple" cross-origin request (a `POST` with
//! `Content-Type: text/plain`, no preflight) to `127.0.0.1`, and a page whose name is
//! rebound to `127.0.0.1` (DNS rebinding) may even read the answers. Both carry tells a page
//! cannot remove: the rebound page's requests name its own host in `Host`; a cross-origin
//! request carries its page's `Origin` (or at least `Referer`); and a page cannot send
//! `Content-Type: application/json` across origins without a preflight this API never
//! grants. So every request must name this listener in `Host`, and every mutating one must
//! come from no other origin and say `application/json`. `switchyard ctl` and scripts send
//! exactly that.

use std::net::SocketAddr;

use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};

use crate::authority::{self, Authority, Refusal};

/// Why a request to the admin API is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// `Host` missing, repeated or invalid: 400.
    #[error("{0}")]
    Malformed(Refusal),
    /// `Host` names something other than this listener (DNS rebinding): 421.
    #[error("Host `{0}` is not this admin API (see admin.allowed_hosts)")]
    OtherHost(String),
    /// A mutating request from a page of another origin: 403.
    #[error("cross-origin request from `{0}` refused")]
    CrossOrigin(String),
    /// A mutating request without `Content-Type: application/json`: 403.
    #[error("mutating calls need Content-Type: application/json")]
    ContentType,
}

impl Denied {
    /// The status answered.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Malformed(_) => StatusCode::BAD_REQUEST,
            Self::OtherHost(_) => StatusCode::MISDIRECTED_REQUEST,
            Self::CrossOrigin(_) | Self::ContentType => StatusCode::FORBIDDEN,
        }
    }
}

/// The names this admin API answers to besides its own address (`admin.allowed_hosts`).
#[derive(Debug, Default)]
pub struct Access {
    allowed_hosts: Vec<Authority>,
}

impl Access {
    /// From `admin.allowed_hosts`; an entry that is not a host (validation reports it) is
    /// skipped.
    pub fn new(allowed_hosts: &[String]) -> Self {
        let allowed_hosts = allowed_hosts
            .iter()
            .filter_map(|host| Authority::parse(host.as_bytes()).ok())
            .collect();
        Self { allowed_hosts }
    }

    /// Checks a request that reached the admin listener at `local` (see the module
    /// documentation).
    pub fn check<B>(&self, local: SocketAddr, request: &Request<B>) -> Result<(), Denied> {
        let host = authority::of_request(request.version(), request.uri(), request.headers())
            .map_err(Denied::Malformed)?;
        let host = match host {
            Some(host) if self.names_listener(local, &host) => host,
            other => {
                return Err(Denied::OtherHost(
                    other.map_or_else(|| "-".to_string(), |h| h.as_str().to_string()),
                ));
            }
        };
        if matches!(*request.method(), Method::GET | Method::HEAD) {
            return Ok(());
        }
        let headers = request.headers();
        if let Some(page) = headers
            .get(header::ORIGIN)
            .or_else(|| headers.get(header::REFERER))
            && !same_origin(page, &host)
        {
            return Err(Denied::CrossOrigin(
                String::from_utf8_lossy(page.as_bytes()).into_owned(),
            ));
        }
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
        if json {
            Ok(())
        } else {
            Err(Denied::ContentType)
        }
    }

    /// Whether `host` names this listener: the address the client connected to (`local`),
    /// `localhost` on a loopback connection (both on the listener's port; no port is 80),
    /// or an `allowed_hosts` entry (on its port if it gives one, else on any).
    fn names_listener(&self, local: SocketAddr, host: &Authority) -> bool {
        let local_ip = local.ip().to_canonical();
        let on_port = host.port().unwrap_or(80) == local.port();
        let is_address = host.ip().map(|ip| ip.to_canonical()) == Some(local_ip);
        let is_localhost = local_ip.is_loopback() && host.host() == "localhost";
        ((is_address || is_localhost) && on_port)
            || self.allowed_hosts.iter().any(|allowed| {
                allowed.host() == host.host()
                    && allowed.port().is_none_or(|port| host.port() == Some(port))
            })
    }
}

/// Whether `page` (an `Origin`, or a `Referer` URL) is the origin the request's `host`
/// reaches: same host, same port (the scheme's default where none is written). The scheme
/// itself is not compared: one host and port serve one of `http` and `https`, and the
/// admin API, plain HTTP itself, may be published through a TLS front.
fn same_origin(page: &HeaderValue, host: &Authority) -> bool {
    let Some(uri) = page.to_str().ok().and_then(|text| text.parse::<Uri>().ok()) else {
        return false;
    };
    let default_port = match uri.scheme_str() {
        Some("http") => 80,
        Some("https") => 443,
        _ => return false,
    };
    uri.authority()
        .and_then(|origin| Authority::parse(origin.as_str().as_bytes()).ok())
        .is_some_and(|origin| {
            origin.host() == host.host()
                && origin.port().unwrap_or(default_port) == host.port().unwrap_or(default_port)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: &str = "127.0.0.1:9900";

    fn check(
        access: &Access,
        local: &str,
        method: Method,
        headers: &[(&str, &str)],
    ) -> Result<(), Denied> {
        let mut request = Request::builder().method(method).uri("/api/v1/reload");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let local: SocketAddr = local.parse().expect("address");
        access.check(local, &request.body(()).expect("request"))
    }

    fn get(access: &Access, local: &str, host: &str) -> Result<(), Denied> {
        check(access, local, Method::GET, &[("host", host)])
    }

    #[test]
    fn host_must_name_this_listener() {
        let access = Access::default();
        assert_eq!(get(&access, LOCAL, "127.0.0.1:9900"), Ok(()));
        assert_eq!(get(&access, LOCAL, "localhost:9900"), Ok(()));
        assert_eq!(get(&access, "[::1]:9900", "[::1]:9900"), Ok(()));
        assert_eq!(
            get(&access, "[::ffff:127.0.0.1]:9900", "127.0.0.1:9900"),
            Ok(())
        );
        assert_eq!(get(&access, "127.0.0.1:80", "127.0.0.1"), Ok(()));
        for host in [
            "evil.example:9900",
            "localhost:9901",
            "127.0.0.1:9901",
            "127.0.0.1",
        ] {
            assert!(
                matches!(get(&access, LOCAL, host), Err(Denied::OtherHost(_))),
                "{host}"
            );
        }
        // `localhost` only over loopback.
        assert!(get(&access, "192.0.2.7:9900", "localhost:9900").is_err());
        assert_eq!(
            check(&access, LOCAL, Method::GET, &[]),
            Err(Denied::Malformed(Refusal::MissingHost))
        );
    }

    #[test]
    fn allowed_hosts_add_names_with_or_without_a_port() {
        let access = Access::new(&["admin.internal".into(), "Admin.Example:443".into()]);
        assert_eq!(get(&access, LOCAL, "admin.internal:9900"), Ok(()));
        assert_eq!(get(&access, LOCAL, "ADMIN.internal"), Ok(()));
        assert_eq!(get(&access, LOCAL, "admin.example:443"), Ok(()));
        assert!(get(&access, LOCAL, "admin.example").is_err());
        assert!(get(&access, LOCAL, "other.internal:9900").is_err());
    }

    #[test]
    fn mutations_come_from_this_origin_or_none_and_say_json() {
        let access = Access::default();
        let post = |headers: &[(&str, &str)]| {
            let mut all = vec![("host", "127.0.0.1:9900")];
            all.extend_from_slice(headers);
            check(&access, LOCAL, Method::POST, &all)
        };
        let json = ("content-type", "application/json");
        assert_eq!(post(&[json]), Ok(()));
        assert_eq!(
            post(&[("content-type", "Application/JSON; charset=utf-8")]),
            Ok(())
        );
        assert_eq!(post(&[json, ("origin", "http://127.0.0.1:9900")]), Ok(()));
        assert_eq!(
            post(&[json, ("referer", "http://127.0.0.1:9900/x?y")]),
            Ok(())
        );
        for page in [
            ("origin", "http://evil.example"),
            ("origin", "null"),
            ("origin", "http://127.0.0.1:9901"),
            ("origin", "http://127.0.0.1"),
            ("origin", "http://localhost:9900"),
            ("referer", "http://evil.example/page"),
        ] {
            let verdict = post(&[json, page]);
            assert!(
                matches!(verdict, Err(Denied::CrossOrigin(_))),
                "{page:?}: {verdict:?}"
            );
        }
        // `Origin`, when there is one, decides; `Referer` stands in only without it.
        let ours = ("origin", "http://127.0.0.1:9900");
        assert_eq!(
            post(&[json, ours, ("referer", "http://evil.example/")]),
            Ok(())
        );
        let theirs = ("origin", "http://evil.example");
        let verdict = post(&[json, theirs, ("referer", "http://127.0.0.1:9900/")]);
        assert!(
            matches!(verdict, Err(Denied::CrossOrigin(_))),
            "{verdict:?}"
        );
        for content_type in [&[("content-type", "text/plain")][..], &[]] {
            assert_eq!(post(content_type), Err(Denied::ContentType));
        }
        let verdict = post(&[
            ("content-type", "text/plain"),
            ("origin", "http://evil.example"),
        ]);
        assert_eq!(verdict.map_err(|d| d.status()), Err(StatusCode::FORBIDDEN));
    }
}

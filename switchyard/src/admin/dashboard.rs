//! `GET /`: the dashboard, a page that polls `/api/v1/stats` (see `dashboard/`). Its HTML,
//! CSS, script and icon are compiled into the binary and served from this listener only;
//! the Content-Security-Policy forbids the page any other origin, inline script and being
//! framed (so no other page can trick a click on its state buttons).

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};

use super::Reply;

/// The page's policy: its own origin only, no inline script or style, no framing, no
/// forms, no `<base>`.
const CSP: &str = "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Each file of the page: path, content type, content.
const ASSETS: [(&str, &str, &str); 4] = [
    (
        "",
        "text/html; charset=utf-8",
        include_str!("dashboard/index.html"),
    ),
    (
        "dashboard.css",
        "text/css; charset=utf-8",
        include_str!("dashboard/dashboard.css"),
    ),
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_str!("dashboard/dashboard.js"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("dashboard/favicon.svg"),
    ),
];

/// The file at `path` (without its leading `/`), if it is one of the page's.
pub fn asset(path: &str) -> Option<Reply> {
    let (_, content_type, body) = ASSETS.iter().find(|(name, _, _)| *name == path)?;
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    for (name, value) in [
        (CONTENT_TYPE, *content_type),
        (CACHE_CONTROL, "no-cache"),
        (HeaderName::from_static("content-security-policy"), CSP),
        (HeaderName::from_static("x-content-type-options"), "nosniff"),
        (HeaderName::from_static("x-frame-options"), "DENY"),
        // Not `no-referrer`: that would make the browser send `Origin: null` on the page's
        // own POSTs, which the API refuses as cross-origin.
        (HeaderName::from_static("referrer-policy"), "same-origin"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_only_its_own_files() {
        let page = ASSETS[0].2;
        for (name, _, _) in &ASSETS[1..] {
            assert!(page.contains(&format!("\"{name}\"")), "{name} is linked");
        }
        for file in ASSETS.iter().map(|(_, _, body)| body) {
            // An SVG's namespace is a name, not a request.
            let file = file.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
            assert!(
                !file.contains("http://") && !file.contains("https://") && !file.contains("//cdn"),
                "no absolute URL: the page loads nothing from elsewhere"
            );
            assert!(
                !file.contains("localStorage")
                    && !file.contains("sessionStorage")
                    && !file.contains("document.cookie"),
                "the token is kept in memory only"
            );
        }
        assert!(
            !page.contains("<script>") && !page.contains("style="),
            "nothing inline for the CSP to refuse"
        );
    }

    #[test]
    fn every_file_is_served_with_the_policy() {
        for (name, content_type, _) in ASSETS {
            let response = asset(name).expect("served");
            let headers = response.headers();
            assert_eq!(headers[CONTENT_TYPE], content_type);
            assert_eq!(headers["content-security-policy"], CSP);
            assert_eq!(headers["x-frame-options"], "DENY");
        }
        assert!(asset("index.html").is_none());
        assert!(asset("../Cargo.toml").is_none());
    }
}

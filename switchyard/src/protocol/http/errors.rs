//! Responses the proxy writes itself: one short, consistent body per failure, in plain
//! text or JSON depending on what the client accepts.

use std::borrow::Cow;

use hyper::header::{ACCEPT, ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{HeaderMap, Response, StatusCode};

use super::body::ProxyBody;
use crate::authority::Refusal;
use crate::observe::Termination;

/// The methods the proxy forwards, for the `Allow` header of its `405` to `CONNECT`.
const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH";

/// Why the proxy answered a request itself; each maps to one status and one log reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// No route matched and the listener has no default pool.
    NoRoute,
    /// No server of the pool is available.
    NoServer,
    /// The pool's resolver (or the SSRF guard) refused the request's key.
    ResolveRefused,
    /// The pool's resolver failed with nothing cached to stand in.
    ResolverUnavailable,
    /// Every server is at its limit and the queue is full.
    QueueFull,
    /// Every server stayed at its limit for the queue timeout.
    QueueTimeout,
    /// The connect (and its retry) failed, or the server broke the exchange.
    BadGateway,
    /// The server did not answer within `timeouts.server`.
    GatewayTimeout,
    /// The request body is larger than `max_body_bytes`.
    BodyTooLarge,
    /// A request the proxy will not forward (malformed or ambiguous).
    BadRequest,
    /// A request whose authority (`Host`, target, `:authority`) is missing, repeated,
    /// invalid or contradictory: it cannot be routed safely.
    BadHost(Refusal),
    /// `CONNECT`: a reverse proxy serves its own origins and tunnels nowhere.
    MethodNotAllowed,
}

impl ProxyError {
    /// The status sent to the client.
    pub fn status(self) -> StatusCode {
        match self {
            Self::NoRoute
            | Self::NoServer
            | Self::QueueFull
            | Self::QueueTimeout
            | Self::ResolverUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::ResolveRefused => StatusCode::FORBIDDEN,
            Self::BadGateway => StatusCode::BAD_GATEWAY,
            Self::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BadRequest | Self::BadHost(_) => StatusCode::BAD_REQUEST,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// The termination reason in the access log.
    pub fn reason(self) -> Termination {
        match self {
            Self::NoRoute => Termination::NoRoute,
            Self::NoServer => Termination::NoServer,
            Self::ResolveRefused => Termination::ResolveRefused,
            Self::ResolverUnavailable => Termination::ResolverUnavailable,
            Self::QueueFull => Termination::QueueFull,
            Self::QueueTimeout => Termination::QueueTimeout,
            Self::BadGateway => Termination::BadGateway,
            Self::GatewayTimeout => Termination::ServerTimeout,
            Self::BodyTooLarge => Termination::BodyTooLarge,
            Self::BadRequest => Termination::BadRequest,
            Self::BadHost(_) => Termination::BadHost,
            Self::MethodNotAllowed => Termination::MethodNotAllowed,
        }
    }

    /// The short explanation in the body (and the log line of a refusal).
    pub fn message(self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            Self::NoRoute => "no route for this request",
            Self::NoServer => "no server available",
            Self::ResolveRefused => "this host is refused",
            Self::ResolverUnavailable => "routing is unavailable",
            Self::QueueFull | Self::QueueTimeout => "all servers are busy",
            Self::BadGateway => "the server could not be reached or failed",
            Self::GatewayTimeout => "the server did not answer in time",
            Self::BodyTooLarge => "request body too large",
            Self::BadRequest => "malformed request",
            Self::BadHost(refusal) => return Cow::Owned(refusal.to_string()),
            Self::MethodNotAllowed => "CONNECT is not supported",
        })
    }
}

impl From<&crate::resolve::ResolveError> for ProxyError {
    fn from(error: &crate::resolve::ResolveError) -> Self {
        use crate::resolve::ResolveError;
        match error {
            ResolveError::NoKey | ResolveError::NoRoute(_) => Self::NoRoute,
            ResolveError::Refused { .. } => Self::ResolveRefused,
            ResolveError::Unavailable(_) => Self::ResolverUnavailable,
        }
    }
}

/// Whether the client prefers JSON (its `Accept` names `application/json` or `+json`).
pub fn wants_json(request_headers: &HeaderMap) -> bool {
    request_headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/json") || v.contains("+json"))
}

/// The body and content type for `status` with `message`.
pub fn error_body(status: StatusCode, message: &str, json: bool) -> (&'static str, String) {
    if json {
        let body = serde_json::json!({ "status": status.as_u16(), "error": message });
        ("application/json", format!("{body}\n"))
    } else {
        (
            "text/plain; charset=utf-8",
            format!("{} {message}\n", status.as_u16()),
        )
    }
}

/// The proxy's answer for `error`, in JSON when the client asked for it (`wants_json`).
pub fn response(error: ProxyError, json: bool) -> Response<ProxyBody> {
    let (content_type, body) = error_body(error.status(), &error.message(), json);
    let mut response = Response::new(ProxyBody::own(body));
    *response.status_mut() = error.status();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if error == ProxyError::MethodNotAllowed {
        headers.insert(ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_follow_accept() {
        let mut headers = HeaderMap::new();
        let text = response(ProxyError::NoServer, wants_json(&headers));
        assert_eq!(text.status(), 503);
        assert_eq!(text.headers()[CONTENT_TYPE], "text/plain; charset=utf-8");
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        let json = response(ProxyError::GatewayTimeout, wants_json(&headers));
        assert_eq!(json.status(), 504);
        assert_eq!(json.headers()[CONTENT_TYPE], "application/json");
        let (_, body) = error_body(StatusCode::BAD_REQUEST, "x", true);
        assert_eq!(body, "{\"error\":\"x\",\"status\":400}\n");
    }

    #[test]
    fn refusals_name_their_reason_and_405_says_what_is_allowed() {
        let bad_host = response(ProxyError::BadHost(Refusal::RepeatedHost), false);
        assert_eq!(bad_host.status(), 400);
        assert_eq!(
            hyper::body::Body::size_hint(bad_host.body()).exact(),
            Some("400 more than one Host field\n".len() as u64)
        );
        let connect = response(ProxyError::MethodNotAllowed, false);
        assert_eq!(connect.status(), 405);
        assert_eq!(connect.headers()[ALLOW], ALLOWED_METHODS);
    }
}

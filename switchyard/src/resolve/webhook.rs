//! The `http` resolver: a webhook asked with `POST {"key","protocol","listener","client"}`;
//! 200 carries an answer, 404 means no route, 403 refused; anything else is a failure
//! (a stale answer is served within `stale_if_error`).

use hyper::StatusCode;

use super::{Fetched, LookupContext, answer};
use crate::http_link::HttpLink;

/// Asks `link` about `key`.
pub async fn fetch(
    link: &HttpLink,
    key: &str,
    context: &LookupContext<'_>,
) -> Result<Fetched, String> {
    let body = serde_json::json!({
        "key": key,
        "protocol": context.protocol,
        "listener": context.listener,
        "client": context.client.map(|c| c.ip().to_string()),
    });
    let reply = link
        .post(body.to_string().into_bytes(), &[])
        .await
        .map_err(|e| format!("webhook {e}"))?;
    match reply.status {
        StatusCode::OK => answer::parse(&reply.body)
            .map(Fetched::Answer)
            .map_err(|e| format!("webhook {}: {e}", link.url())),
        StatusCode::NOT_FOUND => Ok(Fetched::NoRoute),
        StatusCode::FORBIDDEN => Ok(Fetched::Refused),
        status => Err(format!("webhook {} answered {status}", link.url())),
    }
}

//! The `soak` scenario's HTTP backend: HTTP/1.1 keep-alive (what switchyard's pools speak
//! by default) that answers every request with the body it received, so that a client can
//! check every byte of a round trip through the proxy; `GET /health` answers `ok` for the
//! pool's health check; a WebSocket upgrade (any path) becomes an echo of every message.

use std::convert::Infallible;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// Serves one connection until the peer closes it (or it breaks).
pub async fn serve(stream: TcpStream) -> std::io::Result<()> {
    hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service_fn(answer))
        .with_upgrades()
        .await
        .map_err(std::io::Error::other)
}

async fn answer(mut request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.headers().contains_key(SEC_WEBSOCKET_KEY) {
        return Ok(upgrade(&mut request));
    }
    if request.uri().path() == "/health" {
        return Ok(Response::new(Full::new(Bytes::from_static(b"ok"))));
    }
    match request.into_body().collect().await {
        Ok(body) => Ok(Response::new(Full::new(body.to_bytes()))),
        // The client (or the proxy) went away mid-body: nobody reads this answer.
        Err(_) => Ok(status(StatusCode::BAD_REQUEST)),
    }
}

/// Answers `101` and echoes WebSocket messages on the upgraded connection.
fn upgrade(request: &mut Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(key) = request.headers().get(SEC_WEBSOCKET_KEY) else {
        return status(StatusCode::BAD_REQUEST);
    };
    let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) else {
        return status(StatusCode::BAD_REQUEST);
    };
    let upgraded = hyper::upgrade::on(request);
    tokio::spawn(async move {
        let Ok(upgraded) = upgraded.await else {
            return;
        };
        let mut socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(message)) = socket.next().await {
            if message.is_close() {
                break;
            }
            if (message.is_binary() || message.is_text()) && socket.send(message).await.is_err() {
                break;
            }
        }
    });
    let mut response = status(StatusCode::SWITCHING_PROTOCOLS);
    let headers = response.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    response
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = code;
    response
}

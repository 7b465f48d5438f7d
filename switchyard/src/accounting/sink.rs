//! Where batches of usage go, each applied once whatever the retries: a Redis server
//! (one script that records the batch id with `SET NX`, then `HINCRBY`s the tenants'
//! hashes) or an HTTP receiver (one `POST` per batch, the id in the body and in
//! `Idempotency-Key`, for the receiver to drop a batch it already has).

use hyper::header::{HeaderName, HeaderValue};

use super::{Batch, FIELDS, usage_json};
use crate::config::{SinkConfig, SinkKind};
use crate::http_link::HttpLink;
use crate::redis_link::RedisLink;

/// A usage sink.
#[derive(Debug)]
pub(super) enum Sink {
    /// Hashes at `prefix + tenant`, applied by `script`.
    Redis {
        /// The server.
        link: RedisLink,
        /// The key prefix.
        prefix: String,
        /// [`apply_batch_script`].
        script: redis::Script,
    },
    /// A receiver POSTed to.
    Http(HttpLink),
}

/// The Lua script that applies a batch once: records its id, then increments every field
/// given. KEYS[1] is the batch id key; then a hash key per tenant; ARGV holds the
/// increments of each tenant in [`FIELDS`] order.
fn apply_batch_script() -> String {
    let fields: Vec<String> = FIELDS.iter().map(|f| format!("'{f}'")).collect();
    format!(
        r#"
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', 604800) then return 0 end
local fields = {{{}}}
for t = 2, #KEYS do
  for f = 1, #fields do
    local n = tonumber(ARGV[(t - 2) * #fields + f])
    if n ~= 0 then redis.call('HINCRBY', KEYS[t], fields[f], n) end
  end
end
return 1
"#,
        fields.join(",")
    )
}

impl Sink {
    /// From `sink` (validated); connects on first use.
    pub(super) fn new(sink: &SinkConfig) -> Result<Self, String> {
        match sink.kind {
            SinkKind::Redis => Ok(Self::Redis {
                link: RedisLink::new(
                    sink.address
                        .as_deref()
                        .ok_or("a redis sink needs `address`")?,
                    sink.password.as_deref(),
                    sink.timeout,
                )?,
                prefix: sink.prefix.clone(),
                script: redis::Script::new(&apply_batch_script()),
            }),
            SinkKind::Http => Ok(Self::Http(HttpLink::new(
                sink.url.as_deref().ok_or("an http sink needs `url`")?,
                &sink.headers,
                sink.ca.as_deref(),
                sink.timeout,
            )?)),
        }
    }

    /// Applies `batch`; an error leaves it to be retried (a retry of a batch that was
    /// applied after all adds nothing).
    pub(super) async fn deliver(&self, batch: &Batch) -> Result<(), String> {
        match self {
            Self::Redis {
                link,
                prefix,
                script,
            } => {
                let mut invocation = script.key(format!("{prefix}batch:{}", batch.id));
                for (tenant, values) in &batch.increments {
                    invocation.key(format!("{prefix}{tenant}"));
                    for value in values {
                        invocation.arg(*value);
                    }
                }
                let work = async {
                    let mut connection = link.connection().await?;
                    invocation
                        .invoke_async::<i64>(&mut connection)
                        .await
                        .map_err(|e| format!("redis: {e}"))
                };
                tokio::time::timeout(link.timeout, work)
                    .await
                    .map_err(|_| "redis: timed out".to_string())??;
                Ok(())
            }
            Self::Http(link) => {
                let body = serde_json::json!({
                    "batch": batch.id,
                    "tenants": batch
                        .increments
                        .iter()
                        .map(|(tenant, counts)| usage_json(tenant, counts))
                        .collect::<Vec<_>>(),
                });
                let key = HeaderValue::from_str(&batch.id).map_err(|e| e.to_string())?;
                let idempotency = [(HeaderName::from_static("idempotency-key"), key)];
                let reply = link
                    .post(body.to_string().into_bytes(), &idempotency)
                    .await?;
                if reply.status.is_success() {
                    Ok(())
                } else {
                    Err(format!("{} answered {}", link.url(), reply.status))
                }
            }
        }
    }
}

//! `/api/v1/resolvers/{r}/keys/{key}`: what a resolver answers for a key, with the cache
//! state it was found in (GET), and dropping a key from every instance's cache (DELETE).

use std::sync::Arc;

use crate::resolve::{Answer, Cached, LookupContext, Resolver};
use crate::runtime::Shared;

/// An answer as JSON.
fn answer_json(answer: &Answer) -> serde_json::Value {
    serde_json::json!({
        "servers": answer.servers.iter().map(|s| serde_json::json!({
            "name": s.name,
            "address": s.address.socket().map(|a| a.to_string()),
            "weight": s.weight,
        })).collect::<Vec<_>>(),
        "ttl_seconds": answer.ttl.map(|t| t.as_secs_f64()),
        "tenant": answer.tenant,
        "rewrite_database": answer.rewrite_database,
        "rewrite_user": answer.rewrite_user,
        "host": answer.host,
    })
}

fn find(shared: &Shared, name: &str) -> Option<Arc<Resolver>> {
    shared.resolvers().get(name).cloned()
}

/// Resolves `key` as a connection would (through the cache), saying what the cache held
/// before; `None` when there is no such resolver.
pub async fn lookup(shared: &Shared, name: &str, key: &str) -> Option<serde_json::Value> {
    let resolver = find(shared, name)?;
    let cache = match resolver.cached(key) {
        Cached::Fresh(_) => "fresh",
        Cached::Stale(_) => "stale",
        Cached::Miss => "miss",
    };
    let context = LookupContext {
        protocol: "admin",
        listener: "",
        client: None,
    };
    let mut value = serde_json::json!({ "resolver": name, "key": key, "cache": cache });
    match resolver.resolve(key, &context).await {
        Ok(answer) => value["answer"] = answer_json(&answer),
        Err(error) => value["error"] = error.to_string().into(),
    }
    Some(value)
}

/// Every tenant's usage since start: `[{"tenant", "connections", "bytes_in", ...}]`.
pub fn tenants(shared: &Shared) -> serde_json::Value {
    let rows = shared
        .context
        .accounting
        .snapshot()
        .into_iter()
        .map(|(tenant, counts)| crate::accounting::usage_json(&tenant, &counts));
    serde_json::Value::Array(rows.collect())
}

/// Drops `key` (on every instance, with Redis); `None` when there is no such resolver.
pub async fn purge(shared: &Shared, name: &str, key: &str) -> Option<Result<bool, String>> {
    let resolver = find(shared, name)?;
    Some(resolver.purge(key).await)
}

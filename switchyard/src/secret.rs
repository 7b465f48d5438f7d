//! Secrets in the config (tokens, passwords) are written as a literal, `env:VAR` or
//! `file:PATH`, so that a config file can be committed without them.

/// Resolves a secret written as a literal, `env:VAR` or `file:PATH` (trimmed).
pub fn resolve(spec: &str) -> Result<String, String> {
    let value = if let Some(var) = spec.strip_prefix("env:") {
        std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))?
    } else if let Some(path) = spec.strip_prefix("file:") {
        std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {path}: {e}"))?
            .trim()
            .to_string()
    } else {
        spec.to_string()
    };
    if value.is_empty() {
        return Err("the secret is empty".into());
    }
    Ok(value)
}

//! requestObject / responseObject / unknown fields as text, exactly as the Python path writes them
//! (`orjson.dumps` of the parsed value: compact, keys in input order), with Secret values hashed.

use crate::{Fallback, R};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::borrow::Cow;

fn hash_value(v: &Value) -> String {
    let raw: Cow<[u8]> = match v {
        Value::String(s) => Cow::Borrowed(s.as_bytes()),
        other => Cow::Owned(serde_json::to_vec(other).unwrap_or_default()),
    };
    let digest = Sha256::digest(&raw);
    let mut hex = String::with_capacity(23);
    hex.push_str("sha256:");
    for byte in &digest[..8] {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

fn redact_secret(m: &mut Map<String, Value>) {
    for key in ["data", "stringData"] {
        if let Some(Value::Object(section)) = m.get_mut(key) {
            for (_, v) in section.iter_mut() {
                *v = Value::String(hash_value(v));
            }
        }
    }
}

/// `normalize.redact_secrets`: Secret data/stringData values (also inside a SecretList) -> short hashes.
fn redact_object(obj: &mut Value, is_secret: bool) {
    let Value::Object(m) = obj else { return };
    let kind = m.get("kind");
    let kind_none = matches!(kind, None | Some(Value::Null));
    let kind_is = |k: &str| matches!(kind, Some(Value::String(s)) if s == k);
    if kind_is("Secret") || (is_secret && kind_none) {
        redact_secret(m);
    } else if kind_is("SecretList") || (is_secret && matches!(m.get("items"), Some(Value::Array(_)))) {
        if let Some(Value::Array(items)) = m.get_mut("items") {
            for it in items.iter_mut() {
                if let Value::Object(im) = it {
                    redact_secret(im);
                }
            }
        }
    }
}

/// The object's text, or Fallback when it is over the cap (the Python path cuts it and keeps the full
/// object for the rules).
pub fn object_text(raw: Option<&RawValue>, redact: bool, is_secret: bool, cap: usize) -> R<String> {
    let Some(raw) = raw else { return Ok(String::new()) };
    let mut v: Value = serde_json::from_str(raw.get()).map_err(|_| Fallback)?;
    if redact {
        redact_object(&mut v, is_secret);
    }
    let text = serde_json::to_string(&v).map_err(|_| Fallback)?;
    if text.len() > cap && text.chars().count() > cap {
        return Err(Fallback);
    }
    Ok(text)
}

/// `orjson.dumps({k: v for unknown keys})`.
pub fn extra_text(unknown: &[(Cow<str>, &RawValue)]) -> R<String> {
    if unknown.is_empty() {
        return Ok(String::new());
    }
    let mut m = Map::new();
    for (k, raw) in unknown {
        m.insert(k.to_string(), serde_json::from_str(raw.get()).map_err(|_| Fallback)?);
    }
    serde_json::to_string(&m).map_err(|_| Fallback)
}

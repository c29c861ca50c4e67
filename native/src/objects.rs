//! requestObject / responseObject / unknown fields as text, exactly as the Python path writes them
//! (`orjson.dumps` of the parsed value: compact, keys in input order), with credentials hashed by the
//! redaction model (`redact.rs`).

use crate::redact::{dispatch, KindDef};
use crate::{Fallback, R};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::borrow::Cow;

/// The object's text and the mask of redacted fields (`redact`: apply the model, with the kind the event
/// implies), or Fallback when it is over the cap (the Python path cuts it and keeps the full object for the
/// rules).
pub fn object_text(raw: Option<&RawValue>, redact: bool, implied: Option<&'static KindDef>, cap: usize) -> R<(String, u32)> {
    let Some(raw) = raw else { return Ok((String::new(), 0)) };
    let mut v: Value = serde_json::from_str(raw.get()).map_err(|_| Fallback)?;
    let mask = if redact { dispatch(&mut v, implied)? } else { 0 };
    let text = serde_json::to_string(&v).map_err(|_| Fallback)?;
    if text.len() > cap && text.chars().count() > cap {
        return Err(Fallback);
    }
    Ok((text, mask))
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

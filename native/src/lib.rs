//! kaudit's compiled hot path: one raw record (webhook EventList, single event or JSON lines) -> for every
//! event, an `Event`: the normalized fields (read lazily from Python, like a dict) and its Avro
//! `io.kaudit.AuditEvent` bytes.
//!
//! It mirrors `pipeline/models/normalize.py` and the Avro writer exactly (the tests compare both paths byte
//! for byte on every sample). Anything unusual -- another wire shape, a field of an unexpected type, an
//! unparsable timestamp, an object over the size cap, invalid JSON -- makes it return `None`, and the worker
//! takes the Python path for that record, which decides (and words any error) as before.

mod event;
mod objects;
mod parse;
mod timestamps;

use event::{build, Event};
use parse::Parsed;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString};

/// "Take the Python path for this record."
pub struct Fallback;
pub type R<T> = Result<T, Fallback>;

/// The events of a record, like `readers.read_events` + `unwrap` for the shapes an API server sends.
fn events(value: &[u8]) -> R<Vec<Parsed<'_>>> {
    if value.starts_with(&[0x1f, 0x8b]) || value.starts_with(&[0xef, 0xbb, 0xbf]) {
        return Err(Fallback); // gzip or a BOM: the Python reader handles them
    }
    let mut out = Vec::new();
    match serde_json::from_slice::<Parsed>(value) {
        Ok(doc) => resolve(doc, &mut out)?,
        Err(_) => {
            for line in value.split(|&b| b == b'\n') {
                if line.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r')) {
                    continue;
                }
                resolve(serde_json::from_slice::<Parsed>(line).map_err(|_| Fallback)?, &mut out)?;
            }
        }
    }
    if out.is_empty() {
        return Err(Fallback);
    }
    Ok(out)
}

fn resolve<'a>(mut doc: Parsed<'a>, out: &mut Vec<Parsed<'a>>) -> R<()> {
    if doc.has_id_or_stage {
        if doc.items.is_some() {
            return Err(Fallback); // an event with an `items` field: Python keeps it in `extra`
        }
        out.push(doc);
        return Ok(());
    }
    let kind_ok = match &doc.kind {
        None => true,
        Some(k) => k.0 == "EventList",
    };
    match doc.items.take() {
        Some(items) if kind_ok => {
            for item in items {
                if item.items.is_some() {
                    return Err(Fallback);
                }
                out.push(item);
            }
            Ok(())
        }
        _ => Err(Fallback),
    }
}

/// normalize_record(value, cluster, max_object_bytes, redact) -> list[Event] | None
///
/// None: the record is not one this path handles; use the Python path. Otherwise every event of the record
/// in order (item i = EventList item i).
#[pyfunction]
#[pyo3(signature = (value, cluster, max_object_bytes, redact))]
fn normalize_record<'py>(
    py: Python<'py>,
    value: &[u8],
    cluster: &str,
    max_object_bytes: usize,
    redact: bool,
) -> PyResult<Option<Bound<'py, PyList>>> {
    let Ok(parsed) = events(value) else { return Ok(None) };
    let mut built = Vec::with_capacity(parsed.len());
    for p in &parsed {
        match build(p, cluster, max_object_bytes, redact) {
            Ok(b) => built.push(b),
            Err(Fallback) => return Ok(None),
        }
    }
    let py_cluster = PyString::new_bound(py, cluster).unbind();
    let out = PyList::empty_bound(py);
    for b in built {
        out.append(Py::new(py, Event::new(py, b, py_cluster.clone_ref(py))?)?)?;
    }
    Ok(Some(out))
}

#[pymodule]
fn kaudit_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(normalize_record, m)?)?;
    m.add_class::<Event>()?;
    Ok(())
}

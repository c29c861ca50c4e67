//! kaudit's compiled hot path: one raw record (webhook EventList, single event or JSON lines) -> for every
//! event, an `Event`: the normalized fields (read lazily from Python, like a dict) and its Avro
//! `io.kaudit.AuditEvent` bytes.
//!
//! It mirrors `pipeline/models/normalize.py` and the Avro writer exactly (the tests compare both paths byte
//! for byte on every sample). Anything unusual -- another wire shape, a field of an unexpected type, an
//! unparsable timestamp, an object over the size cap, invalid JSON -- makes it return `None`, and the worker
//! takes the Python path for that record, which decides (and words any error) as before.

mod batch;
mod event;
mod objects;
mod parse;
mod redact;
mod rowbinary;
mod seen;
mod sizes;
mod timestamps;

use event::{build, Event};
use parse::{Ctx, PSeed};
use serde::de::DeserializeSeed;
use std::cell::RefCell;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString};

/// "Take the Python path for this record."
pub struct Fallback;
pub type R<T> = Result<T, Fallback>;

/// The events of a record, like `readers.read_events` + `unwrap` for the shapes an API server sends: a
/// whole document (EventList or one event, compact or pretty), else JSON lines (each an event or EventList).
fn events(value: &[u8], ctx: &Ctx) -> R<()> {
    if value.starts_with(&[0x1f, 0x8b]) || value.starts_with(&[0xef, 0xbb, 0xbf]) {
        return Err(Fallback); // gzip or a BOM: the Python reader handles them
    }
    let text = std::str::from_utf8(value).map_err(|_| Fallback)?; // once, not per string
    if document(text, ctx).is_err() {
        ctx.out.borrow_mut().clear();
        for line in text.split('\n') {
            if line.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\r')) {
                continue;
            }
            document(line, ctx)?;
        }
    }
    if ctx.out.borrow().is_empty() {
        return Err(Fallback);
    }
    Ok(())
}

fn document(text: &str, ctx: &Ctx) -> R<()> {
    let first = ctx.out.borrow().len();
    let mut de = serde_json::Deserializer::from_str(text);
    let doc = PSeed(Some(ctx)).deserialize(&mut de).map_err(|_| Fallback)?;
    de.end().map_err(|_| Fallback)?;
    if doc.has_id_or_stage {
        if doc.items.is_some() || doc.has_items {
            return Err(Fallback); // an event with an `items` field: Python keeps it in `extra`
        }
        let mut built = build(&doc, ctx.cluster, ctx.cap, ctx.redact)?;
        built.push_size(sizes::sizes(text)?.total);
        ctx.out.borrow_mut().push(built);
        return Ok(());
    }
    let kind_ok = match &doc.kind {
        None => true,
        Some(k) => k.0 == "EventList",
    };
    match doc.items {
        Some(_) if kind_ok => {
            // each item's serialized size, from the text (the typed parse above does not keep spans)
            let items = sizes::sizes(text)?.items.ok_or(Fallback)?;
            let mut out = ctx.out.borrow_mut();
            if items.len() != out.len() - first {
                return Err(Fallback);
            }
            for (b, n) in out[first..].iter_mut().zip(items) {
                b.push_size(n);
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
    let ctx = Ctx { cluster, cap: max_object_bytes, redact, out: RefCell::new(Vec::new()) };
    if events(value, &ctx).is_err() {
        return Ok(None);
    }
    let built = ctx.out.into_inner();
    let py_cluster = PyString::new_bound(py, cluster).unbind();
    let out = PyList::empty_bound(py);
    for b in built {
        out.append(Py::new(py, Event::new(py, b, py_cluster.clone_ref(py))?)?)?;
    }
    Ok(Some(out))
}

/// The redaction model this module applies, as JSON (tests compare it with pipeline.redaction.model.table()).
#[pyfunction]
fn redaction_table() -> String {
    redact::table_json()
}

#[pymodule]
fn kaudit_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(normalize_record, m)?)?;
    m.add_function(wrap_pyfunction!(redaction_table, m)?)?;
    m.add_class::<Event>()?;
    m.add_class::<event::FieldSet>()?;
    m.add_class::<seen::SeenKeys>()?;
    m.add_function(wrap_pyfunction!(batch::rule_hashes, m)?)?;
    m.add_function(wrap_pyfunction!(batch::window_counts, m)?)?;
    m.add_function(wrap_pyfunction!(batch::join_avro, m)?)?;
    m.add_function(wrap_pyfunction!(batch::encode_alert, m)?)?;
    m.add_function(wrap_pyfunction!(rowbinary::avro_rowbinary, m)?)?;
    Ok(())
}

//! Per-record work on a list of `Event`s, done once per record instead of once per event in Python: the
//! dedup and rule-index keys, the window counts, the events array of the EventBatch.

use crate::event::{w_long, w_str, Event};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use std::collections::HashMap;

pub(crate) const AUDITID: usize = 1;
pub(crate) const STAGE: usize = 2;
const VERB: usize = 4;
const RESOURCE: usize = 14;
const SUBRESOURCE: usize = 19;
const CODE: usize = 21;

pub(crate) fn events_of<'py>(events: &Bound<'py, PyList>) -> PyResult<Vec<Bound<'py, Event>>> {
    events.iter().map(|e| Ok(e.downcast_into::<Event>()?)).collect()
}

/// A 128-bit hash of each event's (objectref_resource, verb, stage, objectref_subresource, responsestatus_code)
/// (see Event.values_hash), as 16 bytes: the rule index key without building five Python objects per event.
#[pyfunction]
pub fn rule_hashes<'py>(py: Python<'py>, events: &Bound<'py, PyList>) -> PyResult<Bound<'py, PyList>> {
    let out = PyList::empty_bound(py);
    let mut h = crate::event::Hash128::new();
    for e in events_of(events)? {
        let ev = e.get();
        h.truncate(0);
        for i in [RESOURCE, VERB, STAGE, SUBRESOURCE, CODE] {
            ev.hash_field(py, i, &mut h);
        }
        out.append(h.finish_bytes(py))?;
    }
    Ok(out)
}

/// The window counts of the events at `indices` (dropped[i]: the noise filter dropped indices[i]) whose stage
/// is counted: ({(cluster, window_start, verb): [n, dropped]}, {(cluster, window_start, code): [n, dropped]}),
/// the shape of `WindowCounts.counts`.
#[pyfunction]
#[pyo3(signature = (events, indices, dropped, cluster, window_us, stages=None))]
pub fn window_counts<'py>(
    py: Python<'py>,
    events: &Bound<'py, PyList>,
    indices: Vec<usize>,
    dropped: Vec<bool>,
    cluster: &str,
    window_us: i64,
    stages: Option<Vec<String>>,
) -> PyResult<(Bound<'py, PyDict>, Bound<'py, PyDict>)> {
    let evs = events_of(events)?;
    let mut verbs: HashMap<(i64, &str), (u64, u64)> = HashMap::new();
    let mut codes: HashMap<(i64, i64), (u64, u64)> = HashMap::new();
    let mut order_v: Vec<(i64, &str)> = Vec::new();
    let mut order_c: Vec<(i64, i64)> = Vec::new();
    for (n, &i) in indices.iter().enumerate() {
        let ev = evs.get(i).ok_or_else(|| pyo3::exceptions::PyIndexError::new_err(i))?.get();
        if let Some(st) = &stages {
            if !st.iter().any(|s| s == ev.text(py, STAGE)) {
                continue;
            }
        }
        let ts = ev.stage_ts();
        let ws = ts - ts.rem_euclid(window_us); // Python's ts - ts % size (floor modulo)
        let d = dropped.get(n).copied().unwrap_or(false) as u64;
        let v = verbs.entry((ws, ev.text(py, VERB))).or_insert_with(|| {
            order_v.push((ws, ev.text(py, VERB)));
            (0, 0)
        });
        v.0 += 1;
        v.1 += d;
        let c = codes.entry((ws, ev.code())).or_insert_with(|| {
            order_c.push((ws, ev.code()));
            (0, 0)
        });
        c.0 += 1;
        c.1 += d;
    }
    let dv = PyDict::new_bound(py);
    for k in order_v {
        let (n, d) = verbs[&k];
        dv.set_item((cluster, k.0, k.1), PyList::new_bound(py, [n, d]))?;
    }
    let dc = PyDict::new_bound(py);
    for k in order_c {
        let (n, d) = codes[&k];
        dc.set_item((cluster, k.0, k.1), PyList::new_bound(py, [n, d]))?;
    }
    Ok((dv, dc))
}

/// The Avro bytes of the events at `indices`, back to back (the body of the EventBatch's events array), each
/// followed by `suffix`: the encoded fields after the ones normalization wrote (today `source_id`).
#[pyfunction]
#[pyo3(signature = (events, indices, suffix=None))]
pub fn join_avro<'py>(
    py: Python<'py>,
    events: &Bound<'py, PyList>,
    indices: Vec<usize>,
    suffix: Option<&[u8]>,
) -> PyResult<Bound<'py, PyBytes>> {
    let evs = events_of(events)?;
    let suffix = suffix.unwrap_or(b"");
    let mut total = 0;
    for &i in &indices {
        total += evs.get(i).ok_or_else(|| pyo3::exceptions::PyIndexError::new_err(i))?.get().blob(py).len() + suffix.len();
    }
    PyBytes::new_bound_with(py, total, |buf| {
        let mut at = 0;
        for &i in &indices {
            let b = evs[i].get().blob(py);
            buf[at..at + b.len()].copy_from_slice(b);
            at += b.len();
            buf[at..at + suffix.len()].copy_from_slice(suffix);
            at += suffix.len();
        }
        Ok(())
    })
}

/// Schema order and types of io.kaudit.Alert (schemas/alert.avsc); tests compare with the Avro codec.
const ALERT_FIELDS: [(&str, u8); 28] = [
    ("alert_id", b's'), ("rule_id", b's'), ("title", b's'), ("severity", b's'), ("cluster", b's'), ("ts", b'l'),
    ("auditid", b's'), ("stage", b's'), ("username", b's'), ("usergroups", b'a'), ("impersonated_username", b's'),
    ("sourceips", b'a'), ("useragent", b's'), ("verb", b's'), ("objectref_resource", b's'),
    ("objectref_subresource", b's'), ("objectref_namespace", b's'), ("objectref_name", b's'),
    ("objectref_apigroup", b's'), ("request_uri", b's'), ("responsestatus_code", b'i'), ("decision", b's'),
    ("decision_reason", b's'), ("window_start", b'l'), ("count", b'l'), ("group_key", b's'), ("tags", b'a'),
    ("source_id", b's'),
];

/// The Avro bytes of an alert record (a dict with exactly the Alert fields' types); TypeError/KeyError on
/// anything else, and the caller uses the Python codec (which decides).
#[pyfunction]
pub fn encode_alert<'py>(py: Python<'py>, record: &Bound<'py, PyDict>) -> PyResult<Bound<'py, PyBytes>> {
    let mut out = Vec::with_capacity(512);
    for (name, t) in ALERT_FIELDS {
        let v = record.get_item(name)?.ok_or_else(|| pyo3::exceptions::PyKeyError::new_err(name))?;
        match t {
            b's' => w_str(&mut out, v.downcast::<pyo3::types::PyString>()?.to_str()?),
            b'a' => {
                let list = v.downcast::<PyList>()?;
                if !list.is_empty() {
                    w_long(&mut out, list.len() as i64);
                    for item in list.iter() {
                        w_str(&mut out, item.downcast::<pyo3::types::PyString>()?.to_str()?);
                    }
                }
                out.push(0);
            }
            _ => {
                if v.is_instance_of::<pyo3::types::PyBool>() || !v.is_exact_instance_of::<pyo3::types::PyLong>() {
                    return Err(pyo3::exceptions::PyTypeError::new_err(format!("{name}: not an int")));
                }
                let n: i64 = v.extract()?;
                if t == b'i' && i32::try_from(n).is_err() {
                    return Err(pyo3::exceptions::PyOverflowError::new_err(format!("{name}: out of int range")));
                }
                w_long(&mut out, n);
            }
        }
    }
    Ok(PyBytes::new_bound(py, &out))
}

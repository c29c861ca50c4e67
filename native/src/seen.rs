//! The worker's dedup memory: for each key, the raw offset it was first seen at, forgotten `horizon` seconds
//! after first sight. The same contract as `pipeline.agents.state.SeenIndex` (the tests run both), but a key is
//! kept as a 128-bit hash of its strings: 77 bytes per key, table slack included, instead of 336 for a
//! Python tuple of three strings (measured): at 30k events/s over a 900 s horizon, ~2 GB instead of ~9 GB.

use crate::batch::{events_of, AUDITID, STAGE};
use crate::event::Hash128;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString, PyTuple};
use std::collections::{HashMap, HashSet, VecDeque};

/// Keys reach the table through SipHash with this process's random keys: auditIDs can be chosen by an API
/// client (the Audit-ID header), and the 128-bit key hash below is computed with fixed keys, so its own bits
/// could be steered into one bucket; Python's dict, which this replaces, is randomized per process too.
type Build = std::collections::hash_map::RandomState;

/// A key's 128-bit hash as two u64: 8-byte aligned, so a map entry (key, offset) is 24 bytes and an expiry
/// entry (time, key) 24, where u128's 16-byte alignment would pad both to 32.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key([u64; 2]);

impl From<u128> for Key {
    fn from(h: u128) -> Self {
        Key([h as u64, (h >> 64) as u64])
    }
}

/// A key: a str, or a tuple of strs (the Python path's `(cluster, auditid, stage)`), hashed like the batch
/// method hashes an event's cluster, auditid and stage.
fn key_hash(key: &Bound<'_, PyAny>) -> PyResult<Key> {
    let mut h = Hash128::new();
    if let Ok(t) = key.downcast::<PyTuple>() {
        for item in t.iter() {
            h.str(item.downcast::<PyString>()?.to_str()?);
        }
    } else if let Ok(s) = key.downcast::<PyString>() {
        h.str(s.to_str()?);
    } else {
        return Err(PyTypeError::new_err("a SeenKeys key is a str or a tuple of str"));
    }
    Ok(h.finish().into())
}

#[pyclass(module = "kaudit_native")]
pub struct SeenKeys {
    #[pyo3(get)]
    horizon: f64,
    first: HashMap<Key, i64, Build>,
    order: VecDeque<(f64, Key)>,
}

impl SeenKeys {
    fn first_hash(&mut self, k: Key, offset: i64, now: f64) -> bool {
        use std::collections::hash_map::Entry;
        match self.first.entry(k) {
            Entry::Vacant(slot) => {
                slot.insert(offset);
                self.order.push_back((now, k));
                true
            }
            Entry::Occupied(mut slot) if *slot.get() >= offset => {
                slot.insert(offset); // the same record replayed, or an earlier one after a rebuild
                true
            }
            Entry::Occupied(_) => false,
        }
    }
}

#[pymethods]
impl SeenKeys {
    #[new]
    fn new(horizon: f64) -> Self {
        SeenKeys { horizon, first: HashMap::default(), order: VecDeque::new() }
    }

    fn __len__(&self) -> usize {
        self.first.len()
    }

    /// Is this the first sighting, counting a replay of the same record (or an earlier one) as first?
    fn first_at(&mut self, key: &Bound<'_, PyAny>, offset: i64, now: f64) -> PyResult<bool> {
        Ok(self.first_hash(key_hash(key)?, offset, now))
    }

    /// Record a sighting read back from the output topic (rebuild).
    fn add(&mut self, key: &Bound<'_, PyAny>, offset: i64, seen_at: f64) -> PyResult<()> {
        let k = key_hash(key)?;
        match self.first.get_mut(&k) {
            None => {
                self.first.insert(k, offset);
                self.order.push_back((seen_at, k));
            }
            Some(first) if offset < *first => *first = offset,
            Some(_) => {}
        }
        Ok(())
    }

    /// Forget keys first seen before now - horizon; returns how many.
    fn expire(&mut self, now: f64) -> usize {
        let limit = now - self.horizon;
        let mut n = 0;
        while let Some(&(t, k)) = self.order.front() {
            if t >= limit {
                break;
            }
            self.order.pop_front();
            self.first.remove(&k);
            n += 1;
        }
        n
    }

    /// The dedup pass over one record's events (`normalize_record`'s list): the indices, in order, of events
    /// whose (cluster, auditid, stage) is seen here first (not earlier in the record, and first at `offset`
    /// across records), skipping `skip`; and how many were duplicates.
    fn first_sightings(
        &mut self,
        py: Python<'_>,
        events: &Bound<'_, PyList>,
        cluster: &str,
        offset: i64,
        now: f64,
        skip: HashSet<usize>,
    ) -> PyResult<(Vec<usize>, usize)> {
        let evs = events_of(events)?;
        let mut h = Hash128::new();
        h.str(cluster);
        let prefix = h.len();
        let mut in_record: HashSet<Key, Build> = HashSet::with_capacity_and_hasher(evs.len(), Build::default());
        let mut firsts = Vec::with_capacity(evs.len());
        let mut n_dup = 0;
        for (i, e) in evs.iter().enumerate() {
            if skip.contains(&i) {
                continue;
            }
            let ev = e.get();
            h.truncate(prefix);
            h.str(ev.text(py, AUDITID));
            h.str(ev.text(py, STAGE));
            let k = Key::from(h.finish());
            if !in_record.insert(k) || !self.first_hash(k, offset, now) {
                n_dup += 1; // seen earlier in this record, or first seen at an earlier offset
                continue;
            }
            firsts.push(i);
        }
        Ok((firsts, n_dup))
    }
}

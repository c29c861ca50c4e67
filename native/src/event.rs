//! One parsed event -> its Avro `AuditEvent` bytes (fastavro's encoding) plus where each field sits in them,
//! so Python reads fields lazily from the bytes instead of paying for a 38-key dict per event.

use crate::objects::{extra_text, object_text};
use crate::parse::{BStr, Parsed, StrList};
use crate::redact::{ids, implied};
use crate::timestamps::ts_us;
use crate::{Fallback, R};
use pyo3::exceptions::PyKeyError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};

const STAGES: [&str; 4] = ["RequestReceived", "ResponseStarted", "ResponseComplete", "Panic"];
const DECISION: &str = "authorization.k8s.io/decision";
const REASON: &str = "authorization.k8s.io/reason";

pub const N_FIELDS: usize = 39;

/// Field names in schema order (schemas/audit_event.avsc == normalize_event's keys).
pub const FIELDS: [&str; N_FIELDS] = [
    "cluster", "auditid", "stage", "level", "verb", "request_uri", "username", "useruid", "usergroups",
    "user_extra", "impersonated_username", "impersonated_groups", "sourceips", "useragent",
    "objectref_resource", "objectref_namespace", "objectref_name", "objectref_apigroup", "objectref_apiversion",
    "objectref_subresource", "objectref_uid", "responsestatus_code", "responsestatus_status",
    "responsestatus_reason", "responsestatus_message", "decision", "decision_reason", "annotations",
    "request_received_ts", "stage_ts", "request_object", "response_object", "objects_truncated",
    "event_version", "extra", "redacted", "impersonation_constraint", "authorization_verb", "event_bytes",
];

#[derive(Clone, Copy)]
enum Kind {
    Str,
    List,
    Map,
    Code,
    Received,
    StageTs,
    Truncated,
    Size,
}

/// `event_bytes` is the last field: written after the rest, once the record's text is measured (`sizes`).
const SIZE_FIELD: usize = FIELDS.len() - 1;

fn kind(i: usize) -> Kind {
    match i {
        8 | 11 | 12 | 35 => Kind::List,
        9 | 27 => Kind::Map,
        21 => Kind::Code,
        28 => Kind::Received,
        29 => Kind::StageTs,
        32 => Kind::Truncated,
        SIZE_FIELD => Kind::Size,
        _ => Kind::Str,
    }
}

fn index_of(name: &str) -> Option<usize> {
    FIELDS.iter().position(|f| *f == name)
}

// ---------------------------------------------------------------------------------------------------------
// Avro writing

struct W {
    out: Vec<u8>,
    pos: [(u32, u32); N_FIELDS],
    field: usize,
}

/// Avro long: zigzag + base-128 varint.
pub(crate) fn w_long(out: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// Avro string: length, then the UTF-8 bytes.
pub(crate) fn w_str(out: &mut Vec<u8>, s: &str) {
    w_long(out, s.len() as i64);
    out.extend_from_slice(s.as_bytes());
}

impl W {
    fn long(&mut self, n: i64) {
        w_long(&mut self.out, n);
    }
    fn raw_str(&mut self, s: &str) {
        w_str(&mut self.out, s);
    }
    fn str(&mut self, s: &str) {
        self.long(s.len() as i64);
        self.pos[self.field] = (self.out.len() as u32, s.len() as u32);
        self.out.extend_from_slice(s.as_bytes());
        self.field += 1;
    }
    fn list<S: AsRef<str>>(&mut self, items: &[S]) {
        self.pos[self.field] = (self.out.len() as u32, 0);
        if !items.is_empty() {
            self.long(items.len() as i64);
            for s in items {
                self.raw_str(s.as_ref());
            }
        }
        self.out.push(0);
        self.field += 1;
    }
    fn map<K: AsRef<str>, V: AsRef<str>>(&mut self, items: &[(K, V)]) {
        self.pos[self.field] = (self.out.len() as u32, 0);
        if !items.is_empty() {
            self.long(items.len() as i64);
            for (k, v) in items {
                self.raw_str(k.as_ref());
                self.raw_str(v.as_ref());
            }
        }
        self.out.push(0);
        self.field += 1;
    }
    fn int(&mut self, n: i64) {
        self.pos[self.field] = (self.out.len() as u32, 0);
        self.long(n);
        self.field += 1;
    }
    fn boolean(&mut self, b: bool) {
        self.pos[self.field] = (self.out.len() as u32, 0);
        self.out.push(b as u8);
        self.field += 1;
    }
}

pub struct Built {
    blob: Vec<u8>,
    pos: [(u32, u32); N_FIELDS],
    code: i64,
    received: i64,
    stage_ts: i64,
    size: i64,
}

impl Built {
    /// The last field, `event_bytes` (known once the record's text is measured: `sizes`), ends the Avro bytes.
    pub fn push_size(&mut self, n: usize) {
        self.pos[SIZE_FIELD] = (self.blob.len() as u32, 0);
        self.size = n as i64;
        w_long(&mut self.blob, n as i64);
    }
}

fn s<'a>(v: &'a Option<BStr>) -> &'a str {
    v.as_ref().map(|b| b.0.as_ref()).unwrap_or("")
}

fn truthy<'a>(v: &'a Option<BStr>) -> Option<&'a str> {
    v.as_ref().map(|b| b.0.as_ref()).filter(|x| !x.is_empty())
}

/// Kubernetes 1.35+ `authenticationMetadata.impersonationConstraint` (the field stays in `extra` too); a shape
/// Python would coerce (not an object, a non-string constraint) takes the Python path.
fn impersonation_constraint(unknown: &[(std::borrow::Cow<str>, &serde_json::value::RawValue)]) -> R<String> {
    #[derive(serde::Deserialize)]
    struct Am {
        #[serde(default, rename = "impersonationConstraint")]
        impersonation_constraint: Option<String>,
    }
    match unknown.iter().find(|(k, _)| k == "authenticationMetadata") {
        None => Ok(String::new()),
        Some((_, raw)) if raw.get() == "null" => Ok(String::new()),
        Some((_, raw)) => {
            let am: Am = serde_json::from_str(raw.get()).map_err(|_| Fallback)?;
            Ok(am.impersonation_constraint.unwrap_or_default())
        }
    }
}

/// normalize.forbidden_verb: the verb in `User "<go-quoted name>" cannot <verb> ...`, else "".
pub(crate) fn forbidden_verb(message: &str) -> &str {
    let Some(at) = message.find("User \"") else { return "" };
    let b = message.as_bytes();
    let mut i = at + 6;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => break,
            _ => i += 1,
        }
    }
    if i >= b.len() {
        return "";
    }
    let rest = &message[i + 1..];
    match rest.strip_prefix(" cannot ") {
        Some(r) => r.split(' ').next().unwrap_or(""),
        None => "",
    }
}

/// normalize_event + the AuditEvent writer, for one parsed event.
pub fn build(p: &Parsed, cluster: &str, cap: usize, redact: bool) -> R<Built> {
    let auditid = truthy(&p.audit_id).ok_or(Fallback)?;
    let stage = s(&p.stage);
    if !STAGES.contains(&stage) {
        return Err(Fallback);
    }
    let received_raw = truthy(&p.request_received_timestamp).or_else(|| truthy(&p.timestamp));
    let stage_raw = truthy(&p.stage_timestamp).or_else(|| p.metadata.as_ref().and_then(|m| truthy(&m.creation_timestamp)));
    let received = received_raw.map(ts_us).transpose()?;
    let stage_ts = stage_raw.map(ts_us).transpose()?;
    let (received, stage_ts) = match (received, stage_ts) {
        (None, None) => return Err(Fallback),
        (None, Some(x)) => (x, x),
        (Some(r), None) => (r, r),
        (Some(r), Some(x)) => (r, x),
    };

    let default_user = Default::default();
    let user = p.user.as_ref().unwrap_or(&default_user);
    let imp = p.impersonated_user.as_ref().unwrap_or(&default_user);
    let default_ref = Default::default();
    let oref = p.object_ref.as_ref().unwrap_or(&default_ref);
    let default_status = Default::default();
    let status = p.response_status.as_ref().unwrap_or(&default_status);
    let empty: Vec<(std::borrow::Cow<str>, BStr)> = Vec::new();
    let annotations = p.annotations.as_ref().map(|a| &a.0).unwrap_or(&empty);

    let mut api_version = s(&oref.api_version);
    let api_group = match &oref.api_group {
        Some(g) => g.0.as_ref(),
        None => match api_version.rfind('/') {
            Some(i) => {
                let g = &api_version[..i];
                api_version = &api_version[i + 1..];
                g
            }
            None => "",
        },
    };
    let user_extra: Vec<(&str, String)> = match &user.extra {
        Some(pairs) => pairs.0.iter().map(|(k, v): &(_, StrList)| (k.as_ref(), v.0.join(","))).collect(),
        None => Vec::new(),
    };
    let resource = s(&oref.resource);
    let (req_text, resp_text, mask) = if p.request_object.is_none() && p.response_object.is_none() {
        (String::new(), String::new(), 0)
    } else {
        let implied = if redact { implied(api_group, resource, s(&oref.subresource)) } else { None };
        let (req, m1) = object_text(p.request_object, redact, implied, cap)?;
        let (resp, m2) = object_text(p.response_object, redact, implied, cap)?;
        (req, resp, m1 | m2)
    };
    let code = status.code.unwrap_or(0);
    if i32::try_from(code).is_err() {
        return Err(Fallback);
    }
    let extra = extra_text(&p.unknown)?;
    let ann = |key: &str| annotations.iter().find(|(k, _)| k == key).map(|(_, v)| v.0.as_ref()).unwrap_or("");

    let mut w = W { out: Vec::with_capacity(1024 + req_text.len() + resp_text.len()), pos: [(0, 0); N_FIELDS], field: 0 };
    w.str(cluster);
    w.str(auditid);
    w.str(stage);
    w.str(s(&p.level));
    w.str(s(&p.verb));
    w.str(s(&p.request_uri));
    w.str(s(&user.username));
    w.str(s(&user.uid));
    w.list(&user.groups.0);
    w.map(&user_extra);
    w.str(s(&imp.username));
    w.list(&imp.groups.0);
    w.list(&p.source_ips.0);
    w.str(s(&p.user_agent));
    w.str(resource);
    w.str(s(&oref.namespace));
    w.str(s(&oref.name));
    w.str(api_group);
    w.str(api_version);
    w.str(s(&oref.subresource));
    w.str(s(&oref.uid));
    w.int(code);
    w.str(s(&status.status));
    w.str(s(&status.reason));
    w.str(s(&status.message));
    w.str(ann(DECISION));
    w.str(ann(REASON));
    let ann_pairs: Vec<(&str, &str)> = annotations.iter().map(|(k, v)| (k.as_ref(), v.0.as_ref())).collect();
    w.map(&ann_pairs);
    w.int(received);
    w.int(stage_ts);
    w.str(&req_text);
    w.str(&resp_text);
    w.boolean(false); // objects_truncated: truncation takes the Python path
    w.str(s(&p.api_version));
    w.str(&extra);
    w.list(&ids(mask));
    w.str(&impersonation_constraint(&p.unknown)?);
    w.str(if code == 403 { forbidden_verb(s(&status.message)) } else { "" });
    Ok(Built { blob: w.out, pos: w.pos, code, received, stage_ts, size: 0 })
}

// ---------------------------------------------------------------------------------------------------------
// 128-bit hashing of field values (two SipHash-1-3 streams with different keys)

/// The values are gathered (type-tagged, length-prefixed) into one buffer and each stream hashes it in one
/// `write`: SipHash pays per call, and a rule memo key is ~10 strings, ~30 small writes per stream otherwise.
#[derive(Clone)]
pub struct Hash128(Vec<u8>);

impl Hash128 {
    pub fn new() -> Self {
        Hash128(Vec::with_capacity(256))
    }
    pub fn str(&mut self, s: &str) {
        self.0.push(b's');
        self.0.extend_from_slice(&(s.len() as u64).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }
    /// Back to the first `n` bytes of input (a shared prefix, hashed again with other values after it).
    pub fn truncate(&mut self, n: usize) {
        self.0.truncate(n);
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn int(&mut self, n: i64) {
        self.0.push(b'i');
        self.0.extend_from_slice(&n.to_le_bytes());
    }
    pub fn finish(&self) -> u128 {
        use std::hash::Hasher;
        let (mut a, mut b) = (std::hash::DefaultHasher::new(), std::hash::DefaultHasher::new());
        b.write_u64(0x9e37_79b9_7f4a_7c15);
        a.write(&self.0);
        b.write(&self.0);
        ((a.finish() as u128) << 64) | b.finish() as u128
    }
    /// The hash as 16 bytes: a Python dict key built in ~40 ns, where a 128-bit int costs ~400 (PyO3 builds it
    /// from two halves with Python arithmetic under the limited API).
    pub fn finish_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new_bound(py, &self.finish().to_le_bytes())
    }
}

/// `values_hash`'s stand-in for "sourceip" (not an event field: the last of sourceips, the peer the API server
/// saw; the ones before it are X-Forwarded-For / X-Real-Ip, which any client sets).
const SOURCEIP: usize = usize::MAX;

/// Field names resolved once to positions: a rule slot's guard fields, so that `Event.values_hash` (called per
/// event) neither converts a list of names nor looks each one up.
#[pyclass(module = "kaudit_native", frozen)]
pub struct FieldSet {
    idx: Vec<usize>,
}

#[pymethods]
impl FieldSet {
    #[new]
    fn new(names: Vec<String>) -> PyResult<Self> {
        let idx = names
            .iter()
            .map(|n| if n == "sourceip" { Ok(SOURCEIP) } else { index_of(n).ok_or_else(|| PyKeyError::new_err(n.clone())) })
            .collect::<PyResult<Vec<usize>>>()?;
        Ok(FieldSet { idx })
    }
}

// ---------------------------------------------------------------------------------------------------------
// the Python object

/// A normalized event backed by its Avro bytes: `ev["verb"]`, `ev.get("username")`, `ev.to_dict()`,
/// `ev.avro` (the AuditEvent bytes). Values are built on access.
#[pyclass(module = "kaudit_native", frozen)]
pub struct Event {
    blob: Py<PyBytes>,
    pos: [(u32, u32); N_FIELDS],
    code: i64,
    received: i64,
    stage_ts: i64,
    size: i64,
    cluster: Py<PyString>,
    cache: [std::sync::OnceLock<PyObject>; N_FIELDS], // each field's Python value, built on first read
}

fn read_long(b: &[u8], at: &mut usize) -> i64 {
    let (mut acc, mut shift) = (0u64, 0);
    loop {
        let byte = b[*at];
        *at += 1;
        acc |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    ((acc >> 1) as i64) ^ -((acc & 1) as i64)
}

fn read_str<'a>(b: &'a [u8], at: &mut usize) -> &'a str {
    let n = read_long(b, at) as usize;
    let s = unsafe { std::str::from_utf8_unchecked(&b[*at..*at + n]) }; // written from &str above
    *at += n;
    s
}

impl Event {
    pub fn new(py: Python<'_>, b: Built, cluster: Py<PyString>) -> PyResult<Self> {
        Ok(Event {
            blob: PyBytes::new_bound(py, &b.blob).unbind(),
            pos: b.pos,
            code: b.code,
            received: b.received,
            stage_ts: b.stage_ts,
            size: b.size,
            cluster,
            cache: std::array::from_fn(|_| std::sync::OnceLock::new()),
        })
    }

    /// A string field's text, borrowed from the Avro bytes.
    pub(crate) fn text<'a>(&'a self, py: Python<'_>, i: usize) -> &'a str {
        let blob = self.blob.as_bytes(py);
        let (start, len) = self.pos[i];
        let (start, len) = (start as usize, len as usize);
        unsafe { std::str::from_utf8_unchecked(&blob[start..start + len]) } // written from &str
    }

    pub(crate) fn code(&self) -> i64 {
        self.code
    }

    pub(crate) fn stage_ts(&self) -> i64 {
        self.stage_ts
    }

    pub(crate) fn blob<'a>(&'a self, py: Python<'_>) -> &'a [u8] {
        self.blob.as_bytes(py)
    }

    /// Feed field i into a hash (type-tagged, length-prefixed: distinct values give distinct input).
    pub(crate) fn hash_field(&self, py: Python<'_>, i: usize, h: &mut Hash128) {
        match kind(i) {
            Kind::Str => h.str(self.text(py, i)),
            Kind::List | Kind::Map => {
                let blob = self.blob.as_bytes(py);
                let mut at = self.pos[i].0 as usize;
                let n = read_long(blob, &mut at).max(0);
                h.int(n);
                let per = if matches!(kind(i), Kind::Map) { 2 } else { 1 };
                for _ in 0..n * per {
                    h.str(read_str(blob, &mut at));
                }
            }
            Kind::Code => h.int(self.code),
            Kind::Received => h.int(self.received),
            Kind::StageTs => h.int(self.stage_ts),
            Kind::Truncated => h.int(0),
            Kind::Size => h.int(self.size),
        }
    }

    /// values_hash over resolved field indices (SOURCEIP: the last source IP or "").
    fn hash_fields(&self, py: Python<'_>, idx: &[usize]) -> Hash128 {
        let mut h = Hash128::new();
        for &i in idx {
            if i == SOURCEIP {
                let blob = self.blob.as_bytes(py);
                let mut at = self.pos[12].0 as usize;
                let mut last = "";
                loop {
                    // Avro array blocks: count (negative: followed by the block's byte size), items, 0 ends
                    let mut n = read_long(blob, &mut at);
                    if n == 0 {
                        break;
                    }
                    if n < 0 {
                        n = -n;
                        read_long(blob, &mut at);
                    }
                    for _ in 0..n {
                        last = read_str(blob, &mut at);
                    }
                }
                h.str(last);
            } else {
                self.hash_field(py, i, &mut h);
            }
        }
        h
    }

    /// Field i as a Python object; the same object on every read (rules read a field several times).
    pub(crate) fn value(&self, py: Python<'_>, i: usize) -> PyObject {
        match kind(i) {
            Kind::List | Kind::Map => self.build(py, i), // mutable: a fresh one per read, like a dict's copy
            _ => self.cache[i].get_or_init(|| self.build(py, i)).clone_ref(py),
        }
    }

    fn build(&self, py: Python<'_>, i: usize) -> PyObject {
        let blob = self.blob.as_bytes(py);
        let (start, len) = self.pos[i];
        let start = start as usize;
        match kind(i) {
            Kind::Str if i == 0 => self.cluster.clone_ref(py).into_any(),
            Kind::Str => {
                let s = unsafe { std::str::from_utf8_unchecked(&blob[start..start + len as usize]) };
                PyString::new_bound(py, s).into_any().unbind()
            }
            Kind::List => {
                let mut at = start;
                let n = read_long(blob, &mut at);
                let list = PyList::empty_bound(py);
                for _ in 0..n.max(0) {
                    let _ = list.append(read_str(blob, &mut at));
                }
                list.into_any().unbind()
            }
            Kind::Map => {
                let mut at = start;
                let n = read_long(blob, &mut at);
                let d = PyDict::new_bound(py);
                for _ in 0..n.max(0) {
                    let k = read_str(blob, &mut at);
                    let v = read_str(blob, &mut at);
                    let _ = d.set_item(k, v);
                }
                d.into_any().unbind()
            }
            Kind::Code => self.code.into_py(py),
            Kind::Received => self.received.into_py(py),
            Kind::StageTs => self.stage_ts.into_py(py),
            Kind::Truncated => false.into_py(py),
            Kind::Size => self.size.into_py(py),
        }
    }
}

#[pymethods]
impl Event {
    fn __getitem__(&self, py: Python<'_>, key: &str) -> PyResult<PyObject> {
        match index_of(key) {
            Some(i) => Ok(self.value(py, i)),
            None => Err(PyKeyError::new_err(key.to_owned())),
        }
    }

    #[pyo3(signature = (key, default=None))]
    fn get(&self, py: Python<'_>, key: &str, default: Option<PyObject>) -> PyObject {
        match index_of(key) {
            Some(i) => self.value(py, i),
            None => default.unwrap_or_else(|| py.None()),
        }
    }

    /// A 128-bit hash of several fields' values (lists element by element; "sourceip" = the last source IP or
    /// ""): the rules' memo key without building Python strings
    /// (distinct value combinations collide with probability ~2^-128), as 16 bytes.
    fn values_hash<'py>(&self, py: Python<'py>, fields: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
        if let Ok(set) = fields.downcast::<FieldSet>() {
            return Ok(self.hash_fields(py, &set.get().idx).finish_bytes(py));
        }
        let names: Vec<String> = fields.extract()?;
        Ok(self.hash_fields(py, &FieldSet::new(names)?.idx).finish_bytes(py))
    }

    fn __contains__(&self, key: &str) -> bool {
        index_of(key).is_some()
    }

    fn __len__(&self) -> usize {
        FIELDS.len()
    }

    fn keys(&self) -> Vec<&'static str> {
        FIELDS.to_vec()
    }

    /// The same dict `normalize_event` returns.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new_bound(py);
        for (i, name) in FIELDS.iter().enumerate() {
            d.set_item(name, self.value(py, i))?;
        }
        Ok(d)
    }

    /// The Avro AuditEvent bytes (schemaless, as inside an EventBatch).
    #[getter]
    fn avro(&self, py: Python<'_>) -> Py<PyBytes> {
        self.blob.clone_ref(py)
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let get = |i: usize| self.value(py, i).to_string();
        format!("<kaudit_native.Event {} {} {} {}>", get(1), get(2), get(4), get(14))
    }
}

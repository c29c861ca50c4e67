//! The redaction model of `pipeline/redaction/model.py`, applied exactly as `pipeline/redaction/redact.py`
//! applies it (tests compare `redaction_table()` with the Python table and both paths byte for byte).
//! Objects are redacted in place; functions return the mask of redacted fields (bit i = FIELD_IDS[i]).
//! Whatever this code could not mirror exactly (an embedded JSON text serde_json does not read the way orjson
//! does) is a Fallback: the record takes the Python path.

use crate::{Fallback, R};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::borrow::Cow;

pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
const ANY: &str = "*";

/// model.FIELD_IDS: per kind, its fields then its `.patch` id.
pub const FIELD_IDS: [&str; 10] = [
    "Secret.data", "Secret.stringData", "Secret.last-applied", "Secret.patch",
    "TokenRequest.status.token", "TokenRequest.last-applied", "TokenRequest.patch",
    "TokenReview.spec.token", "TokenReview.last-applied", "TokenReview.patch",
];

pub enum Node {
    Leaf { bit: u32, embedded: bool },
    /// children in the model's order; `bit`: the first leaf's, recorded when a non-object sits here
    Map { children: &'static [(&'static str, Node)], bit: u32 },
}

impl Node {
    fn bit(&self) -> u32 {
        match self {
            Node::Leaf { bit, .. } | Node::Map { bit, .. } => *bit,
        }
    }
    fn child(&self, key: &str) -> Option<&'static Node> {
        match self {
            Node::Map { children, .. } => children.iter().find(|(k, _)| *k == key).map(|(_, n)| n),
            Node::Leaf { .. } => None,
        }
    }
}

pub struct KindDef {
    pub name: &'static str,
    pub tree: Node,
    pub patch_bit: u32,
}

macro_rules! leaf {
    ($i:literal) => {
        Node::Leaf { bit: 1 << $i, embedded: false }
    };
}
/// metadata.annotations[last-applied-configuration]: the JSON text of the whole object
macro_rules! last_applied {
    ($i:literal) => {
        ("metadata", Node::Map {
            children: &[("annotations", Node::Map {
                children: &[(LAST_APPLIED, Node::Leaf { bit: 1 << $i, embedded: true })], bit: 1 << $i })],
            bit: 1 << $i,
        })
    };
}

pub static KINDS: [KindDef; 3] = [
    KindDef {
        name: "Secret",
        tree: Node::Map {
            children: &[
                ("data", Node::Map { children: &[(ANY, leaf!(0))], bit: 1 << 0 }),
                ("stringData", Node::Map { children: &[(ANY, leaf!(1))], bit: 1 << 1 }),
                last_applied!(2),
            ],
            bit: 1 << 0,
        },
        patch_bit: 1 << 3,
    },
    KindDef {
        name: "TokenRequest",
        tree: Node::Map {
            children: &[("status", Node::Map { children: &[("token", leaf!(4))], bit: 1 << 4 }), last_applied!(5)],
            bit: 1 << 4,
        },
        patch_bit: 1 << 6,
    },
    KindDef {
        name: "TokenReview",
        tree: Node::Map {
            children: &[("spec", Node::Map { children: &[("token", leaf!(7))], bit: 1 << 7 }), last_applied!(8)],
            bit: 1 << 7,
        },
        patch_bit: 1 << 9,
    },
];

/// model.RESOURCES: (API group or None = any, resource, subresource, index in KINDS)
pub const RESOURCES: [(Option<&str>, &str, &str, usize); 3] = [
    (None, "secrets", "", 0),
    (Some(""), "serviceaccounts", "token", 1),
    (Some("authentication.k8s.io"), "tokenreviews", "", 2),
];

const GENERIC_LIST: &str = "List";
const TABLE: &str = "Table";
const WATCH_EVENT: &str = "WatchEvent";
/// model.NOT_IMPLIED: the API's envelopes, never read as the implied kind
const NOT_IMPLIED: [&str; 4] = ["Status", "DeleteOptions", TABLE, WATCH_EVENT];

pub fn implied(group: &str, resource: &str, subresource: &str) -> Option<&'static KindDef> {
    RESOURCES
        .iter()
        .find(|(g, r, s, _)| *r == resource && *s == subresource && g.map_or(true, |g| g == group))
        .map(|(_, _, _, k)| &KINDS[*k])
}

fn kind_by_name(name: &str) -> Option<&'static KindDef> {
    KINDS.iter().find(|k| k.name == name)
}

pub fn hash_value(v: &Value) -> String {
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

fn hashed(v: &mut Value) {
    *v = Value::String(hash_value(v));
}

/// redact._at: the value at `node`'s place in an object of `kind`, redacted in place.
fn at(v: &mut Value, node: &'static Node, kind: &'static KindDef) -> R<u32> {
    match node {
        Node::Leaf { bit, embedded: true } => embedded_text(v, *bit, kind),
        Node::Leaf { bit, .. } => {
            hashed(v);
            Ok(*bit)
        }
        Node::Map { .. } => match v {
            Value::Object(_) => apply(v, node, kind),
            Value::Null => Ok(0),
            _ => {
                hashed(v);
                Ok(node.bit())
            }
        },
    }
}

fn apply(obj: &mut Value, node: &'static Node, kind: &'static KindDef) -> R<u32> {
    let (Value::Object(m), Node::Map { children, .. }) = (obj, node) else { return Ok(0) };
    let mut mask = 0;
    for (key, sub) in children.iter() {
        if *key == ANY {
            for (_, v) in m.iter_mut() {
                mask |= at(v, sub, kind)?;
            }
        } else if let Some(v) = m.get_mut(*key) {
            mask |= at(v, sub, kind)?;
        }
    }
    Ok(mask)
}

fn has_float(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.is_f64(),
        Value::Array(a) => a.iter().any(has_float),
        Value::Object(m) => m.values().any(has_float),
        _ => false,
    }
}

/// redact._embedded. Text serde_json cannot read, or with floats (whose text could differ from orjson's), is
/// left to the Python path (rare: kubectl writes this annotation, from objects without floats).
fn embedded_text(v: &mut Value, bit: u32, kind: &'static KindDef) -> R<u32> {
    match v {
        Value::Null => Ok(0),
        Value::String(s) => {
            // text serde_json does not read (bad JSON, or deeper than its limit) is the Python path's to judge
            let mut inner: Value = serde_json::from_str(s).map_err(|_| Fallback)?;
            if !inner.is_object() {
                hashed(v);
                return Ok(bit);
            }
            if has_float(&inner) {
                return Err(Fallback);
            }
            let m = dispatch(&mut inner, Some(kind))?;
            if m == 0 {
                return Ok(0);
            }
            *v = Value::String(serde_json::to_string(&inner).map_err(|_| Fallback)?);
            Ok(m | bit)
        }
        _ => {
            hashed(v);
            Ok(bit)
        }
    }
}

fn pointer(path: &str) -> Option<Vec<String>> {
    if path.is_empty() {
        return Some(Vec::new());
    }
    let rest = path.strip_prefix('/')?;
    Some(rest.split('/').map(|t| t.replace("~1", "/").replace("~0", "~")).collect())
}

/// redact._json_patch
fn json_patch(ops: &mut [Value], kind: &'static KindDef) -> R<u32> {
    let mut mask = 0;
    for op in ops.iter_mut() {
        let Value::Object(m) = op else {
            if !op.is_null() {
                hashed(op);
                mask |= kind.patch_bit;
            }
            continue;
        };
        if !m.contains_key("value") {
            continue;
        }
        let tokens = match m.get("path") {
            Some(Value::String(p)) => pointer(p),
            _ => None,
        };
        let value = m.get_mut("value").expect("checked above");
        let Some(tokens) = tokens else {
            hashed(value);
            mask |= kind.patch_bit;
            continue;
        };
        let mut node: Option<&'static Node> = Some(&kind.tree);
        let mut below = false;
        for t in &tokens {
            let n = node.expect("loop breaks on None");
            if matches!(n, Node::Leaf { .. }) {
                below = true;
                break;
            }
            node = n.child(t).or_else(|| n.child(ANY));
            if node.is_none() {
                break;
            }
        }
        let Some(node) = node else { continue };
        if below {
            hashed(value);
            mask |= node.bit();
        } else {
            mask |= at(value, node, kind)?;
        }
    }
    Ok(mask)
}

/// redact.dispatch: one object (body, list item, embedded object) redacted in place.
pub fn dispatch(obj: &mut Value, implied: Option<&'static KindDef>) -> R<u32> {
    match obj {
        Value::Object(m) => {
            // everything the kind decides, read without keeping a borrow (and without copying the kind)
            let kind_none = matches!(m.get("kind"), None | Some(Value::Null));
            let k = match m.get("kind") {
                Some(Value::String(s)) => Some(s.as_str()),
                _ => None,
            };
            let own = k.and_then(kind_by_name);
            let read_as_implied = implied.is_some() && !k.is_some_and(|k| NOT_IMPLIED.contains(&k));
            let is_list = |k: &str| k.ends_with("List");
            let walk_items = k == Some(GENERIC_LIST)
                || (implied.is_some() && (kind_none || k.is_some_and(is_list)))
                || k.is_some_and(|k| is_list(k) && kind_by_name(&k[..k.len() - 4]).is_some());
            let (is_table, is_watch) = (k == Some(TABLE), k == Some(WATCH_EVENT));
            let mut mask = 0;
            if let Some(own) = own {
                mask = apply(obj, &own.tree, own)?;
            } else if read_as_implied {
                let imp = implied.expect("read_as_implied");
                mask = apply(obj, &imp.tree, imp)?;
            }
            let Value::Object(m) = obj else { unreachable!() };
            if walk_items {
                if let Some(Value::Array(items)) = m.get_mut("items") {
                    for it in items.iter_mut() {
                        mask |= dispatch(it, implied)?;
                    }
                }
            }
            if is_table && implied.is_some() {
                if let Some(Value::Array(rows)) = m.get_mut("rows") {
                    for row in rows.iter_mut() {
                        if let Value::Object(r) = row {
                            if let Some(o) = r.get_mut("object") {
                                mask |= dispatch(o, implied)?;
                            }
                        }
                    }
                }
            } else if is_watch {
                if let Some(o) = m.get_mut("object") {
                    mask |= dispatch(o, implied)?;
                }
            }
            Ok(mask)
        }
        Value::Array(ops) => match implied {
            Some(kind) => json_patch(ops, kind),
            None => Ok(0),
        },
        _ => Ok(0),
    }
}

/// The ids of a mask, in FIELD_IDS order.
pub fn ids(mask: u32) -> Vec<&'static str> {
    FIELD_IDS.iter().enumerate().filter(|(i, _)| mask >> i & 1 == 1).map(|(_, s)| *s).collect()
}

/// The model as JSON, in the shape of `pipeline.redaction.model.table()` (a test compares them).
pub fn table_json() -> String {
    // the fields are read off the trees this code walks, so the comparison checks the trees themselves
    fn leaves(node: &Node, path: &mut Vec<&'static str>, out: &mut Vec<Value>) {
        match node {
            Node::Leaf { bit, embedded } => {
                let id = FIELD_IDS[bit.trailing_zeros() as usize];
                out.push(serde_json::json!({"id": id, "path": path, "embedded": embedded}));
            }
            Node::Map { children, .. } => {
                for (k, sub) in children.iter() {
                    path.push(k);
                    leaves(sub, path, out);
                    path.pop();
                }
            }
        }
    }
    let kinds: Vec<Value> = KINDS
        .iter()
        .map(|k| {
            let mut fields = Vec::new();
            leaves(&k.tree, &mut Vec::new(), &mut fields);
            serde_json::json!({
                "name": k.name,
                "patch_id": FIELD_IDS[k.patch_bit.trailing_zeros() as usize],
                "fields": fields,
            })
        })
        .collect();
    let resources: Vec<Value> = RESOURCES
        .iter()
        .map(|(g, r, s, k)| serde_json::json!({"group": g, "resource": r, "subresource": s, "kind": KINDS[*k].name}))
        .collect();
    serde_json::json!({
        "field_ids": FIELD_IDS,
        "kinds": kinds,
        "resources": resources,
        "containers": {"not_implied": NOT_IMPLIED, "list": GENERIC_LIST, "table": TABLE, "watch": WATCH_EVENT},
    })
    .to_string()
}

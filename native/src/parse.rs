//! Typed, borrowing parse of one raw record: strings stay slices of the input where they have no escapes,
//! requestObject/responseObject stay raw JSON text until needed, unknown fields are kept for `extra`.
//! Any type the Python path would coerce (a number where a string belongs, ...) is a parse error here, and
//! the caller falls back to the Python path.

use crate::event::{build, Built};
use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::cell::RefCell;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// A JSON string, borrowed from the input when it has no escapes.
pub struct BStr<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for BStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = BStr<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(BStr(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(BStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(BStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// Python's `_str_list`: null -> [], "" -> [], "x" -> ["x"], ["a", "b"] -> as is (non-strings: error).
#[derive(Default)]
pub struct StrList<'a>(pub Vec<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for StrList<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = StrList<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of strings")
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(StrList(Vec::new()))
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(StrList(Vec::new()))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(StrList(if v.is_empty() { Vec::new() } else { vec![Cow::Borrowed(v)] }))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(StrList(if v.is_empty() { Vec::new() } else { vec![Cow::Owned(v.to_owned())] }))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(4));
                while let Some(BStr(s)) = seq.next_element()? {
                    out.push(s);
                }
                Ok(StrList(out))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// An object as ordered (key, value) pairs; a repeated key is an error (Python keeps the first position with
/// the last value, which a Vec would not mirror).
pub struct Pairs<'a, T>(pub Vec<(Cow<'a, str>, T)>);

impl<'de: 'a, 'a, T: Deserialize<'de>> Deserialize<'de> for Pairs<'a, T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a, T>(std::marker::PhantomData<(&'a (), T)>);
        impl<'de: 'a, 'a, T: Deserialize<'de>> Visitor<'de> for V<'a, T> {
            type Value = Pairs<'a, T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out: Vec<(Cow<'a, str>, T)> = Vec::new();
                while let Some(BStr(k)) = map.next_key()? {
                    if out.iter().any(|(x, _)| *x == k) {
                        return Err(de::Error::custom("repeated key"));
                    }
                    let v = map.next_value()?;
                    out.push((k, v));
                }
                Ok(Pairs(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

#[derive(serde::Deserialize, Default)]
pub struct User<'a> {
    #[serde(borrow, default)]
    pub username: Option<BStr<'a>>,
    #[serde(borrow, default)]
    pub uid: Option<BStr<'a>>,
    #[serde(borrow, default)]
    pub groups: StrList<'a>,
    #[serde(borrow, default)]
    pub extra: Option<Pairs<'a, StrList<'a>>>,
}

#[derive(serde::Deserialize, Default)]
pub struct ObjectRef<'a> {
    #[serde(borrow, default)]
    pub resource: Option<BStr<'a>>,
    #[serde(borrow, default)]
    pub namespace: Option<BStr<'a>>,
    #[serde(borrow, default)]
    pub name: Option<BStr<'a>>,
    #[serde(borrow, default, rename = "apiGroup")]
    pub api_group: Option<BStr<'a>>,
    #[serde(borrow, default, rename = "apiVersion")]
    pub api_version: Option<BStr<'a>>,
    #[serde(borrow, default)]
    pub subresource: Option<BStr<'a>>,
    #[serde(borrow, default)]
    pub uid: Option<BStr<'a>>,
}

#[derive(serde::Deserialize, Default)]
pub struct Status<'a> {
    #[serde(default)]
    pub code: Option<i64>,
    #[serde(borrow, default)]
    pub status: Option<BStr<'a>>,
    #[serde(borrow, default)]
    pub reason: Option<BStr<'a>>,
    #[serde(borrow, default)]
    pub message: Option<BStr<'a>>,
}

#[derive(serde::Deserialize, Default)]
pub struct Meta<'a> {
    #[serde(borrow, default, rename = "creationTimestamp")]
    pub creation_timestamp: Option<BStr<'a>>,
}

/// One JSON object of the record: an audit event, or an EventList (then `items` holds the events).
#[derive(Default)]
pub struct Parsed<'a> {
    pub kind: Option<BStr<'a>>,
    pub api_version: Option<BStr<'a>>,
    pub level: Option<BStr<'a>>,
    pub audit_id: Option<BStr<'a>>,
    pub stage: Option<BStr<'a>>,
    pub request_uri: Option<BStr<'a>>,
    pub verb: Option<BStr<'a>>,
    pub user: Option<User<'a>>,
    pub impersonated_user: Option<User<'a>>,
    pub source_ips: StrList<'a>,
    pub user_agent: Option<BStr<'a>>,
    pub object_ref: Option<ObjectRef<'a>>,
    pub response_status: Option<Status<'a>>,
    pub request_object: Option<&'a RawValue>,
    pub response_object: Option<&'a RawValue>,
    pub request_received_timestamp: Option<BStr<'a>>,
    pub stage_timestamp: Option<BStr<'a>>,
    pub annotations: Option<Pairs<'a, BStr<'a>>>,
    pub timestamp: Option<BStr<'a>>,
    pub metadata: Option<Meta<'a>>,
    /// EventList items, normalized as they are read (see `Ctx`): how many were pushed
    pub items: Option<usize>,
    /// an `items` field was seen where no context was given (a nested one): not a shape for this path
    pub has_items: bool,
    pub unknown: Vec<(Cow<'a, str>, &'a RawValue)>,
    pub has_id_or_stage: bool,
}

/// What normalization needs, and where EventList items go as soon as each is read: the record's events are
/// never all held as parsed structs at once (a 400-event Vec<Parsed> is half a MB of fresh pages per record).
pub struct Ctx<'c> {
    pub cluster: &'c str,
    pub cap: usize,
    pub redact: bool,
    pub out: RefCell<Vec<Built>>,
}

/// Parses one object; with a context, its `items` are normalized into `ctx.out` while reading.
pub struct PSeed<'x, 'c>(pub Option<&'x Ctx<'c>>);

impl<'de, 'x, 'c> DeserializeSeed<'de> for PSeed<'x, 'c> {
    type Value = Parsed<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

struct Items<'x, 'c>(&'x Ctx<'c>);

impl<'de, 'x, 'c> DeserializeSeed<'de> for Items<'x, 'c> {
    type Value = usize;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, 'x, 'c> Visitor<'de> for Items<'x, 'c> {
    type Value = usize;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of audit events")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let ctx = self.0;
        let mut n = 0;
        while let Some(p) = seq.next_element_seed(PSeed(None))? {
            if p.has_items {
                return Err(de::Error::custom("an item with items"));
            }
            let built = build(&p, ctx.cluster, ctx.cap, ctx.redact).map_err(|_| de::Error::custom("fallback"))?;
            ctx.out.borrow_mut().push(built);
            n += 1;
        }
        Ok(n)
    }
}

impl<'de, 'x, 'c> Visitor<'de> for PSeed<'x, 'c> {
    type Value = Parsed<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an audit event or an EventList")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut p = Parsed::default();
        while let Some(BStr(key)) = map.next_key()? {
            match key.as_ref() {
                "kind" => p.kind = map.next_value()?,
                "apiVersion" => p.api_version = map.next_value()?,
                "level" => p.level = map.next_value()?,
                "auditID" => {
                    p.has_id_or_stage = true;
                    p.audit_id = map.next_value()?
                }
                "stage" => {
                    p.has_id_or_stage = true;
                    p.stage = map.next_value()?
                }
                "requestURI" => p.request_uri = map.next_value()?,
                "verb" => p.verb = map.next_value()?,
                "user" => p.user = map.next_value()?,
                "impersonatedUser" => p.impersonated_user = map.next_value()?,
                "sourceIPs" => p.source_ips = map.next_value()?,
                "userAgent" => p.user_agent = map.next_value()?,
                "objectRef" => p.object_ref = map.next_value()?,
                "responseStatus" => p.response_status = map.next_value()?,
                "requestObject" => p.request_object = map.next_value()?,
                "responseObject" => p.response_object = map.next_value()?,
                "requestReceivedTimestamp" => p.request_received_timestamp = map.next_value()?,
                "stageTimestamp" => p.stage_timestamp = map.next_value()?,
                "annotations" => p.annotations = map.next_value()?,
                "timestamp" => p.timestamp = map.next_value()?,
                "metadata" => p.metadata = map.next_value()?,
                "items" => match self.0 {
                    Some(ctx) if p.items.is_none() => p.items = Some(map.next_value_seed(Items(ctx))?),
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                        p.has_items = true;
                    }
                },
                _ => {
                    if p.unknown.iter().any(|(k, _)| *k == key) {
                        return Err(de::Error::custom("repeated key"));
                    }
                    let v: &'de RawValue = map.next_value()?;
                    p.unknown.push((key, v));
                }
            }
        }
        Ok(p)
    }
}

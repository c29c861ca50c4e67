//! Typed, borrowing parse of one raw record: strings stay slices of the input where they have no escapes,
//! requestObject/responseObject stay raw JSON text until needed, unknown fields are kept for `extra`.
//! Any type the Python path would coerce (a number where a string belongs, ...) is a parse error here, and
//! the caller falls back to the Python path.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
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
    pub items: Option<Vec<Parsed<'a>>>,
    pub unknown: Vec<(Cow<'a, str>, &'a RawValue)>,
    pub has_id_or_stage: bool,
}

impl<'de> Deserialize<'de> for Parsed<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
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
                        "items" => p.items = Some(map.next_value()?),
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
        d.deserialize_map(V)
    }
}

//! JSON from the network, parsed strictly: a key repeated in one object is refused rather than resolved
//! to its last value, so that a proxy or a validator in front of Keel (which may keep the first) cannot
//! read a different document than Keel stores. Nesting is bounded by serde_json's recursion limit (128),
//! so no input can overflow the stack.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Why a body is not acceptable JSON.
#[derive(Debug, thiserror::Error)]
pub enum StrictError {
    /// Not JSON at all: a syntax error or a truncated document.
    #[error("{0}")]
    Syntax(serde_json::Error),
    /// JSON, but with a repeated key or nested too deep.
    #[error("{0}")]
    Invalid(serde_json::Error),
}

/// Parses `bytes` as one JSON document, refusing repeated keys.
pub fn parse_strict(bytes: &[u8]) -> Result<Value, StrictError> {
    serde_json::from_slice::<Strict>(bytes).map(|s| s.0).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => StrictError::Invalid(e),
        _ if e.to_string().starts_with("recursion limit") => StrictError::Invalid(e),
        _ => StrictError::Syntax(e),
    })
}

struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Strict, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicate key '{key}'")));
            }
            let Strict(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_keys_are_refused_at_any_depth() {
        assert_eq!(parse_strict(br#"{"a": [1, {"b": null}], "c": 1.5}"#).unwrap()["a"][1]["b"], Value::Null);
        let e = parse_strict(br#"{"id": "/a", "id": "/b"}"#).unwrap_err();
        assert!(matches!(e, StrictError::Invalid(_)) && e.to_string().contains("duplicate key 'id'"), "{e}");
        let e = parse_strict(br#"{"x": [{"k": 1, "k": 2}]}"#).unwrap_err();
        assert!(matches!(e, StrictError::Invalid(_)), "{e}");
    }

    #[test]
    fn syntax_errors_and_deep_nesting_are_told_apart_without_overflowing() {
        assert!(matches!(parse_strict(b"{not json"), Err(StrictError::Syntax(_))));
        assert!(matches!(parse_strict(b""), Err(StrictError::Syntax(_))));
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(parse_strict(deep.as_bytes()), Err(StrictError::Invalid(_))));
    }
}

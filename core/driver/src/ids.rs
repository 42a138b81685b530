//! Identifier newtypes. Each is parsed and validated once, at the edge, so the rest of the code can trust it.
//!
//! Task ids end up in file names on agents (sandboxes and checkpoints), so every id is restricted to a
//! conservative character set and may not start with a dot.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// The longest id accepted, in bytes.
pub const MAX_ID_LEN: usize = 200;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} must not be empty")]
    Empty { kind: &'static str },
    #[error("{kind} '{value}' is longer than {MAX_ID_LEN} bytes")]
    TooLong { kind: &'static str, value: String },
    #[error("{kind} '{value}' may only contain letters, digits and . _ - : @ + and must not start with a dot")]
    BadCharacter { kind: &'static str, value: String },
}

fn validate(kind: &'static str, value: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if value.len() > MAX_ID_LEN {
        return Err(IdError::TooLong { kind, value: value.to_owned() });
    }
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "._-:@+".contains(c);
    if value.starts_with('.') || !value.chars().all(ok_char) {
        return Err(IdError::BadCharacter { kind, value: value.to_owned() });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates `value` as this kind of id.
            pub fn parse(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                validate($kind, &value)?;
                Ok(Self(value))
            }

            /// A fresh, random id.
            pub fn generate() -> Self {
                Self(uuid::Uuid::new_v4().to_string())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// An agent, assigned by the master on first registration and kept by the agent across restarts.
    AgentId,
    "agent id"
);
id_type!(
    /// A framework, assigned by the master on first SUBSCRIBE and persisted in the store.
    FrameworkId,
    "framework id"
);
id_type!(
    /// An offer; only valid until it is accepted, declined or rescinded.
    OfferId,
    "offer id"
);
id_type!(
    /// A task, chosen by its framework and unique within it.
    TaskId,
    "task id"
);

impl OfferId {
    /// Offer ids are made often, so they are a master-wide prefix and a counter rather than a UUID.
    pub fn sequential(prefix: &str, n: u64) -> Self {
        Self(format!("{prefix}-O{n}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_ids() {
        for ok in ["web.1", "ct:1700000000:0:job", "a-b_c@d+e", "0"] {
            TaskId::parse(ok).unwrap();
        }
    }

    #[test]
    fn rejects_ids_unsafe_as_file_names() {
        for bad in ["", "a/b", "..", ".hidden", "sp ace", "tab\t", "é"] {
            assert!(TaskId::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(TaskId::parse("x".repeat(MAX_ID_LEN + 1)).is_err());
    }

    #[test]
    fn deserializing_validates() {
        assert!(serde_json::from_str::<AgentId>("\"a/b\"").is_err());
        assert_eq!(serde_json::from_str::<AgentId>("\"a1\"").unwrap().as_str(), "a1");
    }
}

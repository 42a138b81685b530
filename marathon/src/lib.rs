//! The services framework (Marathon-compatible). Built in issue 4; nothing here yet.

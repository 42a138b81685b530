//! Query strings as the REST APIs of Keel's frameworks read them: repeated keys kept (`embed=a&embed=b`),
//! and booleans as Marathon and Metronome clients send them (`true`, `True`, `false`, `False`).

/// The query's parameters, in order; repeated keys are kept.
pub fn pairs(raw: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.unwrap_or("").as_bytes()).into_owned().collect()
}

/// The first value of `key`.
pub fn param<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// A boolean parameter, false when absent; the error says what was wrong, for a 400 answer.
pub fn flag(pairs: &[(String, String)], key: &str) -> Result<bool, String> {
    match param(pairs, key) {
        None => Ok(false),
        Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
        Some(v) => Err(format!("query parameter {key} must be true or false, got '{v}'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_keys_and_booleans() {
        let p = pairs(Some("embed=a&embed=b&force=True&x=%2Fprod"));
        assert_eq!(param(&p, "embed"), Some("a"));
        assert_eq!(p.iter().filter(|(k, _)| k == "embed").count(), 2);
        assert_eq!(param(&p, "x"), Some("/prod"));
        assert_eq!(flag(&p, "force"), Ok(true));
        assert_eq!(flag(&p, "missing"), Ok(false));
        assert!(flag(&pairs(Some("force=yes")), "force").unwrap_err().contains("got 'yes'"));
    }
}

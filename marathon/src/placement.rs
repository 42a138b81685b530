//! Placement constraints, as a pure function: may one more instance of an app go on this agent, given where
//! its other instances are?
//!
//! Operators: UNIQUE, CLUSTER, GROUP_BY, LIKE, UNLIKE, MAX_PER and IS; fields: `hostname` and any agent
//! attribute. An agent that lacks an attribute fails every constraint on it except UNLIKE.

use std::collections::HashMap;

/// What a constraint sees of an agent: its hostname and attributes.
pub struct Place<'a> {
    pub hostname: &'a str,
    pub attributes: &'a [(String, String)],
}

impl Place<'_> {
    fn field(&self, name: &str) -> Option<&str> {
        if name == "hostname" {
            return Some(self.hostname);
        }
        self.attributes.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Whether an instance may be placed at `candidate`, given the places of the app's current instances.
/// Returns the first violated constraint, for "why is my app waiting".
pub fn check(constraints: &[Vec<String>], candidate: &Place<'_>, existing: &[Place<'_>]) -> Result<(), String> {
    for c in constraints {
        let (Some(field), Some(op)) = (c.first(), c.get(1)) else { continue };
        let value = c.get(2).map(String::as_str);
        let here = candidate.field(field);
        let describe = || format!("{field}:{op}{}", value.map(|v| format!(":{v}")).unwrap_or_default());
        let full_match = |pattern: &str, s: &str| whole_match(pattern, s);
        let ok = match op.as_str() {
            "UNIQUE" => here.is_some_and(|h| existing.iter().all(|e| e.field(field) != Some(h))),
            "CLUSTER" => match (here, value) {
                (Some(h), Some(v)) => h == v,
                (Some(h), None) => existing.iter().all(|e| e.field(field) == Some(h)),
                (None, _) => false,
            },
            "IS" => here.is_some_and(|h| Some(h) == value),
            "LIKE" => here.is_some_and(|h| value.is_some_and(|v| full_match(v, h))),
            "UNLIKE" => here.is_none_or(|h| value.is_none_or(|v| !full_match(v, h))),
            "MAX_PER" => {
                let max: usize = value.and_then(|v| v.parse().ok()).unwrap_or(usize::MAX);
                here.is_some_and(|h| existing.iter().filter(|e| e.field(field) == Some(h)).count() < max)
            }
            "GROUP_BY" => match here {
                None => false,
                Some(h) => {
                    // Spread evenly: place here only if this value has no more instances than the least used
                    // value seen so far (values with none count as zero).
                    let mut counts: HashMap<&str, usize> = HashMap::new();
                    for e in existing {
                        if let Some(v) = e.field(field) {
                            *counts.entry(v).or_default() += 1;
                        }
                    }
                    let here_count = counts.get(h).copied().unwrap_or(0);
                    let groups: usize = value.and_then(|v| v.parse().ok()).unwrap_or(0);
                    let min = if counts.len() < groups || counts.is_empty() {
                        0
                    } else {
                        counts.values().copied().min().unwrap_or(0)
                    };
                    here_count <= min
                }
            },
            _ => true,
        };
        if !ok {
            return Err(describe());
        }
    }
    Ok(())
}

/// A small regular-expression matcher for LIKE/UNLIKE covering what constraints use in practice: literals,
/// `.`, `*` after an atom, alternation with `|` at the top level, and character classes like `[a-z]`. The
/// whole value must match.
fn whole_match(pattern: &str, s: &str) -> bool {
    pattern.split('|').any(|alt| matches_here(alt.as_bytes(), s.as_bytes()))
}

fn atom_len(p: &[u8]) -> usize {
    if p.first() == Some(&b'[') { p.iter().position(|&c| c == b']').map_or(1, |i| i + 1) } else { 1 }
}

fn atom_matches(atom: &[u8], c: u8) -> bool {
    match atom {
        [b'.'] => true,
        [b'[', inner @ .., b']'] => {
            let mut i = 0;
            while i < inner.len() {
                if i + 2 < inner.len() && inner[i + 1] == b'-' {
                    if inner[i] <= c && c <= inner[i + 2] {
                        return true;
                    }
                    i += 3;
                } else {
                    if inner[i] == c {
                        return true;
                    }
                    i += 1;
                }
            }
            false
        }
        [a] => *a == c,
        _ => false,
    }
}

fn matches_here(p: &[u8], s: &[u8]) -> bool {
    if p.is_empty() {
        return s.is_empty();
    }
    let n = atom_len(p);
    let atom = &p[..n];
    if p.get(n) == Some(&b'*') {
        let rest = &p[n + 1..];
        let mut i = 0;
        loop {
            if matches_here(rest, &s[i..]) {
                return true;
            }
            if i < s.len() && atom_matches(atom, s[i]) {
                i += 1;
            } else {
                return false;
            }
        }
    }
    !s.is_empty() && atom_matches(atom, s[0]) && matches_here(&p[n..], &s[1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|s| s.to_string()).collect()
    }

    fn attrs(rack: &str) -> Vec<(String, String)> {
        vec![("rack".into(), rack.into())]
    }

    #[test]
    fn unique_max_per_and_cluster() {
        let a1 = attrs("r1");
        let a2 = attrs("r2");
        let h1 = Place { hostname: "h1", attributes: &a1 };
        let h2 = Place { hostname: "h2", attributes: &a2 };
        let h1b = Place { hostname: "h1", attributes: &a1 };
        assert!(check(&[c(&["hostname", "UNIQUE"])], &h2, &[h1b]).is_ok());
        let h1b = Place { hostname: "h1", attributes: &a1 };
        assert_eq!(check(&[c(&["hostname", "UNIQUE"])], &h1, &[h1b]), Err("hostname:UNIQUE".into()));
        let e = [Place { hostname: "x", attributes: &a1 }];
        assert!(check(&[c(&["rack", "MAX_PER", "2"])], &h1, &e).is_ok());
        let e = [Place { hostname: "x", attributes: &a1 }, Place { hostname: "y", attributes: &a1 }];
        assert!(check(&[c(&["rack", "MAX_PER", "2"])], &h1, &e).is_err());
        assert!(check(&[c(&["rack", "CLUSTER", "r2"])], &h2, &[]).is_ok());
        assert!(check(&[c(&["rack", "CLUSTER", "r2"])], &h1, &[]).is_err());
        let e = [Place { hostname: "x", attributes: &a1 }];
        assert!(check(&[c(&["rack", "CLUSTER"])], &h2, &e).is_err(), "CLUSTER without a value sticks to the first");
        assert!(check(&[c(&["rack", "IS", "r1"])], &h1, &[]).is_ok());
        assert!(check(&[c(&["zone", "IS", "a"])], &h1, &[]).is_err(), "a missing attribute fails");
    }

    #[test]
    fn like_unlike_and_group_by() {
        let a1 = attrs("rack-12");
        let p = Place { hostname: "web-3.example", attributes: &a1 };
        assert!(check(&[c(&["hostname", "LIKE", "web-[0-9].*"])], &p, &[]).is_ok());
        assert!(check(&[c(&["hostname", "LIKE", "web"])], &p, &[]).is_err(), "LIKE matches the whole value");
        assert!(check(&[c(&["rack", "UNLIKE", "rack-1[0-9]|rack-2"])], &p, &[]).is_err());
        assert!(check(&[c(&["rack", "UNLIKE", "rack-2.*"])], &p, &[]).is_ok());
        let (r1, r2) = (attrs("r1"), attrs("r2"));
        let existing = [Place { hostname: "a", attributes: &r1 }];
        let on_r1 = Place { hostname: "b", attributes: &r1 };
        let on_r2 = Place { hostname: "c", attributes: &r2 };
        assert!(check(&[c(&["rack", "GROUP_BY", "2"])], &on_r1, &existing).is_err());
        assert!(check(&[c(&["rack", "GROUP_BY", "2"])], &on_r2, &existing).is_ok());
    }
}

//! Resources: cpus, memory, disk and port ranges, with exact arithmetic.
//!
//! Scalars are kept in thousandths (as Mesos does) so that offering, launching and recovering resources
//! many times never drifts through floating-point rounding. The text form is Mesos's:
//! `cpus:4;mem:8192;disk:20000;ports:[31000-32000,33000-33100]`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A non-negative quantity in thousandths of a unit (a millicpu, a kilobyte of a megabyte).
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Scalar(i64);

impl Scalar {
    pub const ZERO: Scalar = Scalar(0);

    /// Rounds to the nearest thousandth; negative and non-finite values become an error.
    pub fn from_f64(value: f64) -> Result<Scalar, ResourceError> {
        if !value.is_finite() || !(0.0..=1e15).contains(&value) {
            return Err(ResourceError::BadValue(value.to_string()));
        }
        Ok(Scalar((value * 1000.0).round() as i64))
    }

    pub fn as_f64(self) -> f64 {
        self.0 as f64 / 1000.0
    }

    pub fn milli(self) -> i64 {
        self.0
    }
}

impl std::ops::Add for Scalar {
    type Output = Scalar;
    fn add(self, rhs: Scalar) -> Scalar {
        Scalar(self.0 + rhs.0)
    }
}

impl std::ops::Sub for Scalar {
    type Output = Scalar;
    /// Saturates at zero: resources are never negative.
    fn sub(self, rhs: Scalar) -> Scalar {
        Scalar((self.0 - rhs.0).max(0))
    }
}

/// A set of ports as sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct PortSet(Vec<(u16, u16)>);

impl PortSet {
    /// Builds a set from arbitrary ranges, merging overlaps.
    pub fn from_ranges(ranges: impl IntoIterator<Item = (u16, u16)>) -> Result<PortSet, ResourceError> {
        let mut v: Vec<(u16, u16)> = Vec::new();
        for (b, e) in ranges {
            if b > e {
                return Err(ResourceError::BadValue(format!("port range {b}-{e} ends before it begins")));
            }
            v.push((b, e));
        }
        v.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::with_capacity(v.len());
        for (b, e) in v {
            match merged.last_mut() {
                Some(last) if u32::from(b) <= u32::from(last.1) + 1 => last.1 = last.1.max(e),
                _ => merged.push((b, e)),
            }
        }
        Ok(PortSet(merged))
    }

    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.iter().map(|(b, e)| usize::from(e - b) + 1).sum()
    }

    /// Every port, lowest first.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        self.0.iter().flat_map(|&(b, e)| b..=e)
    }

    pub fn contains_port(&self, port: u16) -> bool {
        self.0.iter().any(|&(b, e)| b <= port && port <= e)
    }

    pub fn contains(&self, other: &PortSet) -> bool {
        other.0.iter().all(|&(ob, oe)| self.0.iter().any(|&(b, e)| b <= ob && oe <= e))
    }

    pub fn union(&self, other: &PortSet) -> PortSet {
        PortSet::from_ranges(self.0.iter().chain(other.0.iter()).copied()).unwrap_or_default()
    }

    /// The ports of `self` that are not in `other`.
    pub fn difference(&self, other: &PortSet) -> PortSet {
        let mut out = Vec::new();
        for &(b, e) in &self.0 {
            let mut start = u32::from(b);
            let end = u32::from(e);
            for &(ob, oe) in &other.0 {
                let (ob, oe) = (u32::from(ob), u32::from(oe));
                if oe < start || ob > end {
                    continue;
                }
                if ob > start {
                    out.push((start as u16, (ob - 1) as u16));
                }
                start = start.max(oe + 1);
            }
            if start <= end {
                out.push((start as u16, end as u16));
            }
        }
        PortSet(out)
    }
}

impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, (b, e)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{b}-{e}")?;
        }
        f.write_str("]")
    }
}

impl fmt::Debug for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a resource string or value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    #[error("invalid resource value '{0}'")]
    BadValue(String),
    #[error("unknown resource '{0}' (known: cpus, mem, disk, ports)")]
    UnknownName(String),
    #[error("resource entry '{0}' is not NAME:VALUE")]
    BadEntry(String),
}

/// A bundle of resources: what an agent has, what an offer holds, what a task needs.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Resources {
    pub cpus: Scalar,
    /// Megabytes.
    pub mem: Scalar,
    /// Megabytes.
    pub disk: Scalar,
    pub ports: PortSet,
}

impl Resources {
    pub fn new(cpus: f64, mem: f64, disk: f64) -> Result<Resources, ResourceError> {
        Ok(Resources {
            cpus: Scalar::from_f64(cpus)?,
            mem: Scalar::from_f64(mem)?,
            disk: Scalar::from_f64(disk)?,
            ports: PortSet::default(),
        })
    }

    pub fn with_ports(mut self, ports: PortSet) -> Resources {
        self.ports = ports;
        self
    }

    pub fn is_empty(&self) -> bool {
        self.cpus == Scalar::ZERO && self.mem == Scalar::ZERO && self.disk == Scalar::ZERO && self.ports.is_empty()
    }

    /// Whether every part of `other` fits inside `self`.
    pub fn contains(&self, other: &Resources) -> bool {
        self.cpus >= other.cpus && self.mem >= other.mem && self.disk >= other.disk && self.ports.contains(&other.ports)
    }

    pub fn add(&mut self, other: &Resources) {
        self.cpus = self.cpus + other.cpus;
        self.mem = self.mem + other.mem;
        self.disk = self.disk + other.disk;
        if !other.ports.is_empty() {
            self.ports = self.ports.union(&other.ports);
        }
    }

    /// Removes `other`, saturating at zero. Callers check [`Resources::contains`] first where it matters.
    pub fn subtract(&mut self, other: &Resources) {
        self.cpus = self.cpus - other.cpus;
        self.mem = self.mem - other.mem;
        self.disk = self.disk - other.disk;
        if !other.ports.is_empty() {
            self.ports = self.ports.difference(&other.ports);
        }
    }

    pub fn plus(&self, other: &Resources) -> Resources {
        let mut r = self.clone();
        r.add(other);
        r
    }

    pub fn minus(&self, other: &Resources) -> Resources {
        let mut r = self.clone();
        r.subtract(other);
        r
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cpus:{};mem:{};disk:{}", self.cpus.as_f64(), self.mem.as_f64(), self.disk.as_f64())?;
        if !self.ports.is_empty() {
            write!(f, ";ports:{}", self.ports)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Resources {
    type Err = ResourceError;

    /// Parses `cpus:4;mem:8192;disk:20000;ports:[31000-32000]`. Missing names are zero.
    fn from_str(s: &str) -> Result<Resources, ResourceError> {
        let mut r = Resources::default();
        for entry in s.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, value) = entry.split_once(':').ok_or_else(|| ResourceError::BadEntry(entry.to_owned()))?;
            let value = value.trim();
            let scalar = || {
                value.parse::<f64>().map_err(|_| ResourceError::BadValue(value.to_owned())).and_then(Scalar::from_f64)
            };
            match name.trim() {
                "cpus" => r.cpus = scalar()?,
                "mem" => r.mem = scalar()?,
                "disk" => r.disk = scalar()?,
                "ports" => r.ports = parse_port_ranges(value)?,
                other => return Err(ResourceError::UnknownName(other.to_owned())),
            }
        }
        Ok(r)
    }
}

fn parse_port_ranges(value: &str) -> Result<PortSet, ResourceError> {
    let bad = || ResourceError::BadValue(value.to_owned());
    let inner = value.strip_prefix('[').and_then(|v| v.strip_suffix(']')).ok_or_else(bad)?;
    let mut ranges = Vec::new();
    for part in inner.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (b, e) = part.split_once('-').unwrap_or((part, part));
        let b: u16 = b.trim().parse().map_err(|_| bad())?;
        let e: u16 = e.trim().parse().map_err(|_| bad())?;
        ranges.push((b, e));
    }
    PortSet::from_ranges(ranges)
}

/// The JSON form used by the operator API and checkpoints: numbers for scalars, Mesos's text for ports.
#[derive(Serialize, Deserialize)]
struct ResourcesJson {
    cpus: f64,
    mem: f64,
    disk: f64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    ports: String,
}

impl Serialize for Resources {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ResourcesJson {
            cpus: self.cpus.as_f64(),
            mem: self.mem.as_f64(),
            disk: self.disk.as_f64(),
            ports: if self.ports.is_empty() { String::new() } else { self.ports.to_string() },
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Resources {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let j = ResourcesJson::deserialize(d)?;
        let e = serde::de::Error::custom;
        let mut r = Resources::new(j.cpus, j.mem, j.disk).map_err(e)?;
        if !j.ports.is_empty() {
            r.ports = parse_port_ranges(&j.ports).map_err(serde::de::Error::custom)?;
        }
        Ok(r)
    }
}

/// Parses agent attributes: `rack:r1;zone:a`.
pub fn parse_attributes(s: &str) -> Result<Vec<(String, String)>, ResourceError> {
    s.split(';')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (k, v) = e.split_once(':').ok_or_else(|| ResourceError::BadEntry(e.to_owned()))?;
            if k.trim().is_empty() {
                return Err(ResourceError::BadEntry(e.to_owned()));
            }
            Ok((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_mesos_text() {
        let r: Resources = "cpus:4;mem:8192;disk:20000;ports:[31000-32000,33000-33000]".parse().unwrap();
        assert_eq!(r.cpus.as_f64(), 4.0);
        assert_eq!(r.ports.len(), 1002);
        assert_eq!(r.to_string(), "cpus:4;mem:8192;disk:20000;ports:[31000-32000,33000-33000]");
    }

    #[test]
    fn rejects_bad_text() {
        for bad in ["cpus", "cpus:-1", "cpus:x", "gpus:1", "ports:31000-32000", "ports:[2-1]", "mem:NaN"] {
            assert!(bad.parse::<Resources>().is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn arithmetic_is_exact() {
        let tenth: Resources = "cpus:0.1".parse().unwrap();
        let mut sum = Resources::default();
        for _ in 0..10 {
            sum.add(&tenth);
        }
        assert_eq!(sum.cpus, Scalar::from_f64(1.0).unwrap());
        for _ in 0..10 {
            sum.subtract(&tenth);
        }
        assert!(sum.is_empty());
    }

    #[test]
    fn port_difference_and_containment() {
        let all = PortSet::from_ranges([(100, 200)]).unwrap();
        let some = PortSet::from_ranges([(100, 100), (150, 160), (200, 200)]).unwrap();
        let rest = all.difference(&some);
        assert_eq!(rest.ranges(), &[(101, 149), (161, 199)]);
        assert!(all.contains(&some));
        assert!(!rest.contains(&some));
        assert_eq!(rest.union(&some), all);
    }

    #[test]
    fn json_round_trip() {
        let r: Resources = "cpus:0.5;mem:64;ports:[1-3]".parse().unwrap();
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Resources>(&j).unwrap(), r);
    }

    #[test]
    fn attributes() {
        let a = parse_attributes("rack:r1; zone:a").unwrap();
        assert_eq!(a, vec![("rack".into(), "r1".into()), ("zone".into(), "a".into())]);
        assert!(parse_attributes("rack").is_err());
    }
}

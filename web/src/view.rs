//! The console's decisions, apart from any I/O: paging and sorting, how states read, diffs of versions and
//! the layout of the job dependency graph. Pure, and tested as such.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Rows per page of a list.
pub const PAGE_SIZE: usize = 50;

/// Which page of how many.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    /// 1-based.
    pub number: usize,
    pub pages: usize,
    pub total: usize,
    pub start: usize,
    pub end: usize,
}

/// The rows of page `number` (1-based, clamped) of `total` rows.
pub fn page(total: usize, number: usize) -> Page {
    let pages = total.div_ceil(PAGE_SIZE).max(1);
    let number = number.clamp(1, pages);
    let start = ((number - 1) * PAGE_SIZE).min(total);
    Page { number, pages, total, start, end: (start + PAGE_SIZE).min(total) }
}

/// A sort order from a query string: `name` or `-name` (descending), for one of `allowed` columns; the
/// first allowed column when absent or unknown.
pub fn sort_order<'a>(raw: Option<&str>, allowed: &[&'a str]) -> (&'a str, bool) {
    let raw = raw.unwrap_or("");
    let (desc, name) = match raw.strip_prefix('-') {
        Some(n) => (true, n),
        None => (false, raw),
    };
    match allowed.iter().find(|a| **a == name) {
        Some(a) => (a, desc),
        None => (allowed[0], false),
    }
}

/// How a state reads: a CSS tone and a glyph, so that it never rests on colour alone.
pub fn tone(state: &str) -> (&'static str, &'static str) {
    match state {
        "TASK_RUNNING" | "active" | "SUCCESS" | "healthy" | "connected" | "running" | "enabled" => ("ok", "●"),
        "TASK_FINISHED" | "finished" => ("ok", "✓"),
        "TASK_STAGING" | "TASK_STARTING" | "TASK_KILLING" | "STARTING" | "INITIAL" | "ACTIVE" | "staged"
        | "deploying" | "waiting" | "recovering" => ("info", "◐"),
        "TASK_KILLED" | "disabled" | "suspended" | "disconnected" | "SKIPPED" | "never run" | "removed" => {
            ("muted", "○")
        }
        "TASK_UNREACHABLE" | "unreachable" | "unhealthy" | "delayed" => ("warn", "▲"),
        _ => ("bad", "✕"),
    }
}

/// A state without Mesos's `TASK_` prefix, in lower case: `TASK_RUNNING` reads `running`.
pub fn state_word(state: &str) -> String {
    state.trim_start_matches("TASK_").to_lowercase().replace('_', " ")
}

/// A size in MiB as people read it.
pub fn mib(m: f64) -> String {
    if m >= 1024.0 { format!("{:.1} GiB", m / 1024.0) } else { format!("{m:.0} MiB") }
}

/// Seconds as people read them: `4 s`, `3 min`, `2 h`, `5 d`.
pub fn ago(seconds: f64) -> String {
    let s = seconds.max(0.0);
    if s < 90.0 {
        format!("{s:.0} s")
    } else if s < 5400.0 {
        format!("{:.0} min", s / 60.0)
    } else if s < 172_800.0 {
        format!("{:.0} h", s / 3600.0)
    } else {
        format!("{:.0} d", s / 86400.0)
    }
}

/// Seconds since the epoch as an ISO 8601 UTC time, to the second.
pub fn iso(seconds: f64) -> String {
    if !seconds.is_finite() || seconds <= 0.0 {
        return "—".into();
    }
    let secs = seconds as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The share of `used` in `total`, 0 to 100.
pub fn percent(used: f64, total: f64) -> f64 {
    if total <= 0.0 { 0.0 } else { (used / total * 100.0).clamp(0.0, 100.0) }
}

/// One line of a diff.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiffLine {
    Same(String),
    Removed(String),
    Added(String),
}

/// The line diff of two texts (the `similar` crate's Myers diff).
pub fn diff(old: &str, new: &str) -> Vec<DiffLine> {
    similar::TextDiff::from_lines(old, new)
        .iter_all_changes()
        .map(|c| {
            let line = c.value().trim_end_matches('\n').to_owned();
            match c.tag() {
                similar::ChangeTag::Equal => DiffLine::Same(line),
                similar::ChangeTag::Delete => DiffLine::Removed(line),
                similar::ChangeTag::Insert => DiffLine::Added(line),
            }
        })
        .collect()
}

/// Where a job sits in the dependency picture.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub id: String,
    pub x: f64,
    pub y: f64,
}

/// The dependency graph laid out in layers: a job with no parents is in layer 0, a child one layer below
/// its deepest parent. Returns the nodes, the edges (parent, child) that both exist, and the picture's
/// width and height. Cycles (which the API refuses) cannot hang it: a job's layer is bounded by the count.
pub fn layout(parents: &BTreeMap<String, Vec<String>>) -> (Vec<Node>, Vec<(String, String)>, f64, f64) {
    const W: f64 = 180.0;
    const H: f64 = 80.0;
    let n = parents.len();
    let mut layer: HashMap<&str, usize> = parents.keys().map(|k| (k.as_str(), 0)).collect();
    for _ in 0..n {
        let mut changed = false;
        for (child, ps) in parents {
            let deepest = ps.iter().filter_map(|p| layer.get(p.as_str())).max().map(|d| d + 1).unwrap_or(0);
            let d = deepest.min(n);
            if layer[child.as_str()] != d {
                layer.insert(child.as_str(), d);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut rows: BTreeMap<usize, BTreeSet<&str>> = BTreeMap::new();
    for (id, d) in &layer {
        rows.entry(*d).or_default().insert(id);
    }
    let widest = rows.values().map(BTreeSet::len).max().unwrap_or(0);
    let mut nodes = vec![];
    for (d, ids) in &rows {
        for (i, id) in ids.iter().enumerate() {
            nodes.push(Node { id: (*id).to_owned(), x: 20.0 + i as f64 * W, y: 20.0 + *d as f64 * H });
        }
    }
    let edges = parents
        .iter()
        .flat_map(|(c, ps)| ps.iter().filter(|p| parents.contains_key(*p)).map(move |p| (p.clone(), c.clone())))
        .collect();
    let width = 40.0 + widest as f64 * W;
    let height = 40.0 + rows.len() as f64 * H;
    (nodes, edges, width, height)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_clamped() {
        assert_eq!(page(0, 1), Page { number: 1, pages: 1, total: 0, start: 0, end: 0 });
        assert_eq!(page(120, 3), Page { number: 3, pages: 3, total: 120, start: 100, end: 120 });
        assert_eq!(page(120, 99).number, 3);
        assert_eq!(page(120, 0).number, 1);
    }

    #[test]
    fn sort_orders() {
        assert_eq!(sort_order(Some("-mem"), &["id", "mem"]), ("mem", true));
        assert_eq!(sort_order(Some("nope"), &["id", "mem"]), ("id", false));
        assert_eq!(sort_order(None, &["id"]), ("id", false));
    }

    #[test]
    fn states_read_in_words_and_glyphs() {
        assert_eq!(tone("TASK_RUNNING"), ("ok", "●"));
        assert_eq!(tone("TASK_LOST"), ("bad", "✕"));
        assert_eq!(state_word("TASK_RUNNING"), "running");
        assert_eq!(mib(2048.0), "2.0 GiB");
        assert_eq!(ago(3.2), "3 s");
        assert_eq!(iso(1_790_000_000.0), "2026-09-21 14:13:20Z");
        assert_eq!(percent(5.0, 0.0), 0.0);
    }

    #[test]
    fn diffs_show_what_changed() {
        let d = diff("a\nb\nc\n", "a\nB\nc\n");
        assert_eq!(
            d,
            vec![
                DiffLine::Same("a".into()),
                DiffLine::Removed("b".into()),
                DiffLine::Added("B".into()),
                DiffLine::Same("c".into())
            ]
        );
    }

    #[test]
    fn graphs_are_layered_and_survive_cycles() {
        let mut g = BTreeMap::new();
        g.insert("a".to_owned(), vec![]);
        g.insert("b".to_owned(), vec!["a".to_owned()]);
        g.insert("c".to_owned(), vec!["a".to_owned(), "b".to_owned(), "gone".to_owned()]);
        let (nodes, edges, _, h) = layout(&g);
        let y = |id: &str| nodes.iter().find(|n| n.id == id).unwrap().y;
        assert!(y("a") < y("b") && y("b") < y("c"));
        assert_eq!(edges.len(), 3, "the missing parent is left out");
        assert!(h > 0.0);
        let mut cyclic = BTreeMap::new();
        cyclic.insert("x".to_owned(), vec!["y".to_owned()]);
        cyclic.insert("y".to_owned(), vec!["x".to_owned()]);
        assert_eq!(layout(&cyclic).0.len(), 2);
    }
}

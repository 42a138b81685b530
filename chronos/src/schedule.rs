//! When jobs fire: cron expressions in an IANA time zone, and Chronos's ISO 8601 repeating intervals.
//!
//! Everything here is pure: a [`Schedule`] answers "what is the first fire time after `t`", and [`due`]
//! decides, for a stretch of time the scheduler did not watch, which tick still runs and which were
//! missed. Nothing reads a clock.
//!
//! Daylight saving is where cron implementations go wrong, so the rules are spelled out:
//! - a wall-clock time that a spring-forward gap skips fires once, at the first instant after the gap;
//! - a fixed wall-clock time that a fall-back overlap repeats fires once, at its first occurrence;
//! - interval schedules fire in strictly increasing order of real time.
//!
//! Cron matching is croner's, which implements the first two (the `cron` crate does not; see
//! ARCHITECTURE.md). Repeating intervals are computed here: calendar parts of the period (years, months,
//! weeks, days) move the wall clock in the schedule's zone, time parts (hours, minutes, seconds) move real
//! time, and each occurrence is computed from the start, never by accumulating, so nothing drifts.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

/// Why a schedule cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("invalid cron expression '{expr}': {reason}")]
    Cron { expr: String, reason: String },
    #[error("unknown time zone '{0}': use an IANA name such as Europe/Berlin or UTC")]
    TimeZone(String),
    #[error("invalid ISO 8601 repeating interval '{expr}': {reason}")]
    Interval { expr: String, reason: String },
}

/// Parses an IANA time zone name; empty means UTC.
pub fn parse_time_zone(name: &str) -> Result<Tz, ScheduleError> {
    let name = name.trim();
    if name.is_empty() {
        return Ok(Tz::UTC);
    }
    Tz::from_str(name).map_err(|_| ScheduleError::TimeZone(name.to_owned()))
}

/// A schedule, parsed and ready to compute fire times.
#[derive(Clone, Debug)]
pub enum Schedule {
    Cron(Box<CronSchedule>),
    Interval(RepeatingInterval),
}

impl Schedule {
    /// The first fire time strictly after `t`, or `None` when the schedule has ended.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Cron(c) => c.next_after(t),
            Schedule::Interval(i) => i.next_after(t),
        }
    }

    /// The next `n` fire times after `t`.
    pub fn preview(&self, t: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        let mut at = t;
        while out.len() < n {
            match self.next_after(at) {
                Some(next) => {
                    out.push(next);
                    at = next;
                }
                None => break,
            }
        }
        out
    }

    pub fn time_zone(&self) -> Tz {
        match self {
            Schedule::Cron(c) => c.tz,
            Schedule::Interval(i) => i.tz,
        }
    }
}

/// A cron expression (5 fields, or 6 with seconds first; `L`, `W`, `#` and the `@daily`-style macros) in
/// a time zone.
#[derive(Clone, Debug)]
pub struct CronSchedule {
    cron: croner::Cron,
    tz: Tz,
}

impl CronSchedule {
    pub fn parse(expr: &str, time_zone: &str) -> Result<CronSchedule, ScheduleError> {
        let tz = parse_time_zone(time_zone)?;
        let bad = |reason: String| ScheduleError::Cron { expr: expr.to_owned(), reason };
        let trimmed = expr.trim();
        let normalized = match trimmed.to_ascii_lowercase().as_str() {
            "@midnight" => "@daily".to_owned(),
            "@reboot" => return Err(bad("@reboot has no fire times in a scheduler".into())),
            _ => trimmed.to_owned(),
        };
        if !normalized.starts_with('@') {
            let fields = normalized.split_whitespace().count();
            if !(5..=6).contains(&fields) {
                return Err(bad(format!("expected 5 fields (or 6 with seconds first), found {fields}")));
            }
        }
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .year(croner::parser::Year::Disallowed)
            .build()
            .parse(&normalized)
            .map_err(|e| bad(e.to_string().trim_end_matches('.').to_owned()))?;
        let schedule = CronSchedule { cron, tz };
        // A pattern such as "0 0 31 2 *" parses but never fires: say so now rather than never running.
        if schedule.next_after(Utc::now()).is_none() {
            return Err(bad("it never fires".into()));
        }
        Ok(schedule)
    }

    fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.tz);
        self.cron.find_next_occurrence(&local, false).ok().map(|d| d.with_timezone(&Utc))
    }
}

/// The longest period a repeating interval may have.
const MAX_PERIOD_YEARS: u32 = 100;

/// An ISO 8601 duration, split into the parts that move the calendar and the parts that move the clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Period {
    pub months: u32,
    pub days: u32,
    /// Hours, minutes and seconds, in milliseconds.
    pub millis: u64,
}

impl Period {
    fn is_zero(&self) -> bool {
        self.months == 0 && self.days == 0 && self.millis == 0
    }

    /// A rough length, for estimating how many periods fit in a span.
    fn approx_millis(&self) -> f64 {
        self.months as f64 * 30.436_875 * 86_400_000.0 + self.days as f64 * 86_400_000.0 + self.millis as f64
    }
}

impl FromStr for Period {
    type Err = String;

    /// `P1Y2M3W4DT5H6M7.5S` and any subset of its parts.
    fn from_str(s: &str) -> Result<Period, String> {
        let body = s.strip_prefix('P').ok_or("a duration starts with P")?;
        let (date, time) = match body.split_once('T') {
            Some((d, "")) => return Err(format!("'{d}T' has nothing after T")),
            Some((d, t)) => (d, Some(t)),
            None => (body, None),
        };
        let mut p = Period::default();
        let mut parts = |text: &str, units: &[char], in_time: bool| -> Result<(), String> {
            let mut num = String::new();
            for c in text.chars() {
                if c.is_ascii_digit() || c == '.' {
                    num.push(c);
                    continue;
                }
                if num.is_empty() || !units.contains(&c) {
                    return Err(format!("unexpected '{c}'"));
                }
                let value: f64 = num.parse().map_err(|_| format!("'{num}' is not a number"))?;
                let too_long = || format!("'{s}' is longer than {MAX_PERIOD_YEARS} years");
                let whole = |unit: u32| -> Result<u32, String> {
                    if value.fract() != 0.0 || value > 1e6 {
                        return Err(format!("'{num}{c}' must be a whole number"));
                    }
                    (value as u32).checked_mul(unit).ok_or_else(too_long)
                };
                let clock = |unit: f64| -> Result<u64, String> {
                    let ms = value * unit;
                    if ms > (MAX_PERIOD_YEARS as f64) * 366.0 * 86_400_000.0 { Err(too_long()) } else { Ok(ms as u64) }
                };
                match (in_time, c) {
                    (false, 'Y') => p.months += whole(12)?,
                    (false, 'M') => p.months += whole(1)?,
                    (false, 'W') => p.days += whole(7)?,
                    (false, 'D') => p.days += whole(1)?,
                    (true, 'H') => p.millis += clock(3_600_000.0)?,
                    (true, 'M') => p.millis += clock(60_000.0)?,
                    (true, 'S') => p.millis += clock(1000.0)?,
                    _ => return Err(format!("unexpected '{c}'")),
                }
                num.clear();
            }
            if !num.is_empty() {
                return Err(format!("'{num}' has no unit"));
            }
            Ok(())
        };
        parts(date, &['Y', 'M', 'W', 'D'], false)?;
        if let Some(t) = time {
            parts(t, &['H', 'M', 'S'], true)?;
        }
        if p.is_zero() {
            return Err("the period must be longer than zero".into());
        }
        if p.months > MAX_PERIOD_YEARS * 12 || p.days > MAX_PERIOD_YEARS * 366 {
            return Err(format!("'{s}' is longer than {MAX_PERIOD_YEARS} years"));
        }
        Ok(p)
    }
}

/// Chronos's schedule: `R[n]/start/period`. `R` alone repeats forever; `Rn` fires `n` times.
#[derive(Clone, Debug)]
pub struct RepeatingInterval {
    /// How many times it fires; `None` is forever.
    pub repeats: Option<u64>,
    pub start: DateTime<Utc>,
    pub period: Period,
    tz: Tz,
}

impl RepeatingInterval {
    /// Parses `expr`. With a `time_zone`, the start's wall-clock time is read in that zone (its offset, if
    /// any, is dropped, as Chronos does); an empty start is `now`.
    pub fn parse(expr: &str, time_zone: &str, now: DateTime<Utc>) -> Result<RepeatingInterval, ScheduleError> {
        let tz = parse_time_zone(time_zone)?;
        let bad = |reason: &str| ScheduleError::Interval { expr: expr.to_owned(), reason: reason.to_owned() };
        let mut parts = expr.trim().split('/');
        let (Some(r), Some(start), Some(period), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("expected R[n]/start/period, such as R/2026-01-01T00:00:00Z/PT1H"));
        };
        let repeats = match r.strip_prefix('R') {
            Some("") => None,
            Some(n) => Some(n.parse::<u64>().map_err(|_| bad("the repetition count after R must be a number"))?),
            None => return Err(bad("it must start with R")),
        };
        let zone_named = !time_zone.trim().is_empty();
        let start = if start.is_empty() {
            now
        } else if let Ok(t) = DateTime::parse_from_rfc3339(start) {
            // As Chronos does, a named zone keeps the start's wall-clock fields and replaces its offset.
            if zone_named {
                resolve_local(&tz, t.naive_local()).ok_or_else(|| bad("the start cannot be placed in the time zone"))?
            } else {
                t.with_timezone(&Utc)
            }
        } else {
            let naive = NaiveDateTime::parse_from_str(start, "%Y-%m-%dT%H:%M:%S")
                .or_else(|_| NaiveDateTime::parse_from_str(start, "%Y-%m-%dT%H:%M:%S%.f"))
                .or_else(|_| NaiveDateTime::parse_from_str(start, "%Y-%m-%dT%H:%M"))
                .map_err(|_| bad("the start is not a date-time such as 2026-01-01T00:00:00Z"))?;
            resolve_local(&tz, naive).ok_or_else(|| bad("the start cannot be placed in the time zone"))?
        };
        let period: Period = period.parse().map_err(|e: String| bad(&format!("period: {e}")))?;
        if period.months == 0 && period.days == 0 && period.millis < 1000 {
            return Err(bad("period: it must be at least one second"));
        }
        Ok(RepeatingInterval { repeats, start, period, tz })
    }

    /// The `k`-th occurrence (the start is the 0th).
    fn occurrence(&self, k: u64) -> Option<DateTime<Utc>> {
        let k32 = u32::try_from(k).ok();
        let calendar = if self.period.months == 0 && self.period.days == 0 {
            self.start
        } else {
            let local = self.start.with_timezone(&self.tz).naive_local();
            let moved = local
                .checked_add_months(chrono::Months::new(self.period.months.checked_mul(k32?)?))?
                .checked_add_days(chrono::Days::new(u64::from(self.period.days).checked_mul(k)?))?;
            resolve_local(&self.tz, moved)?
        };
        let clock = chrono::TimeDelta::try_milliseconds(i64::try_from(self.period.millis.checked_mul(k)?).ok()?)?;
        calendar.checked_add_signed(clock)
    }

    fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let end = self.repeats;
        let within = |k: u64| end.is_none_or(|n| k < n);
        if t < self.start {
            return within(0).then_some(self.start);
        }
        // Estimate how many periods have passed, step back to one not after `t`, then forward.
        let elapsed = (t - self.start).num_milliseconds() as f64;
        let mut k = (elapsed / self.period.approx_millis()).floor() as u64;
        while k > 0 && self.occurrence(k).is_none_or(|o| o > t) {
            k -= 1;
        }
        loop {
            if !within(k) {
                return None;
            }
            let o = self.occurrence(k)?;
            if o > t {
                return Some(o);
            }
            k += 1;
        }
    }
}

/// The instant a wall-clock time in `tz` stands for: the earlier one in an overlap, and the first instant
/// after the gap for a time a gap skips.
pub fn resolve_local(tz: &Tz, naive: NaiveDateTime) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
        LocalResult::Ambiguous(a, b) => Some(a.min(b).with_timezone(&Utc)),
        LocalResult::None => {
            // Step forward a minute at a time out of the gap (gaps are at most a few hours), then back a
            // second at a time to the gap's end.
            let mut probe = naive;
            for _ in 0..(26 * 60) {
                probe += chrono::TimeDelta::minutes(1);
                if let Some(after) = tz.from_local_datetime(&probe).earliest() {
                    let mut first = after;
                    for s in 1..60 {
                        match tz.from_local_datetime(&(probe - chrono::TimeDelta::seconds(s))).earliest() {
                            Some(earlier) => first = earlier,
                            None => break,
                        }
                    }
                    return Some(first.with_timezone(&Utc));
                }
            }
            None
        }
    }
}

/// What to do with the ticks of a schedule that fell in `(after, now]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// The latest tick, when it can still start within the starting deadline.
    pub run: Option<DateTime<Utc>>,
    /// Ticks recorded as missed, oldest first (at most `max_missed` of them, the newest).
    pub missed: Vec<DateTime<Utc>>,
    /// How many ticks were missed in all.
    pub missed_total: u64,
}

/// Which ticks of `schedule` in `(after, now]` run and which were missed. Only the latest can run, and only
/// if `now` is within `deadline` of it: ticks missed while Keel was down are not replayed.
pub fn due(
    schedule: &Schedule,
    after: DateTime<Utc>,
    now: DateTime<Utc>,
    deadline: Duration,
    max_missed: usize,
) -> Due {
    let mut out = Due::default();
    let mut ticks = std::collections::VecDeque::new();
    let mut at = after;
    while let Some(t) = schedule.next_after(at) {
        if t > now {
            break;
        }
        ticks.push_back(t);
        if ticks.len() > max_missed + 1 {
            ticks.pop_front();
            out.missed_total += 1;
        }
        at = t;
    }
    if let Some(latest) = ticks.pop_back() {
        let late = (now - latest).to_std().unwrap_or_default();
        if late <= deadline {
            out.run = Some(latest);
        } else {
            ticks.push_back(latest);
        }
    }
    out.missed_total += ticks.len() as u64;
    out.missed = ticks.into();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn cron(expr: &str, tz: &str) -> Schedule {
        Schedule::Cron(Box::new(CronSchedule::parse(expr, tz).unwrap()))
    }

    fn local(s: &Schedule, t: DateTime<Utc>) -> String {
        t.with_timezone(&s.time_zone()).format("%Y-%m-%d %H:%M:%S %Z").to_string()
    }

    #[test]
    fn five_and_six_fields_and_macros() {
        let s = cron("*/15 * * * *", "UTC");
        assert_eq!(s.next_after(utc("2026-01-01T10:07:00Z")), Some(utc("2026-01-01T10:15:00Z")));
        let s = cron("*/10 * * * * *", "UTC");
        assert_eq!(s.next_after(utc("2026-01-01T10:07:03Z")), Some(utc("2026-01-01T10:07:10Z")));
        let s = cron("@daily", "UTC");
        assert_eq!(s.next_after(utc("2026-01-01T10:07:00Z")), Some(utc("2026-01-02T00:00:00Z")));
        let s = cron("@midnight", "UTC");
        assert_eq!(s.next_after(utc("2026-01-01T10:07:00Z")), Some(utc("2026-01-02T00:00:00Z")));
        let s = cron("@hourly", "UTC");
        assert_eq!(s.next_after(utc("2026-01-01T10:07:00Z")), Some(utc("2026-01-01T11:00:00Z")));
    }

    #[test]
    fn last_weekday_and_nth() {
        // The last day of February 2026.
        let s = cron("0 12 L * *", "UTC");
        assert_eq!(s.next_after(utc("2026-02-10T00:00:00Z")), Some(utc("2026-02-28T12:00:00Z")));
        // The weekday nearest the 15th of August 2026 (a Saturday) is Friday the 14th.
        let s = cron("0 9 15W * *", "UTC");
        assert_eq!(s.next_after(utc("2026-08-01T00:00:00Z")), Some(utc("2026-08-14T09:00:00Z")));
        // The second Friday of March 2026 is the 13th.
        let s = cron("0 9 * * 5#2", "UTC");
        assert_eq!(s.next_after(utc("2026-03-01T00:00:00Z")), Some(utc("2026-03-13T09:00:00Z")));
    }

    #[test]
    fn bad_expressions_and_zones_say_why() {
        let e = CronSchedule::parse("61 * * * *", "UTC").unwrap_err();
        assert!(matches!(e, ScheduleError::Cron { .. }), "{e}");
        let e = CronSchedule::parse("* * * *", "UTC").unwrap_err();
        assert!(e.to_string().contains("expected 5 fields"), "{e}");
        let e = CronSchedule::parse("0 0 0 1 1 * 2030", "UTC").unwrap_err();
        assert!(e.to_string().contains("found 7"), "{e}");
        let e = CronSchedule::parse("0 0 31 2 *", "UTC").unwrap_err();
        assert!(e.to_string().contains("never fires"), "{e}");
        let e = CronSchedule::parse("* * * * *", "Mars/Olympus").unwrap_err();
        assert_eq!(e, ScheduleError::TimeZone("Mars/Olympus".into()));
    }

    #[test]
    fn spring_forward_gap_fires_once_at_the_first_instant_after_it() {
        // Berlin skips 02:00-03:00 on 2026-03-29; New York skips 02:00-03:00 on 2026-03-08.
        for (tz, day_before, gap_end, next_day) in [
            ("Europe/Berlin", "2026-03-28T01:30:00Z", "2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"),
            ("America/New_York", "2026-03-07T07:30:00Z", "2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"),
        ] {
            let s = cron("30 2 * * *", tz);
            let fires = s.preview(utc(day_before), 2);
            assert_eq!(
                fires,
                vec![utc(gap_end), utc(next_day)],
                "{tz}: {:?}",
                fires.iter().map(|t| local(&s, *t)).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn fall_back_overlap_fires_a_fixed_time_once() {
        // Berlin repeats 02:00-03:00 on 2026-10-25; New York repeats 01:00-02:00 on 2026-11-01.
        for (tz, expr, from, first, next_day) in [
            ("Europe/Berlin", "30 2 * * *", "2026-10-24T12:00:00Z", "2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"),
            ("America/New_York", "30 1 * * *", "2026-10-31T12:00:00Z", "2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"),
        ] {
            let s = cron(expr, tz);
            let fires = s.preview(utc(from), 2);
            assert_eq!(
                fires,
                vec![utc(first), utc(next_day)],
                "{tz}: {:?}",
                fires.iter().map(|t| local(&s, *t)).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn interval_cron_keeps_real_time_order_across_transitions() {
        for (tz, from) in [("Europe/Berlin", "2026-10-24T22:00:00Z"), ("America/New_York", "2026-03-08T04:00:00Z")] {
            let s = cron("*/30 * * * *", tz);
            let fires = s.preview(utc(from), 16);
            assert!(fires.windows(2).all(|w| w[0] < w[1]), "{tz}: {fires:?}");
        }
    }

    #[test]
    fn repeating_intervals() {
        let now = utc("2026-01-01T00:00:00Z");
        let s = Schedule::Interval(RepeatingInterval::parse("R3/2026-01-01T00:00:00Z/PT1H", "", now).unwrap());
        assert_eq!(
            s.preview(utc("2025-12-31T00:00:00Z"), 5),
            vec![utc("2026-01-01T00:00:00Z"), utc("2026-01-01T01:00:00Z"), utc("2026-01-01T02:00:00Z")]
        );
        let s = Schedule::Interval(RepeatingInterval::parse("R/2026-01-01T00:00:00Z/PT90M", "UTC", now).unwrap());
        assert_eq!(s.next_after(utc("2026-03-01T00:10:00Z")), Some(utc("2026-03-01T01:30:00Z")));
        let s = Schedule::Interval(RepeatingInterval::parse("R/2026-01-31T08:00:00Z/P1M", "UTC", now).unwrap());
        // Months are calendar months; the 31st clamps to the month's last day.
        assert_eq!(
            s.preview(utc("2026-01-31T08:00:00Z"), 2),
            vec![utc("2026-02-28T08:00:00Z"), utc("2026-03-31T08:00:00Z")]
        );
        for bad in [
            "R/2026-01-01T00:00:00Z/PT0.5S",
            "R/2026-01-01T00:00:00Z/P400000000Y",
            "R/2026-01-01T00:00:00Z/PT99999999999H",
            "R/2026-01-01T00:00:00Z",
            "X/2026-01-01T00:00:00Z/PT1H",
            "R/yesterday/PT1H",
            "R/2026-01-01T00:00:00Z/PT0S",
            "R/2026-01-01T00:00:00Z/P1H",
            "Rx/2026-01-01T00:00:00Z/PT1H",
        ] {
            assert!(RepeatingInterval::parse(bad, "UTC", now).is_err(), "{bad}");
        }
    }

    #[test]
    fn daily_intervals_keep_wall_clock_time_and_order_across_dst() {
        let now = utc("2026-01-01T00:00:00Z");
        // 02:30 every day in Berlin: the gap day fires at 03:00, the overlap day once at the first 02:30.
        let s =
            Schedule::Interval(RepeatingInterval::parse("R/2026-03-27T02:30:00/P1D", "Europe/Berlin", now).unwrap());
        let fires = s.preview(utc("2026-03-27T00:00:00Z"), 4);
        let shown: Vec<String> = fires.iter().map(|t| local(&s, *t)).collect();
        assert_eq!(
            shown,
            [
                "2026-03-27 02:30:00 CET",
                "2026-03-28 02:30:00 CET",
                "2026-03-29 03:00:00 CEST",
                "2026-03-30 02:30:00 CEST"
            ]
        );
        let s =
            Schedule::Interval(RepeatingInterval::parse("R/2026-10-31T01:30:00/P1D", "America/New_York", now).unwrap());
        let fires = s.preview(utc("2026-10-31T00:00:00Z"), 3);
        assert_eq!(fires, vec![utc("2026-10-31T05:30:00Z"), utc("2026-11-01T05:30:00Z"), utc("2026-11-02T06:30:00Z")]);
        // An hourly interval is real time: 25 distinct, ordered fires over the 25-hour day.
        let s = Schedule::Interval(
            RepeatingInterval::parse("R/2026-11-01T00:00:00/PT1H", "America/New_York", now).unwrap(),
        );
        let fires = s.preview(utc("2026-11-01T00:00:00Z"), 25);
        assert!(fires.windows(2).all(|w| w[1] - w[0] == chrono::TimeDelta::hours(1)));
    }

    #[test]
    fn downtime_runs_at_most_the_latest_tick() {
        let s = cron("* * * * *", "UTC");
        let after = utc("2026-01-01T10:00:00Z");
        // Down for an hour; back 20 s after the latest tick with a 60 s deadline: it runs, 59 are missed.
        let d = due(&s, after, utc("2026-01-01T11:00:20Z"), Duration::from_secs(60), 100);
        assert_eq!(d.run, Some(utc("2026-01-01T11:00:00Z")));
        assert_eq!(d.missed_total, 59);
        assert_eq!(d.missed.len(), 59);
        assert_eq!(d.missed.first(), Some(&utc("2026-01-01T10:01:00Z")));
        // Past the deadline, even the latest is missed.
        let d = due(&s, after, utc("2026-01-01T11:00:20Z"), Duration::from_secs(10), 100);
        assert_eq!((d.run, d.missed_total), (None, 60));
        // Only the newest missed ticks are listed when there are many.
        let d = due(&s, after, utc("2026-01-02T10:00:00Z"), Duration::from_secs(60), 10);
        assert_eq!(d.run, Some(utc("2026-01-02T10:00:00Z")));
        assert_eq!((d.missed.len(), d.missed_total), (10, 1439));
        assert_eq!(d.missed.last(), Some(&utc("2026-01-02T09:59:00Z")));
        // Nothing due.
        assert_eq!(due(&s, after, utc("2026-01-01T10:00:30Z"), Duration::from_secs(60), 10), Due::default());
    }
}

//! Time handling with the `hubble` CLI's syntax: Go durations (`--timeout 5s`,
//! `--since 1h43m`), the absolute time formats `--since`/`--until` accept, and
//! Go layouts for `--time-format` (always printed in UTC).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use periscope_proto::util::calendar::{civil_from_days, days_from_civil, days_in_month};
use prost_types::Timestamp;

/// Seconds of 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z: the range a
/// protobuf `Timestamp` may hold (`timestamppb.CheckValid`).
const MIN_SECONDS: i64 = -62_135_596_800;
const MAX_SECONDS: i64 = 253_402_300_799;

/// The default `--time-format`: Go's `time.StampMilli`.
pub const STAMP_MILLI: &str = "Jan _2 15:04:05.000";

/// Parses a Go duration (`time.ParseDuration`): an optional sign, then one or
/// more decimal numbers with a unit each (`ns`, `us`/`µs`/`μs`, `ms`, `s`, `m`,
/// `h`), e.g. `300ms`, `1.5h`, `1h43m`, `-2s`. `0` alone is allowed.
/// Returns signed nanoseconds.
pub fn parse_go_duration(text: &str) -> Result<i128, String> {
    let invalid = || format!("time: invalid duration {text:?}");
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after) = rest.split_at(int_len);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(after) => {
                let len = after.bytes().take_while(u8::is_ascii_digit).count();
                after.split_at(len)
            }
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid());
        }
        let unit_len = after
            .char_indices()
            .find(|&(_, c)| c == '.' || c.is_ascii_digit())
            .map_or(after.len(), |(i, _)| i);
        let (unit, after) = after.split_at(unit_len);
        let scale: i128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(format!("time: missing unit in duration {text:?}")),
            _ => return Err(format!("time: unknown unit {unit:?} in duration {text:?}")),
        };
        let int: i128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| invalid())?
        };
        let mut value = int.checked_mul(scale).ok_or_else(invalid)?;
        // Fractional digits beyond nanosecond precision are dropped, as Go does.
        let mut unit_scale = scale;
        for digit in frac_part.bytes() {
            unit_scale /= 10;
            value += i128::from(digit - b'0') * unit_scale;
        }
        total = total.checked_add(value).ok_or_else(invalid)?;
        if total > i128::from(i64::MAX) {
            return Err(invalid());
        }
        rest = after;
    }
    Ok(if negative { -total } else { total })
}

/// A non-negative Go duration as a [`Duration`] (for `--timeout` and friends).
pub fn parse_duration_flag(text: &str) -> Result<Duration, String> {
    let nanos = parse_go_duration(text)?;
    u64::try_from(nanos)
        .map(Duration::from_nanos)
        .map_err(|_| format!("duration must not be negative: {text:?}"))
}

/// Reads a `--since`/`--until` value: a Go duration meaning "that long before
/// `now`" (`3s`, `4m`, `1h43m`), or an absolute time in one of the formats the
/// hubble CLI accepts: `2006-01-02`, `2006-01-02T15Z07:00`,
/// `2006-01-02T15:04Z07:00`, RFC 3339 with or without fractional seconds, and
/// RFC 1123 with a numeric zone (`Mon, 02 Jan 2006 15:04:05 -0700`).
pub fn parse_time(text: &str, now: SystemTime) -> Result<Timestamp, String> {
    if let Ok(nanos) = parse_go_duration(text) {
        let now = system_time_nanos(now);
        return Ok(timestamp_from_nanos(now - nanos));
    }
    parse_absolute(text)
        .or_else(|| parse_rfc1123z(text))
        .ok_or_else(|| format!("failed to convert {text} to time"))
}

/// Validity as `timestamppb.CheckValid` sees it.
pub fn timestamp_is_valid(ts: &Timestamp) -> bool {
    (MIN_SECONDS..=MAX_SECONDS).contains(&ts.seconds) && (0..1_000_000_000).contains(&ts.nanos)
}

fn system_time_nanos(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

fn timestamp_from_nanos(nanos: i128) -> Timestamp {
    Timestamp {
        seconds: nanos.div_euclid(1_000_000_000) as i64,
        nanos: nanos.rem_euclid(1_000_000_000) as i32,
    }
}

/// `YYYY-MM-DD` alone (UTC midnight), or followed by `T` and `HH`, `HH:MM` or
/// `HH:MM:SS[.frac]` and a zone (`Z` or `±hh:mm`).
fn parse_absolute(text: &str) -> Option<Timestamp> {
    let b = text.as_bytes();
    let year = digits(b, 0, 4)?;
    let month = digits(b, 5, 2)?;
    let day = digits(b, 8, 2)?;
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    check_date(year, month, day)?;
    let date_seconds = days_from_civil(year, month, day) * 86_400;
    if b.len() == 10 {
        return Some(Timestamp {
            seconds: date_seconds,
            nanos: 0,
        });
    }
    if b.get(10) != Some(&b'T') {
        return None;
    }
    let hour = digits(b, 11, 2)?;
    let mut at = 13;
    let mut minute = 0;
    let mut second = 0;
    let mut nanos = 0;
    if b.get(at) == Some(&b':') {
        minute = digits(b, at + 1, 2)?;
        at += 3;
        if b.get(at) == Some(&b':') {
            second = digits(b, at + 1, 2)?;
            at += 3;
            if matches!(b.get(at), Some(b'.' | b',')) {
                let start = at + 1;
                let len = b[start..].iter().take_while(|c| c.is_ascii_digit()).count();
                if len == 0 || len > 9 {
                    return None;
                }
                nanos = digits(b, start, len)? * 10i64.pow(9 - len as u32);
                at = start + len;
            }
        }
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let offset = zone(&b[at..])?;
    let seconds = date_seconds + hour * 3600 + minute * 60 + second - offset;
    Some(Timestamp {
        seconds,
        nanos: nanos as i32,
    })
}

/// `Z` or `±hh:mm` filling the rest of the input, as seconds east of UTC.
fn zone(b: &[u8]) -> Option<i64> {
    match b {
        [b'Z'] => Some(0),
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (h, m) = (digits(b, 1, 2)?, digits(b, 4, 2)?);
            (h <= 23 && m <= 59).then(|| {
                let offset = h * 3600 + m * 60;
                if *sign == b'-' { -offset } else { offset }
            })
        }
        _ => None,
    }
}

/// `Mon, 02 Jan 2006 15:04:05 -0700`.
fn parse_rfc1123z(text: &str) -> Option<Timestamp> {
    let b = text.as_bytes();
    if b.len() != 31 || &b[3..5] != b", " {
        return None;
    }
    WEEKDAYS.iter().position(|d| d.as_bytes()[..3] == b[0..3])?;
    let day = digits(b, 5, 2)?;
    let month = MONTHS
        .iter()
        .position(|m| m.as_bytes()[..3] == b[8..11])
        .map(|m| m as i64 + 1)?;
    let year = digits(b, 12, 4)?;
    let hour = digits(b, 17, 2)?;
    let minute = digits(b, 20, 2)?;
    let second = digits(b, 23, 2)?;
    let zh = digits(b, 27, 2)?;
    let zm = digits(b, 29, 2)?;
    let separators = [
        (7, b' '),
        (11, b' '),
        (16, b' '),
        (19, b':'),
        (22, b':'),
        (25, b' '),
    ];
    if separators.iter().any(|&(at, c)| b[at] != c) || !matches!(b[26], b'+' | b'-') {
        return None;
    }
    check_date(year, month, day)?;
    if hour > 23 || minute > 59 || second > 59 || zh > 23 || zm > 59 {
        return None;
    }
    let offset = (zh * 3600 + zm * 60) * if b[26] == b'-' { -1 } else { 1 };
    Some(Timestamp {
        seconds: days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
            - offset,
        nanos: 0,
    })
}

fn digits(b: &[u8], at: usize, len: usize) -> Option<i64> {
    b.get(at..at + len)?.iter().try_fold(0i64, |acc, d| {
        d.is_ascii_digit().then(|| acc * 10 + i64::from(d - b'0'))
    })
}

fn check_date(year: i64, month: i64, day: i64) -> Option<()> {
    ((1..=12).contains(&month) && day >= 1 && day <= days_in_month(year, month)).then_some(())
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

/// Resolves a `--time-format` value: a layout name the hubble CLI knows
/// (case-insensitive: `StampMilli`, `RFC3339`, `RFC3339Milli`, `RFC3339Micro`,
/// `RFC3339Nano`, `RFC1123Z`, plus Go's other `time` constants) or, like
/// hubble, any Go layout string used as is.
pub fn layout_for_name(name: &str) -> String {
    let layout = match name.to_ascii_lowercase().as_str() {
        "stampmilli" => STAMP_MILLI,
        "stamp" => "Jan _2 15:04:05",
        "stampmicro" => "Jan _2 15:04:05.000000",
        "stampnano" => "Jan _2 15:04:05.000000000",
        "rfc3339" => "2006-01-02T15:04:05Z07:00",
        "rfc3339milli" => "2006-01-02T15:04:05.999Z07:00",
        "rfc3339micro" => "2006-01-02T15:04:05.999999Z07:00",
        "rfc3339nano" => "2006-01-02T15:04:05.999999999Z07:00",
        "rfc1123z" => "Mon, 02 Jan 2006 15:04:05 -0700",
        "rfc1123" => "Mon, 02 Jan 2006 15:04:05 MST",
        "rfc822" => "02 Jan 06 15:04 MST",
        "rfc822z" => "02 Jan 06 15:04 -0700",
        "rfc850" => "Monday, 02-Jan-06 15:04:05 MST",
        "ansic" => "Mon Jan _2 15:04:05 2006",
        "unixdate" => "Mon Jan _2 15:04:05 MST 2006",
        "rubydate" => "Mon Jan 02 15:04:05 -0700 2006",
        "kitchen" => "3:04PM",
        "datetime" => "2006-01-02 15:04:05",
        "dateonly" => "2006-01-02",
        "timeonly" => "15:04:05",
        _ => name,
    };
    layout.to_owned()
}

/// Formats a timestamp in UTC with a Go layout, or `N/A` when it is unset or
/// outside the protobuf range (like the hubble CLI).
pub fn format_timestamp(ts: Option<&Timestamp>, layout: &str) -> String {
    match ts {
        Some(ts) if timestamp_is_valid(ts) => format_layout(ts, layout),
        _ => "N/A".to_owned(),
    }
}

/// One element of a Go layout (see `time/format.go`, `nextStdChunk`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    LongMonth,
    Month,
    NumMonth,
    ZeroMonth,
    LongWeekDay,
    WeekDay,
    Day,
    UnderDay,
    ZeroDay,
    UnderYearDay,
    ZeroYearDay,
    Hour,
    Hour12,
    ZeroHour12,
    Minute,
    ZeroMinute,
    Second,
    ZeroSecond,
    LongYear,
    Year,
    UpperPm,
    LowerPm,
    ZoneName,
    /// `Z07:00`-style (`Z` for UTC) or `-07:00`-style (`+00:00` for UTC);
    /// the text is the numeric form printed for UTC.
    Zone {
        iso: bool,
        utc: &'static str,
    },
    /// Fractional seconds: separator, digit count, trim trailing zeros (`.999`).
    Frac {
        sep: char,
        digits: usize,
        trim: bool,
    },
}

/// Splits a layout into literal text and [`Chunk`]s.
fn next_chunk(layout: &str) -> Option<(usize, Chunk, usize)> {
    let b = layout.as_bytes();
    let starts = |i: usize, s: &str| layout[i..].starts_with(s);
    for i in 0..b.len() {
        let found = match b[i] {
            b'J' if starts(i, "January") => Some((Chunk::LongMonth, 7)),
            b'J' if starts(i, "Jan") => Some((Chunk::Month, 3)),
            b'M' if starts(i, "Monday") => Some((Chunk::LongWeekDay, 6)),
            b'M' if starts(i, "Mon") => Some((Chunk::WeekDay, 3)),
            b'M' if starts(i, "MST") => Some((Chunk::ZoneName, 3)),
            b'0' if starts(i, "002") => Some((Chunk::ZeroYearDay, 3)),
            b'0' => match b.get(i + 1) {
                Some(b'1') => Some((Chunk::ZeroMonth, 2)),
                Some(b'2') => Some((Chunk::ZeroDay, 2)),
                Some(b'3') => Some((Chunk::ZeroHour12, 2)),
                Some(b'4') => Some((Chunk::ZeroMinute, 2)),
                Some(b'5') => Some((Chunk::ZeroSecond, 2)),
                Some(b'6') => Some((Chunk::Year, 2)),
                _ => None,
            },
            b'1' if starts(i, "15") => Some((Chunk::Hour, 2)),
            b'1' => Some((Chunk::NumMonth, 1)),
            b'2' if starts(i, "2006") => Some((Chunk::LongYear, 4)),
            b'2' => Some((Chunk::Day, 1)),
            b'_' if starts(i, "__2") => Some((Chunk::UnderYearDay, 3)),
            // `_2006` is a literal `_` followed by the year.
            b'_' if starts(i, "_2") && !starts(i, "_2006") => Some((Chunk::UnderDay, 2)),
            b'3' => Some((Chunk::Hour12, 1)),
            b'4' => Some((Chunk::Minute, 1)),
            b'5' => Some((Chunk::Second, 1)),
            b'P' if starts(i, "PM") => Some((Chunk::UpperPm, 2)),
            b'p' if starts(i, "pm") => Some((Chunk::LowerPm, 2)),
            b'-' | b'Z' => {
                let iso = b[i] == b'Z';
                [
                    ("070000", "000000"),
                    ("07:00:00", "00:00:00"),
                    ("0700", "0000"),
                    ("07:00", "00:00"),
                    ("07", "00"),
                ]
                .iter()
                .find(|(pattern, _)| layout[i + 1..].starts_with(pattern))
                .map(|(pattern, utc)| (Chunk::Zone { iso, utc }, pattern.len() + 1))
            }
            sep @ (b'.' | b',') => match b.get(i + 1) {
                Some(&digit @ (b'0' | b'9')) => {
                    let run = b[i + 1..].iter().take_while(|&&c| c == digit).count();
                    let next = b.get(i + 1 + run);
                    (!next.is_some_and(u8::is_ascii_digit)).then_some((
                        Chunk::Frac {
                            sep: char::from(sep),
                            digits: run,
                            trim: digit == b'9',
                        },
                        run + 1,
                    ))
                }
                _ => None,
            },
            _ => None,
        };
        if let Some((chunk, len)) = found {
            return Some((i, chunk, len));
        }
    }
    None
}

fn format_layout(ts: &Timestamp, layout: &str) -> String {
    let days = ts.seconds.div_euclid(86_400);
    let secs = ts.seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (secs / 3600, secs / 60 % 60, secs % 60);
    let year_day = days - days_from_civil(year, 1, 1) + 1;
    let weekday = (days + 4).rem_euclid(7) as usize;
    let hour12 = match hour % 12 {
        0 => 12,
        h => h,
    };

    let mut out = String::with_capacity(layout.len() + 8);
    let mut rest = layout;
    while let Some((at, chunk, len)) = next_chunk(rest) {
        out.push_str(&rest[..at]);
        match chunk {
            Chunk::LongMonth => out.push_str(MONTHS[month as usize - 1]),
            Chunk::Month => out.push_str(&MONTHS[month as usize - 1][..3]),
            Chunk::NumMonth => out.push_str(&month.to_string()),
            Chunk::ZeroMonth => out.push_str(&format!("{month:02}")),
            Chunk::LongWeekDay => out.push_str(WEEKDAYS[weekday]),
            Chunk::WeekDay => out.push_str(&WEEKDAYS[weekday][..3]),
            Chunk::Day => out.push_str(&day.to_string()),
            Chunk::UnderDay => out.push_str(&format!("{day:>2}")),
            Chunk::ZeroDay => out.push_str(&format!("{day:02}")),
            Chunk::UnderYearDay => out.push_str(&format!("{year_day:>3}")),
            Chunk::ZeroYearDay => out.push_str(&format!("{year_day:03}")),
            Chunk::Hour => out.push_str(&format!("{hour:02}")),
            Chunk::Hour12 => out.push_str(&hour12.to_string()),
            Chunk::ZeroHour12 => out.push_str(&format!("{hour12:02}")),
            Chunk::Minute => out.push_str(&minute.to_string()),
            Chunk::ZeroMinute => out.push_str(&format!("{minute:02}")),
            Chunk::Second => out.push_str(&second.to_string()),
            Chunk::ZeroSecond => out.push_str(&format!("{second:02}")),
            Chunk::LongYear => out.push_str(&format!("{year:04}")),
            Chunk::Year => out.push_str(&format!("{:02}", year % 100)),
            Chunk::UpperPm => out.push_str(if hour >= 12 { "PM" } else { "AM" }),
            Chunk::LowerPm => out.push_str(if hour >= 12 { "pm" } else { "am" }),
            Chunk::ZoneName => out.push_str("UTC"),
            Chunk::Zone { iso: true, .. } => out.push('Z'),
            Chunk::Zone { iso: false, utc } => {
                out.push('+');
                out.push_str(utc);
            }
            Chunk::Frac { sep, digits, trim } => {
                let text = format!("{:09}", ts.nanos);
                let mut text = &text[..digits.min(9)];
                if trim {
                    text = text.trim_end_matches('0');
                }
                if !text.is_empty() {
                    out.push(sep);
                    out.push_str(text);
                    if !trim {
                        // More than nine `0`s: Go pads with zeros.
                        out.extend(std::iter::repeat_n('0', digits.saturating_sub(9)));
                    }
                }
            }
        }
        rest = &rest[at + len..];
    }
    out.push_str(rest);
    out
}

/// Go's `time.Duration.String()` for whole seconds (`0s`, `45s`, `2m0s`,
/// `1h2m3s`), which `hubble list nodes` prints as the AGE.
pub fn go_duration_string(seconds: u64) -> String {
    let (h, m, s) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(seconds: i64, nanos: i32) -> Timestamp {
        Timestamp { seconds, nanos }
    }

    #[test]
    fn go_durations() {
        let ok = |t: &str| parse_go_duration(t).unwrap();
        assert_eq!(ok("0"), 0);
        assert_eq!(ok("3s"), 3_000_000_000);
        assert_eq!(ok("4m"), 240_000_000_000);
        assert_eq!(ok("1h43m"), (3600 + 43 * 60) * 1_000_000_000);
        assert_eq!(ok("1.5h"), 5_400_000_000_000);
        assert_eq!(ok(".5s"), 500_000_000);
        assert_eq!(ok("300ms"), 300_000_000);
        assert_eq!(ok("2us"), 2_000);
        assert_eq!(ok("2µs"), 2_000);
        assert_eq!(ok("7ns"), 7);
        assert_eq!(ok("-2s"), -2_000_000_000);
        assert_eq!(ok("+1m1s"), 61_000_000_000);
        for bad in ["", "s", "3", "1x", "1.s.", "-", "1h-2m", "2006-01-02", "."] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_duration_flag("5s"), Ok(Duration::from_secs(5)));
        assert!(parse_duration_flag("-5s").is_err());
    }

    #[test]
    fn since_until_values() {
        let now = UNIX_EPOCH + Duration::new(1_700_000_000, 500);
        let parse = |t: &str| parse_time(t, now).unwrap();
        assert_eq!(parse("3s"), ts(1_699_999_997, 500));
        assert_eq!(parse("1h43m"), ts(1_700_000_000 - 6180, 500));
        assert_eq!(parse("2023-11-14"), ts(1_699_920_000, 0));
        assert_eq!(parse("2023-11-14T22Z"), ts(1_699_999_200, 0));
        assert_eq!(parse("2023-11-14T22+01:00"), ts(1_699_995_600, 0));
        assert_eq!(parse("2023-11-14T22:13Z"), ts(1_699_999_980, 0));
        assert_eq!(parse("2023-11-14T22:13:20Z"), ts(1_700_000_000, 0));
        assert_eq!(
            parse("2023-11-14T22:13:20.123Z"),
            ts(1_700_000_000, 123_000_000)
        );
        assert_eq!(
            parse("2023-11-14T23:13:20.123456789+01:00"),
            ts(1_700_000_000, 123_456_789)
        );
        assert_eq!(
            parse("Tue, 14 Nov 2023 23:13:20 +0100"),
            ts(1_700_000_000, 0)
        );
        for bad in [
            "yesterday",
            "2023-11-14T22:13:20",
            "2023-13-01",
            "2023-02-30",
            "2023-11-14 22:13:20Z",
            "Tue, 14 Nov 2023 23:13:20 CET",
        ] {
            assert_eq!(
                parse_time(bad, now),
                Err(format!("failed to convert {bad} to time"))
            );
        }
    }

    #[test]
    fn layouts() {
        // 2023-11-04T09:05:07.012345678Z, a Saturday, day 308 of the year.
        let t = ts(1_699_088_707, 12_345_678);
        let f = |layout: &str| format_layout(&t, layout);
        assert_eq!(f(STAMP_MILLI), "Nov  4 09:05:07.012");
        assert_eq!(f(&layout_for_name("StampMilli")), "Nov  4 09:05:07.012");
        assert_eq!(f(&layout_for_name("rfc3339")), "2023-11-04T09:05:07Z");
        assert_eq!(
            f(&layout_for_name("RFC3339Nano")),
            "2023-11-04T09:05:07.012345678Z"
        );
        assert_eq!(
            f(&layout_for_name("RFC3339Milli")),
            "2023-11-04T09:05:07.012Z"
        );
        assert_eq!(
            f(&layout_for_name("RFC1123Z")),
            "Sat, 04 Nov 2023 09:05:07 +0000"
        );
        assert_eq!(f(&layout_for_name("Kitchen")), "9:05AM");
        assert_eq!(
            f("Monday January 2 2006 3:04:05 pm MST 002 __2 06 1"),
            "Saturday November 4 2023 9:05:07 am UTC 308 308 23 11"
        );
        assert_eq!(f("15:04:05,000000"), "09:05:07,012345");
        assert_eq!(f("_2006"), "_2023");
        assert_eq!(f("no tokens here"), "no tokens here");
        // `.999` trims zeros and disappears entirely on a whole second.
        assert_eq!(format_layout(&ts(0, 0), "05.999"), "00");
        assert_eq!(format_layout(&ts(0, 0), "05.000"), "00.000");
        assert_eq!(format_layout(&ts(0, 500_000_000), "05.999"), "00.5");
        assert_eq!(format_timestamp(None, STAMP_MILLI), "N/A");
        assert_eq!(
            format_timestamp(Some(&ts(MAX_SECONDS + 1, 0)), STAMP_MILLI),
            "N/A"
        );
        assert_eq!(
            format_timestamp(Some(&ts(1_700_000_000, 0)), STAMP_MILLI),
            "Nov 14 22:13:20.000"
        );
    }

    #[test]
    fn civil_round_trip() {
        for days in [-719_162, -1, 0, 59, 365, 10_957, 19_675, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn duration_strings() {
        assert_eq!(go_duration_string(0), "0s");
        assert_eq!(go_duration_string(45), "45s");
        assert_eq!(go_duration_string(120), "2m0s");
        assert_eq!(go_duration_string(3723), "1h2m3s");
        assert_eq!(go_duration_string(90_000), "25h0m0s");
    }
}

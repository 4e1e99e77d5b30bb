//! One StatsD line into its parts, without allocating: `name:value|type[|@rate][|#tags]`.
//!
//! The types are Etsy's (`c`, `g`, `ms`, `h`, `s`) and DogStatsD's (`d`); DogStatsD's tags
//! (`|#key:value,flag`), several values in one line (`name:1:2:3|ms`) and its other fields
//! (`|c:container`, `|T<timestamp>`, ignored) are accepted. DogStatsD's events (`_e{…}`) and
//! service checks (`_sc|…`) are not metrics: they are refused as [`ParseError::Unsupported`],
//! told apart from broken lines (docs/load-metrics.md). Anything else is an error that says
//! what was wrong, never a panic: the input is whatever an agent sends.

/// What a line measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `c`: adds to a count.
    Counter,
    /// `g`: sets a value; with an explicit `+`/`-` sign, changes it.
    Gauge,
    /// `ms`: a duration in milliseconds.
    Timer,
    /// `h`: a value in a histogram.
    Histogram,
    /// `d`: DogStatsD's distribution, aggregated like a histogram.
    Distribution,
    /// `s`: a value (any text) of a set, whose distinct values are counted per window.
    Set,
}

impl Kind {
    /// The type as written in a StatsD line.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "c",
            Kind::Gauge => "g",
            Kind::Timer => "ms",
            Kind::Histogram => "h",
            Kind::Distribution => "d",
            Kind::Set => "s",
        }
    }
}

/// A parsed line; borrows the datagram.
#[derive(Debug, Clone, PartialEq)]
pub struct Line<'a> {
    pub name: &'a [u8],
    /// The values, `:`-separated (one in plain StatsD); numbers except for a set.
    pub values: &'a [u8],
    pub kind: Kind,
    /// Sample rate in (0, 1]; 1 when absent.
    pub rate: f64,
    /// The tag list after `#`, comma-separated, empty when absent.
    pub tags: &'a [u8],
}

/// Why a line was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("no ':' between name and value")]
    NoValue,
    #[error("empty metric name")]
    EmptyName,
    #[error("no '|' before the type")]
    NoType,
    #[error("unknown metric type (expected c, g, ms, h, d or s)")]
    UnknownType,
    #[error("value is not a finite number")]
    BadValue,
    #[error("empty set value")]
    EmptySetValue,
    #[error("sample rate is not a number in (0, 1]")]
    BadRate,
    #[error("unknown field after the type")]
    BadField,
    /// Well-formed or not, a DogStatsD event or service check carries no metric.
    #[error("a DogStatsD event or service check, not a metric")]
    Unsupported,
}

/// Parses one line (without its newline).
pub fn parse_line(line: &[u8]) -> Result<Line<'_>, ParseError> {
    if line.starts_with(b"_e{") || line.starts_with(b"_sc|") {
        return Err(ParseError::Unsupported);
    }
    let colon = memchr::memchr(b':', line).ok_or(ParseError::NoValue)?;
    let name = &line[..colon];
    if name.is_empty() {
        return Err(ParseError::EmptyName);
    }
    let rest = &line[colon + 1..];
    let pipe = memchr::memchr(b'|', rest).ok_or(ParseError::NoType)?;
    let values = &rest[..pipe];
    let mut fields = rest[pipe + 1..].split(|&b| b == b'|');
    let kind = match fields.next().unwrap_or_default() {
        b"c" => Kind::Counter,
        b"g" => Kind::Gauge,
        b"ms" => Kind::Timer,
        b"h" => Kind::Histogram,
        b"d" => Kind::Distribution,
        b"s" => Kind::Set,
        _ => return Err(ParseError::UnknownType),
    };
    let mut rate = 1.0;
    let mut tags: &[u8] = &[];
    for field in fields {
        match field.split_first() {
            Some((b'@', text)) => {
                rate = parse_number(text).ok_or(ParseError::BadRate)?;
                if !(rate > 0.0 && rate <= 1.0) {
                    return Err(ParseError::BadRate);
                }
            }
            Some((b'#', text)) => tags = text,
            Some((b'T', _)) | Some((b'c', _)) | Some((b'e', _)) => {}
            _ => return Err(ParseError::BadField),
        }
    }
    let line = Line {
        name,
        values,
        kind,
        rate,
        tags,
    };
    // Every value is checked here, so the caller can trust `values()` and `set_values()`.
    if kind == Kind::Set {
        if line.set_values().any(<[u8]>::is_empty) {
            return Err(ParseError::EmptySetValue);
        }
    } else {
        for value in line.values() {
            value?;
        }
    }
    Ok(line)
}

/// One value of a line: the number, and whether it was written with a sign (a gauge delta).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Value {
    pub number: f64,
    pub signed: bool,
}

impl Line<'_> {
    /// The values of a set line, as sent: a set counts any text, numbers or not.
    pub fn set_values(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.values.split(|&b| b == b':')
    }

    /// The line's values in order, as numbers (for every kind but a set).
    pub fn values(&self) -> impl Iterator<Item = Result<Value, ParseError>> + '_ {
        self.values.split(|&b| b == b':').map(|text| {
            let signed = matches!(text.first(), Some(b'+' | b'-'));
            let number = parse_number(text).ok_or(ParseError::BadValue)?;
            Ok(Value { number, signed })
        })
    }

    /// The tags as (key, value) pairs; a tag without `:` has an empty value.
    pub fn tags(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.tags
            .split(|&b| b == b',')
            .filter(|tag| !tag.is_empty())
            .map(|tag| match memchr::memchr(b':', tag) {
                Some(at) => (&tag[..at], &tag[at + 1..]),
                None => (tag, &[][..]),
            })
    }
}

/// A finite decimal number; plain integers take a fast path (most StatsD values are).
fn parse_number(text: &[u8]) -> Option<f64> {
    let (negative, digits) = match text.split_first()? {
        (b'-', rest) => (true, rest),
        (b'+', rest) => (false, rest),
        _ => (false, text),
    };
    if !digits.is_empty() && digits.len() <= 15 && digits.iter().all(u8::is_ascii_digit) {
        let whole = digits
            .iter()
            .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
        let number = whole as f64;
        return Some(if negative { -number } else { number });
    }
    // Rust's float parser accepts "inf" and "nan", which are not StatsD values.
    if !digits
        .iter()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
    {
        return None;
    }
    let number: f64 = std::str::from_utf8(text).ok()?.parse().ok()?;
    number.is_finite().then_some(number)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> (Line<'_>, Vec<Value>) {
        let parsed = parse_line(line.as_bytes()).unwrap_or_else(|e| panic!("{line}: {e}"));
        let values = parsed.values().map(|v| v.expect("checked")).collect();
        (parsed, values)
    }

    #[test]
    fn parses_every_type_with_rate_and_tags() {
        let (line, values) = one("login.latency:12.5|ms|@0.1|#endpoint:login,region:eu");
        assert_eq!(line.name, b"login.latency");
        assert_eq!(line.kind, Kind::Timer);
        assert_eq!(line.rate, 0.1);
        assert_eq!(values[0].number, 12.5);
        let tags: Vec<_> = line.tags().collect();
        assert_eq!(
            tags,
            [(&b"endpoint"[..], &b"login"[..]), (b"region", b"eu")]
        );
        for (text, kind) in [
            ("a:1|c", Kind::Counter),
            ("a:1|g", Kind::Gauge),
            ("a:x|s", Kind::Set),
            ("a:1|h", Kind::Histogram),
            ("a:1|d", Kind::Distribution),
        ] {
            assert_eq!(
                parse_line(text.as_bytes()).map(|l| l.kind),
                Ok(kind),
                "{text}"
            );
        }
    }

    #[test]
    fn tells_gauge_deltas_from_values_and_reads_several_values() {
        let (_, values) = one("players:+5:-3:7|g");
        assert_eq!(
            values,
            [
                Value {
                    number: 5.0,
                    signed: true
                },
                Value {
                    number: -3.0,
                    signed: true
                },
                Value {
                    number: 7.0,
                    signed: false
                }
            ]
        );
    }

    #[test]
    fn ignores_dogstatsd_container_and_timestamp_fields_and_valueless_tags() {
        let (line, _) = one("a:1|c|#prod|c:abc123|T1700000000");
        assert_eq!(line.tags().collect::<Vec<_>>(), [(&b"prod"[..], &b""[..])]);
    }

    #[test]
    fn refuses_malformed_lines_with_the_reason() {
        for (text, err) in [
            ("nocolon", ParseError::NoValue),
            (":1|c", ParseError::EmptyName),
            ("a:1", ParseError::NoType),
            ("a:1|x", ParseError::UnknownType),
            ("a:1|sx", ParseError::UnknownType),
            ("a:|s", ParseError::EmptySetValue),
            ("a:x::y|s", ParseError::EmptySetValue),
            ("a:1|", ParseError::UnknownType),
            ("a:x|c", ParseError::BadValue),
            ("a:|c", ParseError::BadValue),
            ("a:inf|ms", ParseError::BadValue),
            ("a:NaN|ms", ParseError::BadValue),
            ("a:1e999|ms", ParseError::BadValue),
            ("a:1|c|@0", ParseError::BadRate),
            ("a:1|c|@2", ParseError::BadRate),
            ("a:1|c|@x", ParseError::BadRate),
            ("a:1|c|zz", ParseError::BadField),
            ("a:1|c||", ParseError::BadField),
        ] {
            assert_eq!(parse_line(text.as_bytes()), Err(err), "{text}");
        }
    }

    #[test]
    fn reads_set_values_as_text() {
        let line = parse_line(b"users:alice|s|#env:test").expect("a set");
        assert_eq!(line.kind, Kind::Set);
        assert_eq!(line.set_values().collect::<Vec<_>>(), [&b"alice"[..]]);
        let line = parse_line(b"maps:dust2:7:-1.5e3|s|@0.5").expect("several values");
        assert_eq!(
            line.set_values().collect::<Vec<_>>(),
            [&b"dust2"[..], b"7", b"-1.5e3"]
        );
    }

    /// What datadog 0.56's DogStatsd sends for `event()` and `service_check()`, and broken
    /// forms of them: all refused as unsupported, never as malformed metrics.
    #[test]
    fn refuses_dogstatsd_events_and_service_checks_as_unsupported() {
        for text in [
            &b"_e{6,21}:deploy|a new build\\nline two|t:info|#x:y,env:test"[..],
            b"_e{5,4}:title|text",
            b"_e{",
            b"_sc|game.up|0|#env:test|m:fine",
            b"_sc|",
        ] {
            assert_eq!(
                parse_line(text),
                Err(ParseError::Unsupported),
                "{}",
                String::from_utf8_lossy(text)
            );
        }
        assert_eq!(parse_line(b"_sc:1|c").map(|l| l.kind), Ok(Kind::Counter));
        assert_eq!(parse_line(b"_e:1|g").map(|l| l.kind), Ok(Kind::Gauge));
    }

    #[test]
    fn reads_large_and_fractional_numbers_exactly() {
        assert_eq!(
            one("a:1234567890123456789|c").1[0].number,
            1.2345678901234568e18
        );
        assert_eq!(one("a:0.001|ms").1[0].number, 0.001);
        assert_eq!(one("a:-2.5e3|g").1[0].number, -2500.0);
    }

    /// Garbage of every shape: random bytes, and valid lines cut and corrupted at every
    /// position. The parser must answer each with a line or an error, never panic.
    #[test]
    fn never_panics_on_garbage() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"ab:|@#,.-+0123456789e\xff\x00msgcdhT _{";
        for _ in 0..200_000 {
            let len = (next() % 40) as usize;
            let line: Vec<u8> = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            if let Ok(parsed) = parse_line(&line) {
                if parsed.kind == Kind::Set {
                    assert!(parsed.set_values().all(|v| !v.is_empty()));
                } else {
                    assert!(parsed.values().all(|v| v.is_ok()));
                }
                let _ = parsed.tags().count();
            }
        }
        let valid = b"game.login.latency:12.5:13|ms|@0.5|#endpoint:login,eu";
        for cut in 0..=valid.len() {
            let _ = parse_line(&valid[..cut]);
            for byte in [0u8, b':', b'|', b'@', b'#', 0xff] {
                let mut corrupt = valid.to_vec();
                if cut < corrupt.len() {
                    corrupt[cut] = byte;
                }
                let _ = parse_line(&corrupt);
            }
        }
    }
}

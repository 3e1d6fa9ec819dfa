//! Parsing and formatting of the deadline header families.
//!
//! - `grpc-timeout` (gRPC over HTTP/2 spec): `TimeoutValue TimeoutUnit`, 1 to 8 ASCII digits and one
//!   unit of `H` (hours) `M` (minutes) `S` (seconds) `m` (ms) `u` (µs) `n` (ns). We write the finest
//!   unit whose value fits in 8 digits (as grpc-go does), truncating, so the downstream never sees
//!   more time than is left.
//! - `l5d-ctx-deadline` (Linkerd 1 / Finagle's `Deadline` context): `"<timestamp_ns> <deadline_ns>"`,
//!   two decimal nanosecond counts since the Unix epoch, separated by one space. Linkerd 1 reads
//!   exactly two fields (the value is Finagle's two-field `Deadline`); we found no single-number form
//!   in Linkerd and reject it as malformed rather than guess its meaning.
//! - `x-envoy-expected-rq-timeout-ms` (Envoy): a decimal count of milliseconds.
//!
//! Parsers never panic; they return a [`HeaderError`] saying what is wrong and at which byte.

use std::time::Duration;

/// Maximum digits of a `grpc-timeout` value (gRPC spec).
pub const GRPC_TIMEOUT_MAX_DIGITS: usize = 8;

/// A deadline header that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The value is empty.
    #[error("empty value")]
    Empty,
    /// A byte that is not allowed at this position.
    #[error("unexpected byte {byte:#04x} at byte {offset}")]
    InvalidByte {
        /// The byte.
        byte: u8,
        /// Its offset in the value.
        offset: usize,
    },
    /// More digits than the format allows.
    #[error("{count} digits, at most {max} allowed")]
    TooManyDigits {
        /// Digits found.
        count: usize,
        /// Digits allowed.
        max: usize,
    },
    /// The `grpc-timeout` unit is missing.
    #[error("missing unit (one of H M S m u n) at byte {0}")]
    MissingUnit(usize),
    /// The number does not fit in 64 bits.
    #[error("number at byte {0} overflows 64 bits")]
    Overflow(usize),
    /// `l5d-ctx-deadline` needs two fields.
    #[error("expected \"<timestamp_ns> <deadline_ns>\", found {0} field(s)")]
    FieldCount(usize),
}

/// Parses a decimal `u64` of at most `max_digits` digits starting at `offset` (for error positions).
fn parse_u64(digits: &[u8], offset: usize, max_digits: usize) -> Result<u64, HeaderError> {
    if digits.is_empty() {
        return Err(HeaderError::Empty);
    }
    if digits.len() > max_digits {
        return Err(HeaderError::TooManyDigits {
            count: digits.len(),
            max: max_digits,
        });
    }
    let mut value: u64 = 0;
    for (i, &b) in digits.iter().enumerate() {
        if !b.is_ascii_digit() {
            return Err(HeaderError::InvalidByte {
                byte: b,
                offset: offset + i,
            });
        }
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .ok_or(HeaderError::Overflow(offset))?;
    }
    Ok(value)
}

/// Parses a `grpc-timeout` value.
pub fn parse_grpc_timeout(value: &[u8]) -> Result<Duration, HeaderError> {
    let Some((&unit, digits)) = value.split_last() else {
        return Err(HeaderError::Empty);
    };
    if unit.is_ascii_digit() {
        // All digits: either the unit is missing, or the digits are already too many.
        if value.len() > GRPC_TIMEOUT_MAX_DIGITS {
            return Err(HeaderError::TooManyDigits {
                count: value.len(),
                max: GRPC_TIMEOUT_MAX_DIGITS,
            });
        }
        return Err(HeaderError::MissingUnit(value.len()));
    }
    let n = parse_u64(digits, 0, GRPC_TIMEOUT_MAX_DIGITS)?;
    // 8 digits keep every product below u64::MAX (99_999_999 h = 3.6e11 s).
    Ok(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        byte => {
            return Err(HeaderError::InvalidByte {
                byte,
                offset: digits.len(),
            })
        }
    })
}

/// Formats a `grpc-timeout` value: the finest unit whose count fits in 8 digits, truncated.
/// Durations beyond 99 999 999 hours are clamped to that.
pub fn format_grpc_timeout(d: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let ns = d.as_nanos();
    let (n, unit) = [
        (1u128, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ]
    .into_iter()
    .map(|(per, unit)| (ns / per, unit))
    .find(|(n, _)| *n <= MAX)
    .unwrap_or((MAX, 'H'));
    format!("{n}{unit}")
}

/// Parses an `l5d-ctx-deadline` value into `(timestamp_ns, deadline_ns)` since the Unix epoch.
pub fn parse_l5d_ctx_deadline(value: &[u8]) -> Result<(u64, u64), HeaderError> {
    if value.is_empty() {
        return Err(HeaderError::Empty);
    }
    let fields = value.split(|b| *b == b' ').count();
    let mut parts = value.splitn(2, |b| *b == b' ');
    let (Some(ts), Some(dl)) = (parts.next(), parts.next()) else {
        return Err(HeaderError::FieldCount(fields));
    };
    if fields != 2 {
        return Err(HeaderError::FieldCount(fields));
    }
    let ts_value = parse_u64(ts, 0, 20)?;
    let dl_value = parse_u64(dl, ts.len() + 1, 20)?;
    Ok((ts_value, dl_value))
}

/// Formats an `l5d-ctx-deadline` value.
pub fn format_l5d_ctx_deadline(timestamp_ns: u64, deadline_ns: u64) -> String {
    format!("{timestamp_ns} {deadline_ns}")
}

/// Parses an `x-envoy-expected-rq-timeout-ms` value.
pub fn parse_envoy_timeout_ms(value: &[u8]) -> Result<Duration, HeaderError> {
    parse_u64(value, 0, 20).map(Duration::from_millis)
}

/// Formats an `x-envoy-expected-rq-timeout-ms` value (milliseconds, truncated).
pub fn format_envoy_timeout_ms(d: Duration) -> String {
    d.as_millis().to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout(b"100m"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout(b"2H"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout(b"3M"), Ok(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout(b"1S"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_grpc_timeout(b"7u"), Ok(Duration::from_micros(7)));
        assert_eq!(
            parse_grpc_timeout(b"99999999n"),
            Ok(Duration::from_nanos(99_999_999))
        );
        assert_eq!(parse_grpc_timeout(b"0m"), Ok(Duration::ZERO));
    }

    #[test]
    fn grpc_timeout_rejects_junk() {
        assert_eq!(parse_grpc_timeout(b""), Err(HeaderError::Empty));
        assert_eq!(parse_grpc_timeout(b"m"), Err(HeaderError::Empty));
        assert_eq!(parse_grpc_timeout(b"100"), Err(HeaderError::MissingUnit(3)));
        assert_eq!(
            parse_grpc_timeout(b"123456789m"),
            Err(HeaderError::TooManyDigits { count: 9, max: 8 })
        );
        assert_eq!(
            parse_grpc_timeout(b"10x"),
            Err(HeaderError::InvalidByte {
                byte: b'x',
                offset: 2
            })
        );
        assert_eq!(
            parse_grpc_timeout(b"1 0m"),
            Err(HeaderError::InvalidByte {
                byte: b' ',
                offset: 1
            })
        );
        assert_eq!(
            parse_grpc_timeout(b"-1m"),
            Err(HeaderError::InvalidByte {
                byte: b'-',
                offset: 0
            })
        );
    }

    #[test]
    fn grpc_timeout_format_picks_finest_unit() {
        assert_eq!(format_grpc_timeout(Duration::from_millis(99)), "99000000n");
        assert_eq!(format_grpc_timeout(Duration::from_millis(100)), "100000u");
        assert_eq!(format_grpc_timeout(Duration::from_secs(1000)), "1000000m");
        assert_eq!(
            format_grpc_timeout(Duration::from_secs(u64::MAX)),
            "99999999H"
        );
    }

    #[test]
    fn l5d_ctx_deadline_two_fields() {
        assert_eq!(parse_l5d_ctx_deadline(b"10 20"), Ok((10, 20)));
        assert_eq!(
            parse_l5d_ctx_deadline(b"20"),
            Err(HeaderError::FieldCount(1))
        );
        assert_eq!(
            parse_l5d_ctx_deadline(b"1 2 3"),
            Err(HeaderError::FieldCount(3))
        );
        assert_eq!(
            parse_l5d_ctx_deadline(b"1 x"),
            Err(HeaderError::InvalidByte {
                byte: b'x',
                offset: 2
            })
        );
        assert_eq!(
            parse_l5d_ctx_deadline(b"1 99999999999999999999"),
            Err(HeaderError::Overflow(2))
        );
        assert_eq!(parse_l5d_ctx_deadline(b"1 "), Err(HeaderError::Empty));
    }

    #[test]
    fn envoy_timeout() {
        assert_eq!(
            parse_envoy_timeout_ms(b"250"),
            Ok(Duration::from_millis(250))
        );
        assert!(parse_envoy_timeout_ms(b"25 0").is_err());
        assert!(parse_envoy_timeout_ms(b"").is_err());
        assert_eq!(
            parse_envoy_timeout_ms(b"18446744073709551616"),
            Err(HeaderError::Overflow(0))
        );
    }

    proptest! {
        #[test]
        fn grpc_timeout_round_trips(ns in 0u64..=u64::MAX) {
            let d = Duration::from_nanos(ns);
            let text = format_grpc_timeout(d);
            let back = parse_grpc_timeout(text.as_bytes()).unwrap();
            prop_assert!(back <= d);
            // Truncation loses less than one unit, and a unit is at most 1/100 000 of the value.
            prop_assert!(d - back <= d / 100_000 + Duration::from_nanos(1));
        }

        #[test]
        fn grpc_timeout_parses_every_valid_value(n in 0u64..=99_999_999, unit in prop::sample::select(vec!['H', 'M', 'S', 'm', 'u', 'n'])) {
            let d = parse_grpc_timeout(format!("{n}{unit}").as_bytes()).unwrap();
            let per = match unit { 'H' => 3_600_000_000_000u128, 'M' => 60_000_000_000, 'S' => 1_000_000_000, 'm' => 1_000_000, 'u' => 1_000, _ => 1 };
            prop_assert_eq!(d.as_nanos(), u128::from(n) * per);
        }

        #[test]
        fn grpc_timeout_rejects_nine_or_more_digits(n in 100_000_000u64..=u64::MAX, unit in prop::sample::select(vec!['H', 'M', 'S', 'm', 'u', 'n'])) {
            let err = parse_grpc_timeout(format!("{n}{unit}").as_bytes()).unwrap_err();
            let is_too_many = matches!(err, HeaderError::TooManyDigits { .. });
            prop_assert!(is_too_many);
        }

        #[test]
        fn parsers_never_panic_on_junk(bytes in prop::collection::vec(any::<u8>(), 0..40)) {
            let _ = parse_grpc_timeout(&bytes);
            let _ = parse_l5d_ctx_deadline(&bytes);
            let _ = parse_envoy_timeout_ms(&bytes);
        }

        #[test]
        fn junk_units_are_rejected(n in 0u64..=99_999_999, unit in any::<u8>()) {
            prop_assume!(!b"HMSmun".contains(&unit) && !unit.is_ascii_digit());
            let mut v = n.to_string().into_bytes();
            v.push(unit);
            prop_assert!(parse_grpc_timeout(&v).is_err());
        }

        #[test]
        fn numbers_beyond_64_bits_overflow(n in (u128::from(u64::MAX) + 1)..=u128::from(u64::MAX) * 5) {
            let text = n.to_string();
            prop_assert_eq!(parse_envoy_timeout_ms(text.as_bytes()), Err(HeaderError::Overflow(0)));
            let l5d = format!("1 {text}");
            prop_assert_eq!(parse_l5d_ctx_deadline(l5d.as_bytes()), Err(HeaderError::Overflow(2)));
        }

        #[test]
        fn l5d_ctx_deadline_round_trips(ts in any::<u64>(), dl in any::<u64>()) {
            let text = format_l5d_ctx_deadline(ts, dl);
            prop_assert_eq!(parse_l5d_ctx_deadline(text.as_bytes()), Ok((ts, dl)));
        }

        #[test]
        fn envoy_round_trips(ms in 0u64..=u64::MAX / 1_000_000) {
            let d = Duration::from_millis(ms);
            prop_assert_eq!(parse_envoy_timeout_ms(format_envoy_timeout_ms(d).as_bytes()), Ok(d));
        }
    }
}

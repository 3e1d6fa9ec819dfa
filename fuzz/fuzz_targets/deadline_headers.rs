//! Fuzzes the deadline header parsers (`grpc-timeout`, `l5d-ctx-deadline`,
//! `x-envoy-expected-rq-timeout-ms`): arbitrary bytes never panic, error offsets point inside the
//! value, errors print as ASCII, and whatever parses formats to a value that parses back to no more
//! time than it had (formatting truncates, so a downstream never sees more time than is left).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_core::deadline::header::{
    format_envoy_timeout_ms, format_grpc_timeout, format_l5d_ctx_deadline, parse_envoy_timeout_ms,
    parse_grpc_timeout, parse_l5d_ctx_deadline, HeaderError,
};

fn check_error(e: &HeaderError, value: &[u8]) {
    let offset = match *e {
        HeaderError::InvalidByte { offset, byte } => {
            assert_eq!(value.get(offset), Some(&byte), "{e} for {value:?}");
            Some(offset)
        }
        HeaderError::MissingUnit(offset) | HeaderError::Overflow(offset) => Some(offset),
        _ => None,
    };
    if let Some(offset) = offset {
        assert!(offset <= value.len(), "{e} for {value:?}");
    }
    assert!(e.to_string().is_ascii());
}

fuzz_target!(|value: &[u8]| {
    match parse_grpc_timeout(value) {
        Ok(d) => {
            let text = format_grpc_timeout(d);
            let back =
                parse_grpc_timeout(text.as_bytes()).expect("a formatted grpc-timeout parses");
            assert!(back <= d, "{value:?} -> {d:?} -> {text} -> {back:?}");
        }
        Err(e) => check_error(&e, value),
    }
    match parse_l5d_ctx_deadline(value) {
        Ok((ts, dl)) => {
            let text = format_l5d_ctx_deadline(ts, dl);
            assert_eq!(parse_l5d_ctx_deadline(text.as_bytes()), Ok((ts, dl)));
        }
        Err(e) => check_error(&e, value),
    }
    match parse_envoy_timeout_ms(value) {
        Ok(d) => {
            let text = format_envoy_timeout_ms(d);
            assert_eq!(parse_envoy_timeout_ms(text.as_bytes()), Ok(d));
        }
        Err(e) => check_error(&e, value),
    }
});

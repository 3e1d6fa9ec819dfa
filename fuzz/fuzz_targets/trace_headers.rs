//! Fuzzes the trace header parsers: W3C `traceparent`, B3 single (`b3`) and B3 multi
//! (`x-b3-*`), and `extract` over all of them. Arbitrary bytes never panic, errors print as ASCII
//! and point inside the value, and a context that parses is written back (`format_traceparent`,
//! `format_b3_single`, `inject`) to headers that parse to the same trace, span and decision.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use mesh_core::trace::propagation::{
    extract, format_b3_single, format_traceparent, inject, parse_b3_multi, parse_b3_single,
    parse_traceparent, TraceHeaderError, B3, TRACEPARENT, X_B3_FLAGS, X_B3_PARENTSPANID,
    X_B3_SAMPLED, X_B3_SPANID, X_B3_TRACEID,
};
use mesh_core::trace::TraceContext;

fn check_error(e: &TraceHeaderError, value: &[u8]) {
    if let TraceHeaderError::Syntax { offset, .. } = *e {
        assert!(offset <= value.len(), "{e} for {value:?}");
    }
    assert!(e.to_string().is_ascii());
}

fn same_trace(a: &TraceContext, b: &TraceContext) {
    assert_eq!(a.trace_id, b.trace_id);
    assert_eq!(a.span_id, b.span_id);
    assert_eq!(a.is_sampled(), b.is_sampled());
}

fuzz_target!(|data: &[u8]| {
    match parse_traceparent(data) {
        Ok(ctx) => {
            let text = format_traceparent(&ctx);
            let back = parse_traceparent(&text).expect("a formatted traceparent parses");
            same_trace(&ctx, &back);
        }
        Err(e) => check_error(&e, data),
    }
    match parse_b3_single(data) {
        Ok(Some(ctx)) => {
            let text = format_b3_single(&ctx);
            let back = parse_b3_single(text.as_bytes())
                .expect("a formatted b3 parses")
                .expect("a formatted b3 carries a trace");
            same_trace(&ctx, &back);
            assert_eq!(ctx.parent_span_id, back.parent_span_id);
            assert_eq!(ctx.debug, back.debug);
        }
        Ok(None) => {}
        Err(e) => check_error(&e, data),
    }

    // B3 multi and `extract`: split the input on newlines into header values, in a fixed order of
    // names, so the fuzzer can build any combination (absent, empty, junk, valid).
    let names = [
        &TRACEPARENT,
        &B3,
        &X_B3_TRACEID,
        &X_B3_SPANID,
        &X_B3_PARENTSPANID,
        &X_B3_SAMPLED,
        &X_B3_FLAGS,
    ];
    let mut headers = HeaderMap::new();
    for (name, value) in names.iter().zip(data.split(|b| *b == b'\n')) {
        if value == b"-" {
            continue; // "-" leaves the header out
        }
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.insert((*name).clone(), v);
        }
    }
    match parse_b3_multi(&headers) {
        Ok(_) => {}
        Err(e) => assert!(e.to_string().is_ascii()),
    }
    if let Some(ctx) = extract(&headers) {
        let mut out = HeaderMap::new();
        inject(&ctx, &mut out);
        let back = extract(&out).expect("injected headers extract");
        same_trace(&ctx, &back);
    }
});

//! Property tests of the trace header parsers: malformed input is ignored (never a panic) and
//! valid contexts survive a write and a read.
#![allow(clippy::unwrap_used)]

use http::{HeaderMap, HeaderValue};
use mesh_core::trace::propagation::{
    extract, format_b3_single, format_traceparent, inject, parse_b3_multi, parse_b3_single,
    parse_traceparent,
};
use mesh_core::trace::{Format, SpanId, TraceContext, TraceId};
use proptest::prelude::*;

fn context() -> impl Strategy<Value = TraceContext> {
    (
        any::<[u8; 16]>().prop_filter("non-zero trace id", |b| *b != [0; 16]),
        any::<[u8; 8]>().prop_filter("non-zero span id", |b| *b != [0; 8]),
        proptest::option::of(any::<[u8; 8]>().prop_filter("non-zero", |b| *b != [0; 8])),
        proptest::option::of(any::<bool>()),
        any::<bool>(),
        prop_oneof![
            Just(Format::W3c),
            Just(Format::B3Single),
            Just(Format::B3Multi)
        ],
    )
        .prop_map(|(t, s, p, sampled, debug, format)| {
            let w3c = format == Format::W3c;
            TraceContext {
                trace_id: TraceId::from_bytes(t),
                span_id: SpanId::from_bytes(s),
                parent_span_id: if w3c { None } else { p.map(SpanId::from_bytes) },
                // W3C has no deferred decision and no debug flag.
                sampled: if w3c {
                    Some(sampled.unwrap_or(false))
                } else if debug {
                    Some(true)
                } else {
                    sampled
                },
                debug: !w3c && debug,
                format,
                tracestate: None,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
        let _ = parse_traceparent(&bytes);
        let _ = parse_b3_single(&bytes);
        if let Ok(v) = HeaderValue::from_bytes(&bytes) {
            let mut h = HeaderMap::new();
            for name in ["traceparent", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags"] {
                h.insert(name, v.clone());
            }
            let _ = extract(&h);
            let _ = parse_b3_multi(&h);
        }
    }

    #[test]
    fn near_valid_traceparents_never_panic(
        ctx in context(),
        pos in 0usize..60,
        byte in any::<u8>(),
        cut in 0usize..60,
    ) {
        let mut tp = format_traceparent(&ctx).to_vec();
        if pos < tp.len() { tp[pos] = byte; }
        tp.truncate(cut.max(1));
        // Either rejected or, if the mutation kept it valid, parsed to a context.
        match parse_traceparent(&tp) {
            Ok(parsed) => prop_assert_eq!(parsed.format, Format::W3c),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn mutated_b3_never_panics(ctx in context(), pos in 0usize..70, byte in any::<u8>()) {
        let mut b3 = format_b3_single(&ctx).into_bytes();
        if pos < b3.len() { b3[pos] = byte; }
        let _ = parse_b3_single(&b3);
    }

    #[test]
    fn traceparent_round_trips(ctx in context()) {
        let parsed = parse_traceparent(&format_traceparent(&ctx)).unwrap();
        prop_assert_eq!(parsed.trace_id, ctx.trace_id);
        prop_assert_eq!(parsed.span_id, ctx.span_id);
        prop_assert_eq!(parsed.sampled, Some(ctx.is_sampled()));
    }

    #[test]
    fn b3_single_round_trips(ctx in context()) {
        let b3 = format_b3_single(&ctx);
        let parsed = parse_b3_single(b3.as_bytes()).unwrap().unwrap();
        prop_assert_eq!(parsed.trace_id, ctx.trace_id);
        prop_assert_eq!(parsed.span_id, ctx.span_id);
        prop_assert_eq!(parsed.debug, ctx.debug);
        prop_assert_eq!(parsed.sampled, ctx.sampled);
        // The parent is only written after a sampling state.
        let parent = if ctx.sampled.is_some() || ctx.debug { ctx.parent_span_id } else { None };
        prop_assert_eq!(parsed.parent_span_id, parent);
    }

    #[test]
    fn inject_then_extract_gives_the_same_context(ctx in context()) {
        let mut headers = HeaderMap::new();
        headers.insert("b3", HeaderValue::from_static("stale"));
        inject(&ctx, &mut headers);
        let back = extract(&headers).unwrap();
        // W3C is always written and always read first.
        prop_assert_eq!(back.format, Format::W3c);
        prop_assert_eq!(back.trace_id, ctx.trace_id);
        prop_assert_eq!(back.span_id, ctx.span_id);
        prop_assert_eq!(back.sampled, Some(ctx.is_sampled()));
        // The caller's B3 flavour is written too, and reads back the same.
        match ctx.format {
            Format::W3c => prop_assert!(headers.get("b3").is_none() && headers.get("x-b3-traceid").is_none()),
            Format::B3Single => {
                let b3 = parse_b3_single(headers["b3"].as_bytes()).unwrap().unwrap();
                prop_assert_eq!(b3.trace_id, ctx.trace_id);
                prop_assert_eq!(b3.span_id, ctx.span_id);
                prop_assert_eq!(b3.sampled, ctx.sampled);
            }
            Format::B3Multi => {
                prop_assert!(headers.get("b3").is_none());
                let b3 = parse_b3_multi(&headers).unwrap().unwrap();
                prop_assert_eq!(b3.trace_id, ctx.trace_id);
                prop_assert_eq!(b3.span_id, ctx.span_id);
                prop_assert_eq!(b3.parent_span_id, ctx.parent_span_id);
                prop_assert_eq!(b3.sampled, ctx.sampled);
                prop_assert_eq!(b3.debug, ctx.debug);
            }
        }
    }
}

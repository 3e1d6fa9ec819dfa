//! Parsing and writing W3C Trace Context and B3 headers.
//!
//! Malformed headers are never an error for the request: [`extract`] ignores them (the request
//! then starts a new trace, as the W3C spec requires), and the parse functions return a
//! [`TraceHeaderError`] that says which byte was wrong, for logs and tests.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::context::{Format, SpanId, TraceContext, TraceId};

/// `traceparent` (W3C Trace Context).
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate` (W3C Trace Context).
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// `b3` (B3 single header).
pub static B3: HeaderName = HeaderName::from_static("b3");
/// `x-b3-traceid`.
pub static X_B3_TRACEID: HeaderName = HeaderName::from_static("x-b3-traceid");
/// `x-b3-spanid`.
pub static X_B3_SPANID: HeaderName = HeaderName::from_static("x-b3-spanid");
/// `x-b3-parentspanid`.
pub static X_B3_PARENTSPANID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
/// `x-b3-sampled`.
pub static X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
/// `x-b3-flags`.
pub static X_B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// Why a trace header could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TraceHeaderError {
    /// The value has the wrong length.
    #[error("invalid {header} header: {len} bytes, expected {expected}")]
    Length {
        /// Header name.
        header: &'static str,
        /// Length found.
        len: usize,
        /// What was expected.
        expected: &'static str,
    },
    /// An unexpected byte.
    #[error("invalid {header} header at byte {offset}: expected {expected}")]
    Syntax {
        /// Header name.
        header: &'static str,
        /// Byte offset of the bad byte.
        offset: usize,
        /// What was expected there.
        expected: &'static str,
    },
    /// A trace or span id of all zeros, which both specs forbid.
    #[error("invalid {header} header: {what} is all zeros")]
    ZeroId {
        /// Header name.
        header: &'static str,
        /// `trace id` or `span id`.
        what: &'static str,
    },
    /// A B3 multi context without `x-b3-spanid`.
    #[error("invalid B3 headers: x-b3-traceid without x-b3-spanid")]
    MissingSpanId,
}

/// Extracts the caller's trace context: W3C `traceparent` (with `tracestate`) first, then B3
/// single, then B3 multi. Malformed or absent headers give `None`; so do B3 sampling-only
/// headers (`b3: 0`), which carry a decision but no trace.
pub fn extract(headers: &HeaderMap) -> Option<TraceContext> {
    // Most requests carry no trace context: say so without a lookup per header.
    if !crate::headers::contains_any(headers, &[&TRACEPARENT, &B3, &X_B3_TRACEID]) {
        return None;
    }
    if let Some(v) = headers.get(&TRACEPARENT) {
        if let Ok(mut ctx) = parse_traceparent(v.as_bytes()) {
            ctx.tracestate = headers.get(&TRACESTATE).cloned();
            return Some(ctx);
        }
    }
    if let Some(v) = headers.get(&B3) {
        if let Ok(Some(ctx)) = parse_b3_single(v.as_bytes()) {
            return Some(ctx);
        }
    }
    if headers.contains_key(&X_B3_TRACEID) {
        if let Ok(ctx) = parse_b3_multi(headers) {
            return ctx;
        }
    }
    None
}

/// Writes `ctx` into `headers`: `traceparent` (and `tracestate`) always, and the B3 headers of the
/// caller's flavour when the context came in B3. Trace headers already present are replaced.
pub fn inject(ctx: &TraceContext, headers: &mut HeaderMap) {
    for name in [
        &B3,
        &X_B3_TRACEID,
        &X_B3_SPANID,
        &X_B3_PARENTSPANID,
        &X_B3_SAMPLED,
        &X_B3_FLAGS,
    ] {
        headers.remove(name);
    }
    headers.insert(TRACEPARENT.clone(), header_value(&format_traceparent(ctx)));
    match &ctx.tracestate {
        Some(state) => {
            headers.insert(TRACESTATE.clone(), state.clone());
        }
        None => {
            headers.remove(&TRACESTATE);
        }
    }
    match ctx.format {
        Format::W3c => {}
        Format::B3Single => {
            headers.insert(B3.clone(), header_value(format_b3_single(ctx).as_bytes()));
        }
        Format::B3Multi => {
            let mut hex = [0u8; 32];
            let trace = trace_id_b3(ctx.trace_id, &mut hex);
            headers.insert(X_B3_TRACEID.clone(), header_value(trace));
            let mut hex = [0u8; 16];
            headers.insert(
                X_B3_SPANID.clone(),
                header_value(span_hex(ctx.span_id, &mut hex)),
            );
            if let Some(parent) = ctx.parent_span_id {
                let mut hex = [0u8; 16];
                headers.insert(
                    X_B3_PARENTSPANID.clone(),
                    header_value(span_hex(parent, &mut hex)),
                );
            }
            if ctx.debug {
                headers.insert(X_B3_FLAGS.clone(), HeaderValue::from_static("1"));
            } else if let Some(sampled) = ctx.sampled {
                let v = if sampled { "1" } else { "0" };
                headers.insert(X_B3_SAMPLED.clone(), HeaderValue::from_static(v));
            }
        }
    }
}

fn header_value(bytes: &[u8]) -> HeaderValue {
    // Only ever called with lowercase hex, dashes and digits, which are valid header bytes.
    HeaderValue::from_bytes(bytes).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Parses a W3C `traceparent` value (`00-<32 hex>-<16 hex>-<2 hex>`; lowercase hex only; higher
/// versions may append fields after a `-`, version `ff` is invalid).
pub fn parse_traceparent(v: &[u8]) -> Result<TraceContext, TraceHeaderError> {
    const H: &str = "traceparent";
    if v.len() < 55 {
        return Err(TraceHeaderError::Length {
            header: H,
            len: v.len(),
            expected: "55",
        });
    }
    let version = hex_lower::<1>(&v[0..2], H, 0)?[0];
    if version == 0xff {
        return Err(TraceHeaderError::Syntax {
            header: H,
            offset: 0,
            expected: "a version other than ff",
        });
    }
    if version == 0 && v.len() != 55 {
        return Err(TraceHeaderError::Length {
            header: H,
            len: v.len(),
            expected: "55 for version 00",
        });
    }
    if v.len() > 55 && v[55] != b'-' {
        return Err(TraceHeaderError::Syntax {
            header: H,
            offset: 55,
            expected: "'-' after the flags",
        });
    }
    for offset in [2, 35, 52] {
        dash(v, offset, H)?;
    }
    let trace_id = hex_lower::<16>(&v[3..35], H, 3)?;
    let span_id = hex_lower::<8>(&v[36..52], H, 36)?;
    let flags = hex_lower::<1>(&v[53..55], H, 53)?[0];
    Ok(TraceContext {
        trace_id: nonzero_trace(trace_id, H)?,
        span_id: nonzero_span(span_id, H)?,
        parent_span_id: None,
        sampled: Some(flags & 1 == 1),
        debug: false,
        format: Format::W3c,
        tracestate: None,
    })
}

/// Writes `ctx` as a version-00 `traceparent`.
pub fn format_traceparent(ctx: &TraceContext) -> [u8; 55] {
    let mut out = [b'-'; 55];
    out[0] = b'0';
    out[1] = b'0';
    write_hex(&ctx.trace_id.to_bytes(), &mut out[3..35]);
    write_hex(&ctx.span_id.to_bytes(), &mut out[36..52]);
    write_hex(&[u8::from(ctx.is_sampled())], &mut out[53..55]);
    out
}

/// Parses a B3 single header: `<trace id: 16 or 32 hex>-<span id: 16 hex>[-<1|0|d>[-<parent>]]`,
/// or a sampling decision alone (`0`, `1`, `d`), which gives `Ok(None)`.
pub fn parse_b3_single(v: &[u8]) -> Result<Option<TraceContext>, TraceHeaderError> {
    const H: &str = "b3";
    if v.len() == 1 {
        return match v[0] {
            b'0' | b'1' | b'd' => Ok(None),
            _ => Err(TraceHeaderError::Syntax {
                header: H,
                offset: 0,
                expected: "0, 1 or d",
            }),
        };
    }
    let trace_len = match v.iter().position(|&b| b == b'-') {
        Some(n @ (16 | 32)) => n,
        Some(n) => {
            return Err(TraceHeaderError::Syntax {
                header: H,
                offset: n,
                expected: "a 16 or 32 hex digit trace id",
            })
        }
        None => {
            return Err(TraceHeaderError::Length {
                header: H,
                len: v.len(),
                expected: "at least <trace id>-<span id>",
            })
        }
    };
    let trace_id = parse_b3_trace_id(&v[..trace_len], H, 0)?;
    let rest = &v[trace_len + 1..];
    let span_start = trace_len + 1;
    if rest.len() < 16 {
        return Err(TraceHeaderError::Length {
            header: H,
            len: v.len(),
            expected: "a 16 hex digit span id after the trace id",
        });
    }
    let span_id = nonzero_span(hex_any::<8>(&rest[..16], H, span_start)?, H)?;
    let mut ctx = TraceContext {
        trace_id,
        span_id,
        parent_span_id: None,
        sampled: None,
        debug: false,
        format: Format::B3Single,
        tracestate: None,
    };
    let rest = &rest[16..];
    if rest.is_empty() {
        return Ok(Some(ctx));
    }
    let at = span_start + 16;
    if rest.len() < 2 || rest[0] != b'-' {
        return Err(TraceHeaderError::Syntax {
            header: H,
            offset: at,
            expected: "'-' and a sampling state after the span id",
        });
    }
    match rest[1] {
        b'0' => ctx.sampled = Some(false),
        b'1' => ctx.sampled = Some(true),
        b'd' => {
            ctx.sampled = Some(true);
            ctx.debug = true;
        }
        _ => {
            return Err(TraceHeaderError::Syntax {
                header: H,
                offset: at + 1,
                expected: "sampling state 0, 1 or d",
            })
        }
    }
    let rest = &rest[2..];
    if rest.is_empty() {
        return Ok(Some(ctx));
    }
    let at = at + 2;
    if rest.len() != 17 || rest[0] != b'-' {
        return Err(TraceHeaderError::Syntax {
            header: H,
            offset: at,
            expected: "'-' and a 16 hex digit parent span id, then the end",
        });
    }
    ctx.parent_span_id = Some(nonzero_span(hex_any::<8>(&rest[1..], H, at + 1)?, H)?);
    Ok(Some(ctx))
}

/// Writes `ctx` as a B3 single header value.
pub fn format_b3_single(ctx: &TraceContext) -> String {
    let mut hex = [0u8; 32];
    let mut out = String::with_capacity(68);
    out.push_str(std::str::from_utf8(trace_id_b3(ctx.trace_id, &mut hex)).unwrap_or_default());
    out.push('-');
    let mut hex = [0u8; 16];
    out.push_str(std::str::from_utf8(span_hex(ctx.span_id, &mut hex)).unwrap_or_default());
    let state = if ctx.debug {
        Some('d')
    } else {
        ctx.sampled.map(|s| if s { '1' } else { '0' })
    };
    if let Some(state) = state {
        out.push('-');
        out.push(state);
        if let Some(parent) = ctx.parent_span_id {
            out.push('-');
            out.push_str(std::str::from_utf8(span_hex(parent, &mut hex)).unwrap_or_default());
        }
    }
    out
}

/// Parses the B3 multi headers. `Ok(None)` when `x-b3-traceid` is absent.
pub fn parse_b3_multi(headers: &HeaderMap) -> Result<Option<TraceContext>, TraceHeaderError> {
    let Some(trace) = headers.get(&X_B3_TRACEID) else {
        return Ok(None);
    };
    let trace = trace.as_bytes();
    if trace.len() != 16 && trace.len() != 32 {
        return Err(TraceHeaderError::Length {
            header: "x-b3-traceid",
            len: trace.len(),
            expected: "16 or 32",
        });
    }
    let trace_id = parse_b3_trace_id(trace, "x-b3-traceid", 0)?;
    let span = headers
        .get(&X_B3_SPANID)
        .ok_or(TraceHeaderError::MissingSpanId)?
        .as_bytes();
    let span_id = parse_span_header(span, "x-b3-spanid")?;
    let parent_span_id = match headers.get(&X_B3_PARENTSPANID) {
        Some(p) => Some(parse_span_header(p.as_bytes(), "x-b3-parentspanid")?),
        None => None,
    };
    let debug = match headers.get(&X_B3_FLAGS).map(|v| v.as_bytes()) {
        None | Some(b"0") => false,
        Some(b"1") => true,
        Some(_) => {
            return Err(TraceHeaderError::Syntax {
                header: "x-b3-flags",
                offset: 0,
                expected: "1",
            })
        }
    };
    let sampled = match headers.get(&X_B3_SAMPLED).map(|v| v.as_bytes()) {
        None => None,
        Some(b"1" | b"true") => Some(true),
        Some(b"0" | b"false") => Some(false),
        Some(_) => {
            return Err(TraceHeaderError::Syntax {
                header: "x-b3-sampled",
                offset: 0,
                expected: "1, 0, true or false",
            })
        }
    };
    Ok(Some(TraceContext {
        trace_id,
        span_id,
        parent_span_id,
        sampled: if debug { Some(true) } else { sampled },
        debug,
        format: Format::B3Multi,
        tracestate: None,
    }))
}

fn parse_span_header(v: &[u8], header: &'static str) -> Result<SpanId, TraceHeaderError> {
    if v.len() != 16 {
        return Err(TraceHeaderError::Length {
            header,
            len: v.len(),
            expected: "16",
        });
    }
    nonzero_span(hex_any::<8>(v, header, 0)?, header)
}

fn parse_b3_trace_id(
    v: &[u8],
    header: &'static str,
    at: usize,
) -> Result<TraceId, TraceHeaderError> {
    let mut id = [0u8; 16];
    if v.len() == 16 {
        id[8..].copy_from_slice(&hex_any::<8>(v, header, at)?);
    } else {
        id = hex_any::<16>(v, header, at)?;
    }
    nonzero_trace(id, header)
}

/// A B3 trace id: 16 hex digits when the high half is zero (a 64-bit id), else 32.
fn trace_id_b3(id: TraceId, buf: &mut [u8; 32]) -> &[u8] {
    let bytes = id.to_bytes();
    write_hex(&bytes, buf);
    if bytes[..8] == [0; 8] {
        &buf[16..]
    } else {
        &buf[..]
    }
}

fn span_hex(id: SpanId, buf: &mut [u8; 16]) -> &[u8] {
    write_hex(&id.to_bytes(), buf);
    &buf[..]
}

fn nonzero_trace(id: [u8; 16], header: &'static str) -> Result<TraceId, TraceHeaderError> {
    if id == [0; 16] {
        return Err(TraceHeaderError::ZeroId {
            header,
            what: "trace id",
        });
    }
    Ok(TraceId::from_bytes(id))
}

fn nonzero_span(id: [u8; 8], header: &'static str) -> Result<SpanId, TraceHeaderError> {
    if id == [0; 8] {
        return Err(TraceHeaderError::ZeroId {
            header,
            what: "span id",
        });
    }
    Ok(SpanId::from_bytes(id))
}

fn dash(v: &[u8], offset: usize, header: &'static str) -> Result<(), TraceHeaderError> {
    if v.get(offset) == Some(&b'-') {
        Ok(())
    } else {
        Err(TraceHeaderError::Syntax {
            header,
            offset,
            expected: "'-'",
        })
    }
}

fn hex_lower<const N: usize>(
    v: &[u8],
    header: &'static str,
    at: usize,
) -> Result<[u8; N], TraceHeaderError> {
    decode_hex(v, header, at, false)
}

fn hex_any<const N: usize>(
    v: &[u8],
    header: &'static str,
    at: usize,
) -> Result<[u8; N], TraceHeaderError> {
    decode_hex(v, header, at, true)
}

fn decode_hex<const N: usize>(
    v: &[u8],
    header: &'static str,
    at: usize,
    upper_ok: bool,
) -> Result<[u8; N], TraceHeaderError> {
    let mut out = [0u8; N];
    if v.len() != 2 * N {
        return Err(TraceHeaderError::Length {
            header,
            len: v.len(),
            expected: "an even number of hex digits",
        });
    }
    for (i, byte) in out.iter_mut().enumerate() {
        let hi = nibble(v[2 * i], upper_ok).ok_or(TraceHeaderError::Syntax {
            header,
            offset: at + 2 * i,
            expected: "a lowercase hex digit",
        })?;
        let lo = nibble(v[2 * i + 1], upper_ok).ok_or(TraceHeaderError::Syntax {
            header,
            offset: at + 2 * i + 1,
            expected: "a lowercase hex digit",
        })?;
        *byte = (hi << 4) | lo;
    }
    Ok(out)
}

fn nibble(b: u8, upper_ok: bool) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' if upper_ok => Some(b - b'A' + 10),
        _ => None,
    }
}

fn write_hex(bytes: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
}

//! HTTP semantic-convention attributes of server and client spans (OpenTelemetry semantic
//! conventions for HTTP, stable since v1.23).

use std::borrow::Cow;

use http::{header, Method, Request, Response, Version};
use opentelemetry::trace::{Span as _, Status};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::Span;

/// A span's name and start attributes.
pub(super) struct RequestAttrs {
    pub(super) name: Cow<'static, str>,
    pub(super) attributes: Vec<KeyValue>,
}

/// The method as the conventions name it: the nine standard methods as they are, anything else
/// `_OTHER` (with the original in `http.request.method_original`).
fn known_method(method: &Method) -> Option<&'static str> {
    Some(match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => return None,
    })
}

/// Attributes known when the request starts. `server` selects the server or client set.
pub(super) fn request<B>(req: &Request<B>, server: bool) -> RequestAttrs {
    let mut attributes = Vec::with_capacity(9);
    let name: Cow<'static, str> = match known_method(req.method()) {
        Some(m) => {
            attributes.push(KeyValue::new("http.request.method", m));
            Cow::Borrowed(m)
        }
        None => {
            attributes.push(KeyValue::new("http.request.method", "_OTHER"));
            attributes.push(KeyValue::new(
                "http.request.method_original",
                req.method().as_str().to_string(),
            ));
            Cow::Borrowed("HTTP")
        }
    };
    let uri = req.uri();
    attributes.push(KeyValue::new("url.path", uri.path().to_string()));
    if let Some(query) = uri.query() {
        attributes.push(KeyValue::new("url.query", query.to_string()));
    }
    if let Some(scheme) = uri.scheme_str() {
        attributes.push(KeyValue::new("url.scheme", scheme.to_string()));
    }
    // The logical authority: the URI's (HTTP/2, absolute-form) or the Host header's.
    let authority = uri.authority().map(|a| a.as_str()).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    });
    if let Some(authority) = authority {
        let (host, port) = split_authority(authority);
        attributes.push(KeyValue::new("server.address", host.to_string()));
        if let Some(port) = port {
            attributes.push(KeyValue::new("server.port", i64::from(port)));
        }
    }
    let version = match req.version() {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_11 => "1.1",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "unknown",
    };
    attributes.push(KeyValue::new("network.protocol.version", version));
    if server {
        if let Some(ua) = req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|h| h.to_str().ok())
        {
            attributes.push(KeyValue::new("user_agent.original", ua.to_string()));
        }
    } else if uri.scheme().is_some() && uri.authority().is_some() {
        attributes.push(KeyValue::new("url.full", uri.to_string()));
    }
    RequestAttrs { name, attributes }
}

/// `host[:port]` (with `[v6]` brackets removed from the host).
fn split_authority(authority: &str) -> (&str, Option<u16>) {
    let (host, port) = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => {
            (&authority[..i], authority[i + 1..].parse::<u16>().ok())
        }
        _ => (authority, None),
    };
    (host.trim_start_matches('[').trim_end_matches(']'), port)
}

/// Records the outcome: `http.response.status_code`, and `error.type` with an error status for
/// 5xx (server spans) or 4xx and 5xx (client spans), or for a request that got no response.
pub(super) fn response<RB, E>(span: &mut Span, result: &Result<Response<RB>, E>, server: bool) {
    match result {
        Ok(rsp) => {
            let status = rsp.status();
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status.as_u16()),
            ));
            if status.is_server_error() || (!server && status.is_client_error()) {
                span.set_attribute(KeyValue::new("error.type", status.as_str().to_string()));
                span.set_status(Status::error(""));
            }
        }
        Err(_) => {
            span.set_attribute(KeyValue::new("error.type", std::any::type_name::<E>()));
            span.set_status(Status::error("no response"));
        }
    }
}

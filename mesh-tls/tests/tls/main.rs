//! mesh-tls integration tests: real TLS 1.3 handshakes over TCP on 127.0.0.1, real HTTP/1.1 and
//! HTTP/2 through hyper, and interop with the `openssl` and `curl` command-line tools.

#![allow(clippy::unwrap_used)]

mod authz;
mod credentials;
mod federation;
mod handshake;
mod interop;
mod permissive;
mod rotation;
mod support;

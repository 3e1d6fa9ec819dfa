//! mesh-tls (under construction in this session).

//! mesh-discovery (under construction in this session).

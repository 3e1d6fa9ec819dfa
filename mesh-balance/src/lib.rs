//! mesh-balance (under construction in this session).

//! mesh-core (under construction in this session).

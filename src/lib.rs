//! meshwork facade (under construction in this session).

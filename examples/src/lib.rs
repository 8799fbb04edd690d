//! Shared bits of the example binaries.

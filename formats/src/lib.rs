//! The formats that cross process boundaries, defined once: what the receiver writes and
//! `checkvalve-status`, `report`, `verify-manifest`, the tests and the bench read, and what the
//! sender service writes for `checkvalve-send status`, and the link qualification artifact
//! `checkvalve-sim sweep` writes. Each is serialized and parsed by the same
//! type, so a drift between writer and reader is a compile error, not a silent zero.
//!
//! Readers are tolerant (every field of the live and status files defaults), so that a newer or
//! older program's file still reads.

pub mod live;
pub mod manifest;
pub mod qualification;
pub mod sender;

//! checkvalve protocol core, shared by the sender, the receiver and the simulator.
//!
//! Sans-IO: nothing here opens a socket or a file or reads a clock. Bytes come in and go out as
//! values and time is an argument, so every behaviour is testable deterministically.

pub mod announce;
pub mod assembler;
pub mod auth;
pub mod fec;
#[doc(hidden)]
pub mod fuzz;
pub mod interleave;
pub mod layout;
pub mod link_state;
pub mod meta;
pub mod object;
pub mod pacer;
pub mod ranges;
pub mod repair;
pub mod settings;
pub mod shed;
pub mod stream;
pub mod stripe;
pub mod units;
pub mod wire;

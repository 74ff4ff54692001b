//! Receiver side: rebuilds objects from datagrams in any order, in bounded memory.
//!
//! The assembler takes datagrams and the current time, and hands out [`Event`]s: decoded content
//! with its offset (to be written to disk by the caller), completed objects with their metadata and
//! digest, and everything that was lost. It does no I/O and reads no clock: the caller asks
//! [`Assembler::poll_timeout`] when its timers are next due and calls
//! [`Assembler::handle_timeout`] then.
//!
//! It is split along its concepts, each module using only those before it in this list:
//! [`types`] (what it takes and reports), `block` (one block's shards and its decode), `object`
//! (one object in progress), `budget` (memory costs and fair shares), `session` (sessions,
//! finished objects and numbering gaps), `engine` (the assembler's state and its calls), then the
//! steps a datagram takes, each adding methods to the assembler: `memory` (the budget and the
//! buffer pool), `loss` (reporting objects and gaps lost), `admission` (which sessions are
//! tracked), `names` (names the sender announced, for the losses), `pressure` (what gives way when memory runs short) and `shard` (a shard into its
//! block and object).

mod admission;
mod block;
mod budget;
mod engine;
mod loss;
mod memory;
mod names;
mod object;
mod pressure;
mod session;
mod shard;
pub mod types;

pub use engine::Assembler;
pub use types::{
    Abandon, AssemblerConfig, Counters, Crossing, Event, MAX_HEARTBEAT_INTERVAL,
    MIN_HEARTBEAT_INTERVAL, ObjectKey, Precedence, RUN_BYTES, STALE_BLOCKS, SessionStats,
};

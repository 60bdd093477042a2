//! The generated `rendezvous.v1` types, client and server, and the limits
//! of the wire that both the server's decoders and the client's are sized by.

#![allow(missing_docs, clippy::all)]

tonic::include_proto!("rendezvous.v1");

/// The encoded descriptors of `rendezvous/v1/sync.proto` and its imports,
/// with comments, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/rendezvous_descriptor.bin"));

/// The largest `--max-payload` accepted: payloads are meant to be small, and
/// every parked caller can hold one in memory.
pub const PAYLOAD_CEILING: usize = 16 << 20;

/// How much bigger than `--max-payload` a request message may be: room for
/// the id (at most 256 bytes), the attempt key (at most 128) and the
/// protobuf framing.
pub const MESSAGE_OVERHEAD: usize = 1024;

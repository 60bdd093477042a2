//! Where an id's keys and wake-ups live, by name: ids fall into
//! [`BUCKETS`] buckets, and each bucket has a hash tag of its own, so that a
//! bucket's keys and its shard channels are in one cluster slot.
//!
//! Why buckets, not one hash tag per id: in a cluster, a replica must
//! subscribe to a shard channel in the slot of every key whose script may
//! wake one of its callers. Per id, that is a subscription per parked
//! caller; per bucket, it is [`BUCKETS`] subscriptions per replica, however
//! many callers wait. Bucket `b`'s tag hashes into slots `16 b` to
//! `16 b + 15`, so a cluster whose slots are split evenly (as
//! `redis-cli --cluster create` splits them) gets exactly even shares of
//! the buckets, and ids spread over them uniformly (by their SHA-256).
//! A resharding moves buckets whole, with their channels.

use std::sync::OnceLock;

use crate::hex::Hex16;

/// How many buckets ids fall into: enough for even load over a few dozen
/// primaries, few enough that subscribing to all of them is quick.
pub(super) const BUCKETS: usize = 1024;

/// A cluster's slots.
const SLOTS: usize = 16384;

/// Ids are hashed (SHA-256, first half) into this.
pub(super) type Digest = [u8; 16];

/// The format of what the keys hold, in every key's name: replicas that
/// write different formats (during an upgrade) never meet, rather than hand
/// each other payloads they would misread. `v2` added the trace id; `v3`
/// the buckets' hash tags; `v4` the span id and flags beside the trace id,
/// for partners' spans to link to each other.
const FORMAT: &str = "v4";

/// The slot of a key (or channel) in a cluster: CRC16 of its hash tag, as
/// Redis computes it.
pub(super) fn slot(name: &[u8]) -> usize {
    let tagged = name
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &name[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(name);
    usize::from(crc16::State::<crc16::XMODEM>::calculate(tagged)) % SLOTS
}

/// Each bucket's hash tag: the first decimal number (counting from 0) whose
/// slot is in the bucket's range. Found by counting up, in a few thousand
/// steps; the same on every replica.
fn tags() -> &'static [String] {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    TAGS.get_or_init(|| {
        let mut tags = vec![String::new(); BUCKETS];
        let mut missing = BUCKETS;
        let mut n = 0u64;
        while missing > 0 {
            // A few thousand steps fill every bucket: far more is a broken
            // hash, which must not hang the replica's start.
            assert!(n < 1 << 20, "no hash tag found for every bucket");
            let tag = n.to_string();
            let bucket = slot(tag.as_bytes()) / (SLOTS / BUCKETS);
            if tags[bucket].is_empty() {
                tags[bucket] = tag;
                missing -= 1;
            }
            n += 1;
        }
        tags
    })
}

/// Finds the buckets' tags now, at start-up, rather than in the first
/// caller's call.
pub(super) fn prepare() {
    tags();
}

/// The bucket an id's hash falls into.
pub(super) fn bucket(digest: &Digest) -> usize {
    usize::from(u16::from_be_bytes([digest[0], digest[1]])) % BUCKETS
}

/// The meeting place of the id whose hash is `digest`: the prefix, the
/// format, the bucket's hash tag, then the hash.
pub(super) fn key(prefix: &str, digest: &Digest) -> String {
    let tag = &tags()[bucket(digest)];
    let mut key = String::with_capacity(prefix.len() + FORMAT.len() + tag.len() + 34);
    key.push_str(prefix);
    key.push_str(FORMAT);
    key.push('{');
    key.push_str(tag);
    key.push('}');
    key.push_str(Hex16::new(digest).as_str());
    key
}

/// Where an attempt key (hashed: `key_hash`) is bound to the id of its
/// first try: in the bucket of the key's hash, not of any id, since a try
/// that names another id must find it. `attempt:` cannot be mistaken for an
/// id's hash, which is hex.
pub(super) fn binding(prefix: &str, key_hash: &Digest) -> String {
    let tag = &tags()[bucket(key_hash)];
    format!(
        "{prefix}{FORMAT}{{{tag}}}attempt:{}",
        Hex16::new(key_hash).as_str()
    )
}

/// A replica's shard channel for one bucket, in that bucket's slot.
pub(super) fn shard_channel(prefix: &str, bucket: usize, replica: &str) -> String {
    format!("{prefix}{{{}}}replica:{replica}", tags()[bucket])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_redis_own() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(slot(b"123456789"), 12739);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        // An empty tag does not count: the whole name is hashed (`CLUSTER
        // KEYSLOT foo{}{bar}` is 8363).
        assert_eq!(slot(b"foo{}{bar}"), 8363);
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
    }

    #[test]
    fn each_bucket_has_a_tag_in_its_own_slot_range() {
        let tags = tags();
        assert_eq!(tags.len(), BUCKETS);
        for (bucket, tag) in tags.iter().enumerate() {
            let slot = slot(tag.as_bytes());
            assert_eq!(
                slot / 16,
                bucket,
                "bucket {bucket}'s tag {tag} is in slot {slot}"
            );
        }
    }

    #[test]
    fn an_ids_key_and_its_channels_share_a_slot() {
        let digest: Digest = [0xab, 0xcd, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14];
        let bucket = bucket(&digest);
        assert_eq!(bucket, 0xabcd % BUCKETS);
        let key = key("app:", &digest);
        assert_eq!(
            key,
            format!(
                "app:v4{{{}}}abcd0102030405060708090a0b0c0d0e",
                tags()[bucket]
            )
        );
        let channel = shard_channel("app:", bucket, "r1");
        assert_eq!(channel, format!("app:{{{}}}replica:r1", tags()[bucket]));
        assert_eq!(slot(key.as_bytes()), slot(channel.as_bytes()));
        assert_eq!(slot(key.as_bytes()) / 16, bucket);
    }

    #[test]
    fn an_attempt_keys_binding_is_in_its_own_hashs_bucket() {
        let hash: Digest = [0x12, 0x34, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14];
        let binding = binding("app:", &hash);
        assert_eq!(
            binding,
            format!(
                "app:v4{{{}}}attempt:12340102030405060708090a0b0c0d0e",
                tags()[0x1234 % BUCKETS]
            )
        );
        assert_eq!(slot(binding.as_bytes()) / 16, 0x1234 % BUCKETS);
    }
}

//! Sharding. Every client connection belongs to one of [`SHARDS`] shards, by a hash of its
//! addresses (so a request and its response land together), and each shard to one replayer,
//! chosen by rendezvous hashing (so that when a replayer comes or goes, only its own shards
//! move). Both hashes are stable by definition (xxh3, splitmix64), not by the standard
//! library's choice of the day: a listener of any build routes a connection, or a spooled
//! batch, the same way.

use std::net::{IpAddr, SocketAddr};

use xxhash_rust::xxh3::xxh3_64;

/// Client connections are grouped into this many shards; a replayer owns whole shards.
pub const SHARDS: u32 = 256;

/// The shard of a client connection; a request and its response land in the same one.
pub fn shard_of(client: SocketAddr, server: SocketAddr) -> u32 {
    // Family, address, port (big-endian) of each end: at most 2 x 19 bytes.
    let mut key = [0u8; 38];
    let mut len = 0;
    for address in [client, server] {
        let mut put = |bytes: &[u8]| {
            key[len..len + bytes.len()].copy_from_slice(bytes);
            len += bytes.len();
        };
        match address.ip() {
            IpAddr::V4(ip) => {
                put(&[4]);
                put(&ip.octets());
            }
            IpAddr::V6(ip) => {
                put(&[6]);
                put(&ip.octets());
            }
        }
        put(&address.port().to_be_bytes());
    }
    (xxh3_64(&key[..len]) % u64::from(SHARDS)) as u32
}

/// A replayer's key in rendezvous hashing: a hash of its address, so shards stay put when
/// other replayers come or go.
pub fn replayer_key(replayer: &str) -> u64 {
    xxh3_64(replayer.as_bytes())
}

/// How much `shard` wants the replayer with key `replayer`: the highest weight among the
/// replayers that are up owns the shard.
pub fn weight(shard: u32, replayer: u64) -> u64 {
    // splitmix64 of (shard, replayer): cheap and well mixed.
    let mut x = (replayer ^ u64::from(shard).rotate_left(32)).wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_and_its_response_share_a_shard() {
        let (client, server) = (
            "10.0.0.1:4000".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
        );
        assert_eq!(shard_of(client, server), shard_of(client, server));
        let spread: std::collections::HashSet<u32> = (0..1000)
            .map(|port| shard_of(SocketAddr::from(([10, 0, 0, 1], 30_000 + port)), server))
            .collect();
        assert!(
            spread.len() > SHARDS as usize / 2,
            "{} shards used",
            spread.len()
        );
    }

    /// These values are the routing of every listener build: changing them moves connections
    /// (and restored spools) between replayers across an upgrade.
    #[test]
    fn hashes_are_pinned() {
        let server: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let shards: Vec<u32> = [
            "10.0.0.1:4000",
            "10.0.0.1:4001",
            "192.168.7.9:51234",
            "[2001:db8::1]:443",
        ]
        .iter()
        .map(|client| shard_of(client.parse().unwrap(), server))
        .collect();
        assert_eq!(shards, PINNED_SHARDS);
        assert_eq!(replayer_key("http://10.0.0.7:7070/"), PINNED_KEY);
        assert_eq!(weight(17, PINNED_KEY), PINNED_WEIGHT);
    }

    const PINNED_SHARDS: [u32; 4] = [104, 119, 193, 155];
    const PINNED_KEY: u64 = 15_587_619_001_773_945_314;
    const PINNED_WEIGHT: u64 = 12_517_502_102_754_571_240;
}

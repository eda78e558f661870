//! The per-stream hash ratchet and per-message keys.
//!
//! ```text
//! CK_start = HKDF-SHA256(ikm = seed (16), salt = stream id (16), info = "secretd/v1/chain" ‖ epoch id (16))
//! CK_n     = HMAC-SHA256(CK_{n-1}, 0x02)            for n > start
//! MK_n     = HMAC-SHA256(CK_n, 0x01)
//! key ‖ nonce (32 + 12) = HKDF-SHA256(ikm = MK_n, salt = s (16 random bytes per message),
//!                  info = "secretd/v1/message" ‖ stream id (16) ‖ n (u64 BE) ‖ sender ref)
//! ```
//! The ratchet counter is the stream's counter (`EncryptedMessage.id`): an epoch that
//! starts at counter `start` (0 for a new room, the stream's head for a rotation) has keys
//! for every counter above `start`.

use serde::{Deserialize, Serialize};

use super::{KEY_LEN, NONCE_LEN, hkdf_sha256, hmac_sha256};
use crate::error::Error;
use crate::user::{self, UserRef};

/// HKDF info prefix of an epoch's first chain key.
pub const CHAIN_INFO: &[u8] = b"secretd/v1/chain";
/// HKDF info prefix of a message's key and nonce.
pub const MESSAGE_INFO: &[u8] = b"secretd/v1/message";
/// The largest ratchet jump a receiver derives by default, like the server's
/// `max_counter_gap`.
pub const DEFAULT_MAX_GAP: u64 = 1024;

/// The first chain key of an epoch, from its random 128-bit seed.
pub fn initial_chain_key(seed: &[u8; 16], stream: &[u8; 16], epoch: &[u8; 16]) -> [u8; 32] {
    let mut info = CHAIN_INFO.to_vec();
    info.extend_from_slice(epoch);
    let mut ck = [0u8; 32];
    hkdf_sha256(seed, stream, &info, &mut ck);
    ck
}

/// CK_n from CK_{n-1}.
pub fn next_chain_key(ck: &[u8; 32]) -> [u8; 32] {
    hmac_sha256(ck, &[0x02])
}

/// MK_n from CK_n.
pub fn message_key(ck: &[u8; 32]) -> [u8; 32] {
    hmac_sha256(ck, &[0x01])
}

/// The AES-256-GCM key and nonce of one message.
pub fn message_key_nonce(
    mk: &[u8; 32],
    salt: &[u8; 16],
    stream: &[u8; 16],
    counter: u64,
    sender: &UserRef,
) -> ([u8; KEY_LEN], [u8; NONCE_LEN]) {
    let mut info = MESSAGE_INFO.to_vec();
    info.extend_from_slice(stream);
    info.extend_from_slice(&counter.to_be_bytes());
    info.extend_from_slice(&user::encode(sender));
    let mut okm = [0u8; KEY_LEN + NONCE_LEN];
    hkdf_sha256(mk, salt, &info, &mut okm);
    let (key, nonce) = okm.split_at(KEY_LEN);
    (
        key.try_into().expect("32 bytes"),
        nonce.try_into().expect("12 bytes"),
    )
}

/// A point on a chain: the chain key `CK_counter`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainPoint {
    /// The counter this chain key belongs to.
    pub counter: u64,
    /// CK_counter.
    #[serde(with = "crate::encoding::hex32")]
    pub key: [u8; 32],
}

impl ChainPoint {
    /// The chain key at `counter` (> self.counter), refusing jumps above `max_gap`.
    pub fn advanced_to(&self, counter: u64, max_gap: u64) -> Result<ChainPoint, Error> {
        if counter <= self.counter {
            return Err(Error::NotVisible {
                counter,
                visible_from: self.counter.saturating_add(1),
            });
        }
        let gap = counter - self.counter;
        if gap > max_gap {
            return Err(Error::GapTooLarge {
                counter,
                gap,
                limit: max_gap,
            });
        }
        Ok(self.advanced_unbounded(counter))
    }

    /// The chain key at `counter` (≥ self.counter) with no gap limit: for a sender or
    /// inviter deriving a point it chose itself.
    pub fn advanced_unbounded(&self, counter: u64) -> ChainPoint {
        let mut key = self.key;
        for _ in self.counter..counter {
            key = next_chain_key(&key);
        }
        ChainPoint {
            counter: counter.max(self.counter),
            key,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_steps_compose() {
        let start = ChainPoint {
            counter: 10,
            key: [1u8; 32],
        };
        let at_13 = start.advanced_to(13, 1024).unwrap();
        let step = start
            .advanced_to(11, 1)
            .unwrap()
            .advanced_to(12, 1)
            .unwrap()
            .advanced_to(13, 1)
            .unwrap();
        assert_eq!(at_13, step);
        assert!(matches!(
            start.advanced_to(10, 1024),
            Err(Error::NotVisible { .. })
        ));
        assert!(matches!(
            start.advanced_to(1035, 1024),
            Err(Error::GapTooLarge { gap: 1025, .. })
        ));
        assert_eq!(start.advanced_to(1034, 1024).unwrap().counter, 1034);
    }
}

//! Trust: which identity keys this device uses, and which a room vouches for.
//!
//! - **Pins** (device-wide, by user): the first key seen for a user is pinned; a
//!   different key the server serves later is refused ([`Error::KeyChanged`]) and
//!   recorded as offered until the user accepts it ([`Device::accept_key`]). Safety
//!   numbers ([`safety_number`]) let two people compare their pinned keys out of band;
//!   [`Device::verify`] records that they did.
//! - **Room trust**: the keys a room vouches for (grown by invites into new rooms and by
//!   TrustKey and RoomState events of trusted members). An event is authenticated only
//!   when its signer's key is trusted in the room *and* agrees with the device's pin.

use sha2::{Digest, Sha512};

use super::Device;
use crate::crypto::identity::{PublicIdentity, fingerprint_hex};
use crate::error::{Error, Result};
use crate::state::{Pin, Room};
use crate::user::{self, UserRef};

/// Label hashed in front of each fingerprint of a safety number.
pub const SAFETY_LABEL: &[u8] = b"secretd/v1/safety";
/// SHA-512 iterations per half of a safety number (as in Signal's numeric fingerprints):
/// every key an attacker tries while searching for one whose half matches costs this many
/// hashes.
pub const SAFETY_ITERATIONS: usize = 5200;

/// Adds `(who, fp)` to the room's trusted keys.
pub(crate) fn add_trust(room: &mut Room, who: &UserRef, fp: &[u8]) {
    room.trusted
        .entry(user::display(who))
        .or_default()
        .insert(fingerprint_hex(fp));
}

/// Fails unless `room` trusts `fp` for `who`.
pub(crate) fn check_trusted(room: &Room, who: &UserRef, fp: &[u8]) -> Result<()> {
    let name = user::display(who);
    let hex = fingerprint_hex(fp);
    if room
        .trusted
        .get(&name)
        .is_some_and(|set| set.contains(&hex))
    {
        Ok(())
    } else {
        Err(Error::Untrusted(format!(
            "user {name}'s key {hex} is not trusted in room {:?} (no TrustKey or room state names it)",
            room.name
        )))
    }
}

/// 30 digits for one key: SHA-512 iterated over the label and the fingerprint, its first
/// 30 bytes read as six 40-bit numbers, each mod 100000 as five digits.
fn safety_half(fp: &[u8; 32]) -> String {
    let mut h: Vec<u8> = [SAFETY_LABEL, fp.as_slice()].concat();
    for _ in 0..SAFETY_ITERATIONS {
        let mut d = Sha512::new();
        d.update(&h);
        d.update(fp);
        h = d.finalize().to_vec();
    }
    h[..30]
        .chunks(5)
        .map(|c| {
            let n = c.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
            format!("{:05}", n % 100_000)
        })
        .collect()
}

/// The safety number of two keys: 60 digits, the same whichever side computes it (the
/// two halves in ascending order), in twelve groups of five.
pub fn safety_number(a: &[u8; 32], b: &[u8; 32]) -> String {
    let mut halves = [safety_half(a), safety_half(b)];
    halves.sort();
    let digits = halves.concat();
    digits
        .as_bytes()
        .chunks(5)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect::<Vec<_>>()
        .join(" ")
}

fn parse_fp(fp: &[u8]) -> Result<[u8; 32]> {
    fp.try_into()
        .map_err(|_| Error::Protocol("a key fingerprint is not 32 bytes".into()))
}

impl Device {
    /// FetchKey of `who` with the consistency proof from the last head this device verified
    /// of its homeserver (users of other homeservers: their homeserver's proof, from 0).
    async fn fetch_logged_key(&mut self, who: &UserRef) -> Result<crate::api::UserKeys> {
        let known = if who.homeserver.is_empty() {
            self.known_tree_size()
        } else {
            0
        };
        self.api
            .fetch_key_since(who.user_id, &who.homeserver, known)
            .await
    }

    /// The user's current key as the server serves it now (fingerprint computed here).
    pub(crate) async fn server_key(&mut self, who: &UserRef) -> Result<PublicIdentity> {
        if self.failing_key_fetches > 0 {
            self.failing_key_fetches -= 1;
            return Err(Error::rpc(
                "FetchKey",
                tonic::Status::unavailable("test hook: a failing key fetch"),
            ));
        }
        let keys = self.fetch_logged_key(who).await?;
        // The key must be the one the user's homeserver's log holds.
        if who.homeserver.is_empty() {
            self.verify_served(who, &keys).await?;
        } else {
            self.verify_served_remote(who, &keys).await?;
        }
        let parsed = PublicIdentity::from_spki(&keys.current.key_data)?;
        self.keys
            .insert((user::display(who), parsed.fingerprint()), parsed.clone());
        Ok(parsed)
    }

    /// The key to encrypt to and vouch for `who`: the server's current key, which must
    /// match this device's pin (or is pinned now; with `accept_new`, a changed key is
    /// accepted and pinned instead of refused).
    pub(crate) async fn current_key_of(
        &mut self,
        who: &UserRef,
        accept_new: bool,
    ) -> Result<PublicIdentity> {
        if *who == self.me {
            return Ok(self.identity.public().clone());
        }
        let key = self.server_key(who).await?;
        self.check_pin(who, &key.fingerprint(), accept_new)?;
        Ok(key)
    }

    /// Checks `fp` against the pin of `who`: pins it when none exists; refuses a
    /// different key (recording it as offered) unless `accept_new`.
    pub(crate) fn check_pin(
        &mut self,
        who: &UserRef,
        fp: &[u8; 32],
        accept_new: bool,
    ) -> Result<()> {
        let name = user::display(who);
        let hex = fingerprint_hex(fp);
        match self.state.pins.get_mut(&name) {
            None => {
                self.state.pins.insert(name, Pin::new(hex));
                Ok(())
            }
            Some(pin) if pin.fingerprint == hex => {
                if pin.offered.take().is_some() {
                    pin.touch();
                }
                Ok(())
            }
            Some(pin) if accept_new => {
                let old = std::mem::replace(&mut pin.fingerprint, hex);
                pin.previous.push(old);
                pin.verified = false;
                pin.offered = None;
                pin.touch();
                Ok(())
            }
            Some(pin) => {
                if pin.offered.as_deref() != Some(hex.as_str()) {
                    pin.offered = Some(hex.clone());
                    pin.touch();
                }
                Err(Error::KeyChanged {
                    user: name,
                    pinned: pin.fingerprint.clone(),
                    served: hex,
                })
            }
        }
    }

    /// The key that signed an event of `who`, found by fingerprint among the keys the
    /// server holds for them (current and past), refused when it disagrees with the
    /// device's pin (a key pinned before still verifies what it signed).
    pub(crate) async fn signer_key(&mut self, who: &UserRef, fp: &[u8]) -> Result<PublicIdentity> {
        let fp = parse_fp(fp)?;
        if *who == self.me {
            if fp == self.identity.fingerprint() {
                return Ok(self.identity.public().clone());
            }
            return Err(Error::Untrusted(format!(
                "an event in your name is signed with key {}, not your identity key",
                fingerprint_hex(&fp)
            )));
        }
        let name = user::display(who);
        let hex = fingerprint_hex(&fp);
        if let Some(pin) = self.state.pins.get(&name)
            && pin.fingerprint != hex
            && !pin.previous.contains(&hex)
        {
            return Err(Error::Untrusted(format!(
                "user {name} signed with key {hex}, but this device pinned {} for them: the \
                 room vouches for a key this device does not use (compare safety numbers)",
                pin.fingerprint
            )));
        }
        let cache_key = (name, fp);
        if let Some(k) = self.keys.get(&cache_key) {
            return Ok(k.clone());
        }
        let keys = self.fetch_logged_key(who).await?;
        // The signing key must be in the user's logged history.
        let logged = if who.homeserver.is_empty() {
            Some(self.verify_served(who, &keys).await?)
        } else {
            self.verify_served_remote(who, &keys).await?
        };
        if let Some(logged) = logged
            && !logged.contains(&fp)
        {
            return Err(Error::Untrusted(format!(
                "key transparency: user {} signed with key {}, which the homeserver's key log \
                 does not hold for them",
                cache_key.0,
                fingerprint_hex(&fp)
            )));
        }
        for k in std::iter::once(&keys.current).chain(keys.past.iter()) {
            let parsed = PublicIdentity::from_spki(&k.key_data)?;
            let key_fp = parsed.fingerprint();
            self.keys.insert((cache_key.0.clone(), key_fp), parsed);
        }
        self.keys.get(&cache_key).cloned().ok_or_else(|| {
            Error::Untrusted(format!(
                "the server knows no key {} for user {}",
                fingerprint_hex(&fp),
                cache_key.0
            ))
        })
    }

    /// The pin of `who`, if any.
    pub fn pin_of(&self, who: &UserRef) -> Option<&Pin> {
        self.state.pins.get(&user::display(who))
    }

    /// Accepts the key the server serves for `who` now (after they changed keys, or to
    /// pin one): it becomes the pin, unverified. Returns (previous pin, new key), hex.
    pub async fn accept_key(&mut self, who: &UserRef) -> Result<(Option<String>, String)> {
        user::check(who)?;
        if *who == self.me {
            return Err(Error::State(
                "your own key is this device's identity key".into(),
            ));
        }
        let before = self.pin_of(who).map(|p| p.fingerprint.clone());
        let key = self.current_key_of(who, true).await?;
        Ok((before, fingerprint_hex(&key.fingerprint())))
    }

    /// The safety number of this device's key and the key pinned for `who` (pinning the
    /// server's current key first when none is pinned). Both sides see the same number.
    pub async fn safety_number(&mut self, who: &UserRef) -> Result<String> {
        let theirs = match self.pin_of(who) {
            Some(pin) => {
                let bytes = hex::decode(&pin.fingerprint).unwrap_or_default();
                parse_fp(&bytes)?
            }
            None => self.current_key_of(who, false).await?.fingerprint(),
        };
        Ok(safety_number(&self.fingerprint(), &theirs))
    }

    /// Marks the pin of `who` verified when `number` (spaces ignored) is the safety
    /// number; refuses otherwise, leaving the pin as it was.
    pub async fn verify(&mut self, who: &UserRef, number: &str) -> Result<()> {
        let expected = self.safety_number(who).await?;
        let digits = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
        if digits(number) != digits(&expected) {
            return Err(Error::Untrusted(format!(
                "that is not the safety number of your key and the key pinned for user {} \
                 ({expected}): do not trust this key until you find out why",
                user::display(who)
            )));
        }
        let pin = self
            .state
            .pins
            .get_mut(&user::display(who))
            .ok_or_else(|| Error::State("no pin".into()))?;
        pin.verified = true;
        pin.touch();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safety_numbers_are_symmetric_sixty_digits() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let n = safety_number(&a, &b);
        assert_eq!(n, safety_number(&b, &a));
        assert_eq!(n.chars().filter(char::is_ascii_digit).count(), 60);
        assert_eq!(n.split(' ').count(), 12);
        assert_ne!(n, safety_number(&a, &[3u8; 32]));
        // docs/e2ee.md §12, recomputed by docs/e2ee_vectors.py.
        assert_eq!(
            n,
            "51109 07784 69662 01242 85928 13844 51484 47522 64706 71847 26087 80425"
        );
    }
}

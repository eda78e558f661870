//! Users as the construction names them: a [`UserRef`] (homeserver + user id), never a bare
//! user id, so that federated users of different homeservers never collide.

use crate::error::Error;
pub use crate::proto::e2ee::UserRef;

/// A local user (homeserver "" = the pair's homeserver).
pub fn local(user_id: u64) -> UserRef {
    UserRef {
        homeserver: String::new(),
        user_id,
    }
}

/// The binary form used inside key derivations and associated data:
/// `u16 BE length of homeserver` ‖ homeserver (UTF-8) ‖ `u64 BE user id`.
pub fn encode(user: &UserRef) -> Vec<u8> {
    let hs = user.homeserver.as_bytes();
    let mut out = Vec::with_capacity(2 + hs.len() + 8);
    // Homeserver names are DNS names; anything longer than u16 is refused upstream.
    out.extend_from_slice(&(hs.len().min(u16::MAX as usize) as u16).to_be_bytes());
    out.extend_from_slice(&hs[..hs.len().min(u16::MAX as usize)]);
    out.extend_from_slice(&user.user_id.to_be_bytes());
    out
}

/// The text form: `42` for a user of the pair's homeserver, `42@example.org` otherwise.
/// It is also the key of per-user maps in the local state.
pub fn display(user: &UserRef) -> String {
    if user.homeserver.is_empty() {
        user.user_id.to_string()
    } else {
        format!("{}@{}", user.user_id, user.homeserver)
    }
}

/// Parses the text form (`42` or `42@example.org`).
pub fn parse(text: &str) -> Result<UserRef, Error> {
    let (id, homeserver) = match text.split_once('@') {
        Some((id, hs)) => (id, hs),
        None => (text, ""),
    };
    let user_id: u64 = id
        .trim()
        .parse()
        .ok()
        .filter(|&u| u > 0 && u < (1 << 63))
        .ok_or_else(|| {
            Error::State(format!(
                "{text:?} is not a user: write a user id (1 to 2^63-1), optionally followed by @homeserver"
            ))
        })?;
    Ok(UserRef {
        homeserver: homeserver.trim().to_string(),
        user_id,
    })
}

/// Fails unless the reference has a sane homeserver and a valid id.
pub fn check(user: &UserRef) -> Result<(), Error> {
    if user.user_id == 0 || user.user_id >= (1 << 63) || user.homeserver.len() > 255 {
        return Err(Error::Protocol(format!(
            "user reference {} is out of range",
            display(user)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips() {
        for t in ["42", "7@b.example"] {
            assert_eq!(display(&parse(t).unwrap()), t);
        }
        assert!(parse("0").is_err());
        assert!(parse("bob").is_err());
        assert_eq!(
            hex::encode(encode(&parse("42").unwrap())),
            "0000000000000000002a"
        );
        assert_eq!(
            hex::encode(encode(&parse("1@ab").unwrap())),
            "000261620000000000000001"
        );
    }
}

//! Keys: a substituted key at invite time is refused with a warning naming both keys (no
//! invite goes out), until the user accepts it; safety numbers agree on both sides and
//! change with a substituted key.

use secretd_client::Error;
use secretd_client::crypto::identity::{Identity, fingerprint_hex};
use secretd_client::device::History;

use super::{Db, fixed_parts, local};
use crate::common::{Backend, Server};
use crate::on_both_stores;

on_both_stores!(a_substituted_key_is_refused_until_accepted);

async fn a_substituted_key_is_refused_until_accepted(backend: Backend) {
    let server = Server::start(backend).await;
    let db = Db::of(&server).await;
    let (_, mut alice) = server.new_user("pa").await;
    let (bob_id, mut bob) = server.new_user("pb").await;
    let bob_ref = local(bob_id);
    let first = alice.create_room("first", vec![], "").await.unwrap();
    alice
        .invite(&first, &bob_ref, History::All, false)
        .await
        .unwrap();
    bob.accept_invites().await.unwrap();
    let number = alice.safety_number(&bob_ref).await.unwrap();
    assert_eq!(
        number,
        bob.safety_number(&local(alice.me().user_id)).await.unwrap(),
        "both sides compute the same number"
    );
    alice.verify(&bob_ref, &number).await.unwrap();

    // The server swaps in a key of its own for Bob.
    let evil = Identity::generate().unwrap();
    db.set_current_key(bob_id, evil.public().spki()).await;
    let second = alice.create_room("second", vec![], "").await.unwrap();
    let before = (fixed_parts(&alice, &second), db.invites_of(bob_id).await);
    let err = alice
        .invite(&second, &bob_ref, History::All, false)
        .await
        .unwrap_err();
    let (pinned, served) = (
        fingerprint_hex(&bob.fingerprint()),
        fingerprint_hex(&evil.fingerprint()),
    );
    assert!(
        matches!(&err, Error::KeyChanged { pinned: p, served: s, .. } if *p == pinned && *s == served),
        "{err}"
    );
    assert!(
        err.to_string().starts_with(&format!(
            "the server now serves a different key for user {bob_id}: {served} (this device pinned {pinned})"
        )),
        "{err}"
    );
    assert_eq!(
        (fixed_parts(&alice, &second), db.invites_of(bob_id).await),
        before,
        "no TrustKey, no invite"
    );
    let pin = alice.pin_of(&bob_ref).unwrap();
    assert_eq!(
        (&pin.fingerprint, pin.verified, pin.offered.as_deref()),
        (&pinned, true, Some(served.as_str())),
        "the pin stays; the offered key is recorded for the user to see"
    );
    // The safety number still covers the pinned key; a rotation does not rekey to the
    // substituted one either.
    assert_eq!(alice.safety_number(&bob_ref).await.unwrap(), number);
    let rotation = alice.rotate(&first, vec![]).await.unwrap();
    assert!(rotation.rekeyed.is_empty(), "{rotation:?}");
    assert!(
        rotation.skipped[0].1.contains("different key"),
        "{rotation:?}"
    );

    // Accepted on purpose (after the users talked), it becomes the pin, unverified, and
    // the safety number changes.
    alice
        .invite(&second, &bob_ref, History::All, true)
        .await
        .unwrap();
    let pin = alice.pin_of(&bob_ref).unwrap();
    assert_eq!((&pin.fingerprint, pin.verified), (&served, false));
    assert_ne!(alice.safety_number(&bob_ref).await.unwrap(), number);
    server.stop().await;
}

//! Keys: a substituted key at invite time is refused with a warning naming both keys (no
//! invite goes out), until the user accepts it; safety numbers agree on both sides and
//! change with a substituted key.

use secretd_client::Device;
use secretd_client::Error;
use secretd_client::crypto::identity::{Identity, fingerprint_hex};
use secretd_client::device::History;

use super::{Db, fixed_parts, local};
use crate::common::{Backend, Server};
use crate::on_both_stores;

on_both_stores!(
    a_substituted_key_is_refused_until_accepted,
    a_key_kept_out_of_the_log_is_refused,
    a_logged_substitute_alarms_its_victim,
);

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

/// The server serves a key it kept out of its key log (the row claims the leaf of the
/// user's logged key): the proof served with it names the logged key, and the inviter
/// refuses before anything is sent, pinned or not.
async fn a_key_kept_out_of_the_log_is_refused(backend: Backend) {
    let server = Server::start(backend).await;
    let db = Db::of(&server).await;
    let (_, mut alice) = server.new_user("pa").await;
    let (bob_id, bob) = server.new_user("pb").await;
    let (_, mut carol) = server.new_user("pc").await;
    let bob_ref = local(bob_id);
    db.wait_logged(bob_id, &bob.fingerprint()).await;
    let evil = Identity::generate().unwrap();
    db.set_current_key_unlogged(bob_id, evil.public().spki())
        .await;
    // Carol never saw Bob's key (first contact); Alice neither: both refuse.
    for device in [&mut alice, &mut carol] {
        let room = device.create_room("r", vec![], "").await.unwrap();
        let before = (fixed_parts(device, &room), db.invites_of(bob_id).await);
        let err = device
            .invite(&room, &bob_ref, History::All, false)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Untrusted(_)), "{err:?}");
        let served = fingerprint_hex(&evil.fingerprint());
        assert!(
            err.to_string().contains(&format!(
                "the homeserver serves key {served} for user {bob_id}"
            )) && err.to_string().contains("the served key is not in the log"),
            "{err}"
        );
        assert_eq!(
            (fixed_parts(device, &room), db.invites_of(bob_id).await),
            before,
            "nothing sent"
        );
        assert!(device.pin_of(&bob_ref).is_none(), "nothing pinned");
    }
    // The server is still up and consistent: Carol invites Alice.
    let room = carol.create_room("ok", vec![], "").await.unwrap();
    carol
        .invite(&room, &local(alice.me().user_id), History::All, false)
        .await
        .unwrap();
    server.stop().await;
}

/// The server logs a substitute key for Bob: Alice (who pinned Bob's key) is warned, and
/// Bob's device alarms at its next check, and so does every login of Bob, until he
/// acknowledges the entry; a later foreign entry alarms again.
async fn a_logged_substitute_alarms_its_victim(backend: Backend) {
    let server = Server::start(backend).await;
    let db = Db::of(&server).await;
    let (_, mut alice) = server.new_user("pa").await;
    let (bob_id, mut bob) = server.new_user("pb").await;
    let bob_ref = local(bob_id);
    let room = alice.create_room("first", vec![], "").await.unwrap();
    alice
        .invite(&room, &bob_ref, History::All, false)
        .await
        .unwrap();
    db.wait_logged(bob_id, &bob.fingerprint()).await;
    assert_eq!(bob.monitor_own_key().await.unwrap(), 1, "Bob's own entry");
    assert_eq!(bob.monitor_own_key().await.unwrap(), 0, "nothing new");

    let evil = Identity::generate().unwrap();
    db.set_current_key(bob_id, evil.public().spki()).await;
    let second = alice.create_room("second", vec![], "").await.unwrap();
    let err = alice
        .invite(&second, &bob_ref, History::All, false)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::KeyChanged { .. }), "{err:?}");

    let evil_hex = hex::encode(evil.fingerprint());
    let alarm = |err: Error| match err {
        Error::KeyAlarm {
            what,
            newest_seq,
            evidence,
        } => (what, newest_seq, evidence),
        other => panic!("not an alarm: {other:?}"),
    };
    let (what, newest, evidence) = alarm(bob.monitor_own_key().await.unwrap_err());
    assert_eq!(newest, 2);
    assert!(
        what.starts_with(&format!("entry 2 (key {evil_hex}, logged at ")),
        "{what}"
    );
    let evidence: serde_json::Value = serde_json::from_str(&evidence).unwrap();
    assert_eq!(evidence["user"], bob_id);
    assert_eq!(evidence["entries"][0]["fingerprint"], evil_hex.as_str());
    assert_eq!(
        evidence["this_device_key"],
        hex::encode(bob.fingerprint()).as_str()
    );
    assert!(evidence["head"]["signature"].as_str().unwrap().len() == 128);
    // It stays an alarm; a new device of Bob alarms at login.
    alarm(bob.monitor_own_key().await.unwrap_err());
    let login = Device::login(server.api(bob_id).await, "pb").await;
    let (_, newest, _) = alarm(login.err().expect("the login alarms"));
    assert_eq!(newest, 2);

    // Acknowledged through 1, entry 2 still alarms; an entry that does not exist cannot
    // be acknowledged; through 2, the device goes on, and so does a new login.
    bob.acknowledge_key_alarm(1).await.unwrap();
    alarm(bob.monitor_own_key().await.unwrap_err());
    let err = bob.acknowledge_key_alarm(3).await.unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "holds entries of user {bob_id} up to 2: there is no entry 3"
        )),
        "{err}"
    );
    bob.acknowledge_key_alarm(2).await.unwrap();
    assert_eq!(bob.monitor_own_key().await.unwrap(), 0);
    Device::login_acknowledging(server.api(bob_id).await, "pb", 2)
        .await
        .unwrap();

    // A second substitute is a new alarm.
    let worse = Identity::generate().unwrap();
    db.set_current_key(bob_id, worse.public().spki()).await;
    let (what, newest, _) = alarm(bob.monitor_own_key().await.unwrap_err());
    assert_eq!(newest, 3);
    assert!(what.starts_with("entry 3 "), "{what}");
    server.stop().await;
}

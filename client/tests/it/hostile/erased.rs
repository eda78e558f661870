//! Erased accounts (DESIGN §13, docs/kt.md §1 and §5): the log's erased entry (a
//! fingerprint of 32 zero bytes) is never a usable key. A server that serves a key of an
//! erased account again is refused by the inviter, with nothing sent; a server that logs
//! an erasure its user did not ask for makes that user's device alarm, at every check and
//! at login, as for a key it never posted.

use secretd_client::Device;
use secretd_client::Error;
use secretd_client::device::History;
use secretd_client::proto::secret::DeleteAccountRequest;

use super::{Db, fixed_parts, identity_of, local};
use crate::common::{Backend, Server};
use crate::on_both_stores;

on_both_stores!(
    a_key_served_for_an_erased_account_is_refused,
    an_erasure_the_user_did_not_ask_for_alarms,
);

/// Bob erases his account; the server later serves his key again (the row restored as it
/// was, logged at his first entry). The proof's newest entry is his erased entry: Alice
/// refuses, naming the erasure, and sends nothing.
async fn a_key_served_for_an_erased_account_is_refused(backend: Backend) {
    let server = Server::start(backend).await;
    let db = Db::of(&server).await;
    let (alice_id, mut alice) = server.new_user("pa").await;
    let (bob_id, bob) = server.new_user("pb").await;
    let bob_ref = local(bob_id);
    db.wait_logged(alice_id, &alice.fingerprint()).await;
    db.wait_logged(bob_id, &bob.fingerprint()).await;
    let spki = identity_of(&bob).public().spki().to_vec();
    server
        .api(bob_id)
        .await
        .stub()
        .delete_account(DeleteAccountRequest {
            user_id: bob_id,
            erase_messages: false,
        })
        .await
        .expect("DeleteAccount");
    db.wait_erasure_logged(bob_id).await;
    db.wait_server_knows_erasure(&server, alice_id, bob_id)
        .await;

    // The honest server: no key for Bob.
    let room = alice.create_room("r", vec![], "").await.unwrap();
    let err = alice
        .invite(&room, &bob_ref, History::All, false)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("erased their account"), "{err:?}");

    // The hostile one serves his key again.
    db.restore_key(bob_id, &spki).await;
    let before = (fixed_parts(&alice, &room), db.invites_of(bob_id).await);
    let err = alice
        .invite(&room, &bob_ref, History::All, false)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Untrusted(_)), "{err:?}");
    assert!(
        err.to_string().contains(&format!(
            "key transparency: the log of localhost records that user {bob_id}'s account was \
             erased (entry 2, logged at "
        )) && err
            .to_string()
            .contains("no key served for them is usable, and this one is refused"),
        "{err}"
    );
    assert_eq!(
        (fixed_parts(&alice, &room), db.invites_of(bob_id).await),
        before,
        "nothing sent"
    );
    assert!(alice.pin_of(&bob_ref).is_none(), "nothing pinned");
    server.stop().await;
}

/// The server logs an erasure of Bob, who did not ask for it: his device alarms at its
/// next check and at every login (the key alarm, with the evidence), saying the server
/// logged the account as erased.
async fn an_erasure_the_user_did_not_ask_for_alarms(backend: Backend) {
    let server = Server::start(backend).await;
    let db = Db::of(&server).await;
    let (bob_id, mut bob) = server.new_user("pb").await;
    db.wait_logged(bob_id, &bob.fingerprint()).await;
    assert_eq!(bob.monitor_own_key().await.unwrap(), 1, "Bob's own entry");

    db.record_erasure(bob_id).await;
    db.wait_erasure_logged(bob_id).await;
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
        what.starts_with("entry 2 (logged at ")
            && what.contains(&format!(
                "records that the homeserver erased this account (user {bob_id}): the server \
                 logged the account as erased, and this device did not ask for it"
            )),
        "{what}"
    );
    let evidence: serde_json::Value = serde_json::from_str(&evidence).unwrap();
    assert_eq!(
        evidence["entries"][0]["fingerprint"],
        "00".repeat(32).as_str()
    );
    assert_eq!(evidence["user"], bob_id);
    // It stays an alarm, and a login of Bob alarms the same way.
    alarm(bob.monitor_own_key().await.unwrap_err());
    let login = Device::login(server.api(bob_id).await, "pb").await;
    let (what, newest, _) = alarm(login.err().expect("the login alarms"));
    assert_eq!(newest, 2);
    assert!(
        what.contains("the server logged the account as erased"),
        "{what}"
    );
    server.stop().await;
}

//! Rejections: a changed ciphertext, a bad signature, a forged sender and an untrusted key
//! are each refused with a reason, and the good events around them still decrypt.

use prost::Message;
use secretd_client::Device;
use secretd_client::crypto::envelope::{self, Position};
use secretd_client::crypto::identity::Identity;
use secretd_client::crypto::ratchet::message_key;
use secretd_client::crypto::{random, uuid_bytes};
use secretd_client::device::{Content, Incoming};
use secretd_client::event::{self, Kind, SignedEvent, Text};
use secretd_client::user::{self, UserRef};

use crate::common::{Backend, Server, rewound, shared_room};

/// How a crafted event is spoiled.
enum Spoil {
    /// Flip a byte of the AES-GCM ciphertext after sealing.
    Ciphertext,
    /// Flip a byte of the RSA-PSS signature before sealing.
    Signature,
    /// Claim another sender in the signed body.
    Sender(UserRef),
    /// Sign with this key instead of the device's identity.
    Key(Box<Identity>),
}

/// Posts, as `dev`'s user, a correctly keyed event spoiled as asked.
async fn post_spoiled(dev: &mut Device, room: &str, text: &str, spoil: Spoil) {
    dev.sync_room(room).await.unwrap();
    let me = dev.me().clone();
    let own = Identity::from_pkcs8(&dev.state().identity_pkcs8).unwrap();
    let stream = &dev.room(room).unwrap().message;
    let (epoch_hex, epoch) = stream.current_epoch().unwrap();
    let counter = stream.last_counter + 1;
    let point = epoch.cursor.advanced_unbounded(counter);
    let epoch_id: [u8; 16] = hex::decode(epoch_hex).unwrap().try_into().unwrap();
    let stream_id = stream.stream_id.clone();
    let sid = uuid_bytes(&stream_id).unwrap();

    let (signer, claimed) = match &spoil {
        Spoil::Key(k) => (&**k, me.clone()),
        Spoil::Sender(other) => (&own, other.clone()),
        _ => (&own, me.clone()),
    };
    let body = event::body(claimed, signer, Kind::Text(Text { body: text.into() }));
    let mut plaintext = event::sign_event(signer, &sid, counter, &epoch_id, &body).unwrap();
    if let Spoil::Signature = spoil {
        let mut signed = SignedEvent::decode(plaintext.as_slice()).unwrap();
        signed.signature[100] ^= 0x40;
        plaintext = signed.encode_to_vec();
    }
    let pos = Position {
        stream: &sid,
        counter,
        epoch: &epoch_id,
        sender: &me,
    };
    let mut sealed = envelope::seal_event(
        &message_key(&point.key),
        pos,
        &random().unwrap(),
        &plaintext,
    );
    if let Spoil::Ciphertext = spoil {
        let at = envelope::HEADER_LEN + 3;
        sealed[at] ^= 1;
    }
    dev.api()
        .post_message(&stream_id, counter, sealed)
        .await
        .unwrap();
}

fn rejection(e: &Incoming) -> String {
    match &e.content {
        Err(reason) => reason.clone(),
        ok => panic!("event {} was accepted: {ok:?}", e.event_id),
    }
}

fn text(e: &Incoming) -> &str {
    match &e.content {
        Ok(Content::Text(t)) => t,
        other => panic!("event {} is not a readable text: {other:?}", e.event_id),
    }
}

async fn spoiled_events_are_rejected(backend: Backend) {
    let server = Server::start(backend).await;
    let (_, mut alice) = server.new_user("pw a").await;
    let (bob_id, mut bob) = server.new_user("pw b").await;
    let (carol_id, _carol) = server.new_user("pw c").await;
    let room = shared_room(&mut alice, &mut bob, bob_id).await;
    alice.send_text(&room, "good 1").await.unwrap();

    post_spoiled(&mut bob, &room, "flipped ciphertext", Spoil::Ciphertext).await;
    post_spoiled(&mut bob, &room, "bad signature", Spoil::Signature).await;
    post_spoiled(
        &mut bob,
        &room,
        "pretends to be carol",
        Spoil::Sender(user::local(carol_id)),
    )
    .await;
    let stranger = Identity::generate().unwrap();
    post_spoiled(
        &mut bob,
        &room,
        "signed with an unknown key",
        Spoil::Key(Box::new(stranger)),
    )
    .await;
    bob.send_text(&room, "good 2").await.unwrap();

    let got = alice.sync_room(&room).await.unwrap();
    let messages: Vec<&Incoming> = got
        .iter()
        .filter(|e| e.stream == secretd_client::device::StreamKind::Message)
        .collect();
    assert_eq!(messages.len(), 6, "{messages:?}");
    assert_eq!(text(messages[0]), "good 1");
    let reasons: Vec<String> = messages[1..5].iter().map(|e| rejection(e)).collect();
    assert!(
        reasons[0].starts_with("ciphertext rejected"),
        "{}",
        reasons[0]
    );
    assert!(reasons[1].starts_with("bad signature"), "{}", reasons[1]);
    assert!(
        reasons[2].contains("claims another sender"),
        "{}",
        reasons[2]
    );
    assert!(reasons[3].starts_with("untrusted sender"), "{}", reasons[3]);
    assert_eq!(text(messages[5]), "good 2");

    // History reading rejects the same events the same way.
    let history = alice.history(&room).await.unwrap();
    let again: Vec<String> = history.events[1..5].iter().map(rejection).collect();
    assert_eq!(again, reasons);

    // A changed counter (the server lying about where an event sits) does not decrypt.
    let raw = alice
        .api()
        .fetch_messages_page(&alice.room(&room).unwrap().message.stream_id.clone(), 0, 1)
        .await
        .unwrap();
    let mut moved = raw.messages[0].clone();
    moved.message.as_mut().unwrap().id += 1;
    let mut fresh = Device::from_state(alice.api().clone(), rewound(&alice, &room)).unwrap();
    let out = fresh.receive(moved).await.unwrap();
    assert!(
        rejection(&out[0]).starts_with("ciphertext rejected"),
        "{:?}",
        out[0]
    );
    server.stop().await;
}

/// A member sends an invite whose chain key for a known epoch is not on the real chain:
/// the invite is refused and the room's keys stay intact.
async fn contradicting_invite_is_refused(backend: Backend) {
    let server = Server::start(backend).await;
    let (alice_id, mut alice) = server.new_user("pw a").await;
    let (bob_id, mut bob) = server.new_user("pw b").await;
    let room = shared_room(&mut alice, &mut bob, bob_id).await;
    alice.send_text(&room, "before").await.unwrap();

    let bob_key = Identity::from_pkcs8(&bob.state().identity_pkcs8).unwrap();
    let r = bob.room(&room).unwrap().clone();
    let (epoch, state) = r.message.current_epoch().unwrap();
    let bogus = event::ChainState {
        epoch: hex::decode(epoch).unwrap(),
        generation: state.generation,
        counter: state.origin.counter + 1,
        chain_key: vec![7; 32],
        start: state.start_counter(),
    };
    let alice_key = secretd_client::crypto::identity::PublicIdentity::from_spki(
        &bob.api()
            .fetch_key(alice_id, "")
            .await
            .unwrap()
            .current
            .key_data,
    )
    .unwrap();
    let trusted = vec![event::TrustedUser {
        user: Some(user::local(bob_id)),
        fingerprints: vec![bob_key.fingerprint().to_vec()],
    }];
    let body = event::InviteBody {
        version: event::BODY_VERSION,
        pair_id: r.pair_id.clone(),
        message_id: r.message.stream_id.clone(),
        state_id: r.state.stream_id.clone(),
        inviter: Some(user::local(bob_id)),
        inviter_fingerprint: bob_key.fingerprint().to_vec(),
        invitee: Some(user::local(alice_id)),
        invitee_fingerprint: alice_key.fingerprint().to_vec(),
        message_chains: vec![bogus],
        room: Some(event::RoomState {
            name: "r".into(),
            trusted,
            ..Default::default()
        }),
        ..Default::default()
    };
    let signed = event::sign_invite(&bob_key, &body).unwrap();
    let sealed = secretd_client::crypto::invite::seal_invite(
        &alice_key,
        &uuid_bytes(&r.pair_id).unwrap(),
        &user::local(alice_id),
        &signed,
    )
    .unwrap();
    bob.api()
        .send_invite(&r.pair_id, alice_id, "", sealed)
        .await
        .unwrap();

    let results = alice.accept_invites().await.unwrap();
    let refused = results
        .iter()
        .find(|a| a.from.user_id == bob_id)
        .expect("bob's invite");
    let why = refused
        .result
        .as_ref()
        .expect_err("a contradicting invite was accepted");
    assert!(why.contains("contradict"), "{why}");
    alice.send_text(&room, "after").await.unwrap();
    let history = alice.history(&room).await.unwrap();
    let texts: Vec<&str> = history.events.iter().map(text).collect();
    assert_eq!(texts, ["before", "after"]);
    server.stop().await;
}

crate::on_both_stores!(spoiled_events_are_rejected, contradicting_invite_is_refused);

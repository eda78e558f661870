//! The password backup (docs/e2ee.md §2): version 1 blobs of older clients still open and
//! are re-wrapped as version 2 Argon2id at the next login; the server cannot hand one
//! user's backup to another, re-label its owner, or lower its KDF parameters.

use secretd_client::api::Api;
use secretd_client::crypto::blob::{self, Kdf};
use secretd_client::crypto::identity::Identity;
use secretd_client::crypto::seal;
use secretd_client::device::identity::BackupUpgrade;
use secretd_client::user::{self, UserRef};
use secretd_client::{Device, Error};

use crate::common::{Backend, Server, fresh_user};

const PASSWORD: &str = "correct horse battery staple";

/// A blob laid out by hand from docs/e2ee.md §2 (not by the client's writer, which only
/// writes version 2 at the default cost or more); `owner` goes in version 2 only.
fn blob_by_hand(version: u8, kdf: Kdf, owner: Option<&UserRef>, pkcs8: &[u8]) -> Vec<u8> {
    let (salt, nonce) = ([0x5a; 16], [0xa5; 12]);
    let mut header = b"sdpk".to_vec();
    header.push(version);
    let mut key = [0u8; 32];
    match kdf {
        Kdf::Pbkdf2 { iterations } => {
            header.push(1);
            header.extend_from_slice(&iterations.to_be_bytes());
            let params = pbkdf2::Params::new_with_output_len(iterations, 32).unwrap();
            let sha256 = pbkdf2::Algorithm::Pbkdf2Sha256;
            pbkdf2::pbkdf2_hmac_with_params(PASSWORD.as_bytes(), &salt, sha256, params, &mut key);
        }
        Kdf::Argon2id {
            memory_kib,
            passes,
            lanes,
        } => {
            header.push(2);
            for v in [memory_kib, passes, lanes] {
                header.extend_from_slice(&v.to_be_bytes());
            }
            let params = argon2::Params::new(memory_kib, passes, lanes, Some(32)).unwrap();
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
                .hash_password_into(PASSWORD.as_bytes(), &salt, &mut key)
                .unwrap();
        }
    }
    if let Some(owner) = owner {
        header.extend_from_slice(&user::encode(owner));
    }
    header.extend_from_slice(&salt);
    header.extend_from_slice(&nonce);
    let aad = match version {
        1 => header.clone(),
        _ => [&b"secretd/v1/blob"[..], &header].concat(),
    };
    let sealed = seal(&key, &nonce, &aad, pkcs8);
    [header, sealed].concat()
}

/// A new user whose backup is `blob(their identity's PKCS#8, ref("", their id))`, and
/// whose public key is posted (as an older client, or a hostile server, left them).
async fn user_with_backup(
    server: &Server,
    blob: impl FnOnce(&[u8], &UserRef) -> Vec<u8>,
) -> (Api, u64) {
    let id = fresh_user();
    let api = server.api(id).await;
    let identity = Identity::generate().unwrap();
    let sealed = blob(&identity.to_pkcs8().unwrap(), &user::local(id));
    api.post_private_key(&sealed, Some(0)).await.unwrap();
    api.post_key(identity.public().spki()).await.unwrap();
    (api, id)
}

async fn stored_header(api: &Api) -> (blob::Header, u64) {
    let (sealed, version) = api.fetch_private_key().await.unwrap().expect("a backup");
    (blob::header(&sealed).unwrap(), version)
}

/// The error a login fails with (a Device has no Debug).
async fn login_error(api: Api) -> Error {
    match Device::login(api, PASSWORD).await {
        Ok(_) => panic!("the login succeeded"),
        Err(e) => e,
    }
}

async fn version_1_backups_are_rewrapped_at_login(backend: Backend) {
    let server = Server::start(backend).await;
    let v1_kdfs = [
        Kdf::Pbkdf2 {
            iterations: 600_000,
        },
        Kdf::Argon2id {
            memory_kib: 19 * 1024,
            passes: 2,
            lanes: 1,
        },
    ];
    for kdf in v1_kdfs {
        let (api, id) =
            user_with_backup(&server, |pkcs8, _| blob_by_hand(1, kdf, None, pkcs8)).await;
        let (before, v1_version) = stored_header(&api).await;
        assert_eq!((before.version, before.kdf), (1, kdf));

        let (device, upgrade) = Device::login_and_upgrade(api.clone(), PASSWORD)
            .await
            .expect("a version 1 backup opens");
        assert!(matches!(upgrade, BackupUpgrade::Rewrapped), "{upgrade:?}");
        let (after, version) = stored_header(&api).await;
        assert_eq!(
            (after.version, after.kdf, after.owner),
            (2, Kdf::DEFAULT, Some(user::local(id)))
        );
        assert!(version > v1_version);
        assert_eq!(device.state().backup_version, version);

        // The next login finds it current and leaves it alone; the identity is the same.
        let (again, upgrade) = Device::login_and_upgrade(api.clone(), PASSWORD)
            .await
            .expect("the re-wrapped backup opens");
        assert!(matches!(upgrade, BackupUpgrade::Current), "{upgrade:?}");
        assert_eq!(again.fingerprint(), device.fingerprint());
        assert_eq!(stored_header(&api).await.1, version);
    }
}

async fn init_and_password_change_write_version_2(backend: Backend) {
    let server = Server::start(backend).await;
    let (id, mut device) = server.new_user(PASSWORD).await;
    let (header, _) = stored_header(device.api()).await;
    assert!(header.is_current());
    assert_eq!(
        (header.version, header.kdf, header.owner),
        (2, Kdf::DEFAULT, Some(user::local(id)))
    );
    device
        .change_password("another password", Kdf::DEFAULT)
        .await
        .unwrap();
    let (header, _) = stored_header(device.api()).await;
    assert_eq!((header.version, header.kdf), (2, Kdf::DEFAULT));
    assert!(matches!(
        login_error(server.api(id).await).await,
        Error::WrongPassword
    ));
    Device::login(server.api(id).await, "another password")
        .await
        .expect("the new password opens it");
    // Writers refuse anything weaker than the default (and PBKDF2 altogether).
    let weak = Kdf::Argon2id {
        memory_kib: 19 * 1024,
        passes: 2,
        lanes: 1,
    };
    for kdf in [
        weak,
        Kdf::Pbkdf2 {
            iterations: 600_000,
        },
    ] {
        let e = device.change_password(PASSWORD, kdf).await.unwrap_err();
        assert!(matches!(e, Error::Blob(_)), "{e}");
    }
}

crate::on_both_stores!(
    version_1_backups_are_rewrapped_at_login,
    init_and_password_change_write_version_2
);

/// A hostile server stores alice's backup (same password) as bob's: bob's login refuses it
/// by name, before any key derivation, and posts no key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_users_backup_is_refused() {
    let server = Server::start(Backend::Sqlite).await;
    let (alice, alice_dev) = server.new_user(PASSWORD).await;
    let (alices_blob, _) = alice_dev.api().fetch_private_key().await.unwrap().unwrap();
    let bob = fresh_user();
    let bob_api = server.api(bob).await;
    bob_api
        .post_private_key(&alices_blob, Some(0))
        .await
        .unwrap();

    let e = login_error(bob_api.clone()).await;
    assert!(matches!(e, Error::Blob(_)), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!(
            "unusable private-key backup: this backup belongs to user {alice}, not to you \
             (user {bob}): the server handed you another user's backup"
        )
    );
    // No device: bob has no key on the server, and his slot still holds what was put there.
    let no_key = bob_api
        .fetch_key(bob, "")
        .await
        .expect_err("no key for bob");
    assert_eq!(no_key.code(), Some(tonic::Code::NotFound));
    assert_eq!(
        bob_api.fetch_private_key().await.unwrap().unwrap().0,
        alices_blob
    );
}

/// The same, re-labelled: the server writes bob into the owner field. The tag covers the
/// header, so it does not open (and bob gets no identity).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relabelled_owner_does_not_open() {
    let server = Server::start(Backend::Sqlite).await;
    let (alice, alice_dev) = server.new_user(PASSWORD).await;
    let (mut blob, _) = alice_dev.api().fetch_private_key().await.unwrap().unwrap();
    let bob = fresh_user();
    let owner = 18..28; // "sdpk" 2 2 m t p, then ref("", id): 2 + 8 bytes
    assert_eq!(blob[owner.clone()], user::encode(&user::local(alice))[..]);
    blob[owner].copy_from_slice(&user::encode(&user::local(bob)));
    let bob_api = server.api(bob).await;
    bob_api.post_private_key(&blob, Some(0)).await.unwrap();

    let e = login_error(bob_api.clone()).await;
    assert!(matches!(e, Error::WrongPassword), "{e:?}");
    assert_eq!(
        e.to_string(),
        "wrong password: it does not open your private-key backup (or the backup was altered)"
    );
    let no_key = bob_api
        .fetch_key(bob, "")
        .await
        .expect_err("no key for bob");
    assert_eq!(no_key.code(), Some(tonic::Code::NotFound));
}

/// A version 2 blob claiming weaker Argon2id than 64 MiB / 3 passes is refused before any
/// derivation: sealed that way (a valid tag), or lowered by the server in a good blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn weak_version_2_parameters_are_refused() {
    let server = Server::start(Backend::Sqlite).await;
    let weak = [(64 * 1024 - 1, 3), (64 * 1024, 2), (19 * 1024, 2)];
    for (memory_kib, passes) in weak {
        let kdf = Kdf::Argon2id {
            memory_kib,
            passes,
            lanes: 1,
        };
        let expected = format!(
            "unusable private-key backup: Argon2id with {memory_kib} KiB, {passes} passes, 1 \
             lanes is too weak for a version 2 backup (at least 65536 KiB, 3 passes, 1 lane)"
        );
        // Sealed that way, with a valid tag (not by this client: it refuses to write it).
        let (api, _) = user_with_backup(&server, |pkcs8, owner| {
            blob_by_hand(2, kdf, Some(owner), pkcs8)
        })
        .await;
        let e = login_error(api).await;
        assert!(matches!(e, Error::Blob(_)), "{e:?}");
        assert_eq!(e.to_string(), expected);

        // A good blob whose parameters the server lowered.
        let (id, device) = server.new_user(PASSWORD).await;
        let (mut lowered, version) = device.api().fetch_private_key().await.unwrap().unwrap();
        lowered[6..10].copy_from_slice(&memory_kib.to_be_bytes());
        lowered[10..14].copy_from_slice(&passes.to_be_bytes());
        let api = server.api(id).await;
        api.post_private_key(&lowered, Some(version)).await.unwrap();
        let e = login_error(api).await;
        assert!(matches!(e, Error::Blob(_)), "{e:?}");
        assert_eq!(e.to_string(), expected);
    }
}

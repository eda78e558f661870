//! Generated protobuf types: the server's API (`../proto`, client stubs only) and the
//! client's own E2EE structures (`proto/secretd/e2ee/v1/e2ee.proto`).

#![allow(missing_docs, clippy::all)]

/// `protocol.secret.v1`: the SecretService API.
pub mod secret {
    tonic::include_proto!("protocol.secret.v1");
}

/// `secretd.e2ee.v1`: what travels inside encryption (events, invites).
pub mod e2ee {
    tonic::include_proto!("secretd.e2ee.v1");
}

/// `protocol.secret.federation.v1`: the server-to-server service; the client calls only
/// its unauthenticated `ServerKey` (its homeserver's name).
pub mod federation {
    include!(concat!(
        env!("OUT_DIR"),
        "/federation/protocol.secret.federation.v1.rs"
    ));
}

//! Generated protobuf types: the server's API (`../proto`, client stubs only) and the
//! client's own E2EE structures (`proto/secretd/e2ee/v1/e2ee.proto`).

#![allow(missing_docs, clippy::all)]

/// The packages nested as protobuf names them, so that generated code referring from one
/// package to another (`secretd.e2ee.v1` carries `protocol.secret.v1.TreeHead`) resolves.
pub mod protocol {
    /// `protocol.secret`.
    pub mod secret {
        /// `protocol.secret.v1`.
        pub mod v1 {
            tonic::include_proto!("protocol.secret.v1");
        }
    }
}

/// See [`protocol`].
pub mod secretd {
    /// `secretd.e2ee`.
    pub mod e2ee {
        /// `secretd.e2ee.v1`.
        pub mod v1 {
            tonic::include_proto!("secretd.e2ee.v1");
        }
    }
}

/// `protocol.secret.v1`: the SecretService API.
pub use protocol::secret::v1 as secret;

/// `secretd.e2ee.v1`: what travels inside encryption (events, invites).
pub use secretd::e2ee::v1 as e2ee;

/// `protocol.secret.federation.v1`: the server-to-server service; the client calls only
/// its unauthenticated `ServerKey` (its homeserver's name).
pub mod federation {
    include!(concat!(
        env!("OUT_DIR"),
        "/federation/protocol.secret.federation.v1.rs"
    ));
}

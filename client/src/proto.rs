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

/// ListChannelPairs with paging, written by hand so that it works against servers with
/// and without the paging fields: an older server ignores `after_pair_id`/`limit` and
/// never sets `has_more` (one page), a newer one pages.
pub mod paging {
    /// `ListChannelPairsRequest` with `after_pair_id = 1`, `limit = 2`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListChannelPairsPageRequest {
        /// Pairs with an id after this one ("" = from the first).
        #[prost(string, tag = "1")]
        pub after_pair_id: String,
        /// Page size (0 = the server's default).
        #[prost(uint32, tag = "2")]
        pub limit: u32,
    }

    /// `ListChannelPairsResponse` with `has_more = 2`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListChannelPairsPage {
        /// The pairs of this page.
        #[prost(message, repeated, tag = "1")]
        pub pairs: Vec<super::secret::ChannelPairInfo>,
        /// True when more pairs follow.
        #[prost(bool, tag = "2")]
        pub has_more: bool,
    }
}

//! Generated protobuf types and the tonic client/server for `protocol.secret.v1` (and, in
//! [`federation`], `protocol.secret.federation.v1`), plus
//! [`PreEncoded`], the frame type that lets one encoding of an event go to many
//! subscribers.

#![allow(missing_docs, clippy::all)]

tonic::include_proto!("protocol.secret.v1");

/// The server-to-server service `protocol.secret.federation.v1` (DESIGN §9); its
/// references to `protocol.secret.v1` types are the types of this module.
pub mod federation {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(
        env!("OUT_DIR"),
        "/federation/protocol.secret.federation.v1.rs"
    ));
}

/// The encoded `FileDescriptorSet` of `protocol.secret.v1` (with imports), for server
/// reflection when federation is off.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("secret_descriptor");

/// The encoded `FileDescriptorSet` of both protos (with imports), for server reflection
/// when federation is on (then SecretFederationService is served too).
pub const FEDERATION_FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("federation_descriptor");

/// A protobuf message that is already encoded.
///
/// The fan-out hub encodes each event once (as a `StreamMessagePostingResponse`) and hands
/// the same bytes to every subscriber; tonic writes them into each response body as they
/// are. It is only ever sent; decoding one yields an empty value.
#[derive(Clone, Default, PartialEq)]
pub struct PreEncoded(pub bytes::Bytes);

impl PreEncoded {
    /// Encodes a message once, for sending any number of times.
    pub fn encode<M: prost::Message>(message: &M) -> Self {
        PreEncoded(bytes::Bytes::from(message.encode_to_vec()))
    }

    /// The encoded length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for an empty message (all fields default).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for PreEncoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PreEncoded({} bytes)", self.0.len())
    }
}

impl prost::Message for PreEncoded {
    fn encode_raw(&self, buf: &mut impl bytes::BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // Send-only: a decoder (never used) just skips the fields.
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = bytes::Bytes::new();
    }
}

/// The codec of the streaming calls (StreamMessagePosting, Subscribe): prost's, with a
/// decode buffer of [`STREAMING_DECODE_BUFFER`] bytes where tonic allocates 8 KiB for every
/// call. A call's requests are rare and small (a ManageStream names streams; Subscribe
/// has one request), so that buffer mostly sat idle; it grows by that step for a larger
/// message, as tonic's does. The encode buffer stays tonic's (8 KiB): every delivery is
/// encoded into it, and a smaller one cost more CPU per delivery than it saved.
pub struct StreamingCodec<T, U>(std::marker::PhantomData<(T, U)>);

/// The first allocation (and growth step) of a streaming call's decode buffer.
pub const STREAMING_DECODE_BUFFER: usize = 1024;

impl<T, U> Default for StreamingCodec<T, U> {
    fn default() -> Self {
        StreamingCodec(std::marker::PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for StreamingCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = tonic_prost::ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::new(tonic::codec::BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        // tonic's yield threshold (it applies to encoding only).
        let settings = tonic::codec::BufferSettings::new(STREAMING_DECODE_BUFFER, 32 * 1024);
        tonic_prost::ProstDecoder::new(settings)
    }
}

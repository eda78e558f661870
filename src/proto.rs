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

/// A protobuf message that is already encoded, as the gRPC message frame that carries it:
/// the compression flag (0), the message's length (4 bytes, big-endian), the message.
///
/// The fan-out hub encodes each event once (as a `StreamMessagePostingResponse`) and hands
/// the same bytes to every subscriber; a streaming call's response body
/// (`service::streaming::Frames`) sends them as they are, without copying or re-framing
/// them. It is only ever sent; decoding one yields an empty value.
#[derive(Clone, Default, PartialEq)]
pub struct PreEncoded(pub bytes::Bytes);

/// The length of a gRPC message frame's prefix (compression flag, message length).
pub const GRPC_PREFIX: usize = 5;

impl PreEncoded {
    /// Encodes a message once, for sending any number of times.
    pub fn encode<M: prost::Message>(message: &M) -> Self {
        let len = message.encoded_len();
        let mut frame = Vec::with_capacity(GRPC_PREFIX + len);
        frame.push(0);
        // Every message the server sends is far below 4 GiB (requests and pages are
        // bounded by configuration); saturating keeps this total.
        frame.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
        message.encode_raw(&mut frame);
        PreEncoded(bytes::Bytes::from(frame))
    }

    /// The whole gRPC frame (prefix and message), as it goes on the wire.
    pub fn frame(&self) -> &bytes::Bytes {
        &self.0
    }

    /// The encoded message, without the frame's prefix.
    pub fn message(&self) -> bytes::Bytes {
        self.0.slice(self.message_start()..)
    }

    /// Where the message begins in the frame (0 for the empty default value).
    fn message_start(&self) -> usize {
        GRPC_PREFIX.min(self.0.len())
    }

    /// The frame's length in bytes (the message's plus [`GRPC_PREFIX`]).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for a value that holds no frame at all (`PreEncoded::default()`).
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
        buf.put_slice(&self.0[self.message_start()..]);
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
        self.0.len() - self.message_start()
    }

    fn clear(&mut self) {
        self.0 = bytes::Bytes::new();
    }
}

/// The codec of the streaming calls (StreamMessagePosting, Subscribe): prost's, with a
/// decode buffer of [`STREAMING_DECODE_BUFFER`] bytes where tonic allocates 8 KiB for every
/// call. A call's requests are rare and small (a ManageStream names streams; Subscribe
/// has one request), so that buffer mostly sat idle; it grows by that step for a larger
/// message, as tonic's does. Nothing is encoded with it: the responses are
/// [`PreEncoded`] frames that the call's own body sends (`service::streaming::Frames`),
/// so its encoder starts with no buffer at all.
pub struct StreamingCodec<T, U>(std::marker::PhantomData<(T, U)>);

/// The first allocation (and growth step) of a streaming call's decode buffer.
pub const STREAMING_DECODE_BUFFER: usize = 1024;

/// tonic's yield threshold: how many bytes of ready messages go out in one chunk of a
/// response body before the body lets the HTTP/2 stack send them.
pub const YIELD_THRESHOLD: usize = 32 * 1024;

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
        tonic_prost::ProstEncoder::new(tonic::codec::BufferSettings::new(0, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        // (The yield threshold applies to encoding only.)
        let settings = tonic::codec::BufferSettings::new(STREAMING_DECODE_BUFFER, YIELD_THRESHOLD);
        tonic_prost::ProstDecoder::new(settings)
    }
}

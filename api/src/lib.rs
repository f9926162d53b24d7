//! The wire contract between `vigil-proxy` and the Vigil control plane.
//!
//! Two gRPC services, both in package `vigil.v1`:
//! - [`identity`]: a proxy sends a CSR and its bootstrap credential and gets back
//!   an X.509-SVID chain and the trust bundle, or a JWT-SVID for given audiences (port
//!   15012, server-authenticated TLS);
//! - [`discovery`]: a proxy, authenticated by its SVID, watches a stream of
//!   [`Snapshot`]s: the services it may call, their endpoints and the identity expected
//!   at each, the trust bundle and the policy bundle (port 15010, mutual TLS).
//!
//! And [`workload`], the SPIFFE Workload API a proxy serves to its application.
//!
//! ```
//! use vigil_api::{SignRequest, TokenKind};
//! let req = SignRequest { csr_der: vec![], token: "join-token".into(), kind: TokenKind::Join as i32 };
//! assert_eq!(req.token, "join-token");
//! ```
#![forbid(unsafe_code)]

pub mod headers;
pub mod traffic;

mod pb {
    tonic::include_proto!("vigil.v1");
}

pub use pb::*;

/// Client and server for the identity (CSR signing) service.
pub mod identity {
    pub use super::pb::identity_client::IdentityClient;
    pub use super::pb::identity_server::{Identity, IdentityServer};
}

/// The SPIFFE Workload API (no protobuf package, as the standard defines it), served by
/// the proxy to its application on a Unix socket.
pub mod workload {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

/// The discovery (snapshot watch) service's client, as proxies use it.
pub mod discovery {
    pub use super::pb::discovery_client::DiscoveryClient;
}

/// The discovery service as the control plane serves it: the same wire format, with the
/// parts shared between proxies encoded once ([`wire::EncodedSnapshot`]).
pub mod wire {
    mod pb {
        include!(concat!(env!("OUT_DIR"), "/wire/vigil.v1.rs"));
    }
    pub use pb::discovery_server::{Discovery, DiscoveryServer};
    pub use pb::{EncodedSnapshot, WatchRequest};

    /// The codec of the control plane's discovery streams: prost's, with each message sent
    /// as soon as it is encoded. tonic's default encodes every message that is ready into
    /// one buffer until it holds 32 KiB, and keeps that buffer, grown, for the stream's
    /// life: with thousands of proxies watching, that was a third of the control plane's
    /// memory. Sent one at a time, messages that fit the 8 KiB buffer never grow it.
    #[derive(Debug, Clone)]
    pub struct StreamCodec<T, U>(std::marker::PhantomData<(T, U)>);

    impl<T, U> Default for StreamCodec<T, U> {
        fn default() -> Self {
            StreamCodec(std::marker::PhantomData)
        }
    }

    impl<T, U> tonic::codec::Codec for StreamCodec<T, U>
    where
        T: prost::Message + Send + 'static,
        U: prost::Message + Default + Send + 'static,
    {
        type Encode = T;
        type Decode = U;
        type Encoder = tonic_prost::ProstEncoder<T>;
        type Decoder = tonic_prost::ProstDecoder<U>;

        fn encoder(&mut self) -> Self::Encoder {
            tonic_prost::ProstEncoder::new(tonic::codec::BufferSettings::new(8 * 1024, 1))
        }

        fn decoder(&mut self) -> Self::Decoder {
            tonic_prost::ProstDecoder::new(tonic::codec::BufferSettings::default())
        }
    }

    impl EncodedSnapshot {
        /// The snapshot as a proxy decodes it.
        pub fn decode_snapshot(&self) -> Result<super::Snapshot, prost::DecodeError> {
            use prost::Message;
            super::Snapshot::decode(self.encode_to_vec().as_slice())
        }
    }
}

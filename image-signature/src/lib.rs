//! Container image signatures in cosign's formats, so that images signed here
//! verify with cosign, skopeo and the guest's image policy, and the other way
//! round.
//!
//! - [`keys`]: ECDSA P-256 key pairs; the private key in cosign's encrypted PEM
//!   (scrypt + NaCl secretbox over PKCS#8), the public key as SPKI PEM.
//! - [`reference`](mod@reference): image references with docker's defaults, and sha256 digests.
//! - [`payload`]: the simple-signing JSON document that is signed.
//! - [`attachment`]: the OCI manifest under the `sha256-<hex>.sig` tag that carries
//!   payloads and signatures.
//! - [`verify`]: checking one signature layer against a key and an image.
//! - [`registry`]: the OCI distribution (HTTP API v2) client, the only module
//!   that does network I/O; [`ops`] puts signing and verification together over it.
//! - [`passphrase`]: where the private key's passphrase comes from.
//!
//! Nothing here panics on input read from files or the network: every parser
//! returns an error naming the field, URL or reference at fault.

pub mod attachment;
pub mod keys;
pub mod ops;
pub mod passphrase;
pub mod payload;
mod pem;
pub mod reference;
pub mod registry;
pub mod verify;

pub use attachment::SignatureManifest;
pub use keys::{EncryptedPrivateKey, KeyError, PublicKey, ScryptParams, SigningKey};
pub use ops::{sign_image, verify_image, OpsError, SignOutcome, VerifyReport};
pub use payload::{PayloadError, SimpleSigningPayload};
pub use reference::{Digest, ImageReference, ReferenceError};
pub use registry::{ClientOptions, RegistryClient, RegistryError};
pub use verify::{LayerFailure, VerifiedSignature};
pub use zeroize::Zeroizing;

//! Packing build output as deterministic TAR and signing it with minisign.
//!
//! A worker calls [`pack_dir`] on a build's `out/` directory, which writes a
//! TAR whose bytes depend only on the files' names, contents, modes and
//! symlink targets, and returns its SHA-256 computed in the same pass. It then
//! signs the TAR with a [`Signer`] and a trusted comment made by
//! [`build_comment`]. Anyone holding the public key checks it with [`verify`]
//! or with the stock `minisign -Vm artifact.tar -P <key>`. A linux build's
//! image manifest is signed the same way with an [`image_comment`] and
//! checked with [`verify_image`] (or `minisign -Vm manifest.json -x
//! image.minisig`).
//!
//! This crate does no network or object-store I/O; it reads and writes local
//! files and readers only.

mod error;
mod hash;
mod pack;
mod sign;

pub use error::ArtifactError;
pub use hash::{HashingWriter, sha256_reader};
pub use pack::{EntryKind, PackedEntry, PackedTar, extract_file, extract_file_to, pack_dir};
pub use sign::{
    BuildComment, ImageComment, PublicKey, Signer, VerifiedSignature, build_comment, image_comment, keygen,
    parse_build_comment, parse_image_comment, public_key_path, verify, verify_image,
};

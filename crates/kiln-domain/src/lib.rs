//! Kiln's domain model, free of I/O.
//!
//! This crate knows what a build *is*: the request a user sends, how it is
//! validated against a [`Recipe`], how versions are chosen, how the
//! resolved request becomes a content-addressed [`BuildKey`], and what a
//! succeeded build recorded about itself ([`BuildManifest`]); what a
//! recipe's container image holds ([`OciSpec`]) and what a registry name,
//! tag or digest means ([`image_ref`]); API tokens' scopes and secrets
//! ([`token`]). It knows no
//! database, no Docker, no HTTP and no file system; every other crate builds
//! on these types.

pub mod catalogue;
pub mod digest;
pub mod image_ref;
mod key;
pub mod manifest;
pub mod module;
pub mod oci;
mod platform;
pub mod recipe;
pub mod request;
mod state;
pub mod token;
pub mod version;

mod error;

pub use catalogue::CataloguePlugin;
pub use digest::OciDigest;
pub use error::ValidationError;
pub use image_ref::{ImageName, ImageRefError, Reference, RegistryCode, Tag};
pub use key::BuildKey;
pub use manifest::{BuildManifest, Sha256Hex};
pub use module::ModulePath;
pub use oci::{ImagePath, OciFile, OciSpec, OutPath, Port};
pub use platform::Platform;
pub use recipe::{Recipe, Step};
pub use request::{BuildRequest, BuildSpec, PluginRequest, PluginSpec, Replacement};
pub use state::{AttemptOutcome, BuildState, FailureKind, WorkerState};
pub use token::{Scope, Scopes, TokenSecret};
pub use version::{Version, VersionWanted};

//! Packing build output as deterministic TAR and signing it with minisign.

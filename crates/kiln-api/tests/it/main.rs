//! kiln-api's integration tests: in-process ones drive `app(state)` with
//! `oneshot` over a real database and local storage; end-to-end ones spawn
//! the real `kiln-api` and `kiln-worker` binaries (see `farm.rs`).

mod catalogue;
mod e2e;
mod farm;
mod go;
mod inproc;
mod openapi;
mod page;
mod private;
mod proxy;
mod registry;
mod registry_clients;
mod registry_refs;
mod startup;

//! Kiln across hosts: every process on a host of its own (network
//! namespaces made by `kiln_testkit::hosts`), two APIs behind nginx
//! (`deploy/nginx/kiln.conf.template`), workers that reach only Postgres,
//! the store and the Docker engine, and links that are cut and restored.

mod faults;
mod support;
mod through_nginx;

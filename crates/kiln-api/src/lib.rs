//! The HTTP API and download page.

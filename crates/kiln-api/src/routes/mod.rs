//! The route handlers, one module per area.

pub mod builds;
pub mod compat;
pub mod image;
pub mod live;
pub mod ops;
pub mod recipes;
pub mod tokens;

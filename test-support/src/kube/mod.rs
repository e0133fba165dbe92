//! The fake Kubernetes API ([`FakeApi`]), the objects it serves ([`objects`]) and the CA as it
//! runs against it ([`ca`]). See `fake_api.rs` for why a fake and what it leaves out.

pub mod ca;
mod fake_api;
pub mod objects;

pub use fake_api::FakeApi;

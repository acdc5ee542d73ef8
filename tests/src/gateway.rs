//! The API gateway's test support: [`tokens`] (end-user tokens signed with
//! each algorithm, forged ones, JWKS servers that rotate or stop, TLS
//! certificates) and [`shop`] (the services, apps and gateway the scenarios
//! run against).

pub mod shop;
pub mod tokens;

pub use shop::*;
pub use tokens::*;

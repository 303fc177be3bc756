//! One module per group of subcommands.

pub mod demo;
pub mod inspect;
pub mod serve;

//! One module per group of subcommands.

pub mod demo;
pub mod doctor;
pub mod inspect;
pub mod link;
pub mod pack;
pub mod push;
pub mod serve;
pub mod status;

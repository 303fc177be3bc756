//! Test support shared by the autosquash test rings: fixture images generated at test time with
//! Debian's squashfs-tools (never downloaded), and hostile images crafted from them.

pub mod corpus;
pub mod hostile;

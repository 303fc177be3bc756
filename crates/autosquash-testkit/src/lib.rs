//! Test support shared by the autosquash test rings: fixture images generated at test time with
//! Debian's squashfs-tools (never downloaded), hostile images crafted from them, and a real S3
//! server (Garage) started on 127.0.0.1, and stand-ins for what a real server can't be made to
//! do (a fault proxy, a store that ignores `If-Match` or `Range`, the EC2 metadata service);
//! which tests need root or Garage ([`rings`]), and the one walk of a directory tree ([`tree`]).

pub mod corpus;
pub mod fault_proxy;
pub mod garage;
pub mod garage_cluster;
pub mod hostile;
mod http;
pub mod imds;
pub mod lax_s3;
pub mod rings;
pub mod tree;

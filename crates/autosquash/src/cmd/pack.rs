//! `autosquash pack` (being written).

use anyhow::{Result, bail};
use clap::Args;

#[derive(Args)]
pub struct PackArgs {}

pub async fn pack(_args: PackArgs) -> Result<()> {
    bail!("not implemented yet")
}

//! `autosquash link` (being written).

use anyhow::{Result, bail};
use clap::Args;

#[derive(Args)]
pub struct LinkArgs {}

pub fn link(_args: LinkArgs) -> Result<()> {
    bail!("not implemented yet")
}

//! `autosquash push` (being written).

use anyhow::{Result, bail};
use clap::Args;

#[derive(Args)]
pub struct PushArgs {}

pub async fn push(_args: PushArgs) -> Result<()> {
    bail!("not implemented yet")
}

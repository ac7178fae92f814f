//! The subcommands that work on a finished dataset.

pub mod inspect;
pub mod verify;

//! One module per subcommand.

pub mod clear;
pub mod compile;
pub mod gc;
pub mod kv;
pub mod run;
pub mod stats;
pub mod verify;

//! One module per subcommand.

pub mod clear;
pub mod compile;
pub mod gc;
pub mod kv;
pub mod plugin;
pub mod run;
pub mod serve;
pub mod stats;
pub mod verify;

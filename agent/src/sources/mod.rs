//! Where a join's inputs come from, merged into one [`settings::Settings`] before any phase
//! runs: flags, environment and files (parsed by `cli`), the cluster values fetched with an
//! openapi token ([`values`]), and the cloud's instance metadata ([`metadata`]).

pub mod metadata;
pub mod settings;
pub mod values;

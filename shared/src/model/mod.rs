//! The export's records: jobs, chains, files and step events as the job store
//! keeps them, the validated request, the caller and the settings.

mod caller;
pub mod config;
mod job;
mod request;
mod scope;

pub use caller::*;
pub use job::*;
pub use request::*;
pub use scope::*;
